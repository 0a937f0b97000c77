"""GPU tier: a best-effort tenant's work that lithos cannot split is accounted
(`lithos_sched.accounting.UnsplitWork`): cuBLAS calls between its launches are timed on its
stream, close to their own device time there, and a cooperative kernel, run whole, is
counted with its duration and reason."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

pytestmark = pytest.mark.gpu


def _scheduler(device, **policy):  # noqa: ANN001, ANN003, ANN202
    from lithos_sched import Policy, Priority, Scheduler, TenantSpec

    return Scheduler(device, [TenantSpec("lc", Priority.LATENCY_CRITICAL, share=0.5),
                              TenantSpec("be", Priority.BEST_EFFORT, share=0.5)], Policy(**policy))


def test_cublas_between_launches_is_timed_as_opaque_work(device):
    import cupy

    sched = _scheduler(device)
    a = cupy.random.default_rng(0).standard_normal((4096, 4096), dtype=cupy.float32)
    big = cupy.ones(1 << 26, cupy.float32)  # a pass over it outlasts the host's time to queue a matmul
    with sched.tenant("be") as be:
        stream = cupy.cuda.get_current_stream()
        cupy.matmul(a, a)
        start, end = cupy.cuda.Event(), cupy.cuda.Event()
        start.record(stream)
        cupy.matmul(a, a)
        end.record(stream)
        end.synchronize()
        alone_us = cupy.cuda.get_elapsed_time(start, end) * 1000.0  # on the tenant's own TPCs
        cupy.multiply(big, 1.0, out=big)
        be.synchronize()
        for _ in range(6):
            cupy.multiply(big, 1.0, out=big)  # a lithos launch
            cupy.matmul(a, a)  # cuBLAS: lithos never sees it
        cupy.multiply(big, 1.0, out=big)
        be.synchronize()
    stats = sched.stats()["tenants"]["be"]
    sched.close()
    assert stats["opaque_gaps"] >= 3, stats  # the host was ahead of the stream at most launches
    per_gap_us = stats["opaque_ms"] * 1000.0 / stats["opaque_gaps"]
    assert 0.7 * alone_us <= per_gap_us <= 1.5 * alone_us, (per_gap_us, alone_us, stats)


def test_a_cooperative_kernel_is_counted_unsplit_with_its_duration(device):
    import cupy

    import lithos

    src = 'extern "C" __global__ void coop(float* x) { x[blockIdx.x * blockDim.x + threadIdx.x] += 1.0f; }'
    # a launch predicted within one atom would run whole as an atom, counted as such, from the second on
    sched = _scheduler(device, short_best_effort_whole=False)
    x = cupy.zeros(4 * 128, cupy.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", lithos.AtomizeWarning)
        with sched.tenant("be") as be:
            kernel = cupy.RawKernel(src, "coop", enable_cooperative_groups=True)
            for _ in range(3):
                kernel((4,), (128,), (x,))
            be.synchronize()
    stats = sched.stats()["tenants"]["be"]
    sched.close()
    assert np.array_equal(cupy.asnumpy(x), np.full(4 * 128, 3.0, np.float32))
    assert stats["unsplit_kernels"] == 3 and "cooperative" in stats["unsplit_reasons"]["coop"]
    assert 0 < stats["unsplit_p50_us"] <= stats["unsplit_max_us"]
