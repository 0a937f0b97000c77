"""CPU tier: `tenant_occupancy` reads a tenant's busy share, stolen/home shares and idle
gaps off the scheduler's trace rows."""

from __future__ import annotations

import pytest

from lithos_atom.bench.occupancy import tenant_occupancy
from lithos_sched.trace_buffer import TraceRow


def row(tenant: str, start: float, dur: float, stolen: bool = False) -> TraceRow:
    return TraceRow("k", tenant, frozenset({0}), 1, 0, 1, None, stolen, start, dur)


def test_busy_stolen_and_home_shares_and_the_gaps_between_atoms():
    atoms = [row("be", 0, 10), row("be", 5, 10, stolen=True),  # overlap: busy 0-15
             row("be", 20, 10, stolen=True),                    # gap of 5
             row("be", 40, 10),                                 # gap of 10
             row("lc", 15, 5)]                                  # another tenant's atom is not counted
    occ = tenant_occupancy(atoms, "be")
    assert occ["window_ms"] == pytest.approx(0.05)
    assert occ["busy_share"] == pytest.approx(35 / 50)
    assert occ["stolen_share"] == pytest.approx(20 / 50) and occ["home_share"] == pytest.approx(20 / 50)
    assert occ["idle_gaps"] == 2 and occ["idle_gap_median_us"] == pytest.approx(7.5)
    assert occ["idle_ms"] == pytest.approx(0.015)


def test_the_window_ends_at_the_last_atom_and_clips_the_ones_it_cuts():
    atoms = [row("be", 0, 100), row("be", 150, 50)]
    occ = tenant_occupancy(atoms, "be", window_us=120.0)  # 80..200: 20 of the first atom, then a gap of 50
    assert occ["window_ms"] == pytest.approx(0.12)
    assert occ["busy_share"] == pytest.approx(70 / 120)
    assert occ["idle_gaps"] == 1 and occ["idle_ms"] == pytest.approx(0.05)
    assert tenant_occupancy(atoms, "be", window_us=1e9)["window_ms"] == pytest.approx(0.2)  # longer: the span


def test_no_atoms_gives_none_and_a_bad_window_is_refused():
    assert tenant_occupancy([row("lc", 0, 5)], "be") is None
    with pytest.raises(ValueError, match="window_us"):
        tenant_occupancy([row("be", 0, 5)], "be", window_us=0)


def test_atoms_back_to_back_within_a_microsecond_leave_no_gap():
    occ = tenant_occupancy([row("be", 0, 10), row("be", 10.4, 10), row("be", 25, 5)], "be")
    assert occ["idle_gaps"] == 1 and occ["idle_gap_median_us"] == pytest.approx(4.6)
    assert occ["busy_share"] == pytest.approx(1 - 4.6 / 30)
