"""Per-tenant accounting and the record the scheduler keeps of each atom in flight."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from lithos_atom.plan import KernelKey

if TYPE_CHECKING:
    from lithos_sched.tenant_runtime import Tenant


@dataclasses.dataclass
class TenantStats:
    """Per-tenant accounting.

    Device times (``busy_ms``, ``tpc_ms``) come from events around the ``timed_atoms``:
    every best-effort atom, and one in `Policy.lc_timing_every` latency-critical launches.
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

