"""Partition figures for the bench: creation time, launch cost on partition streams, and
the confinement / overlap / scaling contract (measured on the GPU, virtual on the simulator)."""

from __future__ import annotations

import statistics
import time
from typing import Any

import numpy as np

from lithos_atom.bench.burn import BURN, THREADS


def _gpu_figures(device: Any) -> dict[str, Any]:
    import cupy

    from lithos_sched.smid_probe import sms_of

    out: dict[str, Any] = {"device": device.describe()}
    # creation: fresh TPC sets (cached sets would cost nothing)
    create = []
    for i in range(8):
        t0 = time.perf_counter()
        part = device.partition(range(i, i + 9))
        create.append((time.perf_counter() - t0) * 1000.0)
        part.close()
    out["partition_create_ms_median"] = statistics.median(create)
    # launch cost: host us per launch of an empty kernel, partition stream vs ordinary stream
    k = cupy.RawKernel('extern "C" __global__ void e(int* p) { if (p == nullptr) p[0] = 1; }', "e")
    arg = cupy.empty(1, np.int32)
    part = device.partition(range(device.num_tpcs // 2))
    plain = cupy.cuda.Stream(non_blocking=True)

    def per_launch_us(stream: Any, n: int = 2000) -> float:
        k((1,), (32,), (arg,), stream=stream)
        stream.synchronize()
        t0 = time.perf_counter()
        for _ in range(n):
            k((1,), (32,), (arg,), stream=stream)
        t1 = time.perf_counter()
        stream.synchronize()
        return (t1 - t0) * 1e6 / n

    rows = [(per_launch_us(plain), per_launch_us(part.normal.cupy)) for _ in range(5)]
    out["launch_us_ordinary_stream"] = statistics.median(r[0] for r in rows)
    out["launch_us_partition_stream"] = statistics.median(r[1] for r in rows)
    # confinement and scaling of a compute-bound kernel
    burn = cupy.RawKernel(BURN, "burn")
    sms = device.num_sms
    per_sm = cupy.cuda.driver.occupancyMaxActiveBlocksPerMultiprocessor(burn.kernel.ptr, THREADS, 0)
    blocks = per_sm * sms * 12
    buf = cupy.empty(blocks * THREADS, np.float32)
    scaling = {}
    for n in (device.num_tpcs, device.num_tpcs // 2, device.num_tpcs // 6):
        p = device.partition(range(n))
        seen = sms_of(p.normal)
        start, end = cupy.cuda.Event(), cupy.cuda.Event()
        times = []
        for _ in range(3):
            start.record(p.normal.cupy)
            burn((blocks,), (THREADS,), (buf, np.int32(2000)), stream=p.normal.cupy)
            end.record(p.normal.cupy)
            end.synchronize()
            times.append(cupy.cuda.get_elapsed_time(start, end))
        scaling[n] = {"ms": statistics.median(times), "confined": seen <= set(p.sm_ids)}
    full = scaling[device.num_tpcs]["ms"]
    for n, row in scaling.items():
        row["ideal_ratio"] = device.num_tpcs / n
        row["measured_ratio"] = row["ms"] / full
    out["scaling"] = {str(n): r for n, r in scaling.items()}
    return out


def _sim_figures(device: Any) -> dict[str, Any]:
    from lithos_sched.sim_device import SimKernel

    out: dict[str, Any] = {"device": device.describe()}
    k = SimKernel("burn", grid_blocks=device.num_sms * 12, block_us=100.0)
    scaling = {}
    for n in (device.num_tpcs, device.num_tpcs // 2, device.num_tpcs // 6):
        p = device.partition(range(n))
        a = p.normal.record()
        p.normal.launch(k)
        b = p.normal.record()
        b.synchronize()
        used = {r.sm for r in device.records if r.stream == p.normal.handle}
        scaling[str(n)] = {"ms": a.elapsed_ms(b), "confined": used <= set(p.sm_ids)}
    full = scaling[str(device.num_tpcs)]["ms"]
    for n, row in scaling.items():
        row["ideal_ratio"] = device.num_tpcs / int(n)
        row["measured_ratio"] = row["ms"] / full
    out["scaling"] = scaling
    return out


def partition_figures(device: Any) -> dict[str, Any]:
    """Partition benchmark figures for ``device`` (GPU or simulated)."""
    return _sim_figures(device) if device.simulated else _gpu_figures(device)
