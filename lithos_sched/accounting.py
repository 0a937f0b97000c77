"""Per-tenant accounting, the record the scheduler keeps of each atom in flight, and the
book of a tenant's launches that the scheduler and the tenant share."""

from __future__ import annotations

import collections
import dataclasses
import math
import threading
from typing import TYPE_CHECKING, Any

from lithos_atom.plan import KernelKey

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
