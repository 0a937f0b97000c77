"""The cooperative multi-tenant scheduler.

Tenants share one device. Each owns a TPC partition. A latency-critical tenant's kernels
run unsplit, issued at once onto a high-priority stream of its partition (or, with a
right-sizer, of the part of it the kernel needs). A best-effort tenant's launches are
issued atom by atom *by the tenant's own thread* (no hand-off thread on the hot path):
before each atom the thread waits, with the GIL released, until the work it has queued
on the target partition is predicted to drain within ``queue_cap_us`` where a
latency-critical tenant may need those SMs (``home_queue_cap_us`` on its own TPCs), so a
latency-critical kernel never finds more than about one atom queued ahead of it. While
every latency-critical tenant is idle, best-effort atoms go to a partition that adds the
idle tenants' TPCs (stealing); once one submits work, new atoms stay home, and the TPCs are
back when the atoms already there finish. On the GPU a best-effort thread also issues
nothing while a latency-critical tenant has work in flight, which leaves the GIL to the
latency-critical thread.

Stream semantics stay as the user wrote them: atoms on partition streams start after the
work the tenant queued before the launch, and the tenant's stream waits for every atom, so
later work (opaque CuPy ops, copies, host reads) sees the results.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import gc
import json
import math
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from lithos_atom import driver_calls
from lithos_atom.atomizer import Atomizer, using_atomizer
from lithos_atom.plan import KernelKey, LaunchPlan, LaunchShape, WholeLaunch
from lithos_atom.settings import get_settings
from lithos_sched.gate_keeper import GateKeeper
from lithos_sched.gates import CLOSED, OPEN, Gate, GateBoard
from lithos_sched.policy import Policy
from lithos_sched.predictor import LatencyPredictor
from lithos_sched.rightsizing import RightSizer
from lithos_sched.tenant import Priority, TenantConfigError, TenantSpec, assign_tpcs, specs_from
from lithos_sched.timeline import CupyTimeline, SimTimeline, Timeline
from lithos_sched.trace_buffer import TraceBuffer, TraceRow

_MAX_GRID_X = 2**31 - 1
# A latency-critical thread retires its own timed launches only once this many are pending.
_LC_RETIRE_BATCH = 32
#: `LaunchPlan.reason` of a best-effort launch run unsplit by `Policy.short_best_effort_whole`
_SHORT_REASON = "predicted to run within one atom"
_CUDA_ERRORS = ("CUDARuntimeError", "CUDADriverError", "CUDAError", "LithosCudaError")


class SchedulerClosedError(RuntimeError):
    """The scheduler was closed; its tenants can no longer launch through it."""


class KernelFaultError(RuntimeError):
    """A kernel failed on the device; names the tenant and kernel whose atom was waited on."""


@dataclasses.dataclass
class TenantStats:
    """Per-tenant accounting.

    Device times (``busy_ms``, ``tpc_ms``) come from events around the ``timed_atoms``:
    every best-effort atom, and one in `Policy.lc_timing_every` latency-critical launches.
    ``host_issue_us`` is the host time spent issuing atoms (events and launches).
    ``queue_wait_ms`` is the host time a best-effort thread waited for room under the
    queue caps, ``yield_wait_ms`` the time it waited for a busy latency-critical tenant
    (`Policy.yield_host_to_latency_critical`), ``request_hold_ms`` the time it was held
    by latency-critical requests (`Policy.hold_best_effort_in_requests`),
    ``requests`` the number of `Tenant.request` blocks of a latency-critical tenant and
    ``forced_gate_opens`` how often a gate that held a best-effort tenant's queued atoms
    for `Policy.request_hold_max_us` was opened for them.
    """

    kernels: int = 0
    atoms: int = 0
    timed_atoms: int = 0
    stolen_atoms: int = 0
    tpc_ms: float = 0.0
    busy_ms: float = 0.0
    queue_wait_ms: float = 0.0
    request_hold_ms: float = 0.0
    requests: int = 0
    yield_wait_ms: float = 0.0
    host_issue_us: float = 0.0
    forced_gate_opens: int = 0


@dataclasses.dataclass(slots=True)
class _AtomRecord:
    tenant: Tenant
    key: KernelKey
    start_block: int
    count: int
    partition: Any
    stream: Any
    start: Any
    end: Any
    wave_blocks: int
    predicted_us: float | None
    predicted_end_us: float
    stolen: bool


class Tenant:
    """A tenant of a `Scheduler`: enter it with ``with`` to bind the calling thread.

    Inside the block, CuPy's current stream is the tenant's partition stream (so CuPy's
    own ops and cuBLAS run confined to its TPCs) and kernel launches of the thread go
    through the scheduler.
    """

    def __init__(self, scheduler: Scheduler, spec: TenantSpec, tpcs: frozenset[int]):
        self.scheduler = scheduler
        self.spec = spec
        self.tpcs = tpcs
        self.home = scheduler.device.partition(tpcs)
        self.stats = TenantStats()
        self._inflight: collections.deque[_AtomRecord] = collections.deque()
        self._lock = threading.RLock()
        self._last_end: Any = None
        self._last_submit_us = -math.inf
        self._in_launch = False
        self._atomizer = _TenantAtomizer(scheduler, self)
        self._contexts: dict[int, contextlib.ExitStack] = {}
        self._busy: Any = None  # re-recorded after each unsplit launch off its own stream
        self._join: Any = None  # re-recorded on the user's stream before a launch elsewhere
        self._active_tpcs = tpcs  # the TPCs of its latest kernel (fewer when right-sized)
        # the TPCs stealing may take: all but its first `Policy.steal_reserve_tpcs`
        self._stealable = frozenset(sorted(tpcs)[scheduler.policy.steal_reserve_tpcs:])
        self._rightsized: dict[int, Any] = {}  # right-sized partitions of its first n TPCs, by n
        self._stream_handle: int | None = None
        self._request: Any = None  # the partition of an `on_tpcs` block in progress
        self._request_depth = 0  # nesting of `request` blocks (on_tpcs opens one too)
        self._request_handle: int | None = None
        self._remote: Any = None  # a `RequestSignal` when the tenant runs in another process
        self._remote_sized: dict[int, frozenset[int]] = {}  # its first n TPCs, by n (`busy_tpcs`)
        # latency-critical: its device-side gate (`Policy.device_gates`), and whether a launch
        # outside any request closed it (the best-effort side opens it once the tenant is idle)
        self.gate: Gate | None = None
        self._gate_after: Any = None  # the end of its latest launch off its own stream, not joined to it
        self._gate_held = False
        self._gate_lock = threading.Lock()
        # (start, end) events of each `request` block, on its stream, while tracing
        self._request_marks: collections.deque[tuple[Any, Any]] = collections.deque()
        self._request_begin: Any = None
        self._published: Any = None  # a `RequestSignal` its requests are marked in (`publish_requests`)
        self._published_request: Any = None  # the open `RequestSignal.request` block

    @property
    def name(self) -> str:
        """The tenant's name."""
        return self.spec.name

    @property
    def priority(self) -> Priority:
        """The tenant's priority class."""
        return self.spec.priority

    @property
    def stream(self) -> Any:
        """The tenant's own stream: high priority for latency-critical tenants."""
        return self.home.high if self.priority is Priority.LATENCY_CRITICAL else self.home.normal

    def idle(self) -> bool:
        """Whether the tenant has no work on the device and launched nothing recently.

        Its own stream is queried too: CuPy's own kernels and cuBLAS calls are not
        intercepted, and only the stream knows they are still running.
        """
        s = self.scheduler
        if self._remote is not None:  # its process publishes its requests; nothing of it runs here
            return not self._remote.busy(s.policy.lc_idle_grace_us)
        if self._request_depth:  # inside `request` or `on_tpcs`: the user said a request is under way
            return False
        if s.timeline.now_us() - self._last_submit_us < s.policy.lc_idle_grace_us:
            return False
        last = self._last_end
        if last is not None and not s.timeline.done(last):
            return False
        return s.timeline.stream_done(self.stream)

    def busy_tpcs(self) -> frozenset[int]:
        """The TPCs its latest work runs on: fewer than its own while that work is
        right-sized, locally or, for a tenant in another process, as its `RequestSignal`
        says (`RequestSignal.tpcs_in_use`: the first ``n`` of its TPCs)."""
        if self._remote is None:
            return self._active_tpcs
        n = self._remote.tpcs_in_use()
        if 0 < n < len(self.tpcs):
            sized = self._remote_sized.get(n)
            if sized is None:
                sized = self._remote_sized[n] = frozenset(sorted(self.tpcs)[:n])
            return sized
        return self.tpcs

    def publish_requests(self, signal: Any) -> None:
        """Make this latency-critical tenant's work visible to schedulers of other processes
        that follow ``signal`` (a `lithos_sched.request_signal.RequestSignal`, made here with
        ``create``; its path goes to them).

        Its gate becomes the signal's: each `request` block marks the signal and closes and
        opens the gate by writes on the tenant's stream, and a launch outside any request
        closes it too, reopened by this scheduler's `GateKeeper` once the tenant is idle,
        so a best-effort process queues atoms on these TPCs behind it whether or not this
        program marks its requests. Call it before the tenant's first launch.

        Raises
        ------
        TypeError
            For a best-effort tenant.
        RuntimeError
            For a tenant that follows another process's requests itself.
        """
        if self.priority is not Priority.LATENCY_CRITICAL:
            raise TypeError(f"publish_requests is for latency-critical tenants; {self.name!r} is {self.priority.value}")
        if self._remote is not None:
            raise RuntimeError(f"tenant {self.name!r} follows another process's requests")
        gate = self.scheduler._usable_gate(signal.gate) if self.gate is not None else None
        with self._gate_lock:
            if self._gate_held:
                raise RuntimeError(f"tenant {self.name!r} has launched already: publish before its first launch")
            self._published = signal
            self.gate = gate

    def follow_requests(self, signal: Any) -> None:
        """Run this latency-critical tenant in another process: this scheduler learns of
        its requests from ``signal`` (a `lithos_sched.request_signal.RequestSignal` that
        process marks each request in), and its TPCs count as idle, free to steal, only
        while no request is open and none closed within `Policy.lc_idle_grace_us`. A
        request marked right-sized on its first ``n`` TPCs leaves the others stealable.

        Nothing of the tenant runs in this process, so it cannot be entered here. Its
        process launches on its own partition (a green context of the same TPCs), beside
        this one under MPS. Best-effort threads of this process neither hold nor yield
        for its requests: those exist for two threads sharing one interpreter. A process
        that dies inside a request leaves it open, and stealing stops: the failure costs
        best-effort throughput, never the tail of the latency-critical tenant.

        Raises
        ------
        TypeError
            For a best-effort tenant.
        RuntimeError
            If a thread of this process is inside the tenant.
        """
        if self.priority is not Priority.LATENCY_CRITICAL:
            raise TypeError(f"follow_requests is for latency-critical tenants; {self.name!r} is {self.priority.value}")
        if self._contexts:
            raise RuntimeError(f"tenant {self.name!r} is entered by a thread of this process")
        self._remote = signal
        self.gate = self.scheduler._usable_gate(getattr(signal, "gate", None))

    def __enter__(self) -> Tenant:
        s = self.scheduler
        s._check_open()
        if self._remote is not None:
            raise RuntimeError(f"tenant {self.name!r} runs in another process (follow_requests): "
                               "its launches cannot be made here")
        tid = threading.get_ident()
        if tid in self._contexts:
            raise RuntimeError(f"tenant {self.name!r} is already entered by this thread")
        bound = _current.tenant if hasattr(_current, "tenant") else None
        if bound is not None:
            raise RuntimeError(f"this thread is already bound to tenant {bound.name!r}")
        stack = contextlib.ExitStack()
        stack.enter_context(using_atomizer(self._atomizer))  # the first one imports Numba
        if s.policy.freeze_gc:
            gc.freeze()
        if not s.device.simulated:
            stack.enter_context(s.timeline.as_cupy(self.stream))  # type: ignore[attr-defined]
        hold = get_settings().hold_gil
        stack.enter_context(driver_calls.gil_held(
            hold == "all" or (hold == "latency-critical" and self.priority is Priority.LATENCY_CRITICAL)))
        _current.tenant = self
        stack.callback(lambda: setattr(_current, "tenant", None))
        self._contexts[tid] = stack
        return self

    def __exit__(self, *exc: object) -> None:
        self._contexts.pop(threading.get_ident()).close()

    def synchronize(self) -> None:
        """Wait until every atom this tenant issued has finished."""
        with self._lock:
            pending = list(self._inflight)
            busy = self._busy
        s = self.scheduler
        for rec in pending:
            s._wait_event(rec)
        if busy is not None:
            s._wait_busy(self, busy)
        if self._stream_handle is not None:  # unsplit launches ran on its own stream
            s._wait_busy(self, s.timeline.record(self.stream, blocking=s._blocking_waits(self)))
        s._retire(self)

    @contextlib.contextmanager
    def request(self) -> Iterator[Tenant]:
        """Mark one request of this latency-critical tenant, from its first launch to its
        last result (wrap the issue and the wait for it).

        Inside, the tenant counts as busy (no best-effort atom starts on its TPCs) and, on
        the GPU, best-effort threads hold their Python at their next atom until the block
        ends (`Policy.hold_best_effort_in_requests`): two Python threads share one GIL, and
        a best-effort thread issuing atoms slows every launch of the request. Blocks
        nest; the outermost one counts.

        Raises
        ------
        TypeError
            For a best-effort tenant.
        RuntimeError
            From a thread not bound to this tenant.
        """
        if self.priority is not Priority.LATENCY_CRITICAL:
            raise TypeError(f"request is for latency-critical tenants; {self.name!r} is {self.priority.value}")
        if current_tenant() is not self:
            raise RuntimeError(f"request must be used in a thread inside `with` tenant {self.name!r}")
        s = self.scheduler
        s._check_open()
        self._request_depth += 1
        if self._request_depth == 1:
            self.stats.requests += 1
            if self._published is not None:  # the signal's words, for schedulers that read them
                self._published_request = self._published.request(gate=False)
                self._published_request.__enter__()
            if self.gate is not None:
                s.timeline.write_gate(self.stream, self.gate, CLOSED)
            if s._trace_on:
                self._request_begin = s.timeline.record(self.stream)
            s._request_opened()
        try:
            yield self
        finally:
            self._request_depth -= 1
            if self._request_depth == 0:
                self._last_submit_us = s.timeline.now_us()  # the grace runs from the request's end
                if self.gate is not None:
                    self._open_gate_after_work()
                if self._published_request is not None:
                    self._published_request.__exit__(None, None, None)
                    self._published_request = None
                if self._request_begin is not None:
                    with self._lock:
                        self._request_marks.append((self._request_begin, s.timeline.record(self.stream)))
                    self._request_begin = None
                s._request_closed()

    @property
    def gate_held(self) -> bool:
        """Whether a launch outside any request closed the tenant's gate and it is not
        open again yet (`GateKeeper`)."""
        return self._gate_held

    @property
    def held_since_us(self) -> float:
        """Host time of the tenant's latest launch (the idle grace runs from it)."""
        return self._last_submit_us

    def hold_gate(self, stream: Any) -> bool:
        """Close the gate by a write on ``stream`` before a launch outside any request;
        returns whether it did (not inside a request, whose end opens it, nor without a gate)."""
        if self.gate is None or self._request_depth:
            return False
        with self._gate_lock:
            self.scheduler.timeline.write_gate(stream, self.gate, CLOSED)
            self._gate_held = True
        return True

    def release_gate_if_idle(self) -> None:
        """Open a gate held by launches once the tenant is idle (`idle`), by a host store:
        its streams then hold no work that could still write the gate."""
        if not self._gate_held:
            return
        with self._gate_lock:
            if self._gate_held and self.idle():
                self.scheduler.timeline.store_gate(self.gate, OPEN)
                self._gate_held = False

    def release_gate(self) -> None:
        """Open a gate held by launches now, idle or not (the scheduler is closing)."""
        with self._gate_lock:
            if self._gate_held:
                self.scheduler.timeline.store_gate(self.gate, OPEN)
                self._gate_held = False

    def _open_gate_after_work(self) -> None:
        """Open the gate by a write on the tenant's stream after its latest work (a
        request's end, or a graph launched outside one)."""
        tl = self.scheduler.timeline
        with self._gate_lock:
            if self._gate_after is not None:  # its latest launch ran off its own stream
                tl.wait(self.stream, self._gate_after)
                self._gate_after = None
            tl.write_gate(self.stream, self.gate, OPEN)
            self._gate_held = False

    @contextlib.contextmanager
    def on_tpcs(self, n: int) -> Iterator[Any]:
        """Run the work of the block (one request, say) on the first ``n`` of this
        latency-critical tenant's TPCs; the others go to best-effort tenants meanwhile.

        Right-sizing a whole request this way costs one event join at each end of the
        block, where right-sizing each kernel (`Scheduler` with a ``right_sizer``) costs
        two event waits per launch. Work queued on the tenant's stream before the block
        runs first, and work after it waits for the block's. On the GPU, CuPy's current
        stream is the partition's inside the block; the stream is also what the block
        yields. Work must go to that stream to run on the partition: what the block puts
        explicitly on the tenant's own stream stays there, in that stream's order (moving
        only the intercepted launches would split it from CuPy's own ops). ``n`` at or
        above the tenant's TPC count runs on its own stream, unchanged. The block is a
        `request` too: best-effort threads hold their Python until it ends.

        Raises
        ------
        TypeError
            For a best-effort tenant (its launches are atoms the scheduler places).
        RuntimeError
            From a thread not bound to this tenant, or inside another ``on_tpcs`` block.
        ValueError
            For ``n`` < 1.
        """
        if self.priority is not Priority.LATENCY_CRITICAL:
            raise TypeError(f"on_tpcs is for latency-critical tenants; {self.name!r} is {self.priority.value}")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"on_tpcs needs a TPC count >= 1, got {n!r}")
        if current_tenant() is not self:
            raise RuntimeError(f"on_tpcs must be used in a thread inside `with` tenant {self.name!r}")
        if self._request is not None:
            raise RuntimeError(f"tenant {self.name!r} is already inside an on_tpcs block")
        s = self.scheduler
        s._check_open()
        with self.request():
            yield from self._on_first_tpcs(n)

    def _on_first_tpcs(self, n: int) -> Iterator[Any]:
        s = self.scheduler
        if n >= len(self.tpcs):
            yield self.stream
            return
        tl = s.timeline
        part = s._first_tpcs_partition(self, n)
        tl.wait(part.high, tl.record(self.stream))  # after what the tenant queued before
        with contextlib.ExitStack() as stack:
            if not s.device.simulated:
                stack.enter_context(tl.as_cupy(part.high))  # type: ignore[attr-defined]
            self._request, self._request_handle = part, tl.handle(part.high)
            self._active_tpcs = part.tpcs
            try:
                yield part.high
            finally:
                end = tl.record(part.high)
                tl.wait(self.stream, end)  # what the tenant queues next runs after the block
                self._last_end = end
                self._request = self._request_handle = None
                self._active_tpcs = self.tpcs

    def __repr__(self) -> str:
        return f"<Tenant {self.name!r} {self.priority.value} tpcs={len(self.tpcs)}>"


