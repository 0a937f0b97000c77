"""CPU tier: the benchmark command runs on the simulated device and says so."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def test_bench_runs_simulated_without_gpu(tmp_path):
    out = tmp_path / "r.json"
    proc = subprocess.run(
        [sys.executable, "-m", "lithos_atom.bench", "--sim", "--duration", "0.2", "--ml-size", "small",
         "--ml-duration", "0.06", "--ml-warmup", "0.02", "--json", str(out),
         "--plot", str(tmp_path / "plots")],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert "SIMULATED DEVICE" in proc.stdout
    data = json.loads(out.read_text())
    assert data["simulated"] is True
    assert data["sections"]["atoms"] == {"skipped": "atomization overhead needs a GPU"}
    col = data["sections"]["colocation"]
    assert col["simulated"] is True
    for name in ("lc_alone", "streams", "priorities", "static_split", "lithos", "lithos_no_steal", "lithos_no_atoms"):
        hp = col["scenarios"][name]["hp"]
        assert hp["completed"] > 0 and hp["p99_ms"] >= hp["p50_ms"] > 0
    assert col["scenarios"]["lithos"]["be"]["throughput_norm"] > 0
    assert (tmp_path / "plots" / "latency_cdf.png").stat().st_size > 0
    ml = data["sections"]["ml"]
    assert ml["simulated"] is True and set(ml["pairs"]) == {"training", "batch_inference"}
    part = data["sections"]["partitions"]
    assert all(row["confined"] for row in part["scaling"].values())


def test_bench_rejects_unknown_options():
    proc = subprocess.run([sys.executable, "-m", "lithos_atom.bench", "--bogus"], capture_output=True, text=True)
    assert proc.returncode == 2 and "unrecognized arguments" in proc.stderr


def test_colocation_atom_length_reaches_the_lithos_policies_and_is_checked():
    from lithos_atom.bench.colocation_bench import ColocationConfig
    from lithos_atom.bench.sim_colocation import SimColocationConfig

    assert ColocationConfig(atom_us=4000.0).policy(stealing=False).atom_us == 4000.0
    assert SimColocationConfig().policy().atom_us == ColocationConfig().policy().atom_us
    with pytest.raises(ValueError, match="atom_us"):
        ColocationConfig(atom_us=-1.0)
