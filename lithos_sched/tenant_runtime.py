"""A tenant of a running scheduler: the threads bound to it, its requests and its gate.

`Tenant` is what ``with scheduler.tenant(name):`` enters; `current_tenant` says which one
the calling thread is bound to; `TenantAtomizer` routes the bound thread's intercepted
launches (and graph launches) to the scheduler.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from lithos_atom import driver_calls
from lithos_atom.atomizer import Atomizer
from lithos_atom.optin import using_atomizer
from lithos_atom.plan import LaunchPlan, LaunchShape, WholeLaunch
from lithos_atom.settings import get_settings
from lithos_sched.accounting import LaunchBook, TenantStats
from lithos_sched.faults import cuda_error_code
from lithos_sched.fields import is_int
from lithos_sched.gates import CLOSED, OPEN, Gate
from lithos_sched.tenant import Priority, TenantSpec

if TYPE_CHECKING:
    from lithos_sched.scheduler import Scheduler


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
        self.book = LaunchBook(active_tpcs=tpcs)
        self.atomizer = TenantAtomizer(scheduler, self)
        self._contexts: dict[int, contextlib.ExitStack] = {}
        #: The TPCs stealing may take: all but its first `Policy.steal_reserve_tpcs`.
        self.stealable = frozenset(sorted(tpcs)[scheduler.policy.steal_reserve_tpcs:])
        self._request_depth = 0  # nesting of `request` blocks (on_tpcs opens one too)
        self._remote: Any = None  # a `RequestSignal` when the tenant runs in another process
        self._remote_sized: dict[int, frozenset[int]] = {}  # its first n TPCs, by n (`busy_tpcs`)
        # latency-critical: its device-side gate (`Policy.device_gates`), and whether a launch
        # outside any request closed it (the best-effort side opens it once the tenant is idle)
        self.gate: Gate | None = None
        self._gate_held = False
        self._gate_lock = threading.Lock()
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
    def remote(self) -> bool:
        """Whether the tenant runs in another process (`follow_requests`)."""
        return self._remote is not None

    def run_on(self, partition: Any) -> None:
        """Run this tenant's kernels on ``partition`` from now on, in place of the
        partition of its own TPCs (which is closed): a latency-critical tenant that
        borrows best-effort TPCs (`Policy.lend_best_effort_tpcs`). Its own TPCs stay
        `tpcs`, which are what best-effort tenants steal."""
        if not self.tpcs <= partition.tpcs:
            raise ValueError(f"tenant {self.name!r} must keep its own TPCs; the partition has {sorted(partition.tpcs)}")
        own, self.home = self.home, partition
        own.close()

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
        if s.timeline.now_us() - self.book.last_submit_us < s.policy.lc_idle_grace_us:
            return False
        last = self.book.last_end
        if last is not None and not s.timeline.done(last):
            return False
        return s.timeline.stream_done(self.stream)

    def busy_tpcs(self) -> frozenset[int]:
        """The TPCs its latest work runs on: fewer than its own while that work is
        right-sized, locally or, for a tenant in another process, as its `RequestSignal`
        says (`RequestSignal.tpcs_in_use`: the first ``n`` of its TPCs)."""
        if self._remote is None:
            return self.book.active_tpcs
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
        gate = self.scheduler.usable_gate(signal.gate) if self.gate is not None else None
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
        self.gate = self.scheduler.usable_gate(getattr(signal, "gate", None))

    def __enter__(self) -> Tenant:
        s = self.scheduler
        s.check_open(self)
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
        stack.enter_context(using_atomizer(self.atomizer))  # the first one imports Numba
        if s.policy.freeze_gc and not s.timeline.virtual:
            gc.freeze()
        stack.enter_context(s.timeline.use(self.stream))
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
        """Wait until every atom this tenant issued has finished.

        Raises
        ------
        KernelFaultError
            When the tenant's work failed on the device (or the context was lost before).
        SchedulerTimeoutError
            When one of its waits passed `Policy.wait_timeout_s`.
        """
        with self.book.lock:
            pending = list(self.book.inflight)
            busy = self.book.busy
        s = self.scheduler
        for rec in pending:
            s.wait_atom(rec)
        if busy is not None:
            s.wait_busy(self, busy)
        if self.book.stream_handle is not None:  # unsplit launches ran on its own stream
            s.wait_busy(self, s.timeline.record(self.stream, blocking=s.blocking_waits(self)))
        s.retire(self)

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
        s.check_open(self)
        self._request_depth += 1
        if self._request_depth == 1:
            try:
                self._open_request()
            except BaseException:
                self._request_depth -= 1
                raise
        try:
            yield self
        finally:
            self._request_depth -= 1
            if self._request_depth == 0:
                self._close_request()

    def _open_request(self) -> None:
        """Begin the outermost request: mark the signal, close the gate, trace its start."""
        s = self.scheduler
        self.stats.requests += 1
        if self._published is not None:  # the signal's words, for schedulers that read them
            self._published_request = self._published.request(gate=False)
            self._published_request.__enter__()
        try:
            if self.gate is not None:
                s.timeline.write_gate(self.stream, self.gate, CLOSED)
            if s.tracing:
                self._request_begin = s.timeline.record(self.stream)
        except BaseException as exc:
            self._end_published_request()
            if cuda_error_code(exc) is None:
                raise
            raise s.device_error(self, "a request could not begin", exc) from exc
        s.request_opened()

    def _close_request(self) -> None:
        """End the outermost request: the idle grace starts, the gate opens after its work,
        the signal is marked and the trace gets its window. The signal and the scheduler
        count the request closed even when the device fails; a context lost to a fault
        can write no gate, so the gate is then opened from the host (no work of this
        tenant is left to protect)."""
        s = self.scheduler
        self.book.last_submit_us = s.timeline.now_us()  # the grace runs from the request's end
        try:
            if self.gate is not None and s.fault is None:
                self._open_gate_after_work()
            if self._request_begin is not None and s.fault is None:
                with self.book.lock:
                    self.book.request_marks.append((self._request_begin, s.timeline.record(self.stream)))
        except Exception as exc:
            if cuda_error_code(exc) is None:
                raise
            raise s.device_error(self, "the end of a request failed", exc) from exc
        finally:
            self._request_begin = None
            if self.gate is not None and s.fault is not None:
                s.timeline.store_gate(self.gate, OPEN)
            self._end_published_request()
            s.request_closed()

    def _end_published_request(self) -> None:
        if self._published_request is not None:
            self._published_request.__exit__(None, None, None)
            self._published_request = None

    @property
    def gate_held(self) -> bool:
        """Whether a launch outside any request closed the tenant's gate and it is not
        open again yet (`GateKeeper`)."""
        return self._gate_held

    @property
    def held_since_us(self) -> float:
        """Host time of the tenant's latest launch (the idle grace runs from it)."""
        return self.book.last_submit_us

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

    @property
    def in_request(self) -> bool:
        """Whether a `request` (or `on_tpcs`) block of the tenant is open."""
        return self._request_depth > 0

    def open_gate_on(self, stream: Any) -> None:
        """Open the gate by a write on ``stream`` after the work queued there so far (a CUDA
        graph that was a request of its own): what launches held it for is done then too."""
        with self._gate_lock:
            self.scheduler.timeline.write_gate(stream, self.gate, OPEN)
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
            if self.book.gate_after is not None:  # its latest launch ran off its own stream
                tl.wait(self.stream, self.book.gate_after)
                self.book.gate_after = None
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
            For ``n`` that is not an int >= 1.
        """
        if self.priority is not Priority.LATENCY_CRITICAL:
            raise TypeError(f"on_tpcs is for latency-critical tenants; {self.name!r} is {self.priority.value}")
        if not is_int(n) or n < 1:
            raise ValueError(f"Tenant.on_tpcs: n (a TPC count) must be an int >= 1, got {n!r}")
        if current_tenant() is not self:
            raise RuntimeError(f"on_tpcs must be used in a thread inside `with` tenant {self.name!r}")
        if self.book.request is not None:
            raise RuntimeError(f"tenant {self.name!r} is already inside an on_tpcs block")
        s = self.scheduler
        s.check_open(self)
        with self.request():
            yield from self._on_first_tpcs(int(n))

    def _on_first_tpcs(self, n: int) -> Iterator[Any]:
        s = self.scheduler
        if n >= len(self.tpcs):
            yield self.stream
            return
        tl = s.timeline
        part = s.first_tpcs_partition(self, n)
        tl.wait(part.high, tl.record(self.stream))  # after what the tenant queued before
        with contextlib.ExitStack() as stack:
            stack.enter_context(tl.use(part.high))
            self.book.request, self.book.request_handle = part, tl.handle(part.high)
            self.book.active_tpcs = part.tpcs
            try:
                yield part.high
            finally:
                end = tl.record(part.high)
                tl.wait(self.stream, end)  # what the tenant queues next runs after the block
                self.book.last_end = end
                self.book.request = self.book.request_handle = None
                self.book.active_tpcs = self.tpcs

    def __repr__(self) -> str:
        return f"<Tenant {self.name!r} {self.priority.value} tpcs={len(self.tpcs)}>"


_current = threading.local()


def current_tenant() -> Tenant | None:
    """The tenant the calling thread is bound to, or None."""
    return getattr(_current, "tenant", None)


class TenantAtomizer(Atomizer):
    """Routes a bound thread's intercepted launches to the scheduler."""

    wants_sized_plans = False  # the scheduler sizes each atom where it places it

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
            return s.launch_short_best_effort(self.tenant, launch, stream, describe)
        s.launch_latency_critical(self.tenant, launch, stream, describe)
        return True

    def launch_graph(self, graph: Any, stream: Any) -> None:
        self.scheduler.launch_graph_for(self.tenant, graph, stream)

