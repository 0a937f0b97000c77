"""GPU tier: a bounded subset of numba-cuda's and CuPy's own tests gives the same outcomes under the opt-in."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.gpu

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))


def test_small_suite_subset_same_outcomes_and_split(tmp_path):
    pytest.importorskip("filecheck", reason="numba-cuda's test dependency (third_party/wheels)")
    import suite_proof

    out = tmp_path / "proof.json"
    status = suite_proof.main(["--numba", "test_vectorize", "--cupy", "core_tests/test_elementwise.py",
                               "--timeout", "150", "--json", str(out)])
    report = json.loads(out.read_text())
    assert status == 0, {k: v["pass_plain_fail_lithos"] for k, v in report.items()}
    for name, r in report.items():
        assert r["passed_plain"] > 0 and r["counts"].get("split_launches", 0) > 0, (name, r["counts"])
