"""Per-tenant accounting, the record the scheduler keeps of each atom in flight, and the
book of a tenant's launches that the scheduler and the tenant share."""

from __future__ import annotations

import collections
import dataclasses
import math
import statistics
import threading
from typing import TYPE_CHECKING, Any

from lithos_atom.plan import KernelKey
from lithos_sched.trace_buffer import TraceBuffer

if TYPE_CHECKING:
    from lithos_sched.tenant_runtime import Tenant


@dataclasses.dataclass
class TenantStats:
    """Per-tenant accounting.

    Device times (``busy_ms``, ``tpc_ms``) come from events around the ``timed_atoms``:
    every best-effort atom, and one in `Policy.lc_timing_every` latency-critical launches
    (every one in virtual time, `Timeline.virtual`).
    ``host_issue_us`` is the host time spent issuing atoms (events and launches);
    ``host_cpu_us`` the CPU time of the thread in the scheduler's best-effort path for the
    whole of each launch (placement, waits that spin, issue), whose mean per atom is what
    the host costs a best-effort tenant.
    ``queue_wait_ms`` is the host time a best-effort thread waited for room under the
    queue caps, ``yield_wait_ms`` the time it waited for a busy latency-critical tenant
    (`Policy.yield_host_to_latency_critical`), ``request_hold_ms`` the time it was held
    by latency-critical requests (`Policy.hold_best_effort_in_requests`),
    ``requests`` the number of `Tenant.request` blocks of a latency-critical tenant and
    ``forced_gate_opens`` how often a gate that held a best-effort tenant's queued atoms
    for `Policy.request_hold_max_us` was opened for them.

    Work of a best-effort tenant that no atom boundary can stop (`UnsplitWork`):
    ``unsplit_kernels`` counts its launches that ran whole because they cannot be split
    (the reason of each kernel by name in ``unsplit_reasons``: grid-wide sync, a kernel
    the rewriter refuses, ...), ``unsplit_ms`` their measured device time and
    ``unsplit_p50_us`` / ``unsplit_max_us`` the median of the latest `UNSPLIT_WINDOW` and
    the longest of all (a launch predicted within one atom runs whole by
    `Policy.short_best_effort_whole` whether or not it could be split, and counts as an
    atom, not here). ``opaque_ms`` is the device time its stream spent, between two of
    its launches, on work lithos never saw (cuBLAS, cuFFT, cuSOLVER, CUB device-wide
    calls, copies), summed over the ``opaque_gaps`` gaps that could be timed, the longest
    being ``opaque_max_us``; ``opaque_untimed_gaps`` counts the gaps that could not (see
    `UnsplitWork`). A latency-critical tenant's kernels all run whole by design: these
    stay zero for it.
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
    host_cpu_us: float = 0.0
    forced_gate_opens: int = 0
    unsplit_kernels: int = 0
    unsplit_ms: float = 0.0
    unsplit_p50_us: float | None = None
    unsplit_max_us: float = 0.0
    unsplit_reasons: dict[str, str] = dataclasses.field(default_factory=dict)
    opaque_ms: float = 0.0
    opaque_gaps: int = 0
    opaque_max_us: float = 0.0
    opaque_untimed_gaps: int = 0


@dataclasses.dataclass(slots=True)
class AtomRecord:
    """An atom (or a timed latency-critical launch) issued and not yet retired: where it
