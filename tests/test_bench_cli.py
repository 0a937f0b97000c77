"""CPU tier: the benchmark command runs on the simulated device and says so."""

from __future__ import annotations

import pytest

from lithos_atom.bench.__main__ import main


def test_bench_runs_simulated_without_gpu(simulated_bench):
    proc, data = simulated_bench.proc, simulated_bench.data
    assert proc.returncode == 0, proc.stderr
    assert "SIMULATED DEVICE" in proc.stdout
    assert data["simulated"] is True
    assert data["sections"]["atoms"] == {"skipped": "atomization overhead needs a GPU"}
    col = data["sections"]["colocation"]
    assert col["simulated"] is True
    for name in ("lc_alone", "streams", "priorities", "static_split", "lithos", "lithos_no_steal", "lithos_no_atoms"):
        hp = col["scenarios"][name]["hp"]
        assert hp["completed"] > 0 and hp["p99_ms"] >= hp["p50_ms"] > 0
    assert col["scenarios"]["lithos"]["be"]["throughput_norm"] > 0
    assert (simulated_bench.plots / "latency_cdf.png").stat().st_size > 0
    ml = data["sections"]["ml"]
    assert ml["simulated"] is True and set(ml["summary"]["pairs"]) == {"training", "batch_inference"}
    assert [r["round"] for r in ml["rounds"]] == [0, 1] and ml["summary"]["rounds"] == 2
    part = data["sections"]["partitions"]
    assert all(row["confined"] for row in part["scaling"].values())


def test_bench_rejects_unknown_options(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--bogus"])
    assert exit_.value.code == 2 and "unrecognized arguments" in capsys.readouterr().err


def test_colocation_atom_length_reaches_the_lithos_policies_and_is_checked():
    from lithos_atom.bench.colocation_bench import ColocationConfig
    from lithos_atom.bench.sim_colocation import SimColocationConfig

    assert ColocationConfig(atom_us=4000.0).policy(stealing=False).atom_us == 4000.0
    assert SimColocationConfig().policy().atom_us == ColocationConfig().policy().atom_us
    with pytest.raises(ValueError, match="atom_us"):
        ColocationConfig(atom_us=-1.0)
