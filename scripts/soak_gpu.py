"""The soak on a GPU: ``python scripts/soak.py --gpu --minutes N`` (GPU 0).

The members and their make-up are the simulated soak's (``soak_sim.py``): eight tenants
in four schedulers of one process, registered in a ledger with request signals in a
folder of /dev/shm, the best-effort tenants following the other members' latency-critical
ones; every ``rotate_s`` the oldest member leaves and one of the same make-up joins. Here
every tenant is a real thread bound to its tenant (``with scheduler.tenant(name):``)
running unchanged CuPy code: latency-critical threads make marked requests, requests on
fewer TPCs (`Tenant.on_tpcs`), unmarked launches and graph launches; best-effort threads
make launches the scheduler splits into atoms, synchronizes and graph launches.

Every launch is of `COUNT`, a kernel whose blocks add one to their own counter of a
buffer made for that launch: once the launch is done every counter must be exactly 1 (a
graph's counters, the number of times it was launched). At the end: no thread failed, no
request was left open and every gate was open when its tenant left, every counter was
right, and what the process holds came back to its values after a warm-up round (host
memory, descriptors, threads, /dev/shm files; device memory within the driver's
retention of about 4 MiB per green context, docs/design.md, with green contexts pooled).

Not run yet: written for a session with a GPU.
"""

from __future__ import annotations

import dataclasses
import itertools
import random
import shutil
import tempfile
import threading
import time
import tracemalloc
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from soak_common import (
    LC, Resources, compare, follow_member, join_member, request_left_open, unfollow_member,
)
from soak_sim import MEMBERS

from lithos_sched import Policy, Priority, Scheduler, open_device
from lithos_sched.ledger import Ledger
from lithos_sched.processes import ProcessId
from lithos_sched.request_signal import RequestSignal

COUNT = r"""
extern "C" __global__ void count_blocks(unsigned int* counts, int iters) {
    float x = threadIdx.x;
    for (int i = 0; i < iters; ++i) x = x * 0.9999f + 1.0f;
    __syncthreads();
    if (threadIdx.x == 0) {
        unsigned int b = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
        atomicAdd(&counts[b], x >= 0.0f ? 1u : 2u);  // always 1: x stays positive
    }
}
"""
#: Device memory a run may lose beyond the driver's retention: CuPy's and the driver's own
#: small allocations (module loads, event pools) that a warm-up does not settle.
DEVICE_SLACK_BYTES = 64 << 20
#: The driver's retention per green context destroyed (docs/design.md).
GREEN_CONTEXT_BYTES = 4 << 20


@dataclasses.dataclass
class GpuMember:
    """One scheduler of two tenants and their threads."""

    key: int
    process: ProcessId
    scheduler: Scheduler
    signals: dict[str, RequestSignal]
    stop: threading.Event = dataclasses.field(default_factory=threading.Event)
    threads: list[threading.Thread] = dataclasses.field(default_factory=list)


