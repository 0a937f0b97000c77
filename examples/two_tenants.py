"""Two tenants in one process: an inference service beside a training job on one GPU.

The tenants are declared once (`TENANTS`): the inference service owns half of the TPCs
and its kernels run whole, at once; the training job owns the other half, its kernels
run as atoms, and it borrows the inference TPCs while no inference kernel needs them.

On a GPU, two threads run unchanged CuPy code inside ``with tenant:`` for 3 s: the
inference thread a request (one 264-block kernel) about every 5 ms, the training thread
large kernels back to back. Without a GPU, or with ``--sim``, the same tenants, policy
and scheduler run on lithos' SIMULATED device for 0.5 s of virtual time: the kernels are
latency models (`SimKernel`), so one thread drives both tenants (each request fires as a
timer while the training loop waits), and the figures show the schedule, not a GPU's speed.

Run: python examples/two_tenants.py [--sim]
"""

import functools
import sys
import threading
import time

import numpy as np

import lithos

TENANTS = [lithos.TenantSpec("inference", lithos.Priority.LATENCY_CRITICAL, share=0.5),
           lithos.TenantSpec("training", lithos.Priority.BEST_EFFORT, share=0.5)]
POLICY = lithos.Policy(atom_us=250)  # training atoms on the inference TPCs: a request waits at most ~250 us

BURN = r'''
extern "C" __global__ void burn(float* out, int iters) {
    float a = threadIdx.x * 1e-3f + blockIdx.x, b = 0.999f;
    for (int i = 0; i < iters; ++i) { a = fmaf(a, b, 1e-4f); b = fmaf(b, a, 1e-4f) * 0.5f + 0.5f; }
    out[blockIdx.x * blockDim.x + threadIdx.x] = a + b;
}'''


def on_gpu(sched: lithos.Scheduler, seconds: float = 3.0) -> list[float]:
    """Each tenant a thread of plain CuPy code; the inference requests' latencies (ms)."""
    import cupy

    stop = threading.Event()
    latencies: list[float] = []

    def inference() -> None:
        with sched.tenant("inference") as tenant:
            kernel = cupy.RawKernel(BURN, "burn")  # plain user code: created and launched as usual
            out = cupy.empty(264 * 256, np.float32)
            while not stop.is_set():
                t0 = time.perf_counter()
                with tenant.request():  # optional: marks one request
                    kernel((264,), (256,), (out, np.int32(20000)))
                    cupy.cuda.get_current_stream().synchronize()
                latencies.append((time.perf_counter() - t0) * 1e3)
                time.sleep(0.005)

    def training() -> None:
        with sched.tenant("training"):
            kernel = cupy.RawKernel(BURN, "burn")
            out = cupy.empty(132 * 800 * 256, np.float32)
            while not stop.is_set():
                kernel((132 * 800,), (256,), (out, np.int32(20000)))
            cupy.cuda.get_current_stream().synchronize()

    threads = [threading.Thread(target=inference), threading.Thread(target=training)]
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    return latencies


def on_sim(sched: lithos.Scheduler, seconds: float = 0.5) -> list[float]:
    """Both tenants' kernels as latency models, driven from this thread in virtual time;
    the inference requests' latencies (virtual ms)."""
    from lithos_sched import SimKernel

    device, timeline = sched.device, sched.timeline
    inference, training = sched.tenant("inference"), sched.tenant("training")
    request = SimKernel("request", grid_blocks=264, block_us=200.0)  # 4 waves on its own 66 SMs, 2 on all 132 it borrows
    train_step = SimKernel("train_step", grid_blocks=132 * 80, block_us=200.0)
    end_us = seconds * 1e6
    finished = []  # (arrival, completion event) of each request

    def arrive(t_us: float) -> None:
        sched.submit_for(inference, request.launch_plan(device))
        finished.append((t_us, timeline.record(inference.stream)))

    arrivals = np.cumsum(np.random.default_rng(0).exponential(5000.0, size=int(seconds * 400)))  # Poisson, 5 ms apart
    for t in arrivals[arrivals < end_us]:
        timeline.call_at(float(t), functools.partial(arrive, float(t)))
    while timeline.now_us() < end_us:  # the training loop; requests fire while it waits
        sched.submit_for(training, train_step.launch_plan(device))
        training.synchronize()
    timeline.advance_to(end_us)
    sched.synchronize()
    return [(event.time_us - t) / 1e3 for t, event in finished]


if __name__ == "__main__":
    simulated = "--sim" in sys.argv[1:] or not lithos.gpu_available()
    if simulated:
        print("SIMULATED device (no CUDA GPU, or --sim): kernels are latency models, times are virtual")
    device = lithos.open_device(simulate=simulated)
    sched = lithos.Scheduler(device, TENANTS, POLICY)
    latencies = on_sim(sched) if simulated else on_gpu(sched)
    sched.close()
    if not latencies:
        sys.exit("no inference request completed (see the errors above)")
    print(f"inference: {len(latencies)} requests, latency p50 {np.percentile(latencies, 50):.3f} ms, "
          f"p99 {np.percentile(latencies, 99):.3f} ms")
    for name, stats in sched.stats()["tenants"].items():
        print(f"{name}: {stats['tpcs']} TPCs, {stats['kernels']} kernels run as {stats['atoms']} atoms, "
              f"{stats['stolen_atoms']} of them on the other tenant's idle TPCs")
    print(f"trace: {sched.export_trace('two_tenants_trace.json')} (open in https://ui.perfetto.dev)")
    device.close()
