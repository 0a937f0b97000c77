"""The cooperative multi-tenant scheduler.

Tenants share one device; each owns a TPC partition. A latency-critical tenant's kernels
run unsplit, issued at once onto a high-priority stream of its partition
(`lithos_sched.latency_critical`). A best-effort tenant's launches are split into atoms,
issued by the tenant's own thread (`lithos_sched.best_effort`): with device-side gates
(`Policy.device_gates`, the default where the device supports them) atoms are queued
milliseconds deep at home and on the idle latency-critical TPCs behind each such tenant's
gate, which its own stream closes when its work starts and opens when it ends, so the GPU
stops and resumes them at atom boundaries; without gates the host decides each atom.
`lithos_sched.tenant_runtime` holds the tenant a thread enters; `lithos_sched.accounting`
the per-tenant statistics; `lithos_sched.scheduler_records` what the scheduler keeps of
finished work (statistics, the atom trace); `lithos_sched.remote_tenants` the
latency-critical tenants of other processes, followed while they come and go.

Stream semantics stay as the user wrote them: atoms on partition streams start after the
work the tenant queued before the launch, and the tenant's stream waits for every atom, so
later work (opaque CuPy ops, copies, host reads) sees the results.

Its settings are `Policy` (`lithos_sched.policy`). Next: the partitions tenants run on,
`lithos_sched.device_api`.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from lithos_atom.atomizer import Atomizer
from lithos_atom.indexing import MAX_GRID_X
from lithos_atom.optin import using_atomizer
from lithos_atom.plan import LaunchPlan, LaunchShape, WholeLaunch
from lithos_sched.accounting import AtomRecord
from lithos_sched.best_effort import BestEffortPlacement
from lithos_sched.faults import DeviceWaits, KernelFaultError, SchedulerTimeoutError, cuda_error_code
from lithos_sched.device_api import Device
from lithos_sched.gate_keeper import GateKeeper
from lithos_sched.gates import Gate
from lithos_sched.latency_critical import LatencyCriticalLaunches, plan_launch, plan_shape
from lithos_sched.policy import Policy
from lithos_sched.predictor import LatencyPredictor
from lithos_sched.process_tuning import TUNING
from lithos_sched.remote_tenants import RemoteTenants
from lithos_sched.rightsizing import RightSizer
from lithos_sched.scheduler_records import SchedulerRecords
from lithos_sched.tenant import Priority, TenantConfigError, TenantSpec, assign_tpcs, specs_from
from lithos_sched.timeline import Timeline, timeline_for
from lithos_sched.tenant_runtime import Tenant, current_tenant


class SchedulerClosedError(RuntimeError):
    """The scheduler was closed; its tenants can no longer launch through it."""


class Scheduler(SchedulerRecords, RemoteTenants, LatencyCriticalLaunches, BestEffortPlacement, DeviceWaits,
                Atomizer):
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

    Raises
    ------
    TypeError
        For an argument of the wrong type, naming it.
    TenantConfigError
        For tenants that are not `TenantSpec`s or do not fit the device.

    Notes
    -----
    The scheduler is also an `Atomizer`: ``set_scheduler(s)`` routes launches of threads
    bound to a tenant through it; launches of unbound threads run as written, or as the
    default tenant (`set_default_tenant`).
    """

    wants_sized_plans = False  # `BestEffortPlacement._atom_blocks` sizes every atom

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
        _check_arguments(device, policy, predictor, right_sizer, trace)
        self.policy = policy or Policy()
        super().__init__(atom_us=self.policy.atom_us, strict=False)
        self.device = device
        self.predictor = predictor or LatencyPredictor()
        self.right_sizer = right_sizer
        self.timeline: Timeline = timeline_for(device)
        specs = specs_from(tenants)
        if not specs:
            raise TenantConfigError("a scheduler needs at least one tenant")
        assignment = assign_tpcs(specs, device.num_tpcs)
        self.tenants: dict[str, Tenant] = {s.name: Tenant(self, s, assignment[s.name]) for s in specs}
        self._lc = [t for t in self.tenants.values() if t.priority is Priority.LATENCY_CRITICAL]
        # tenants of other processes (`RemoteTenants`): changes replace these collections whole
        self._membership = 0  # counts the changes of `_lc`
        self._membership_lock = threading.Lock()
        self._followed_signals: dict[str, Any] = {}
        self._unfollowed_signals: list[Any] = []
        self._default_tenant: Tenant | None = None
        self._closed = False
        self._closing = False
        self._fault: KernelFaultError | None = None  # `DeviceWaits`: the first fault that lost the context
        self._steal_partitions: dict[frozenset[int], Any] = {}
        self._lc_shared: dict[frozenset[int], bool] = {}
        self._requests_open = 0  # latency-critical tenants inside `Tenant.request`
        self._request_done = threading.Condition()
        self._start_records(trace)
        self._gate_board = self._open_gate_board()
        if self._gate_board is not None:
            for t in self._lc:
                t.gate = self._gate_board.new_gate()
        self._lend_best_effort_tpcs()
        self._gate_keeper = GateKeeper(self)
        self._stranded_guards: set[str] = set()  # best-effort tenants with a `_guard_stranded` check pending
        self._tuning = TUNING.enter(self.policy, self.timeline.virtual)

    def _lend_best_effort_tpcs(self) -> None:
        """Where `Policy.lend_best_effort_tpcs` and the gates allow, move each
        latency-critical tenant onto a partition of its TPCs and the best-effort tenants'."""
        lent = frozenset().union(*(t.tpcs for t in self.tenants.values() if t.priority is Priority.BEST_EFFORT))
        if not (self.policy.lend_best_effort_tpcs != "none" and lent and self._gated()):
            return
        for t in self._lc:
            t.run_on(self.device.partition(t.tpcs | lent))

    def _home_gates(self) -> list[Gate]:
        """The gates best-effort atoms at home wait behind: those of the latency-critical
        tenants of this process that borrow best-effort TPCs (`_lend_best_effort_tpcs`)."""
        if self.policy.lend_best_effort_tpcs != "gated":
            return []
        return [t.gate for t in self._lc if t.gate is not None and not t.remote and t.home.tpcs != t.tpcs]

    # ---- public API --------------------------------------------------------------

    def tenant(self, name: str) -> Tenant:
        """The tenant called ``name``."""
        try:
            return self.tenants[name]
        except KeyError:
            raise KeyError(f"no tenant {name!r}; tenants are {sorted(self.tenants)}") from None

    def set_default_tenant(self, name: str | None) -> None:
        """Run the intercepted launches of threads bound to no tenant as tenant ``name``
        (None: as written, the default).

        Such a thread's kernels then run on the tenant's TPCs, ordered after the work the
        thread queued on its stream and before what it queues next (on the GPU, the
        legacy default stream, by its explicit handle, stands for a thread's default).
        Its CuPy ops and cuBLAS calls are not intercepted: they run where CuPy puts them,
        on the whole GPU for the default stream, unless the thread enters the tenant.

        Raises
        ------
        KeyError
            For a name that is not a tenant of this scheduler.
        RuntimeError
            For a tenant of another process (`follow`).
        """
        tenant = None if name is None else self.tenant(name)
        if tenant is not None and tenant.remote:
            raise RuntimeError(f"tenant {name!r} runs in another process: its launches cannot be made here")
        self._default_tenant = tenant

    def launch_whole(self, launch: WholeLaunch, stream: Any, describe: Callable[[], LaunchShape]) -> bool:
        """`Atomizer` entry point: a latency-critical tenant's launch runs unsplit at once;
        a launch of a thread bound to no tenant runs as the default tenant, if any, else
        as written."""
        tenant, stream = self._route(stream)
        if tenant is None:
            launch(stream)
            return True
        return tenant.atomizer.launch_whole(launch, stream, describe)

    def launch_graph(self, graph: Any, stream: Any) -> None:
        """`Atomizer` entry point: a graph launched by a thread bound to a tenant (or by
        any thread, with a default tenant) runs where the tenant's work runs
        (`launch_graph_for`); otherwise as written."""
        tenant, stream = self._route(stream)
        if tenant is None:
            super().launch_graph(graph, stream)
            return
        tenant.atomizer.launch_graph(graph, stream)

    def submit(self, plan: LaunchPlan, stream: Any) -> None:  # type: ignore[override]
        """`Atomizer` entry point: route to the calling thread's tenant (or the default
        tenant), if any."""
        tenant, stream = self._route(stream)
        if tenant is None:
            plan.issue_all(stream)
            return
        self.submit_for(tenant, plan, stream)

    def submit_for(self, tenant: Tenant, plan: LaunchPlan, stream: Any = None) -> None:
        """Issue ``plan`` for ``tenant``; returns once every atom is issued.

        A latency-critical tenant's plan runs unsplit, through the same path as a launch a
        front end offers whole (`launch_latency_critical`); a best-effort tenant's is
        placed atom by atom (`lithos_sched.best_effort`).

        Parameters
        ----------
        tenant : Tenant
        plan : LaunchPlan
        stream
            The stream the user launched on; None or the legacy default stream mean the
            tenant's own stream (the default stream would escape the partition).
        """
        self.check_open(tenant)
        if tenant.priority is Priority.LATENCY_CRITICAL:
            # the one latency-critical path, as for a launch the front end offers whole
            self.launch_latency_critical(tenant, plan_launch(plan), stream, plan_shape(plan))
            plan.complete()
            return
        user = stream
        if user is None or self.timeline.handle(user) == 0:
            user = tenant.stream
        with tenant.book.lock:
            if tenant.book.in_launch:
                # Only possible from a callback run while this tenant's own launch waits:
                # issuing now would interleave two launches of one tenant.
                raise RuntimeError(f"tenant {tenant.name!r} submitted a launch from inside its own launch")
            tenant.book.in_launch = True
            try:
                tenant.stats.kernels += 1
                cpu0 = time.thread_time_ns()
                try:
                    self._run_best_effort(tenant, plan, user)
                finally:
                    tenant.stats.host_cpu_us += (time.thread_time_ns() - cpu0) / 1e3
            except Exception as exc:
                if cuda_error_code(exc) is None:
                    raise
                raise self.device_error(tenant, f"a launch of kernel {plan.key.name!r} failed", exc) from exc
            finally:
                tenant.book.in_launch = False

    def synchronize(self) -> None:
        """Wait until every tenant's issued work has finished."""
        for t in self.tenants.values():
            t.synchronize()

    def close(self) -> None:
        """Stop accepting launches, let every issued atom finish, release the partitions.

        A best-effort tenant in the middle of a launch issues its remaining blocks at once
        instead of waiting for room, so no submitted work is lost. Every wait here has the
        bound `Policy.wait_timeout_s`, and an error stops none of the rest: the gate keeper
        stops, every gate held by launches opens, every gate this process forced is cleared.
        Partitions, gate pages and followed signals are released once the work is done;
        after a fault or a timeout they are left to the process's exit (a stream may still
        wait on them, or the context is gone).

        Raises
        ------
        SchedulerTimeoutError
            For the first tenant whose work (or launch in progress) did not finish in time.
        KernelFaultError
            For a fault first met here (one already raised to a tenant is not raised again:
            `fault` holds it).
        """
        if self._closed:
            return
        self._closing = True
        with self._request_done:
            self._request_done.notify_all()  # held best-effort threads issue their rest now
        errors: list[Exception] = []
        bound_s = self.policy.wait_timeout_s
        for t in self.tenants.values():
            # waits for a tenant thread that is mid-launch
            if not t.book.lock.acquire(timeout=-1 if bound_s is None else bound_s):
                errors.append(SchedulerTimeoutError(f"tenant {t.name!r} was still inside a launch {bound_s:g} s "
                                                    "after close() began (Policy.wait_timeout_s)", t.name))
                continue
            t.book.lock.release()
        if self._fault is None and not errors:
            try:
                self.synchronize()
            except (KernelFaultError, SchedulerTimeoutError) as exc:
                errors.append(exc)
        drained = self._fault is None and not errors
        self._gate_keeper.stop()
        self._clear_forced_gates()
        self._closed = True
        if drained:
            self._release_partitions()
            if self._gate_board is not None:
                self._gate_board.close()
            self._close_followed()
        TUNING.leave(self._tuning)
        if errors:
            raise errors[0]

    def __enter__(self) -> Scheduler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def latency_critical_tenants(self) -> list[Tenant]:
        """Its latency-critical tenants, those of other processes it follows among them
        (a new list whenever they change)."""
        return self._lc

    @property
    def uses_gates(self) -> bool:
        """Whether best-effort atoms on stolen TPCs wait behind device-side gates now
        (`Policy.device_gates`, a device that can map them, no right-sizer)."""
        return self._gated()

    # ---- dispatch ------------------------------------------------------------------

    def check_open(self, tenant: Tenant | None = None) -> None:
        """Refuse work once the scheduler is closing, or its context was lost to a fault
        (naming ``tenant``)."""
        if self._closed or self._closing:
            raise SchedulerClosedError("the scheduler is closed")
        if self._fault is not None:
            self._refuse_after_fault(tenant)

    def _release_partitions(self) -> None:
        """Close every partition the scheduler opened (its tenants' homes, the right-sized
        and stolen ones): on the GPU their green contexts go back to the device's pool."""
        parts = [t.home for t in self.tenants.values()]
        parts += [p for t in self.tenants.values() for p in t.book.rightsized.values()]
        parts += list(self._steal_partitions.values())
        for part in parts:
            if not part.closed:
                part.close()
        self._steal_partitions = {}

    def _clear_forced_gates(self) -> None:
        """Clear the forced word of every gate this process forced (`Gate.force`) and still
        follows or owns: no atom of this scheduler waits behind them any more, and a
        forced gate would let other processes' atoms pass during the tenant's requests."""
        for t in self._lc:
            gate = t.gate
            if gate is not None and not gate.memory.closed and gate.forced_by() == os.getpid():
                gate.force(False)

    def _route(self, stream: Any) -> tuple[Tenant | None, Any]:
        """The tenant a launch of the calling thread on ``stream`` runs as (None: as
        written), and the stream to order it with (for a thread bound to no tenant,
        `Timeline.thread_stream`)."""
        tenant = current_tenant()
        if tenant is not None:
            return (tenant if tenant.scheduler is self else None), stream
        tenant = self._default_tenant
        if tenant is not None:
            stream = self.timeline.thread_stream(stream)
        return tenant, stream

    @property
    def requests_open(self) -> int:
        """How many latency-critical tenants of this process are inside a `Tenant.request`
        block now (nested blocks count once)."""
        return self._requests_open

    def request_opened(self) -> None:
        """A latency-critical tenant's outermost `Tenant.request` block began."""
        with self._request_done:
            self._requests_open += 1

    def request_closed(self) -> None:
        """That block ended: held best-effort threads go on once no request is open."""
        with self._request_done:
            self._requests_open -= 1
            if not self._requests_open:
                self._request_done.notify_all()

    def blocking_waits(self, tenant: Tenant) -> bool:
        """Whether ``tenant``'s threads wait for its events asleep (`Policy.blocking_waits`)."""
        mode = self.policy.blocking_waits
        return mode == "all" or (mode == "best-effort" and tenant.priority is Priority.BEST_EFFORT)

    def _holds_for_requests(self) -> bool:
        """Whether a best-effort thread would be held now (`_hold_for_requests`)."""
        return bool(self._requests_open) and not self.timeline.virtual and self.policy.hold_best_effort_in_requests

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
               predicted: float | None, stolen: bool) -> AtomRecord:
        tl = self.timeline
        t_host = time.perf_counter()
        wave = self._wave_blocks(plan, partition)
        begin = tl.record(stream)
        done = 0
        while done < count:  # a 1-D grid holds at most 2**31 - 1 blocks
            n = min(count - done, MAX_GRID_X)
            plan.issue_range(start + done, n, stream)
            done += n
        end = tl.record(stream, blocking=self.blocking_waits(tenant))
        # An atom fills its partition: whichever of the partition's streams it is on, it
        # runs after the tenant's work queued there (the other stream only backfills the
        # last wave's SMs).
        begin_us = max([tl.now_us(), *(r.predicted_end_us for r in tenant.book.inflight if r.partition is partition)])
        rec = AtomRecord(tenant, plan.key, start, count, partition, stream, begin, end, wave, predicted,
                          begin_us + (predicted if predicted is not None else self.policy.atom_us), stolen)
        tenant.book.inflight.append(rec)
        tenant.stats.host_issue_us += (time.perf_counter() - t_host) * 1e6
        tenant.stats.atoms += 1
        tenant.stats.timed_atoms += 1
        tenant.stats.stolen_atoms += int(stolen)
        return rec


def _check_arguments(device: Any, policy: Any, predictor: Any, right_sizer: Any, trace: Any) -> None:
    """Refuse, by its name, a `Scheduler` argument of the wrong type (the predictor and the
    right-sizer by the methods the scheduler calls on them)."""
    if not isinstance(device, Device):
        raise TypeError(f"Scheduler: device must be a lithos device (lithos.open_device()), got {type(device).__name__}")
    if policy is not None and not isinstance(policy, Policy):
        raise TypeError(f"Scheduler: policy must be a Policy or None, got {type(policy).__name__}")
    for name, value, methods, what in (
            ("predictor", predictor, ("predict_us", "wave_us", "observe", "error_report"), "a LatencyPredictor"),
            ("right_sizer", right_sizer, ("tpcs_for", "observe"), "a RightSizer")):
        if value is not None and not all(callable(getattr(value, m, None)) for m in methods):
            raise TypeError(f"Scheduler: {name} must be {what} (with {', '.join(methods)}) or None, "
                            f"got {type(value).__name__}")
    if not isinstance(trace, bool):
        raise TypeError(f"Scheduler: trace must be a bool, got {type(trace).__name__}")


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
    from lithos_atom.optin import set_atomizer

    set_atomizer(scheduler)
