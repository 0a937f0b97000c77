"""The diagnostic scripts' shared summary (scripts/diag_common.py), on recorded-shape data."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import diag_common  # noqa: E402


def _runs(lithos_p99: float, lithos_be: float, rnd: int = 0) -> list[dict]:
    return [
        {"round": rnd, "pair": "training", "arm": "alone", "p99_ms": 3.0},
        {"round": rnd, "pair": "training", "arm": "mps_static@0.5", "p99_ms": 3.5, "be_norm": 0.5},
        {"round": rnd, "pair": "training", "arm": "mps_static@0.375", "p99_ms": 4.5, "be_norm": 0.6},
        {"round": rnd, "pair": "training", "arm": "lithos_mps", "p99_ms": lithos_p99, "be_norm": lithos_be},
    ]


def test_round_summary_compares_each_lithos_arm_with_its_rounds_alone_and_static_line():
    (row,) = diag_common.round_summary(_runs(4.0, 0.77))
    assert row["arm"] == "lithos_mps" and row["x_alone"] == pytest.approx(4.0 / 3.0)
    assert row["static_line_be_norm"] == pytest.approx(0.55)   # halfway between the two splits
    assert row["x_static_line"] == pytest.approx(0.77 / 0.55)


def test_round_summary_below_every_split_has_no_line_and_rounds_stay_apart():
    rows = diag_common.round_summary(_runs(3.2, 0.6, rnd=0) + _runs(5.0, 0.66, rnd=1))
    by_round = {r["round"]: r for r in rows}
    assert by_round[0]["x_static_line"] is None and by_round[0]["static_line_be_norm"] is None
    assert by_round[1]["static_line_be_norm"] == pytest.approx(0.6)   # flat past the last split
    assert by_round[1]["x_static_line"] == pytest.approx(1.1)


def test_round_summary_leaves_out_failed_arms():
    runs = _runs(4.0, 0.7) + [{"round": 0, "pair": "training", "arm": "lithos_mps_x", "error": "worker be: boom"}]
    assert [r["arm"] for r in diag_common.round_summary(runs)] == ["lithos_mps"]
