"""Diagnostic: device memory across green-context create/destroy cycles (raw driver calls)."""
import cupy
from cuda.bindings import driver

from lithos_sched.errors import check
from lithos_sched.gpu_device import GpuDevice

dev = GpuDevice()
flags = driver.CUstream_flags.CU_STREAM_NON_BLOCKING


def free_mib() -> float:
    return cupy.cuda.runtime.memGetInfo()[0] / 2**20


def cycle(with_streams: bool, n: int) -> None:
    for i in range(n):
        groups = [dev._groups[i % 66], dev._groups[(i + 7) % 66]]
        desc = check(driver.cuDevResourceGenerateDesc(groups, 2), "desc")
        ctx = check(driver.cuGreenCtxCreate(desc, dev._cu_device, 1), "create")
        if with_streams:
            s = check(driver.cuGreenCtxStreamCreate(ctx, flags, 0), "stream")
            check(driver.cuStreamDestroy(s), "sdestroy")
        check(driver.cuGreenCtxDestroy(ctx), "destroy")


for with_streams in (False, True):
    base = free_mib()
    for step in range(4):
        cycle(with_streams, 25)
        print(f"streams={with_streams} after {25 * (step + 1)} cycles: free changed {free_mib() - base:+.1f} MiB")
base = free_mib()
for step in range(3):
    for i in range(25):
        dev.partition([i % 66, (i + 7) % 66]).close()
    print(f"GpuPartition after {25 * (step + 1)} cycles: free changed {free_mib() - base:+.1f} MiB")
