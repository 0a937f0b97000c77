"""Measure what a latency-critical process sees when a best-effort process beside it faults:
``python scripts/fault_isolation.py [--out DIR]`` (GPU 0; not run yet).

For each fault (a kernel that traps, one that reads out of bounds), without MPS (each
process has a CUDA context of its own, time-sliced) and under a private MPS daemon
(``nvidia-cuda-mps-control``; skipped where it cannot start): a latency-critical tenant
process (`lithos.join`) serves requests; a healthy best-effort process runs beside it,
then one that faults after a second. Reported: the latency-critical p99 beside the healthy
process and around the fault, whether it kept serving and the error each process got.
tests/gpu/test_faults_gpu.py asserts the case without MPS (docs/faults.md).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent

KERNELS = r'''
WORK = """
extern "C" __global__ void work(float* out, int iters) {
    float x = threadIdx.x;
    for (int i = 0; i < iters; ++i) x = x * 0.999f + 1.0f;
    out[blockIdx.x * blockDim.x + threadIdx.x] = x;
}"""
TRAP = """
extern "C" __global__ void trap(float* out, int iters) {
    if (blockIdx.x == 3 && threadIdx.x == 0) __trap();
    out[blockIdx.x * blockDim.x + threadIdx.x] = 1.0f;
}"""
OOB = """
extern "C" __global__ void oob(float* out, int iters) {
    const float* far = out + ((long long)(blockIdx.x + 1) << 36);  // 256 GiB on: no allocation there
    out[blockIdx.x * blockDim.x + threadIdx.x] = far[threadIdx.x];
}"""
'''

#: A tenant process: joins as argv[1] says (with "seconds", at most, and "stop_file", whose
#: appearance ends it sooner; for a best-effort one an optional "fault": "trap" or "oob"
#: launched after "fault_after" seconds), prints "joined", "progress" every 0.1 s,
#: "faulting" and "fault" (the error its tenant got) and "summary" (a latency-critical
#: one's request latencies with their times) as JSON lines.
CHILD = KERNELS + r'''
import json, os, sys, time
import cupy, numpy as np
import lithos
from lithos_sched import KernelFaultError

def say(**kw):
    sys.stdout.write(json.dumps({"t": time.monotonic(), **kw}) + "\n")
    sys.stdout.flush()

cfg = json.loads(sys.argv[1])
fault = cfg.pop("fault", None)
fault_after = cfg.pop("fault_after", 1.0)
seconds = cfg.pop("seconds")
stop_file = cfg.pop("stop_file", "")
m = lithos.join(0, **cfg)
lc = m.tenant.priority.value == "latency-critical"
work = cupy.RawKernel(WORK, "work")
blocks = m.device.num_sms * (2 if lc else 64)
out = cupy.empty(blocks * 256, np.float32)
say(event="joined", tpcs=len(m.tenant.tpcs))
latencies, errors = [], []
start = time.monotonic()
next_report = 0.0
while time.monotonic() < start + seconds and not os.path.exists(stop_file):
    try:
        if lc:
            t0 = time.perf_counter()
            with m.tenant.request():
                work((blocks,), (256,), (out, np.int32(3000)))
                cupy.cuda.get_current_stream().synchronize()
            latencies.append((time.monotonic(), (time.perf_counter() - t0) * 1e3))
            time.sleep(0.002)
        elif fault and time.monotonic() >= start + fault_after:
            bad = cupy.RawKernel(TRAP if fault == "trap" else OOB, fault)
            say(event="faulting")
            try:
                bad((blocks,), (256,), (out, np.int32(0)))
                m.tenant.synchronize()
                say(event="fault", error="no error", tenant=None, sticky=False, kind="none")
            except KernelFaultError as exc:
                say(event="fault", error=str(exc), tenant=exc.tenant, sticky=exc.sticky, kind="KernelFaultError")
            except Exception as exc:
                say(event="fault", error=f"{type(exc).__name__}: {exc}", tenant=None, sticky=None, kind="other")
            break
        else:
            work((blocks,), (256,), (out, np.int32(2000)))
            cupy.cuda.get_current_stream().synchronize()
    except Exception as exc:
        errors.append(f"{type(exc).__name__}: {exc}")
        break
    if time.monotonic() >= next_report:
        say(event="progress")
        next_report = time.monotonic() + 0.1
say(event="summary", latencies=latencies, errors=errors)
'''


class Tenant:
    """One tenant process and the events it printed."""

    def __init__(self, script: Path, folder: Path, env: dict[str, str], **cfg: Any):
        self.name = cfg["name"]
        env = {**os.environ, **env, "PYTHONPATH": str(REPO), "LITHOS_LEDGER_DIR": str(folder)}
        self.proc = subprocess.Popen([sys.executable, str(script), json.dumps(cfg)], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        threading.Thread(target=lambda: [self.events.put(json.loads(line)) for line in self.proc.stdout
                                         if line.startswith("{")], daemon=True).start()

    def wait_for(self, kind: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for event in self.seen:
                if event["event"] == kind:
                    return event
            try:
                self.seen.append(self.events.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                stderr = self.proc.stderr.read() if self.proc.poll() is not None else ""  # type: ignore[union-attr]
                raise AssertionError(f"{self.name}: no {kind} event in {timeout} s; stderr: {stderr[-2000:]}") from None

    def first(self, kind: str) -> float:
        return next(e["t"] for e in self.seen if e["event"] == kind)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def p99(values: list[float]) -> float:
    """The 99th percentile (NaN for no values)."""
    return float(np.percentile(values, 99)) if values else float("nan")


def measure(fault: str, folder: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """One latency-critical process beside a healthy best-effort process, then beside one
    whose kernel faults (``fault``: "trap" or "oob"); ``env`` is added to every process's
    (an MPS daemon's client variables). Returns what each saw."""
    script = folder / "tenant.py"
    script.write_text(CHILD)
    stop = folder / "stop"
    env = env or {}
    lc = Tenant(script, folder, env, name="svc", priority="latency-critical", share=0.5, seconds=600.0,
                stop_file=str(stop))
    tenants = [lc]
    try:
        lc.wait_for("joined", 120)
        healthy = Tenant(script, folder, env, name="train-ok", priority="best-effort", share=0.5, seconds=4.0)
        tenants.append(healthy)
        healthy.wait_for("summary", 120)
        healthy_from, healthy_to = healthy.first("progress") + 0.5, healthy.first("summary")
        healthy.proc.wait(60)  # gone from the ledger: its TPCs are free for the next one
        faulty = Tenant(script, folder, env, name=f"train-{fault}", priority="best-effort", share=0.5, seconds=60.0,
                        fault=fault, fault_after=1.0)
        tenants.append(faulty)
        event = faulty.wait_for("fault", 120)
        t_fault = faulty.first("faulting")
        time.sleep(3.0)  # the latency-critical process serves on after the fault
        stop.touch()
        summary = lc.wait_for("summary", 60)
    finally:
        for t in tenants:
            t.stop()
    latencies = summary["latencies"]
    beside_healthy = [ms for t, ms in latencies if healthy_from <= t <= healthy_to]
    around_fault = [ms for t, ms in latencies if t_fault - 0.5 <= t <= t_fault + 2.0]
    return {"fault": fault, "fault_event": event, "lc_errors": summary["errors"],
            "lc_served_after_fault": sum(1 for t, _ in latencies if t > t_fault + 2.0),
            "requests_beside_healthy": len(beside_healthy), "requests_around_fault": len(around_fault),
            "p99_beside_healthy_ms": p99(beside_healthy), "p99_around_fault_ms": p99(around_fault)}


def _mps_daemon() -> Any:
    """The MPS daemon helper of the benchmark package (where it lives now or moves to)."""
    try:
        from lithos_atom.bench.mps import MPSDaemon
    except ImportError:
        from lithos_sched.mps import MPSDaemon
    return MPSDaemon()


def main() -> int:
    """Measure every case; write fault_isolation.json to --out."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("."))
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    results: list[dict[str, Any]] = []
    for mps in (False, True):
        for fault in ("trap", "oob"):
            with tempfile.TemporaryDirectory(prefix="lithos-faults-") as folder:
                try:
                    with (_mps_daemon() if mps else contextlib.nullcontext()) as daemon:
                        env = daemon.client_env() if mps else {}
                        results.append({"mps": mps, **measure(fault, Path(folder), env)})
                except Exception as exc:  # MPS unavailable, or a process that never reported
                    results.append({"mps": mps, "fault": fault, "error": f"{type(exc).__name__}: {exc}"})
            print(json.dumps(results[-1]))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fault_isolation.json").write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