class GpuSoak:
    """One soak run on GPU 0; `run` returns its results.

    Parameters
    ----------
    minutes : float
        Real minutes of the measured round (the warm-up round is a tenth, at least 20 s).
    seed : int
    trace_memory : bool
        Measure host memory with `tracemalloc` too.
    rotate_s : float
        Seconds between a member leaving and the next joining.
    """

    def __init__(self, minutes: float, seed: int, trace_memory: bool = False, rotate_s: float = 10.0) -> None:
        self.seconds, self.seed, self.trace_memory, self.rotate_s = minutes * 60, seed, trace_memory, rotate_s
        self.policy = Policy(wait_timeout_s=30.0)
        self.lock = threading.Lock()
        self.members: list[GpuMember] = []
        self.member_keys = itertools.count()
        self.problems: list[str] = []
        self.latencies_ms: list[float] = []
        self.stats = {"joined": 0, "left": 0, "launches": 0, "blocks": 0, "graph_launches": 0, "requests": 0,
                      "on_tpcs": 0, "unmarked": 0, "be_synchronize": 0, "follows": 0}

    # ---- counting launches ----------------------------------------------------------

    def _launch(self, kernel: Any, blocks: int, iters: int) -> Any:
        """Launch ``kernel`` on the current stream with a fresh counter per block."""
        import cupy

        counts = cupy.zeros(blocks, dtype=np.uint32)
        kernel((blocks,), (256,), (counts, np.int32(iters)))
        return counts

    def _check(self, who: str, counts: Any, expected: int = 1) -> None:
        """After the launch is done: every counter must be ``expected``."""
        import cupy

        wrong = int(cupy.count_nonzero(counts != expected))
        with self.lock:
            self.stats["launches"] += 1
            self.stats["blocks"] += int(counts.size)
            if wrong:
                self.problems.append(f"{who}: {wrong} of {counts.size} blocks did not run exactly once")

    def _problem(self, message: str) -> None:
        with self.lock:
            self.problems.append(message)

    def _tally(self, what: str) -> None:
        with self.lock:
            self.stats[what] += 1

    # ---- tenant threads -------------------------------------------------------------

    def _graph(self, kernel: Any, blocks: int) -> tuple[Any, Any]:
        """A graph of one counting launch, captured on a stream of its own, and its counters."""
        import cupy

        counts = cupy.zeros(blocks, dtype=np.uint32)
        capture = cupy.cuda.Stream(non_blocking=True)
        with capture:
            capture.begin_capture()
            kernel((blocks,), (256,), (counts, np.int32(200)))
            graph = capture.end_capture()
        return graph, counts

    def _latency_critical(self, member: GpuMember, name: str, rng: random.Random) -> None:
        import cupy

        sms = member.scheduler.device.num_sms
        shapes = ((sms // 2, 400), (sms, 800), (2 * sms, 300))
        try:
            with member.scheduler.tenant(name) as tenant:
                kernel = cupy.RawKernel(COUNT, "count_blocks")  # made inside: intercepted
                graph, graph_counts, graph_launches = None, None, 0
                while not member.stop.is_set():
                    time.sleep(rng.expovariate(1 / 0.003))
                    blocks, iters = rng.choice(shapes)
                    r = rng.random()
                    t0 = time.perf_counter()
                    if r < 0.5:
                        with tenant.request():
                            launched = [self._launch(kernel, blocks, iters) for _ in range(rng.randint(1, 3))]
                            cupy.cuda.get_current_stream().synchronize()
                        self._tally("requests")
                        with self.lock:
                            self.latencies_ms.append((time.perf_counter() - t0) * 1e3)
                    elif r < 0.65:
                        with tenant.on_tpcs(rng.choice((2, 4, len(tenant.tpcs)))):
                            launched = [self._launch(kernel, blocks, iters)]
                            cupy.cuda.get_current_stream().synchronize()  # the block's stream
                        self._tally("on_tpcs")
                    elif r < 0.85:
                        launched = [self._launch(kernel, blocks, iters)]  # outside any request
                        cupy.cuda.get_current_stream().synchronize()
                        self._tally("unmarked")
                    else:
                        if graph is None:
                            graph, graph_counts = self._graph(kernel, blocks)
                        graph.launch()
                        graph_launches += 1
                        cupy.cuda.get_current_stream().synchronize()
                        self._check(f"{name} graph", graph_counts, graph_launches)
                        self._tally("graph_launches")
                        launched = []
                    for counts in launched:
                        self._check(name, counts)
        except Exception as exc:  # a failed thread is a finding, not the end of the soak
            self._problem(f"{name}: {type(exc).__name__}: {exc}")

    def _best_effort(self, member: GpuMember, name: str, rng: random.Random) -> None:
        import cupy

        sms = member.scheduler.device.num_sms
        shapes = ((4 * sms, 4000), (16 * sms, 2000), (64 * sms, 500))
        try:
            with member.scheduler.tenant(name) as tenant:
                kernel = cupy.RawKernel(COUNT, "count_blocks")
                pending: list[Any] = []
                graph, graph_counts, graph_launches = None, None, 0
                while not member.stop.is_set():
                    r = rng.random()
                    if r < 0.85:
                        pending.append(self._launch(kernel, *rng.choice(shapes)))  # split into atoms
                    elif r < 0.93:
                        tenant.synchronize()
                        self._tally("be_synchronize")
                    else:
                        if graph is None:
                            graph, graph_counts = self._graph(kernel, 4 * sms)
                        graph.launch()  # runs whole on the tenant's own TPCs
                        graph_launches += 1
                        cupy.cuda.get_current_stream().synchronize()
                        self._check(f"{name} graph", graph_counts, graph_launches)
                        self._tally("graph_launches")
                    if len(pending) >= 4 or member.stop.is_set():
                        cupy.cuda.get_current_stream().synchronize()
                        for counts in pending:
                            self._check(name, counts)
                        pending = []
                cupy.cuda.get_current_stream().synchronize()
                for counts in pending:
                    self._check(name, counts)
        except Exception as exc:
            self._problem(f"{name}: {type(exc).__name__}: {exc}")

    # ---- members --------------------------------------------------------------------

    def _join(self, makeup: tuple[Priority, Priority]) -> GpuMember:
        key = next(self.member_keys)
        process, sched, signals = join_member(key, makeup, self.ledger, self.folder, self.tpcs_per_tenant,
                                              self.device, self.policy, trace=False)
        names = list(sched.tenants)  # its own, in ``makeup``'s order (before it follows any other's)
        member = GpuMember(key, process, sched, signals)
        for other in self.members:
            self._follow(member, other)
            self._follow(other, member)
        self.members.append(member)
        for name, priority in zip(names, makeup):
            body = self._latency_critical if priority is LC else self._best_effort
            rng = random.Random(f"{self.seed}-{name}")
            thread = threading.Thread(target=body, args=(member, name, rng), name=f"soak-{name}", daemon=True)
            member.threads.append(thread)
            thread.start()
        self.stats["joined"] += 1
        return member

    def _follow(self, follower: GpuMember, leader: GpuMember) -> None:
        self.stats["follows"] += follow_member(follower.scheduler, leader.scheduler, leader.signals)

    def _leave(self, member: GpuMember) -> None:
        member.stop.set()
        for thread in member.threads:
            thread.join(60.0)
            if thread.is_alive():
                self._problem(f"{thread.name}: still running 60 s after it was told to stop")
        self.members.remove(member)
        sched = member.scheduler
        try:
            sched.synchronize()
            time.sleep(0.01)  # the idle grace: the keeper opens gates held by unmarked launches
            for name in member.signals:
                gate = sched.tenant(name).gate
                if gate is not None and (not gate.is_open() or sched.tenant(name).gate_held):
                    self._problem(f"{name}: its gate was closed when it left")
            if request_left_open(sched, member.signals):
                self._problem(f"member {member.key}: a request was left open")
        except Exception as exc:
            self._problem(f"member {member.key} leaving: {type(exc).__name__}: {exc}")
        unfollow_member((other.scheduler for other in self.members), member.signals)
        try:
            sched.close()
        except Exception as exc:
            self._problem(f"member {member.key} closing: {type(exc).__name__}: {exc}")
        for signal in member.signals.values():
            signal.close()
        self.ledger.unregister(process=member.process)
        self.stats["left"] += 1

    def _round(self, seconds: float) -> None:
        for makeup in MEMBERS:
            self._join(makeup)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            time.sleep(min(self.rotate_s, max(0.0, end - time.monotonic())))
            if time.monotonic() < end:
                oldest = self.members[0]
                makeup = tuple(t.priority for t in oldest.scheduler.tenants.values() if not t.remote)
                self._leave(oldest)
                self._join(makeup)  # type: ignore[arg-type]
        while self.members:
            self._leave(self.members[0])

    # ---- the run --------------------------------------------------------------------

    def _device_free(self) -> int:
        import cupy

        cupy.get_default_memory_pool().free_all_blocks()
        cupy.get_default_pinned_memory_pool().free_all_blocks()
        cupy.cuda.Device(0).synchronize()
        return int(cupy.cuda.runtime.memGetInfo()[0])

    def run(self) -> dict[str, Any]:
        """Warm up, take the resources, soak, take them again; the results and checks."""
        import cupy

        t0 = time.perf_counter()
        warnings.filterwarnings("ignore", message=".*runs whole.*")  # best-effort graphs, once per scheduler
        started = self.trace_memory and not tracemalloc.is_tracing()
        if started:
            tracemalloc.start()
        shm = Path("/dev/shm")  # whose lithos-* files are checked: those of the soak's own folder there
        cupy.cuda.Device(0).use()
        free_before_device = self._device_free()
        self.folder = Path(tempfile.mkdtemp(prefix="lithos-soak-", dir=shm))  # the ledger's and signals'
        try:
            self.device = open_device(0, simulate=False)
            self.tpcs_per_tenant = max(1, min(8, self.device.num_tpcs // 8))
            self.ledger = Ledger(self.device.uuid, self.device.num_tpcs, directory=self.folder, alive=lambda p: True)
            self._round(max(20.0, self.seconds / 10))
            start, free_start = Resources.now(self.folder), self._device_free()
            contexts_start = self.device.live_green_contexts()
            self._round(self.seconds)
            self.ledger.close()
            end, free_end = Resources.now(self.folder), self._device_free()
            contexts_end = self.device.live_green_contexts()
            self.device.close()
            free_closed = self._device_free()
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)
        if started:
            tracemalloc.stop()
        resources = compare(start, end)
        new_contexts = max(0, contexts_end - contexts_start)
        device_memory = {
            "free_before_device": free_before_device, "free_start": free_start, "free_end": free_end,
            "free_after_close": free_closed, "green_contexts_start": contexts_start, "green_contexts_end": contexts_end,
            "ok": free_end >= free_start - DEVICE_SLACK_BYTES - GREEN_CONTEXT_BYTES * new_contexts
            and free_closed >= free_before_device - DEVICE_SLACK_BYTES - GREEN_CONTEXT_BYTES * contexts_end,
        }
        latencies = np.array(self.latencies_ms) if self.latencies_ms else np.zeros(1)
        checks = {
            "no_thread_failed_and_blocks_exactly_once": not self.problems,
            "device_memory_back": device_memory["ok"],
            **{f"{name}_back": row["ok"] for name, row in resources.items()},
        }
        return {"mode": "gpu", "device": self.device.describe(), "seconds": self.seconds,
                "real_s": time.perf_counter() - t0, **self.stats,
                "request_p50_ms": float(np.percentile(latencies, 50)),
                "request_p99_ms": float(np.percentile(latencies, 99)), "problems": self.problems[:50],
                "resources": resources, "device_memory": device_memory, "checks": checks,
                "ok": all(checks.values())}
