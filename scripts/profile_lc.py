"""Diagnostic: host cost of a latency-critical launch through the scheduler (cProfile)."""
import cProfile
import pstats
import time

import cupy
import numpy as np

from lithos_atom.bench.burn import BURN
from lithos_sched import Priority, Scheduler, TenantSpec, open_device

dev = open_device(simulate=False)
s = Scheduler(dev, [TenantSpec("lc", Priority.LATENCY_CRITICAL, share=0.5),
                    TenantSpec("be", Priority.BEST_EFFORT, share=0.5)])
plain_k = cupy.RawKernel(BURN, "burn")
out = cupy.empty(66 * 256, np.float32)
st = cupy.cuda.Stream(non_blocking=True)


def plain(n):
    t0 = time.perf_counter()
    for _ in range(n):
        plain_k((66,), (256,), (out, np.int32(10)), stream=st)
    return (time.perf_counter() - t0) / n * 1e6


with s.tenant("lc"):
    k = cupy.RawKernel(BURN, "burn")
    for _ in range(50):
        k((66,), (256,), (out, np.int32(10)))
    cupy.cuda.get_current_stream().synchronize()

    def lithos(n):
        t0 = time.perf_counter()
        for _ in range(n):
            k((66,), (256,), (out, np.int32(10)))
        return (time.perf_counter() - t0) / n * 1e6

    print(f"plain launch {plain(2000):.1f} us; lithos LC launch {lithos(2000):.1f} us")
    prof = cProfile.Profile()
    prof.enable()
    lithos(2000)
    prof.disable()
pstats.Stats(prof).sort_stats("tottime").print_stats(18)
s.close()
