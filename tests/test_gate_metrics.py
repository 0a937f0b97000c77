"""CPU tier: the gate measures read from a trace (`lithos_atom.bench.gate_metrics`)."""

from __future__ import annotations

import pytest

from lithos_atom.bench.gate_metrics import idle_between_atoms, reclaim
from lithos_sched.trace_buffer import TraceRow


def row(start: float, dur: float, stolen: bool, tenant: str = "be") -> TraceRow:
    return TraceRow("k", tenant, frozenset({0}), 1, 0, 1, None, stolen, start, dur)


def test_idle_between_atoms_counts_gaps_and_leaves_requests_out_of_the_stolen_window():
    atoms = [row(0, 100, False), row(110, 90, False),  # home: a 10 us gap in 200
             row(0, 50, True), row(150, 50, True), row(0, 1, False, tenant="lc")]
    windows = [("lc", 50.0, 80.0)]  # a request from 50 to 130: the stolen gap 50..150 is 20 us idle
    out = idle_between_atoms(atoms, "be", windows)
    assert out["home"]["idle_share"] == pytest.approx(10 / 200) and out["home"]["gaps"] == 1
    assert out["stolen"]["window_ms"] == pytest.approx((200 - 80) / 1e3)
    assert out["stolen"]["idle_share"] == pytest.approx(20 / 120)
    assert idle_between_atoms([row(0, 10, False)], "be")["stolen"] is None


def test_reclaim_is_the_running_stolen_atoms_tail_and_counts_atoms_the_gate_let_in():
    atoms = [row(0, 300, True), row(400, 100, True), row(1000, 100, True)]
    windows = [("lc", 100.0, 200.0), ("lc", 450.0, 200.0), ("lc", 2000.0, 10.0)]
    out = reclaim(atoms, windows, atom_us=250.0)
    assert out["requests"] == 3 and out["reclaim_us_max"] == 200.0  # the first atom ran 200 us into it
    assert out["started_inside"] == 0
    leaked = reclaim(atoms + [row(150, 10, True)], windows)
    assert leaked["started_inside"] == 1  # 150 is inside the first request, past the slack
    assert reclaim(atoms, []) == {"requests": 0}
