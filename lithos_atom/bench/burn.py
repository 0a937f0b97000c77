"""The synthetic compute-bound kernel the benchmarks and GPU tests use, and how they time it.

Each thread runs a dependent FMA chain of ``iters`` steps, so a block's duration is set by
``iters`` and the SM's load, and blocks are independent (any split into atoms is valid).
"""

import statistics
from collections.abc import Callable
from typing import Any

BURN = r'''
extern "C" __global__ void burn(float* out, int iters) {
    float a = threadIdx.x * 1e-3f + blockIdx.x, b = 0.999f, c = 1e-4f;
    for (int i = 0; i < iters; ++i) { a = fmaf(a, b, c); b = fmaf(b, a, c) * 0.5f + 0.5f; }
    out[(long long)blockIdx.x * blockDim.x + threadIdx.x] = a + b;
}'''

THREADS = 256  # threads per block of every burn launch


def median_device_us(fn: Callable[[], None], stream: Any, reps: int = 5) -> float:
    """Median device time of ``fn``'s work on ``stream`` over ``reps`` runs, from CUDA events."""
    import cupy

    times = []
    for _ in range(reps):
        start, end = cupy.cuda.Event(), cupy.cuda.Event()
        start.record(stream)
        fn()
        end.record(stream)
        end.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, end) * 1000.0)
    return statistics.median(times)
