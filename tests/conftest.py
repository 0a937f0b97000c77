"""Test tiers: ``gpu``-marked tests skip cleanly on machines without a CUDA device.

`simulated_bench` runs the bench command once per session, for every test that reads its
output. Such long commands start with the session and run beside the other tests
(`start_early`), whose process leaves a core of a 2-core machine idle most of the time;
the tests that read them run last.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

#: The shared bench run's options: every section on the simulated device, the ML section's
#: small workloads over short scenarios in two rounds (the fewest that have a median and an
#: interval to take), so that it takes seconds.
SIM_BENCH_ARGS = ("--sim", "--duration", "0.2", "--ml-size", "small", "--ml-duration", "0.01", "--ml-warmup", "0.005",
                  "--rounds", "2")


@functools.lru_cache(maxsize=1)
def cuda_device_count() -> int:
    """CUDA devices visible through the driver; 0 when there is no driver or GPU."""
    try:
        from cuda.bindings import driver

        (err,) = driver.cuInit(0)
        if err != driver.CUresult.CUDA_SUCCESS:
            return 0
        err, count = driver.cuDeviceGetCount()
        return count if err == driver.CUresult.CUDA_SUCCESS else 0
    except Exception:  # no libcuda on a CPU-only machine: the GPU tier simply does not run
        return 0


#: Commands a test module starts early (`start_early`): its name -> (the fixture its tests
#: use, the function that starts the command in a folder of its own).
_EARLY: dict[str, tuple[str, Callable[[Path], Any]]] = {}
#: Those started this session: name -> (folder, what the starter returned).
_STARTED: dict[str, tuple[Path, Any]] = {}


def start_early(name: str, fixture: str, start: Callable[[Path], Any]) -> None:
    """Have ``start(folder)`` (which starts a command and returns without waiting for it) run
    as the session's tests begin, when a test that uses ``fixture`` is selected; those tests
    run last. Call it at a test module's import; `early` gives the fixture what it started."""
    _EARLY[name] = (fixture, start)


def early(name: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """``(folder, what start returned)`` of ``name`` (`start_early`), started now if it was not
    already (a test run on its own, say)."""
    if name not in _STARTED:
        folder = tmp_path_factory.mktemp(name)
        _STARTED[name] = (folder, _EARLY[name][1](folder))
    return _STARTED[name]


@pytest.hookimpl(trylast=True)  # after ``-k`` and ``-m`` have deselected what they do
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if cuda_device_count() == 0:
        skip = pytest.mark.skip(reason="no CUDA device (gpu tier skipped)")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)
    fixtures = {fixture: name for name, (fixture, _) in _EARLY.items()}
    wanted = {fixtures[f] for item in items for f in getattr(item, "fixturenames", ()) if f in fixtures}
    for name in sorted(wanted) if not config.option.collectonly else ():
        folder = Path(tempfile.mkdtemp(prefix=f"lithos-{name}-"))
        _STARTED[name] = (folder, _EARLY[name][1](folder))
    items.sort(key=lambda item: any(f in fixtures for f in getattr(item, "fixturenames", ())))  # stable: last


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    for folder, _ in _STARTED.values():
        if folder.name.startswith("lithos-"):  # made by `pytest_collection_modifyitems`
            shutil.rmtree(folder, ignore_errors=True)


@dataclasses.dataclass(frozen=True)
class BenchRun:
    """A finished ``python -m lithos_atom.bench`` command.

    Attributes
    ----------
    proc : subprocess.CompletedProcess
        Its exit status and output.
    data : dict
        The JSON it wrote (empty when it wrote none).
    plots : Path
        The folder of its plots and traces.
    """

    proc: subprocess.CompletedProcess
    data: dict[str, Any]
    plots: Path


def _start_bench(folder: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lithos_atom.bench", *SIM_BENCH_ARGS, "--json",
                             str(folder / "r.json"), "--plot", str(folder / "plots")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "COLUMNS": "160"})


start_early("sim-bench", "simulated_bench", _start_bench)


@pytest.fixture(scope="session")
def simulated_bench(tmp_path_factory: pytest.TempPathFactory) -> BenchRun:
    """``python -m lithos_atom.bench`` with `SIM_BENCH_ARGS`, ``--json`` and ``--plot``, run
    once (started with the session) for the tests that check its sections, JSON and plots."""
    folder, started = early("sim-bench", tmp_path_factory)
    try:
        stdout, stderr = started.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        started.kill()
        stdout, stderr = started.communicate()
    proc = subprocess.CompletedProcess(started.args, started.returncode, stdout, stderr)
    out = folder / "r.json"
    return BenchRun(proc, json.loads(out.read_text()) if out.exists() else {}, folder / "plots")