_current = threading.local()


def current_tenant() -> Tenant | None:
    """The tenant the calling thread is bound to, or None."""
    return getattr(_current, "tenant", None)


class _TenantAtomizer(Atomizer):
    """Routes a bound thread's intercepted launches to the scheduler."""

    def __init__(self, scheduler: Scheduler, tenant: Tenant):
        super().__init__(atom_us=scheduler.policy.atom_us, strict=False)
        self.scheduler = scheduler
        self.tenant = tenant

    def submit(self, plan: LaunchPlan, stream: Any) -> None:
        self.scheduler.submit_for(self.tenant, plan, stream)

    def launch_whole(self, launch: WholeLaunch, stream: Any, describe: Callable[[], LaunchShape]) -> bool:
        s = self.scheduler
        if s.timeline.is_capturing(stream):
            launch(stream)  # captured as written: the graph's launch is what gets placed
            return True
        if self.tenant.priority is not Priority.LATENCY_CRITICAL:
            return s._launch_short_best_effort(self.tenant, launch, stream, describe)
        s._launch_latency_critical(self.tenant, launch, stream, describe)
        return True

    def launch_graph(self, graph: Any, stream: Any) -> None:
        self.scheduler._launch_graph(self.tenant, graph, stream)


class Scheduler(Atomizer):
    """Shares one device among tenants.

    Parameters
    ----------
    device
        A ``lithos_sched`` device (GPU or simulated).
    tenants : sequence of TenantSpec
        The tenants; each gets its TPCs (see `assign_tpcs`).
    policy : Policy, optional
    predictor : LatencyPredictor, optional
    right_sizer : RightSizer, optional
        Run each latency-critical kernel on the fewest of its tenant's TPCs that keep it
        within the sizer's slowdown slack (`lithos_sched.rightsizing`); the TPCs it leaves
        go to best-effort tenants. None (the default) runs them on the whole home partition.
    trace : bool
        Keep a record of every atom for `export_trace`.

    Notes
    -----
    The scheduler is also an `Atomizer`: ``set_scheduler(s)`` routes launches of threads
    bound to a tenant through it; launches of unbound threads run as written.
    """

    def __init__(
        self,
        device: Any,
        tenants: Sequence[TenantSpec],
        policy: Policy | None = None,
        predictor: LatencyPredictor | None = None,
        right_sizer: RightSizer | None = None,
        *,
        trace: bool = True,
    ):
        self.policy = policy or Policy()
        super().__init__(atom_us=self.policy.atom_us, strict=False)
        self.device = device
        self.predictor = predictor or LatencyPredictor()
        self.right_sizer = right_sizer
        self.timeline: Timeline = SimTimeline(device) if device.simulated else CupyTimeline()
        specs = specs_from(tenants)
        if not specs:
            raise TenantConfigError("a scheduler needs at least one tenant")
        assignment = assign_tpcs(specs, device.num_tpcs)
        self.tenants: dict[str, Tenant] = {s.name: Tenant(self, s, assignment[s.name]) for s in specs}
        self._lc = [t for t in self.tenants.values() if t.priority is Priority.LATENCY_CRITICAL]
        self._closed = False
        self._closing = False
        self._steal_partitions: dict[frozenset[int], Any] = {}
        self._lc_shared: dict[frozenset[int], bool] = {}
        self._requests_open = 0  # latency-critical tenants inside `Tenant.request`
        self._request_done = threading.Condition()
        self._trace_on = trace
        self._trace = TraceBuffer()
        self._request_windows: list[tuple[str, float, float]] = []  # (tenant, start_us, duration_us)
        self._t0 = self.timeline.record(next(iter(self.tenants.values())).home.normal)
        self._gate_board = self._open_gate_board()
        if self._gate_board is not None:
            for t in self._lc:
                t.gate = self._gate_board.new_gate()
        self._gate_keeper = GateKeeper(self)
        self._stranded_guards: set[str] = set()  # best-effort tenants with a `_guard_stranded` check pending
        self._saved_switch_interval = sys.getswitchinterval()
        if self.policy.freeze_gc:
            gc.collect()
            gc.freeze()
        if self.policy.gil_switch_interval_s is not None and not device.simulated:
            sys.setswitchinterval(self.policy.gil_switch_interval_s)

    # ---- public API --------------------------------------------------------------

    def tenant(self, name: str) -> Tenant:
        """The tenant called ``name``."""
        try:
            return self.tenants[name]
        except KeyError:
            raise KeyError(f"no tenant {name!r}; tenants are {sorted(self.tenants)}") from None

    def launch_whole(self, launch: WholeLaunch, stream: Any, describe: Callable[[], LaunchShape]) -> bool:
        """`Atomizer` entry point: a latency-critical tenant's launch runs unsplit at once;
        a launch of a thread bound to no tenant runs as written."""
        tenant = current_tenant()
        if tenant is None or tenant.scheduler is not self:
            launch(stream)
            return True
        return tenant._atomizer.launch_whole(launch, stream, describe)

    def launch_graph(self, graph: Any, stream: Any) -> None:
        """`Atomizer` entry point: a graph launched by a thread bound to a tenant runs
        where the tenant's work runs (`_launch_graph`); otherwise as written."""
        tenant = current_tenant()
        if tenant is None or tenant.scheduler is not self:
            super().launch_graph(graph, stream)
            return
        tenant._atomizer.launch_graph(graph, stream)

    def submit(self, plan: LaunchPlan, stream: Any) -> None:  # type: ignore[override]
        """`Atomizer` entry point: route to the calling thread's tenant, if any."""
        tenant = current_tenant()
        if tenant is None or tenant.scheduler is not self:
            plan.issue_all(stream)
            return
        self.submit_for(tenant, plan, stream)

    def submit_for(self, tenant: Tenant, plan: LaunchPlan, stream: Any = None) -> None:
        """Issue ``plan`` for ``tenant``; returns once every atom is issued.

        Parameters
        ----------
        tenant : Tenant
        plan : LaunchPlan
        stream
            The stream the user launched on; None or the legacy default stream mean the
            tenant's own stream (the default stream would escape the partition).
        """
        self._check_open()
        user = stream
        if user is None or self.timeline.handle(user) == 0:
            user = tenant.stream
        with tenant._lock:
            if tenant._in_launch:
                # Only possible from a callback run while this tenant's own launch waits:
                # issuing now would interleave two launches of one tenant.
                raise RuntimeError(f"tenant {tenant.name!r} submitted a launch from inside its own launch")
            tenant._in_launch = True
            try:
                tenant.stats.kernels += 1
                if tenant.priority is Priority.LATENCY_CRITICAL:
                    self._run_latency_critical(tenant, plan, user)
                else:
                    self._run_best_effort(tenant, plan, user)
            finally:
                tenant._in_launch = False

    def synchronize(self) -> None:
        """Wait until every tenant's issued work has finished."""
        for t in self.tenants.values():
            t.synchronize()

    def close(self) -> None:
        """Stop accepting launches, let every issued atom finish, release the partitions.

        A best-effort tenant in the middle of a launch issues its remaining blocks at once
        instead of waiting for room, so no submitted work is lost.
        """
        if self._closed:
            return
        self._closing = True
        with self._request_done:
            self._request_done.notify_all()  # held best-effort threads issue their rest now
        for t in self.tenants.values():
            with t._lock:  # waits for a tenant thread that is mid-launch
                pass
        self.synchronize()
        self._gate_keeper.stop()
        self._closed = True
        if self._gate_board is not None:
            self._gate_board.close()
        sys.setswitchinterval(self._saved_switch_interval)
        if self.policy.freeze_gc:
            gc.unfreeze()

    def __enter__(self) -> Scheduler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stats(self) -> dict[str, Any]:
        """Per-tenant accounting and the predictor's error report.

        Besides the `TenantStats` fields, each tenant has ``host_us_per_atom`` and
        ``tpc_ms_estimated``: its measured TPC-time scaled from the timed atoms to all
        of them (the same as ``tpc_ms`` for best-effort tenants, whose atoms are all timed).
        """
        for t in self.tenants.values():
            self._retire(t)
        return {
            "tenants": {
                t.name: {"priority": t.priority.value, "tpcs": len(t.tpcs), **dataclasses.asdict(t.stats),
                         "host_us_per_atom": t.stats.host_issue_us / max(1, t.stats.atoms),
                         "tpc_ms_estimated": t.stats.tpc_ms * t.stats.atoms / max(1, t.stats.timed_atoms)}
                for t in self.tenants.values()
            },
            "predictor": self.predictor.error_report(),
        }

    def atoms(self) -> list[TraceRow]:
        """Every atom retired so far (those finished are retired first), in retiring order."""
        for t in self.tenants.values():
            self._retire(t)
        return list(self._trace.rows())

    def request_windows(self) -> list[tuple[str, float, float]]:
        """``(tenant, start_us, duration_us)`` of every finished `Tenant.request` block, on
        the clock of `atoms` (events on the tenant's stream at the block's edges: from
        when its stream reached its work to when that work was done); kept while tracing."""
        for t in self.tenants.values():
            self._retire(t)
        return list(self._request_windows)

    def export_trace(self, path: str | Path) -> Path:
        """Write a Chrome/Perfetto trace of every retired atom (one process per partition,
        one thread per stream) and of the requests (one thread per tenant). Returns the path."""
        events = [
            {"name": r.kernel, "ph": "X", "ts": r.start_us, "dur": r.duration_us, "pid": f"TPCs {_ranges(r.tpcs)}",
             "tid": f"{r.tenant} stream {r.stream:#x}",
             "args": {"tenant": r.tenant, "blocks": [r.start_block, r.start_block + r.blocks],
                      "predicted_us": r.predicted_us, "stolen": r.stolen}}
            for r in self.atoms()
        ]
        events += [{"name": "request", "ph": "X", "ts": start, "dur": dur, "pid": "requests", "tid": name}
                   for name, start, dur in self.request_windows()]
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"traceEvents": events, "displayTimeUnit": "ms"}))
        return out

    # ---- device-side gates ---------------------------------------------------------

    def _open_gate_board(self) -> GateBoard | None:
        """The gates of this scheduler's latency-critical tenants (`Policy.device_gates`),
        or None where they are off or the device cannot use them."""
        if not self.policy.device_gates or not self._lc:
            return None
        board = GateBoard()
        if not self._prepare_gates(board.memory):
            board.close()
            return None
        return board

    def _usable_gate(self, gate: Gate | None) -> Gate | None:
        """``gate`` (a followed tenant's, from its `RequestSignal`) if gates are on and the
        device can use it, else None."""
        if gate is None or not self.policy.device_gates or not self._prepare_gates(gate.memory):
            return None
        return gate

    def _prepare_gates(self, memory: Any) -> bool:
        """Whether the device can wait on and write gates in ``memory``; if not, one
        warning names the reason (best-effort atoms then fall back to the host's hold)."""
        try:
            self.timeline.prepare_gates(memory)
        except Exception as exc:
            warnings.warn(f"lithos: device-side gates are unavailable ({type(exc).__name__}: {exc}); best-effort "
                          "atoms on stolen TPCs fall back to the host's hold", RuntimeWarning, stacklevel=4)
            return False
        return True

    def _gated(self) -> bool:
        """Whether best-effort atoms on stolen TPCs wait behind device-side gates: every
        latency-critical tenant has one, and no right-sizer gives TPCs away kernel by
        kernel (a gate covers all of its tenant's TPCs)."""
        return bool(self._lc) and self.right_sizer is None and all(t.gate is not None for t in self._lc)

    def _close_gate_for_launch(self, tenant: Tenant, stream: Any) -> None:
        """Before a latency-critical launch outside any request, close the tenant's gate
        by a write on the launch's stream; the `GateKeeper` opens it once the tenant is
        idle (`Tenant.idle`: the idle grace covers the host's gaps between kernels)."""
        if tenant.hold_gate(stream):
            self._gate_keeper.arm()

    # ---- dispatch ------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed or self._closing:
            raise SchedulerClosedError("the scheduler is closed")

    def _request_opened(self) -> None:
        with self._request_done:
            self._requests_open += 1

    def _request_closed(self) -> None:
        with self._request_done:
            self._requests_open -= 1
            if not self._requests_open:
                self._request_done.notify_all()

    def _blocking_waits(self, tenant: Tenant) -> bool:
        """Whether ``tenant``'s threads wait for its events asleep (`Policy.blocking_waits`)."""
        mode = self.policy.blocking_waits
        return mode == "all" or (mode == "best-effort" and tenant.priority is Priority.BEST_EFFORT)

    def _holds_for_requests(self) -> bool:
        """Whether a best-effort thread would be held now (`_hold_for_requests`)."""
        return bool(self._requests_open) and not self.device.simulated and self.policy.hold_best_effort_in_requests

    def _hold_for_requests(self, tenant: Tenant) -> bool:
        """On the GPU, hold the best-effort ``tenant``'s thread (GIL released) while a
        latency-critical request is open, at most `Policy.request_hold_max_us`; returns
        False once that bound ran out (the caller stops asking for this launch)."""
        if not self._holds_for_requests():
            return True
        t0 = time.perf_counter()
        with self._request_done:
            released = self._request_done.wait_for(lambda: not self._requests_open or self._closing,
                                                   timeout=self.policy.request_hold_max_us / 1e6)
        tenant.stats.request_hold_ms += (time.perf_counter() - t0) * 1e3
        return released

    def _issue(self, tenant: Tenant, plan: LaunchPlan, start: int, count: int, partition: Any, stream: Any,
               predicted: float | None, stolen: bool) -> _AtomRecord:
        tl = self.timeline
        t_host = time.perf_counter()
        wave = self._wave_blocks(plan, partition)
        begin = tl.record(stream)
        done = 0
        while done < count:  # a 1-D grid holds at most 2**31 - 1 blocks
            n = min(count - done, _MAX_GRID_X)
            plan.issue_range(start + done, n, stream)
            done += n
        end = tl.record(stream, blocking=self._blocking_waits(tenant))
        # An atom fills its partition: whichever of the partition's streams it is on, it
        # runs after the tenant's work queued there (the other stream only backfills the
        # last wave's SMs).
        begin_us = max([tl.now_us(), *(r.predicted_end_us for r in tenant._inflight if r.partition is partition)])
        rec = _AtomRecord(tenant, plan.key, start, count, partition, stream, begin, end, wave, predicted,
                          begin_us + (predicted if predicted is not None else self.policy.atom_us), stolen)
        tenant._inflight.append(rec)
        tenant.stats.host_issue_us += (time.perf_counter() - t_host) * 1e6
        tenant.stats.atoms += 1
        tenant.stats.timed_atoms += 1
        tenant.stats.stolen_atoms += int(stolen)
        return rec

    def _launch_latency_critical(self, tenant: Tenant, launch: WholeLaunch, user: Any,
                                 describe: Callable[[], LaunchShape]) -> None:
        """Issue one latency-critical launch unsplit on a high-priority stream.

        The hot path of a latency-critical request: one launch, one re-recorded event that
        tells best-effort tenants whether this one is idle, and, one launch in
        `Policy.lc_timing_every`, timing events for the predictor and the accounting. With
        a right-sizer the kernel runs on the partition of the TPCs it needs, ordered with
        the user's stream by two event waits.
        """
        self._check_open()
        tl = self.timeline
        home = tenant.home
        if tenant._stream_handle is None:
            tenant._stream_handle = tl.handle(home.high)
            tenant._busy = tl.marker()  # type: ignore[attr-defined]
            tenant._join = tl.marker()  # type: ignore[attr-defined]
        user_handle = tl.handle(user)
        base, base_handle = home, tenant._stream_handle
        if tenant._request is not None and user_handle in (0, tenant._request_handle):
            # inside `Tenant.on_tpcs`: the block's stream, already ordered with the tenant's
            base, base_handle = tenant._request, tenant._request_handle
            user, user_handle = base.high, base_handle
        elif user_handle == 0 or user_handle == tenant._stream_handle:
            user, user_handle = home.high, tenant._stream_handle  # the tenant's own stream
        timed = False
        with tenant._lock:
            if tenant._in_launch:
                raise RuntimeError(f"tenant {tenant.name!r} submitted a launch from inside its own launch")
            tenant._in_launch = True
            try:
                t_host = time.perf_counter()
                stats = tenant.stats
                stats.kernels += 1
                stats.atoms += 1
                tenant._last_submit_us = tl.now_us()
                timed = (stats.kernels - 1) % self.policy.lc_timing_every == 0
                sized = self.right_sizer is not None and base is home  # a block chose its partition
                shape = describe() if timed or sized else None
                part = base if shape is None or not sized else self._latency_critical_partition(
                    tenant, shape.key, shape.total_blocks, shape.wave_blocks)
                stream = part.high
                own = part is base and user_handle == base_handle
                if not own:
                    tl.record_into(tenant._join, user)  # type: ignore[attr-defined]
                    tl.wait(stream, tenant._join)
                if timed:
                    assert shape is not None
                    wave = self._partition_wave(shape.wave_blocks, part)
                    predicted = self.predictor.predict_us(shape.key, part.num_tpcs, shape.total_blocks, wave)
                    begin = tl.record(stream)
                self._close_gate_for_launch(tenant, stream)
                launch(stream)
                if timed:
                    end = tl.record(stream, blocking=self._blocking_waits(tenant))
                    now = tl.now_us()
                    tenant._inflight.append(_AtomRecord(
                        tenant, shape.key, 0, shape.total_blocks, part, stream, begin, end, wave, predicted,
                        now + (predicted or 0.0), False))
                    stats.timed_atoms += 1
                if not own:
                    # Its own stream tells `Tenant.idle` when an own launch is done; a launch
                    # elsewhere is marked, and the user's stream waits for it.
                    tl.record_into(tenant._busy, stream)  # type: ignore[attr-defined]
                    tenant._last_end = tenant._busy
                    tl.wait(user, tenant._busy)
                    if part is not home:
                        tenant._gate_after = tenant._busy
                tenant._last_submit_us = tl.now_us()
                stats.host_issue_us += (time.perf_counter() - t_host) * 1e6
            finally:
                tenant._in_launch = False
        if timed and len(tenant._inflight) >= _LC_RETIRE_BATCH:
            self._retire(tenant)  # rarely: best-effort threads retire these between atoms

    def _launch_graph(self, tenant: Tenant, graph: Any, user: Any) -> None:
        """Launch a CUDA graph of ``tenant`` on its own TPCs, unsplit, ordered with the
        user's stream by events where it is another.

        A latency-critical graph is one request: outside a `Tenant.request` its gate is
        closed before it and opened after it by writes on its stream, so stolen atoms stop
        for it and resume when it ends with no host involved. A best-effort graph cannot
        be split into atoms or preempted: it runs whole on the tenant's own TPCs, never on
        stolen ones (one warning per scheduler)."""
        self._check_open()
        tl = self.timeline
        lc = tenant.priority is Priority.LATENCY_CRITICAL
        target = tenant.stream if lc else tenant.home.normal
        if tenant._request is not None and lc:
            target = tenant._request.high  # inside `on_tpcs`: the block's partition
        if not lc:
            self.warn_whole("CUDA graph", "a best-effort graph runs whole on its tenant's own TPCs")
        user_stream = target if user is None or tl.handle(user) in (0, tl.handle(target)) else user
        own = user_stream is target
        with tenant._lock:
            tenant.stats.kernels += 1
            tenant._last_submit_us = tl.now_us()
            if not own:
                tl.wait(target, tl.record(user_stream))
            request = lc and not tenant._request_depth  # the graph is a request of its own
            if request:
                tenant.stats.requests += 1
                if tenant.gate is not None:
                    tl.write_gate(target, tenant.gate, CLOSED)
            begin = tl.record(target) if request and self._trace_on else None
            graph.launch(stream=tl.as_cupy(target))  # type: ignore[attr-defined]
            end = tl.record(target)
            if request and tenant.gate is not None:
                with tenant._gate_lock:  # what launches held before the graph is done once it is
                    tl.write_gate(target, tenant.gate, OPEN)
                    tenant._gate_held = False
            if begin is not None:
                tenant._request_marks.append((begin, end))
            if not own:
                tl.wait(user_stream, end)
            tenant._last_end = end
            tenant._last_submit_us = tl.now_us()

    def _launch_short_best_effort(self, tenant: Tenant, launch: WholeLaunch, user: Any,
                                  describe: Callable[[], LaunchShape]) -> bool:
        """Issue a best-effort launch unsplit when it is predicted to be one atom anyway
        (`Policy.short_best_effort_whole`); returns False, issuing nothing, otherwise (the
        front end then builds its plan)."""
        if not self.policy.short_best_effort_whole:
            return False
        shape = describe()
        home = tenant.home
        predicted = self.predictor.predict_us(shape.key, home.num_tpcs, shape.total_blocks,
                                              self._partition_wave(shape.wave_blocks, home))
        if predicted is None or predicted > self.policy.atom_us:
            return False
        plan = LaunchPlan.whole(shape.key, shape.total_blocks, launch, _SHORT_REASON, wave_blocks=shape.wave_blocks)
        self.submit_for(tenant, plan, user)
        return True

    def _run_latency_critical(self, tenant: Tenant, plan: LaunchPlan, user: Any) -> None:
        tl = self.timeline
        part = self._latency_critical_partition(tenant, plan.key, plan.total_blocks, plan.wave_blocks)
        stream = part.high
        tenant._last_submit_us = tl.now_us()
        own = tl.handle(user) == tl.handle(stream)
        if not own:
            tl.wait(stream, tl.record(user))
        predicted = self.predictor.predict_us(plan.key, part.num_tpcs, plan.total_blocks,
                                              self._wave_blocks(plan, part))
        self._close_gate_for_launch(tenant, stream)
        rec = self._issue(tenant, plan, 0, plan.total_blocks, part, stream, predicted, False)
        plan.complete()
        tenant._last_end = rec.end
        tenant._last_submit_us = tl.now_us()
        if not own:
            tl.wait(user, rec.end)
        if part is not tenant.home:
            tenant._gate_after = rec.end
        self._retire(tenant)

    def _latency_critical_partition(self, tenant: Tenant, key: KernelKey, total_blocks: int,
                                    device_wave_blocks: int) -> Any:
        """Where a latency-critical kernel runs: its tenant's home partition or, with a
        right-sizer, the partition of the first TPCs of the home that the kernel needs."""
        home = tenant.home
        sizer = self.right_sizer
        if sizer is None:
            return home
        per_tpc = device_wave_blocks / self.device.num_tpcs if device_wave_blocks > 0 else None
        n = sizer.tpcs_for(key, home.num_tpcs, total_blocks, per_tpc)
        part = self._first_tpcs_partition(tenant, n)
        tenant._active_tpcs = part.tpcs
        return part

    def _first_tpcs_partition(self, tenant: Tenant, n: int) -> Any:
        """The partition of ``tenant``'s first ``n`` TPCs (its home for ``n`` >= all)."""
        if n >= tenant.home.num_tpcs:
            return tenant.home
        part = tenant._rightsized.get(n)  # by size: no TPC set is built per launch
        if part is None or part.closed:
            part = tenant._rightsized[n] = self.device.partition(sorted(tenant.tpcs)[:n])
        return part

    def _run_best_effort(self, tenant: Tenant, plan: LaunchPlan, user: Any) -> None:
        tl = self.timeline
        user_handle = tl.handle(user)
        # Atoms start after what the tenant queued before the launch. A launch run whole is
        # one atom: that order is recorded only if it lands on another stream than the user's.
        before = tl.record(user) if plan.atomized else None
        joined: set[int] = set()  # handles of the streams ordered after ``before``
        last_on: dict[int, Any] = {}  # stream handle -> end event of its last atom
        issued = 0  # blocks issued so far, in order

        def issue(count: int, partition: Any, stream: Any, stolen: bool, gates: Sequence[Gate] = ()) -> None:
            nonlocal before, issued
            h = tl.handle(stream)
            if h != user_handle and h not in joined:
                if before is None:
                    before = tl.record(user)
                tl.wait(stream, before)
                joined.add(h)
            for gate in gates:
                tl.wait_gate(stream, gate)
            predicted = self.predictor.predict_us(plan.key, partition.num_tpcs, count,
                                                  self._wave_blocks(plan, partition))
            last_on[h] = self._issue(tenant, plan, issued, count, partition, stream, predicted, stolen).end
            issued += count

        try:
            if self._gated():
                self._place_gated(tenant, plan, issue, lambda: plan.total_blocks - issued)
            else:
                self._place_host(tenant, plan, issue, lambda: plan.total_blocks - issued)
        finally:
            if issued < plan.total_blocks:
                # Interrupted (an exception while waiting, or close()): issue the rest now
                # on the tenant's own partition so no submitted block is lost.
                issue(plan.total_blocks - issued, tenant.home, tenant.home.normal, False)
            plan.complete()
            for h, end in last_on.items():
                if h != user_handle:
                    tl.wait(user, end)

    def _place_host(self, tenant: Tenant, plan: LaunchPlan, issue: Callable[..., None],
                    remaining: Callable[[], int]) -> None:
        """Issue a launch's atoms one at a time, each where the host decides (no gates):
        on stolen TPCs only while their latency-critical tenants are idle, each after the
        queue on its partition is predicted to drain within the cap."""
        hold = True
        while remaining() and not self._closing:
            hold = hold and self._hold_for_requests(tenant)
            self._yield_to_latency_critical(tenant)
            partition, stolen = self._best_effort_target(tenant, plan)
            waited = self._wait_for_room(tenant, partition)
            if waited and hold and self._holds_for_requests():
                continue  # a request opened while we waited: hold first, then choose again
            if waited and self._best_effort_target(tenant, plan)[0] is not partition:
                continue  # a latency-critical tenant needs its TPCs again, or left them, since we chose
            stream = self._emptier_stream(tenant, partition)
            issue(self._atom_blocks(plan, partition, remaining()), partition, stream, stolen)

    def _place_gated(self, tenant: Tenant, plan: LaunchPlan, issue: Callable[..., None],
                     remaining: Callable[[], int]) -> None:
        """Issue a launch's atoms into two deep queues: at home, and on the stolen TPCs
        behind the latency-critical tenants' gates (`Policy.device_gates`).

        Each atom goes to the queue predicted to drain first among those with room (while
        the gates are open, no larger than its partition's share of the blocks left): home
        while at most `Policy.home_queue_cap_us` is queued there, stolen while the gates are
        open and at most `Policy.steal_queue_us` is (while one is closed, the rest of the
        launch goes home: atoms queued behind it would hold the launch's end until it
        opens). With both full, the thread waits, GIL released, for the first queue to
        drain to its cap, or for a closed gate to open.
        """
        stolen_part = self._gated_steal_partition(tenant, plan)
        gates = [t.gate for t in self._lc] if stolen_part is not None else []
        targets = [tenant.home] if stolen_part is None else [tenant.home, stolen_part]
        hold = True
        while remaining() and not self._closing:
            self._retire(tenant)
            self._guard_stranded(tenant, gates)
            hold = hold and self._hold_for_requests(tenant)
            part = self._gated_room(tenant, targets, stolen_part, gates)
            if part is None:
                self._wait_gated(tenant, targets, stolen_part, gates)
                continue
            stolen = part is stolen_part
            count = self._atom_blocks(plan, part, remaining())
            if plan.atomized and stolen_part is not None and all(g.is_open() for g in gates):
                # both queues run the launch: neither takes more than its TPCs' share of what is left
                share = part.num_tpcs / (tenant.home.num_tpcs + stolen_part.num_tpcs)
                count = min(count, max(1, math.ceil(remaining() * share)))
            issue(count, part, self._emptier_stream(tenant, part), stolen, gates if stolen else ())
        self._guard_stranded(tenant, gates)

    def _guard_stranded(self, tenant: Tenant, gates: Sequence[Gate]) -> None:
        """While ``tenant`` has atoms queued on stolen TPCs, have the keeper look at them
        every `Policy.request_hold_max_us`: an atom that waited behind a closed gate
        through a whole such period gets the gate forced for it (`Gate.force`) until
        every atom queued then has started (see `GateKeeper`)."""
        if tenant.name in self._stranded_guards or not any(r.stolen for r in tenant._inflight):
            return
        self._stranded_guards.add(tenant.name)
        tl = self.timeline
        period_us = self.policy.request_hold_max_us

        def check(seen_waiting: frozenset[int]) -> None:
            with tenant._lock:
                stolen = [r for r in tenant._inflight if r.stolen]
                waiting = frozenset(id(r.start) for r in stolen if not tl.done(r.start))
            forced = [g for g in gates if g.forced]
            if forced and not waiting:
                for gate in forced:
                    tl.force_gate(gate, False)
            elif waiting & seen_waiting and not forced:  # waited a whole period
                for gate in gates:
                    tl.force_gate(gate, True)
                tenant.stats.forced_gate_opens += 1
            if stolen or forced:
                again_us = self.policy.steal_poll_us if forced or (waiting & seen_waiting) else period_us
                self._gate_keeper.at(tl.now_us() + max(again_us, 1.0), lambda: check(waiting))
            else:
                self._stranded_guards.discard(tenant.name)

        self._gate_keeper.at(tl.now_us() + period_us, lambda: check(frozenset()))

    def _gated_steal_partition(self, tenant: Tenant, plan: LaunchPlan) -> Any:
        """The partition of every latency-critical tenant's stealable TPCs, or None where
        ``plan`` may not steal (stealing off, or its blocks too long to give TPCs back
        quickly: `Policy.steal_max_block_us`)."""
        if not self.policy.stealing:
            return None
        tpcs = frozenset().union(*(t._stealable for t in self._lc))
        if not tpcs:
            return None
        wave_us = self.predictor.wave_us(plan.key, tenant.home.num_tpcs)
        if wave_us is not None and wave_us > self.policy.steal_max_block_us:
            return None
        part = self._steal_partitions.get(tpcs)
        if part is None or part.closed:
            part = self._steal_partitions[tpcs] = self.device.partition(tpcs)
        return part

    def _gated_room(self, tenant: Tenant, targets: Sequence[Any], stolen_part: Any,
                    gates: Sequence[Gate]) -> Any:
        """Of ``targets``, the partition with room in its queue whose work is predicted to
        drain first (see `_place_gated`), or None when every queue is full."""
        now = self.timeline.now_us()
        best, best_drain = None, math.inf
        for part in targets:
            queued = [r for r in tenant._inflight if r.partition is part]
            drain = max([now, *(r.predicted_end_us for r in queued)])
            if part is stolen_part:
                # a tenant in this process may run work the scheduler never saw (CuPy's own
                # kernels, cuBLAS) on its stream: no gate closes for that, its stream tells
                room = (all(g.is_open() for g in gates) and drain - now <= self.policy.steal_queue_us
                        and all(t._remote is not None or t.idle() for t in self._lc))
            else:
                room = drain - now <= self.policy.home_queue_cap_us
            if room and drain < best_drain:
                best, best_drain = part, drain
        return best

    def _wait_gated(self, tenant: Tenant, targets: Sequence[Any], stolen_part: Any, gates: Sequence[Gate]) -> None:
        """Wait, GIL released, until a queue of `_place_gated` has room: for the atom of
        each queue after whose end its cap remains, whichever is predicted first. While a
        gate is closed the wait also ends when it opens (read every `Policy.steal_poll_us`),
        so the stolen queue fills again at once."""
        now = self.timeline.now_us()
        first = None
        for part in targets:
            cap = self.policy.steal_queue_us if part is stolen_part else self.policy.home_queue_cap_us
            low = self._low_point(self._queued(tenant, part), cap)
            if low is not None and (first is None or low.predicted_end_us < first.predicted_end_us):
                first = low
        if first is None:
            return  # a queue drained while we looked
        closed = [g for g in gates if not g.is_open()]
        stop = (lambda: any(g.is_open() for g in closed)) if closed and self.policy.steal_poll_us else None
        self._wait_event(first, stop)
        tenant.stats.queue_wait_ms += (self.timeline.now_us() - now) / 1000.0

    def _yield_to_latency_critical(self, tenant: Tenant) -> None:
        """On the GPU, while a latency-critical tenant is busy, let the best-effort
        ``tenant`` issue only when at most `Policy.yield_queue_us` of its work remains
        queued.

        Each driver call of the latency-critical thread releases the GIL and must take it
        back; a best-effort thread running Python between its own driver calls wins many
        of those hand-offs, and on the lent machine a launch then took up to 8 ms (measured).
        So while the latency-critical tenant is busy (its kernels run, or it launched
        within `Policy.lc_idle_grace_us`: its host thread is between the kernels of one
        request), the best-effort thread waits, GIL released, on its own queued atom after
        which at most `Policy.yield_queue_us` of work remains (by default its last one),
        then issues again: it takes the GIL about once per drained queue, and its TPCs
        idle at most for the host time of one issue. Virtual time has no GIL, so the
        simulated device skips this.
        """
        for t in self._lc:
            self._retire(t)  # the latency-critical thread leaves this to us, off its hot path
        if self.device.simulated or not self.policy.yield_host_to_latency_critical:
            return
        while any(not t.idle() for t in self._lc if t._remote is None):
            self._retire(tenant)
            low = self._low_point(self._queued(tenant), self.policy.yield_queue_us)
            if low is None:
                return
            t0 = self.timeline.now_us()
            self._wait_event(low)
            tenant.stats.yield_wait_ms += (self.timeline.now_us() - t0) / 1000.0

    @staticmethod
    def _queued(tenant: Tenant, partition: Any = None) -> list[_AtomRecord]:
        """The atoms ``tenant`` has in flight (on ``partition``, or anywhere), by predicted end."""
        return sorted((r for r in tenant._inflight if partition is None or r.partition is partition),
                      key=lambda r: r.predicted_end_us)

    def _low_point(self, queued: list[_AtomRecord], cap_us: float) -> _AtomRecord | None:
        """Of ``queued`` (`_queued`), the atom after whose end at most ``cap_us`` of that
        work remains, by the predicted ends; None if that little is queued already."""
        if not queued:
            return None
        drain_at = queued[-1].predicted_end_us
        if drain_at - self.timeline.now_us() <= cap_us:
            return None
        return next(r for r in queued if drain_at - r.predicted_end_us <= cap_us)

    def _emptier_stream(self, tenant: Tenant, partition: Any) -> Any:
        """Of the partition's two normal streams, the one whose queued work drains first."""
        ends = {id(s): -math.inf for s in (partition.normal, partition.normal_b)}
        for r in tenant._inflight:
            if id(r.stream) in ends:
                ends[id(r.stream)] = max(ends[id(r.stream)], r.predicted_end_us)
        return partition.normal if ends[id(partition.normal)] <= ends[id(partition.normal_b)] else partition.normal_b

    def _best_effort_target(self, tenant: Tenant, plan: LaunchPlan) -> tuple[Any, bool]:
        policy = self.policy
        if not policy.stealing or not self._lc:
            return tenant.home, False
        # the stealable TPCs of an idle latency-critical tenant, and those a busy one leaves
        # while its work is right-sized
        free = [t._stealable if t.idle() else t._stealable - t.busy_tpcs() for t in self._lc]
        if not any(free):
            return tenant.home, False
        wave_us = self.predictor.wave_us(plan.key, tenant.home.num_tpcs)
        if wave_us is not None and wave_us > policy.steal_max_block_us:
            return tenant.home, False
        tpcs = frozenset(tenant.tpcs).union(*free)
        part = self._steal_partitions.get(tpcs)
        if part is None or part.closed:
            part = self._steal_partitions[tpcs] = self.device.partition(tpcs)
        return part, True

    def _shared_with_lc(self, partition: Any) -> bool:
        """Whether ``partition`` has TPCs of a latency-critical tenant (memoized by TPC
        set: tenants' TPCs never change, and this is asked twice per best-effort atom)."""
        shared = self._lc_shared.get(partition.tpcs)
        if shared is None:
            shared = self._lc_shared[partition.tpcs] = any(partition.tpcs & t.tpcs for t in self._lc)
        return shared

    def _wave_blocks(self, plan: LaunchPlan, partition: Any) -> int:
        return self._partition_wave(plan.wave_blocks, partition)

    def _partition_wave(self, device_wave_blocks: int, partition: Any) -> int:
        """Blocks of one wave on ``partition``, from those of one wave on the whole device."""
        per_sm = max(1, device_wave_blocks // max(1, self.device.num_sms))
        return per_sm * partition.num_sms

    def _atom_blocks(self, plan: LaunchPlan, partition: Any, remaining: int) -> int:
        if not plan.atomized or not self.policy.atomize_best_effort:
            return remaining
        wave = self._wave_blocks(plan, partition)
        wave_us = self.predictor.wave_us(plan.key, partition.num_tpcs)
        target_us = self.policy.atom_us if self._shared_with_lc(partition) else self.policy.home_atom_us
        waves = 1 if wave_us is None else max(1, math.floor(target_us / wave_us))
        return min(remaining, waves * wave)

    def _wait_for_room(self, tenant: Tenant, partition: Any) -> bool:
        """Block until the tenant's queued work on ``partition`` is predicted to drain
        within the cap, or, on its own partition, until a busy latency-critical tenant of
        another process frees its TPCs (`Policy.steal_poll_us`); returns whether it had to
        wait.

        Where `Policy.issue_ahead_of_drain` says, an atom longer than the cap is waited
        for until the cap before its predicted end, not until it ends, once it is the only
        one left: the next atom is then queued behind it instead of after the host's time
        to issue, and at most two atoms are ever in flight on the partition.
        """
        tl = self.timeline
        shared = self._shared_with_lc(partition)
        cap = self.policy.queue_cap_us if shared else self.policy.home_queue_cap_us
        remote = [] if shared or not self.policy.stealing or not self.policy.steal_poll_us \
            else [t for t in self._lc if t._remote is not None and not self._frees_tpcs(t)]
        mode = self.policy.issue_ahead_of_drain
        ahead = mode == "all" or (mode == "home" and not shared)
        waited = False
        while not self._closing:
            self._retire(tenant)
            queued = self._queued(tenant, partition)
            target = self._low_point(queued, cap)
            if target is None:
                return waited
            deadline_us = None
            if ahead and target is queued[-1]:
                if len(queued) > 1:
                    target = queued[-2]  # then the last is alone, and waited for ahead of its end
                else:
                    deadline_us = target.predicted_end_us - cap
            t0 = tl.now_us()
            completed = self._wait_event(target, (lambda: any(self._frees_tpcs(t) for t in remote)) if remote else None,
                                         deadline_us)
            waited = True
            tenant.stats.queue_wait_ms += (tl.now_us() - t0) / 1000.0
            if not completed:
                return waited  # TPCs to steal, or the queue is predicted to drain within the cap
            # re-anchor the predicted ends of what is still queued at the real completion
            now = tl.now_us()
            later = sorted((r for r in tenant._inflight
                            if r.partition is partition and r.predicted_end_us > target.predicted_end_us),
                           key=lambda r: r.predicted_end_us)
            for r in later:
                r.predicted_end_us = now
                now += r.predicted_us if r.predicted_us is not None else self.policy.atom_us
        return waited

    @staticmethod
    def _frees_tpcs(tenant: Tenant) -> bool:
        """Whether the latency-critical ``tenant`` leaves TPCs to steal now: it is idle, or
        its work is right-sized to fewer than its stealable TPCs."""
        return tenant.idle() or bool(tenant._stealable - tenant.busy_tpcs())

    def _wait_event(self, rec: _AtomRecord, stop: Callable[[], bool] | None = None,
                    deadline_us: float | None = None) -> bool:
        return self._wait(rec.end, f"kernel {rec.key.name!r} of tenant {rec.tenant.name!r} failed on the device "
                                   f"(atom blocks {rec.start_block}..{rec.start_block + rec.count - 1})",
                          stop, deadline_us)

    def _wait_busy(self, tenant: Tenant, event: Any) -> None:
        self._wait(event, f"a kernel of tenant {tenant.name!r} failed on the device")

    def _wait(self, event: Any, failure: str, stop: Callable[[], bool] | None = None,
              deadline_us: float | None = None) -> bool:
        """Wait for ``event``, or until ``stop()`` (asked every `Policy.steal_poll_us`) or
        host time ``deadline_us``; returns whether ``event`` completed. The driver's
        sticky error after a fault becomes a `KernelFaultError` that says whose work it
        was (``failure``).

        Without ``stop``, a wait with a deadline is one sleep: polling the event would take
        the GIL again and again, which a latency-critical thread of the same process may be
        waiting for; an atom that ends before the deadline leaves its TPCs idle for at most
        the predictor's error."""
        poll_us = self.policy.steal_poll_us if stop is not None else 0.0
        try:
            return self.timeline.wait_until(event, stop, poll_us, deadline_us)
        except Exception as exc:
            if type(exc).__name__ not in _CUDA_ERRORS:
                raise
            raise KernelFaultError(f"{failure}: {exc}") from exc

    def _retire(self, tenant: Tenant) -> None:
        """Account, learn from and trace every finished atom of ``tenant`` (and the
        windows of its finished requests)."""
        tl = self.timeline
        with tenant._lock:
            while tenant._request_marks and tl.done(tenant._request_marks[0][1]):
                begin, end = tenant._request_marks.popleft()
                self._request_windows.append((tenant.name, tl.elapsed_us(self._t0, begin), tl.elapsed_us(begin, end)))
            done = [r for r in tenant._inflight if tl.done(r.end)]
            if not done:
                return
            for r in done:
                tenant._inflight.remove(r)
        for r in done:
            measured = tl.elapsed_us(r.start, r.end)
            self.predictor.observe(r.key, r.partition.num_tpcs, r.count, r.wave_blocks, measured, r.predicted_us)
            if self.right_sizer is not None and tenant.priority is Priority.LATENCY_CRITICAL:
                self.right_sizer.observe(r.key, r.partition.num_tpcs, r.count, r.wave_blocks, measured)
            tenant.stats.busy_ms += measured / 1000.0
            tenant.stats.tpc_ms += measured / 1000.0 * r.partition.num_tpcs
            if self._trace_on:
                self._trace.append(r.key.name, tenant.name, r.partition.tpcs, tl.handle(r.stream), r.start_block,
                                   r.count, r.predicted_us, r.stolen, tl.elapsed_us(self._t0, r.start), measured)


def _ranges(ids: Any) -> str:
    """'0-32,40' for a set of ints."""
    runs: list[list[int]] = []
    for i in sorted(ids):
        if runs and runs[-1][1] == i - 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return ",".join(f"{a}-{b}" if a != b else f"{a}" for a, b in runs)


@contextlib.contextmanager
def using_scheduler(scheduler: Scheduler | None) -> Iterator[Scheduler | None]:
    """Route the calling thread's launches through ``scheduler`` inside the block.

    Launches go to the tenant the thread is bound to (``with scheduler.tenant(name):``);
    ``using_scheduler(None)`` runs launches as written.
    """
    with using_atomizer(scheduler):
        yield scheduler


def set_scheduler(scheduler: Scheduler | None) -> None:
    """Install ``scheduler`` process-wide (None uninstalls it), like ``cupy.cuda.set_allocator``."""
    from lithos_atom.atomizer import set_atomizer

    set_atomizer(scheduler)
