"""One inference actor and one training actor on one GPU, at ``num_gpus=0.5`` each.

Ray alone would let both run anywhere on the GPU; with ``lithos.ray.remote`` each actor
joins the GPU Ray assigned it and owns half of its TPCs; the training actor also steals
the inference actor's TPCs between requests.

Without a GPU, or with ``--sim``, Ray gets one logical GPU and the actors use lithos'
SIMULATED device, whose kernels are latency models in virtual time: the output shows the
wiring (TPCs, who follows whom, stolen atoms), not real speed.

Run: python examples/ray_two_actors.py [--sim]   (needs ``pip install 'lithos[ray]'``)
"""

import sys
import time

import ray

import lithos
import lithos.ray

SIMULATED = "--sim" in sys.argv[1:] or not lithos.gpu_available()

BUSY = r'''
extern "C" __global__ void busy(float* out, int iters) {
    float x = threadIdx.x;
    for (int i = 0; i < iters; ++i) x = x * 0.999f + 1.0f;
    out[blockIdx.x * blockDim.x + threadIdx.x] = x;
}'''


def work(blocks: int, block_us: float) -> None:
    """One kernel of ``blocks`` blocks as the joined tenant: a CuPy kernel on the GPU, a
    simulated one of ``block_us`` per block on the simulated device."""
    m = lithos.joined()
    if m.device.simulated:
        from lithos_sched import SimKernel

        m.scheduler.submit_for(m.tenant, SimKernel("busy", blocks, block_us).launch_plan(m.device))
        m.tenant.synchronize()
        return
    import cupy

    out = cupy.empty(blocks * 256, cupy.float32)
    cupy.RawKernel(BUSY, "busy")((blocks,), (256,), (out, cupy.int32(int(block_us * 100))))
    cupy.cuda.get_current_stream().synchronize()


class Tenant:
    """What both actors report."""

    def where(self) -> str:
        m = lithos.joined()
        device = "SIMULATED " + m.device.uuid if m.device.simulated else m.device.uuid
        return (f"{m.tenant.name}: {m.tenant.priority.value}, TPCs {min(m.tenant.tpcs)}-{max(m.tenant.tpcs)} "
                f"of {device}, following {m.scheduler.followed() or 'nobody'}")

    def leave(self) -> None:
        lithos.leave()  # ray.shutdown() kills actors without their exit handlers


@lithos.ray.remote(priority="latency-critical", num_gpus=0.5, num_cpus=0, simulate=SIMULATED)
class Inference(Tenant):
    def serve(self, requests: int) -> float:
        """Serve ``requests`` requests 5 ms apart; their median latency in ms (wall time)."""
        latencies = []
        for _ in range(requests):
            t0 = time.perf_counter()
            with lithos.tenant().request():
                work(blocks=132, block_us=200.0)
                if lithos.joined().device.simulated:
                    time.sleep(0.002)  # virtual kernels take no wall time: hold the request open a while
            latencies.append((time.perf_counter() - t0) * 1e3)
            time.sleep(0.005)
        return sorted(latencies)[len(latencies) // 2]


@lithos.ray.remote(priority="best-effort", num_gpus=0.5, num_cpus=0, simulate=SIMULATED)
class Training(Tenant):
    def train(self, seconds: float) -> dict:
        """Run kernels for ``seconds``; the atoms issued and those on the inference's TPCs."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            work(blocks=132 * 20, block_us=100.0)
        stats = lithos.joined().scheduler.stats()["tenants"][lithos.joined().tenant.name]
        return {"atoms": stats["atoms"], "stolen atoms": stats["stolen_atoms"]}


if __name__ == "__main__":
    if SIMULATED:
        print("SIMULATED device (no CUDA GPU, or --sim): Ray gets one logical GPU, kernels are latency models")
    ray.init(num_gpus=1 if SIMULATED else None, include_dashboard=False)
    inference, training = Inference.remote(), Training.remote()
    print(ray.get(inference.where.remote()))
    time.sleep(0.2)  # the training actor's ledger watch picks the inference actor up
    print(ray.get(training.where.remote()))
    median, trained = ray.get([inference.serve.remote(100), training.train.remote(1.0)])
    print(f"inference: median request {median:.2f} ms; training: {trained}")
    ray.get([inference.leave.remote(), training.leave.remote()])
    ray.shutdown()
