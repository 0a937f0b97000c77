"""Two tenants in one process: a latency-critical loop beside a best-effort loop.

Unchanged CuPy code runs inside ``with tenant:``; lithos confines each tenant to its TPCs,
splits the best-effort kernels into atoms and lends it the idle latency-critical TPCs.
Runs on the GPU, or on the simulated device with --sim (see lithos_atom.bench.sim_colocation).
Run: python examples/two_tenants.py
"""

import threading
import time

import cupy
import numpy as np

from lithos_atom.bench.burn import BURN
from lithos_sched import Policy, Priority, Scheduler, TenantSpec, open_device


device = open_device()
sched = Scheduler(device, [TenantSpec("inference", Priority.LATENCY_CRITICAL, share=0.5),
                           TenantSpec("training", Priority.BEST_EFFORT, share=0.5)], Policy(atom_us=250))
stop = threading.Event()
latencies = []


def inference():
    with sched.tenant("inference") as tenant:
        k = cupy.RawKernel(BURN, "burn")  # plain user code: created and launched as usual
        out = cupy.empty(264 * 256, np.float32)
        while not stop.is_set():
            t0 = time.perf_counter()
            with tenant.request():  # optional: the training thread holds its Python meanwhile
                k((264,), (256,), (out, np.int32(20000)))
                cupy.cuda.get_current_stream().synchronize()
            latencies.append((time.perf_counter() - t0) * 1e3)
            time.sleep(0.005)


def training():
    with sched.tenant("training"):
        k = cupy.RawKernel(BURN, "burn")
        out = cupy.empty(132 * 8 * 100 * 256, np.float32)
        while not stop.is_set():
            k((132 * 8 * 100,), (256,), (out, np.int32(20000)))
        cupy.cuda.get_current_stream().synchronize()


threads = [threading.Thread(target=inference), threading.Thread(target=training)]
for t in threads:
    t.start()
time.sleep(3)
stop.set()
for t in threads:
    t.join()
sched.close()
print(f"inference p50 {np.percentile(latencies, 50):.3f} ms, p99 {np.percentile(latencies, 99):.3f} ms")
print(sched.stats())
sched.export_trace("two_tenants_trace.json")
print("trace: two_tenants_trace.json (open in https://ui.perfetto.dev)")
