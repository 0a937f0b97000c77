"""CPU tier: every script in ``examples/`` runs on a machine without a GPU and says so.

The scripts run side by side, each a subprocess with a time limit (the Ray example mostly
waits for Ray to start), started with the test session (`tests.conftest.start_early`), as
a newcomer runs them: no flags where there is no GPU, ``--sim`` where there is one, so
that the same simulated paths are checked everywhere. Each test reads one script's output.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import cuda_device_count, early, start_early

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ("atomize_kernels.py", "opt_in.py", "two_tenants.py", "ray_two_actors.py")
TIMEOUT_S = 120


def start(folder: Path) -> dict[str, subprocess.Popen]:
    """Start every example in ``folder``, side by side; the Ray example only where Ray is installed."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LITHOS_LEDGER_DIR": str(folder),
           "LITHOS_CACHE_DIR": str(folder / "cache")}
    flags = [] if cuda_device_count() == 0 else ["--sim"]
    names = [n for n in EXAMPLES if n != "ray_two_actors.py" or importlib.util.find_spec("ray") is not None]
    return {n: subprocess.Popen([sys.executable, str(ROOT / "examples" / n), *flags], cwd=folder, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for n in names}


start_early("examples", "runs", start)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, subprocess.CompletedProcess]:
    """Every example's finished run (started with the session, `start_early`), by file name."""
    folder, started = early("examples", tmp_path_factory)
    out = {}
    for name, proc in started.items():
        try:
            stdout, stderr = proc.communicate(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
        out[name] = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    out["folder"] = folder  # type: ignore[assignment]
    return out


def finished(runs: dict[str, subprocess.CompletedProcess], name: str) -> list[str]:
    """The output lines of example ``name``, which must have run to the end."""
    if name not in runs:
        pytest.skip(f"{name} needs Ray")
    proc = runs[name]
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return proc.stdout.splitlines()


def test_every_example_is_run():
    assert sorted(EXAMPLES) == sorted(p.name for p in (ROOT / "examples").glob("*.py"))


def test_atomize_kernels_shows_the_rewrite_and_the_atoms(runs):
    lines = finished(runs, "atomize_kernels.py")
    assert lines[0].startswith("No CUDA GPU (or --sim): no kernel runs here")
    for front_end in ("CuPy saxpy", "Numba scale"):
        [line] = [x for x in lines if x.startswith(front_end)]
        assert "atomized: True" in line and "__lithos_atom_base, __lithos_grid_x" in line
    atoms = [x for x in lines if x.lstrip().startswith("saxpy<<<")]
    assert len(atoms) == 10 and "saxpy<<<2199, 256>>>" in atoms[-1] and "__lithos_atom_base=36864" in atoms[-1]


def test_opt_in_shows_which_kernels_it_intercepts(runs):
    lines = finished(runs, "opt_in.py")
    assert lines[0].startswith("No CUDA GPU (or --sim): no kernel runs here")
    assert "kernel created before the opt-in goes through lithos: False" in lines
    assert "kernel created after it goes through lithos: True" in lines
    assert sum("reached lithos' atomizer" in x for x in lines) == 3
    assert lines[-1] == "cupy.RawKernel is CuPy's own again: True"


def test_two_tenants_runs_their_schedule_on_the_simulated_device(runs):
    lines = finished(runs, "two_tenants.py")
    assert lines[0].startswith("SIMULATED device")
    match = re.search(r"inference: (\d+) requests, latency p50 ([\d.]+) ms, p99 ([\d.]+) ms", runs["two_tenants.py"].stdout)
    assert match, lines
    requests, p50, p99 = int(match[1]), float(match[2]), float(match[3])
    # a request takes 0.4 ms on the whole GPU (2 waves of 200 us blocks), 0.8 ms on its own half: it borrows the
    # training TPCs (Policy.lend_best_effort_tpcs) once their running atoms end
    assert requests > 50 and 0.4 <= p50 <= p99 and p50 < 0.8
    stolen = re.search(r"training: 33 TPCs, \d+ kernels run as (\d+) atoms, (\d+) of them", runs["two_tenants.py"].stdout)
    assert stolen and 0 < int(stolen[2]) < int(stolen[1])
    trace = json.loads((runs["folder"] / "two_tenants_trace.json").read_text())  # type: ignore[operator]
    assert {e["name"] for e in trace["traceEvents"]} >= {"request", "train_step"}


def test_ray_two_actors_steal_on_the_simulated_device(runs):
    lines = finished(runs, "ray_two_actors.py")
    assert lines[0].startswith("SIMULATED device")
    assert any(x.startswith("Training-") and "following ['Inference-" in x for x in lines), lines
    stolen = re.search(r"'stolen atoms': (\d+)", runs["ray_two_actors.py"].stdout)
    assert stolen and int(stolen[1]) > 0