runs, its events, and its predicted duration and end."""

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
    unsplit: bool = False  # a best-effort kernel run whole because it cannot be split


#: Unsplit kernels the median (`TenantStats.unsplit_p50_us`) and the stealing policy's look
#: at a tenant's recent unsplit kernels are taken over: the latest ones, in bounded memory.
UNSPLIT_WINDOW = 256

#: The name of a timed gap's work in the trace (`UnsplitWork.trace`).
OPAQUE_WORK = "opaque work"


@dataclasses.dataclass(eq=False)
class UnsplitWork:
    """What a best-effort tenant runs that no atom boundary stops, as far as it can be seen.

    Kernels lithos runs whole (`LaunchPlan.atomized` False: cooperative or grid-sync
    kernels, kernels the PTX rewriter refuses) are placed and timed by the scheduler like
    one atom, and each measured duration comes here (`kernel_done`). Library calls (cuBLAS,
    cuFFT, cuSOLVER, CUB's device-wide calls) never reach lithos: inside ``with tenant:``
    they run on the tenant's stream, so on its own TPCs, and only their time on that stream
    can be seen. Each launch of the tenant ends with an event on the user's stream
    (`start_gap`). At its next launch on the same stream, if that event is not complete
    yet, the stream has not reached the end of the previous launch, so all the user queued
    between the two launches is still ahead of it, back to back: an event recorded then
    ends the gap (`end_gap`), and the time between the two events is that work's device
    time (read once complete, `retire_gaps`). Where the event is complete, the stream had
    caught up and may have idled while the host ran Python, so the gap's length says
    nothing of the work in it: it counts as untimed. A best-effort CUDA graph launched on
    the stream between two launches (it runs whole, at home) is part of that gap's work.
    Not seen at all: work before a tenant's first launch and after its last, work on other
    streams than its launches', and how a gap's time divides among the calls in it. The
    cost: one event recorded per launch, and one more per timed gap.

    Attributes
    ----------
    recent_us : deque of float
        Durations of its latest `UNSPLIT_WINDOW` unsplit kernels, in microseconds.
    gap_start : tuple of (int, event) or None
        The user stream's handle, and an event on it at the end of the latest launch.
    gaps : deque of (int, event, event)
        The gaps being timed, oldest first: the stream's handle, the events at both ends.
    trace : TraceBuffer
        Each unsplit kernel, and each timed gap as `OPAQUE_WORK`, while the scheduler traces.
    """

    recent_us: collections.deque[float] = dataclasses.field(
        default_factory=lambda: collections.deque(maxlen=UNSPLIT_WINDOW))
    gap_start: tuple[int, Any] | None = None
    gaps: collections.deque[tuple[int, Any, Any]] = dataclasses.field(default_factory=collections.deque)
    trace: TraceBuffer = dataclasses.field(default_factory=TraceBuffer)

    def longest_recent_us(self) -> float | None:
        """The longest of the latest unsplit kernels, or None before the first one."""
        return max(self.recent_us) if self.recent_us else None

    def kernel_done(self, stats: TenantStats, measured_us: float) -> None:
        """Account one finished unsplit kernel that took ``measured_us`` in ``stats``."""
        stats.unsplit_kernels += 1
        stats.unsplit_ms += measured_us / 1000.0
        stats.unsplit_max_us = max(stats.unsplit_max_us, measured_us)
        self.recent_us.append(measured_us)
        stats.unsplit_p50_us = statistics.median(self.recent_us)

    def end_gap(self, timeline: Any, user: Any, stats: TenantStats) -> Any:
        """At the start of a launch on the stream ``user``: end the gap since the tenant's
        previous launch. Returns the event that ends it, recorded on ``user`` now, where
        the gap can be timed (the launch may order its atoms after it); else None, and a
        gap there was counts as untimed in ``stats``."""
        start, self.gap_start = self.gap_start, None
        if start is None:
            return None
        handle, event = start
        if handle != timeline.handle(user) or timeline.done(event):
            stats.opaque_untimed_gaps += 1  # another stream, or one that caught up: not timed
            return None
        end = timeline.record(user)
        self.gaps.append((handle, event, end))
        return end

    def start_gap(self, timeline: Any, user: Any, last_event: Any = None) -> None:
        """At the end of a launch: the gap before the next one starts where the stream
        ``user`` passes it: at ``last_event`` where that is the last thing the launch put
        on ``user``, else at an event recorded now."""
        self.gap_start = (timeline.handle(user), timeline.record(user) if last_event is None else last_event)

    def retire_gaps(self, timeline: Any, stats: TenantStats, origin: Any, trace_as: str | None) -> None:
        """Account the timed gaps that are over, oldest first, in ``stats``; where
        ``trace_as`` (the tenant's name) is given, trace them from the event ``origin``."""
        while self.gaps and timeline.done(self.gaps[0][2]):
            handle, begin, end = self.gaps.popleft()
            elapsed = timeline.elapsed_us(begin, end)
            stats.opaque_gaps += 1
            stats.opaque_ms += elapsed / 1000.0
            stats.opaque_max_us = max(stats.opaque_max_us, elapsed)
            if trace_as is not None:
                self.trace.append(OPAQUE_WORK, trace_as, frozenset(), handle, 0, 0, None, False,
                                  timeline.elapsed_us(origin, begin), elapsed)


@dataclasses.dataclass(eq=False)
class LaunchBook:
    """What is kept of one tenant's launches (`Tenant.book`): written by the scheduler's
    launch paths (`lithos_sched.latency_critical`, `lithos_sched.best_effort`) and read by
    the tenant's `idle`, `synchronize`, `request` and `on_tpcs`: a record the two share in
    the open, so neither reaches into the other's private fields.

    Attributes
    ----------
    active_tpcs : frozenset of int
        The TPCs of the tenant's latest kernel (fewer than its own when right-sized).
    lock : threading.RLock
        Held through each launch of the tenant, and while its atoms are retired.
    inflight : deque of AtomRecord
        Its atoms (and timed latency-critical launches) issued and not retired yet.
    in_launch : bool
        Whether a launch of the tenant is being issued (one from inside it is refused).
    last_submit_us : float
        Host time of its latest launch (the idle grace runs from it).
    last_end : event or None
        The end of its latest work off its own stream.
    stream_handle : int or None
        Its own stream's handle, once it launched unsplit.
    busy, join : event or None
        Markers re-recorded after each unsplit launch off its own stream, and on the
        user's stream before such a launch.
    gate_after : event or None
        The end of its latest launch off its own stream that its gate's opening must wait for.
    rightsized : dict of int to partition
        Right-sized partitions of its first ``n`` TPCs, by ``n``.
    request, request_handle : partition or None, int or None
        The partition of an `on_tpcs` block in progress, and its stream's handle.
    request_marks : deque of (event, event)
        Start and end of each `request` block on its stream, while tracing.
    unsplit : UnsplitWork
        What of a best-effort tenant's work runs unsplit: kernels run whole, and the
        library calls between its launches.
    """

    active_tpcs: frozenset[int]
    lock: Any = dataclasses.field(default_factory=threading.RLock)
    inflight: collections.deque[AtomRecord] = dataclasses.field(default_factory=collections.deque)
    in_launch: bool = False
    last_submit_us: float = -math.inf
    last_end: Any = None
    stream_handle: int | None = None
    busy: Any = None
    join: Any = None
    gate_after: Any = None
    rightsized: dict[int, Any] = dataclasses.field(default_factory=dict)
    request: Any = None
    request_handle: int | None = None
    request_marks: collections.deque[tuple[Any, Any]] = dataclasses.field(default_factory=collections.deque)
    unsplit: UnsplitWork = dataclasses.field(default_factory=UnsplitWork)
