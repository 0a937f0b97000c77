"""scripts/diag_matmul_vs_gemm.py refuses bad input with one line before any work (no GPU needed)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import diag_matmul_vs_gemm  # noqa: E402


@pytest.mark.parametrize("argv, says", [
    (["--arms", "lc_alone,nope"], "--arms: unknown ['nope']"),
    (["--size", "0"], "--size"),
    (["--seconds", "0"], "--seconds"),
])
def test_bad_arguments_are_refused_in_one_line(capsys, argv, says):
    with pytest.raises(SystemExit) as exc:
        diag_matmul_vs_gemm.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert says in err[-1] and "error" in err[-1]
