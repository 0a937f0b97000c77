"""Test tiers: ``gpu``-marked tests skip cleanly on machines without a CUDA device.

`simulated_bench` runs the bench command once per session, for every test that reads its
output.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import subprocess
import sys
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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if cuda_device_count() > 0:
        return
    skip = pytest.mark.skip(reason="no CUDA device (gpu tier skipped)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


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


@pytest.fixture(scope="session")
def simulated_bench(tmp_path_factory: pytest.TempPathFactory) -> BenchRun:
    """``python -m lithos_atom.bench`` with `SIM_BENCH_ARGS`, ``--json`` and ``--plot``, run
    once for the tests that check its sections, JSON and plots."""
    folder = tmp_path_factory.mktemp("sim-bench")
    out, plots = folder / "r.json", folder / "plots"
    proc = subprocess.run([sys.executable, "-m", "lithos_atom.bench", *SIM_BENCH_ARGS, "--json", str(out),
                           "--plot", str(plots)],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "COLUMNS": "160"})
    return BenchRun(proc, json.loads(out.read_text()) if out.exists() else {}, plots)
