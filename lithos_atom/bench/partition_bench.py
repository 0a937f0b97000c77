"""Partition figures for the bench: creation time, launch cost on partition streams, and the
scaling / confinement contract (measured on the GPU, in virtual time on the simulator).

Every helper takes an open device and returns a JSON-ready dict.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import numpy as np

from lithos_atom.bench.burn import BURN, THREADS
from lithos_sched.sim_kernel import SimKernel
from lithos_sched.smid_probe import sms_of

_EMPTY = 'extern "C" __global__ void empty(int* p) {}'


def partition_create_ms(device: Any, samples: int = 8, size: int = 9, seed: int = 0) -> dict[str, Any]:
    """Wall time of ``device.partition(tpcs)`` for TPC sets that have no green context yet.

    A set the device already has a context for costs nothing (it is cached), and may be
    a partition someone holds, so random sets are drawn until ``samples`` fresh ones were
    timed. Each partition is closed again (on the GPU its context stays cached).

    Parameters
    ----------
    device
        A GPU or simulated device.
    samples : int
        Partitions to create.
    size : int
        TPCs per partition (clipped to the device).
    seed : int
        Seed of the random TPC sets.

    Returns
    -------
    dict
        ``median_ms``, ``min_ms``, ``max_ms`` of the whole call (green context and its
        three streams on the GPU), ``green_ctx_create_ms_median`` (``cuGreenCtxCreate``
        alone; 0 on the simulator), ``samples``, ``tpcs``.
    """
    rng = np.random.default_rng(seed)
    size = min(size, device.num_tpcs)
    total, create = [], []
    for _ in range(100 * samples):  # bounded: tiny devices may run out of fresh sets
        if len(total) == samples:
            break
        tpcs = sorted(int(t) for t in rng.choice(device.num_tpcs, size=size, replace=False))
        if device.has_context(tpcs):
            continue
        t0 = time.perf_counter()
        part = device.partition(tpcs)
        total.append((time.perf_counter() - t0) * 1000.0)
        create.append(part.create_ms)
        part.close()
    if not total:
        return {"skipped": "no TPC set without a cached green context left"}
    return {"median_ms": statistics.median(total), "min_ms": min(total), "max_ms": max(total),
            "green_ctx_create_ms_median": statistics.median(create), "samples": len(total), "tpcs": size}


def launch_cost_us(device: Any, launches: int = 2000, tpcs: int | None = None) -> dict[str, Any]:
    """Host microseconds per launch of an empty CuPy kernel, on three kinds of stream.

    Each launch is timed on its own; the figure is the median. Streams: a partition's
    normal stream, an ordinary non-blocking CuPy stream, and CuPy's null stream (for
    reference only: partitioned work never goes there).

    Parameters
    ----------
    device
        A GPU device (the simulator has no host launch cost to measure).
    launches : int
        Launches timed per stream.
    tpcs : int, optional
        Size of the partition used; half the device by default.

    Returns
    -------
    dict
        ``launch_us_partition_stream``, ``launch_us_ordinary_stream``,
        ``launch_us_null_stream``, ``launches``; or ``skipped`` on the simulator.
    """
    if device.simulated:
        return {"skipped": "host launch cost needs a GPU"}
    import cupy

    kernel = cupy.RawKernel(_EMPTY, "empty")
    arg = cupy.empty(1, np.int32)
    part = device.partition(range(tpcs or max(1, device.num_tpcs // 2)))
    streams = {"partition_stream": part.normal.cupy, "ordinary_stream": cupy.cuda.Stream(non_blocking=True),
               "null_stream": cupy.cuda.Stream.null}
    samples: dict[str, list[float]] = {name: [] for name in streams}
    for _ in range(4):  # rounds alternate the streams, so drift (clocks, other load) hits each alike
        for name, cs in streams.items():
            kernel((1,), (32,), (arg,), stream=cs)  # compile/load and warm the path first
            cs.synchronize()
            out = samples[name]
            for _ in range(max(1, launches // 4)):
                t0 = time.perf_counter()
                kernel((1,), (32,), (arg,), stream=cs)
                out.append(time.perf_counter() - t0)
            cs.synchronize()
    result: dict[str, Any] = {f"launch_us_{name}": statistics.median(v) * 1e6 for name, v in samples.items()}
    result["launches"] = sum(len(v) for v in samples.values()) // len(samples)
    return result


def _gpu_scaling(device: Any, sizes: tuple[int, ...]) -> dict[str, Any]:
    import cupy

    burn = cupy.RawKernel(BURN, "burn")
    per_sm = cupy.cuda.driver.occupancyMaxActiveBlocksPerMultiprocessor(burn.kernel.ptr, THREADS, 0)
    blocks = per_sm * device.num_sms * 12  # whole waves at every size below
    buf = cupy.empty(blocks * THREADS, np.float32)
    rows: dict[str, Any] = {}
    for n in sizes:
        p = device.partition(range(n))
        seen = sms_of(p.normal, blocks=32 * p.num_sms)
        times = []
        for _ in range(3):
            start = p.normal.record()
            burn((blocks,), (THREADS,), (buf, np.int32(4000)), stream=p.normal.cupy)
            end = p.normal.record()
            end.synchronize()
            times.append(start.elapsed_ms(end))
        rows[str(n)] = {"ms": statistics.median(times), "confined": seen <= set(p.sm_ids)}
    return rows


def _sim_scaling(device: Any, sizes: tuple[int, ...]) -> dict[str, Any]:
    k = SimKernel("burn", grid_blocks=device.num_sms * 12, block_us=100.0)
    rows: dict[str, Any] = {}
    for n in sizes:
        p = device.partition(range(n))
        start = p.normal.record()
        launch_id = p.normal.launch(k)
        end = p.normal.record()
        end.synchronize()
        used = {r.sm for r in device.records if r.launch_id == launch_id}
        rows[str(n)] = {"ms": start.elapsed_ms(end), "confined": used <= set(p.sm_ids)}
    return rows


def scaling(device: Any) -> dict[str, Any]:
    """A compute-bound kernel on the whole device, half and a sixth of it.

    Returns
    -------
    dict
        Per TPC count: ``ms``, ``confined`` (its blocks ran only on the partition's SMs),
        ``ideal_ratio`` and ``measured_ratio`` (time over the whole device's time).
    """
    sizes = tuple(dict.fromkeys((device.num_tpcs, max(1, device.num_tpcs // 2), max(1, device.num_tpcs // 6))))
    rows = _sim_scaling(device, sizes) if device.simulated else _gpu_scaling(device, sizes)
    full = rows[str(device.num_tpcs)]["ms"]
    for n, row in rows.items():
        row["ideal_ratio"] = device.num_tpcs / int(n)
        row["measured_ratio"] = row["ms"] / full
    return rows


def partition_figures(device: Any) -> dict[str, Any]:
    """Every partition figure for ``device`` (GPU or simulated), flat scalars first.

    Returns
    -------
    dict
        ``device`` (its description), ``partition_create_ms_median``, the
        ``launch_us_*`` figures on the GPU, ``create`` and ``launch`` (the helpers'
        dicts), and ``scaling``.
    """
    out: dict[str, Any] = {"device": device.describe()}
    create = partition_create_ms(device)
    launch = launch_cost_us(device)
    if "median_ms" in create:
        out["partition_create_ms_median"] = create["median_ms"]
    out.update({k: v for k, v in launch.items() if k.startswith("launch_us_")})
    out["create"] = create
    out["launch"] = launch
    out["scaling"] = scaling(device)
    return out
