"""Diagnostic: host cost of one kernel launch, step by step, from plain CuPy to a lithos
latency-critical tenant.

Each case issues 2000 launches of a one-block kernel back to back (synchronizing every
50, so queues stay short) and reports the mean host time per launch in microseconds.

Usage (on the GPU): python scripts/diag_launch_cost.py OUT_JSON
"""

from __future__ import annotations

import cProfile
import io
import json
import pstats
import sys
import time

import cupy

from lithos_atom.optin import using_atomizer
from lithos_sched import Policy, Priority, Scheduler, TenantSpec, open_device

SRC = r'extern "C" __global__ void tiny(float* x) { if (threadIdx.x == 0) x[blockIdx.x] += 1.0f; }'
N = 2000


def per_launch_us(kernel, x, stream) -> float:  # noqa: ANN001
    for _ in range(50):
        kernel((1,), (32,), (x,), stream=stream)
    cupy.cuda.Device().synchronize()
    t = time.perf_counter()
    for i in range(N):
        kernel((1,), (32,), (x,), stream=stream)
        if i % 50 == 49:
            cupy.cuda.Device().synchronize()
    return (time.perf_counter() - t) / N * 1e6


def main() -> None:
    device = open_device(simulate=False)
    x = cupy.zeros(1, dtype=cupy.float32)
    plain_kernel = cupy.RawKernel(SRC, "tiny")
    ordinary = cupy.cuda.Stream(non_blocking=True)
    part = device.partition(range(device.num_tpcs // 2))
    out: dict[str, float] = {}
    out["plain_ordinary_stream"] = per_launch_us(plain_kernel, x, ordinary)
    out["plain_partition_high_stream"] = per_launch_us(plain_kernel, x, part.high.cupy)
    ev = cupy.cuda.Event(disable_timing=True)
    t = time.perf_counter()
    for _ in range(N):
        ev.record(ordinary)
    out["event_record"] = (time.perf_counter() - t) / N * 1e6
    t = time.perf_counter()
    for _ in range(N):
        _ = ordinary.done
    out["stream_query"] = (time.perf_counter() - t) / N * 1e6
    with using_atomizer(None):  # installs lithos' interception while held
        k = cupy.RawKernel(SRC, "tiny")
        out["intercepted_no_tenant"] = per_launch_us(k, x, ordinary)
        specs = [TenantSpec("lc", Priority.LATENCY_CRITICAL, share=0.5),
                 TenantSpec("be", Priority.BEST_EFFORT, share=0.5)]
        for label, policy in (("lc_tenant_timing_1_in_8", Policy()),
                              ("lc_tenant_untimed", Policy(lc_timing_every=10**9))):
            sched = Scheduler(device, specs, policy)
            try:
                with sched.tenant("lc"):
                    out[label] = per_launch_us(k, x, None)
                    out[label + "_explicit_stream"] = per_launch_us(k, x, cupy.cuda.get_current_stream())
                    if label == "lc_tenant_timing_1_in_8":
                        prof = cProfile.Profile()
                        prof.enable()
                        per_launch_us(k, x, None)
                        prof.disable()
                        buf = io.StringIO()
                        pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(25)
                        profile = buf.getvalue()
            finally:
                sched.close()
    print(profile)
    for key, value in out.items():
        print(f"{key:40s} {value:8.2f} us", flush=True)
    with open(sys.argv[1] if len(sys.argv) > 1 else "diag-launch-cost.json", "w") as f:
        json.dump({"device": device.describe(), "us_per_launch": out, "profile_timed": profile}, f, indent=1)


if __name__ == "__main__":
    main()
