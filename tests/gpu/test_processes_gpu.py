"""GPU tier: processes as tenants of the one lent GPU (`lithos.join`).

Four processes (two latency-critical services of different sizes, two best-effort jobs)
run a while and none stalls; tenant processes killed with -9 mid-run leave no shared
memory file, no device memory and no growth of the survivors' green contexts, and the
survivors go on. No MPS daemon is started: the processes time-slice the GPU, which these
checks do not depend on (the latency and throughput targets are the benchmark's).
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.gpu

REPO = Path(__file__).resolve().parents[2]

#: A tenant process: joins as argv[1] says, then serves requests (latency-critical) or
#: runs kernels (best-effort) for argv[2] seconds, printing its progress every 0.1 s and a
#: summary at the end.
CHILD = r'''
import json, sys, threading, time
import cupy, numpy as np
import lithos

BUSY = """
extern "C" __global__ void busy(float* out, int iters) {
    float x = threadIdx.x;
    for (int i = 0; i < iters; ++i) x = x * 0.999f + 1.0f;
    out[blockIdx.x * blockDim.x + threadIdx.x] = x;
}"""
lock = threading.Lock()

def say(**kw):
    with lock:
        sys.stdout.write(json.dumps({"t": time.monotonic(), **kw}) + "\n")
        sys.stdout.flush()

m = lithos.join(0, **json.loads(sys.argv[1]))
lc = m.tenant.priority.value == "latency-critical"
kernel = cupy.RawKernel(BUSY, "busy")
blocks = m.device.num_sms * (4 if lc else 64)
out = cupy.empty(blocks * 256, np.float32)
done, latencies, followed = 0, [], set()
say(event="joined", tpcs=sorted(m.tenant.tpcs))
deadline = time.monotonic() + float(sys.argv[2])
next_report = 0.0
while time.monotonic() < deadline:
    t0 = time.perf_counter()
    if lc:
        with m.tenant.request():
            kernel((blocks,), (256,), (out, np.int32(2000)))
            cupy.cuda.get_current_stream().synchronize()
        latencies.append((time.perf_counter() - t0) * 1e3)
        time.sleep(0.002)
    else:
        kernel((blocks,), (256,), (out, np.int32(2000)))
        cupy.cuda.get_current_stream().synchronize()
    done += 1
    followed.update(m.scheduler.followed())
    if time.monotonic() >= next_report:
        say(event="progress", done=done)
        next_report = time.monotonic() + 0.1
stats = m.scheduler.stats()["tenants"][m.tenant.name]
say(event="summary", done=done, followed=sorted(followed), stolen_atoms=stats["stolen_atoms"],
    green_contexts=m.device.live_green_contexts(),
    p99_ms=float(np.percentile(latencies, 99)) if latencies else None)
'''


class Tenant:
    """One tenant process and its events."""

    def __init__(self, script: Path, folder: Path, seconds: float, **join: Any):
        self.name = join["name"]
        env = {**os.environ, "PYTHONPATH": str(REPO), "LITHOS_LEDGER_DIR": str(folder)}
        self.proc = subprocess.Popen([sys.executable, str(script), json.dumps(join), str(seconds)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        threading.Thread(target=lambda: [self.events.put(json.loads(line)) for line in self.proc.stdout],
                         daemon=True).start()

    def wait_for(self, kind: str, timeout: float, after: float = 0.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for event in self.seen:
                if event["event"] == kind and event["t"] >= after:
                    return event
            try:
                self.seen.append(self.events.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                raise AssertionError(f"{self.name}: no {kind} event in {timeout} s") from None

    def finish(self, timeout: float) -> dict[str, Any]:
        summary = self.wait_for("summary", timeout)
        assert self.proc.wait(timeout=30) == 0, self.proc.stderr.read()  # type: ignore[union-attr]
        return summary


def _free_device_memory() -> int:
    import cupy

    return int(cupy.cuda.runtime.memGetInfo()[0])


def test_four_tenant_processes_run_side_by_side_and_none_stalls(tmp_path):
    script = tmp_path / "tenant.py"
    script.write_text(CHILD)
    seconds = 3.0
    tenants = [Tenant(script, tmp_path, seconds, name="svc-big", priority="latency-critical", tpcs=20),
               Tenant(script, tmp_path, seconds, name="svc-small", priority="latency-critical", tpcs=8),
               Tenant(script, tmp_path, seconds, name="train-a", priority="best-effort", share=0.25),
               Tenant(script, tmp_path, seconds, name="train-b", priority="best-effort", tpcs=12)]
    try:
        owned = [set(t.wait_for("joined", 120)["tpcs"]) for t in tenants]
        assert sum(map(len, owned)) == len(set().union(*owned))  # disjoint
        summaries = {t.name: t.finish(seconds + 120) for t in tenants}
    finally:
        for t in tenants:
            if t.proc.poll() is None:
                t.proc.kill()
    for name, summary in summaries.items():
        assert summary["done"] >= (20 if name.startswith("svc") else 3), (name, summary)
    for name in ("train-a", "train-b"):
        assert summaries[name]["followed"] == ["svc-big", "svc-small"], summaries[name]
    print({n: (s["done"], s["p99_ms"], s["stolen_atoms"]) for n, s in summaries.items()})
    assert list(tmp_path.glob("lithos-*")) == []  # ledger and signals removed by those who left


def test_killed_tenant_processes_leak_nothing_and_the_survivors_go_on(tmp_path):
    script = tmp_path / "tenant.py"
    script.write_text(CHILD)
    free_before = _free_device_memory()
    seconds = 12.0
    survivors = [Tenant(script, tmp_path, seconds, name=f"train-{i}", priority="best-effort", share=0.25)
                 for i in range(2)]
    green_contexts = []
    try:
        for t in survivors:
            t.wait_for("joined", 120)
        for round_ in range(3):
            victim = Tenant(script, tmp_path, 60.0, name=f"svc-{round_}", priority="latency-critical", share=0.25)
            victim.wait_for("joined", 120)
            victim.wait_for("progress", 30, after=time.monotonic() + 0.5)  # mid-run
            killed = time.monotonic()
            os.kill(victim.proc.pid, signal.SIGKILL)
            victim.proc.wait()
            for t in survivors:
                t.wait_for("progress", 5, after=killed + 0.3)  # still going
            assert not list(tmp_path.glob("lithos-requests-*")), f"round {round_}: the dead tenant's signal file"
        summaries = [t.finish(seconds + 60) for t in survivors]
        green_contexts = [s["green_contexts"] for s in summaries]
    finally:
        for t in survivors:
            if t.proc.poll() is None:
                t.proc.kill()
    assert max(green_contexts) <= 4  # home, and the stolen sets: the same TPCs every round
    assert list(tmp_path.glob("lithos-*")) == []
    time.sleep(1.0)
    assert _free_device_memory() >= free_before - (64 << 20)  # the killed processes' memory came back


UNBOUND = r'''
import json, threading
import cupy, numpy as np
import lithos
from lithos_sched.smid_probe import SMID

m = lithos.join(0, priority="best-effort", tpcs=4, name="solo")
result = {}

def unbound():  # a thread that never entered the tenant: its launches run as the default tenant
    x = cupy.zeros(1 << 22, np.float32)  # on the legacy default stream
    inc = cupy.RawKernel(r"""extern "C" __global__ void inc(float* x, int n) {
        int i = blockIdx.x * blockDim.x + threadIdx.x; if (i < n) x[i] += 1.0f; }""", "inc")
    ids = cupy.full(4096, -1, np.int32)
    inc(((x.size + 255) // 256,), (256,), (x, np.int32(x.size)))
    cupy.RawKernel(SMID, "smid")((4096,), (32,), (ids,))
    result["sum"] = float(x.sum())  # after the kernel: ordered on the default stream
    result["sms"] = sorted(set(cupy.asnumpy(ids).tolist()))

t = threading.Thread(target=unbound)
t.start()
t.join()
result["tenant_sms"] = sorted(m.tenant.home.sm_ids)
result["kernels"] = m.scheduler.stats()["tenants"]["solo"]["kernels"]
print(json.dumps(result))
'''


def test_a_thread_that_never_entered_the_tenant_launches_on_its_tpcs_in_order(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "LITHOS_LEDGER_DIR": str(tmp_path)}
    run = subprocess.run([sys.executable, "-c", UNBOUND], capture_output=True, text=True, env=env, cwd=REPO,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["sum"] == float(1 << 22)
    assert result["sms"] and set(result["sms"]) <= set(result["tenant_sms"]) and result["kernels"] >= 2


def test_every_visible_gpu_opens_by_its_index_with_its_own_uuid_and_ledger(tmp_path):
    from lithos_sched import device_count, open_device
    from lithos_sched.ledger import Ledger

    uuids = []
    for i in range(device_count(simulate=False)):
        device = open_device(i, simulate=False)
        uuids.append(device.uuid)
        with Ledger(device.uuid, device.num_tpcs, directory=tmp_path) as ledger:
            assert ledger.path.name.endswith(device.uuid)
        device.close()
    assert uuids and len(set(uuids)) == len(uuids) and all(u.startswith("GPU-") for u in uuids)
