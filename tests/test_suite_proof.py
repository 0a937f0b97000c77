"""CPU tests of scripts/suite_proof.py: its comparison and its refusals (the suites themselves need a GPU)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import suite_proof  # noqa: E402


def test_compare_reports_regressions_split_share_and_whole_kernels(capsys):
    plain = {"outcomes": {"a": "passed", "b": "passed", "c": "failed", "d": "skipped"}}
    lithos = {"outcomes": {"a": "passed", "b": "failed", "c": "passed", "d": "skipped"},
              "counts": {"launches": 10, "multi_block_launches": 8, "split_multi_block_launches": 6,
                         "split_launches": 6, "atoms": 600},
              "whole": {"k": "uses grid-wide synchronization"}}
    r = suite_proof.compare("s", plain, lithos)
    assert r["pass_plain_fail_lithos"] == ["b"] and r["fail_plain_pass_lithos"] == ["c"]
    assert r["same_outcome"] == 2 and r["split_share_of_multi_block_launches"] == 0.75
    out = capsys.readouterr().out
    assert "REGRESSION b" in out and "75.0 %" in out and "whole k: uses grid-wide synchronization" in out


@pytest.mark.parametrize(("argv", "message"), [
    (["--atom-blocks", "0", "--numba", ""], "--atom-blocks must be >= 1"),
    (["--numba", "", "--cupy", "core_tests/nope.py"], "not under --cupy-tests"),
    (["--numba", "", "--cupy-tests", "/nonexistent"], "is not a folder"),
])
def test_bad_arguments_are_refused_in_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        suite_proof.main(argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err
