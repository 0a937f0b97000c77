"""`Policy`: the scheduler's settings, each with what it does and why its default."""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

from lithos_atom.settings import get_settings
from lithos_sched.fields import is_int, is_number, require

#: The values of `Policy.blocking_waits`.
BLOCKING_WAITS = ("none", "best-effort", "all")
#: The values of `Policy.issue_ahead_of_drain`.
ISSUE_AHEAD = ("none", "home", "all")
#: The values of `Policy.lend_best_effort_tpcs`.
LEND_MODES = ("gated", "priority", "none")


@dataclasses.dataclass(frozen=True)
class Policy:
    """Scheduling policy: each attribute states what it decides and why its default.

    Attributes
    ----------
    atom_us : float
        Target duration of a best-effort atom on TPCs a latency-critical tenant owns: a
        request waits at most about this long for them. The default is ``LITHOS_ATOM_US``
        (`lithos_atom.settings.Settings.atom_us`) when the `Policy` is made: one setting
        sizes every atom, the scheduler's and the plain atomizer's alike (its default,
        `lithos_atom.settings.DEFAULT_ATOM_US`, says why).
    queue_cap_us : float
        Without device gates: a best-effort thread issues its next atom on such TPCs once
        its work queued there is predicted to drain within this time (about one atom of
        host delay, as LithOS keeps about 100 us outstanding).
    home_atom_us : float
        Target duration of a best-effort atom on its tenant's own TPCs: no latency-critical
        kernel waits behind those, so longer atoms only save host time; short enough that
        the next launch can still move to stolen TPCs.
    home_queue_cap_us : float
        How much best-effort work is queued on its tenant's own TPCs: deep, since it delays
        nobody and hides the host's time to issue the next atom.
    issue_ahead_of_drain : {"none", "home", "all"}
        Without device gates: where a thread whose one atom in flight is longer than the
        cap queues the next one the cap before that atom's predicted end instead of after
        its end: nowhere (the default: on stolen TPCs it made requests wait behind the
        queued atom, at home it held the thread off stolen TPCs), at home, or everywhere.
    device_gates : bool
        Queue best-effort atoms on stolen TPCs behind device-side gates
        (`lithos_sched.gates`) that each latency-critical tenant closes when its work starts
        and opens when it ends, from its own stream: stolen atoms are queued up to
        `steal_queue_us` ahead, a request stops them at the next atom boundary and its end
        resumes them, with no host round trip. Stolen atoms run on a partition of the
        stolen TPCs only, beside the tenant's own queue at home, so a closed gate stops
        nothing at home unless `lend_best_effort_tpcs` gates those TPCs too. False, or a
        device that cannot map the gate words (one warning): the host decides every stolen
        atom, with the queue caps, holds and polls below.
    lend_best_effort_tpcs : {"gated", "priority", "none"}
        With `device_gates`, latency-critical kernels of this process run on their own
        TPCs and on those of this process's best-effort tenants (LithOS lends TPCs both
        ways). "gated" (the default): best-effort atoms at home wait behind the same gates
        and are sized by `atom_us`, so a request gets the whole GPU after at most one
        atom, and the best-effort tenant gives up its own TPCs while a request runs.
        "priority": home atoms do not wait; the latency-critical kernels' blocks take the
        home TPCs as best-effort blocks end, by stream priority (the best-effort tenant
        keeps more, the request waits longer). "none": each keeps to its own TPCs.
        Tenants of other processes keep to their own TPCs.
    steal_queue_us : float
        With `device_gates`, how much best-effort work is queued on stolen TPCs while
        their gates are open (while one is closed the rest of the launch goes home). Deeper
        queues keep stolen TPCs busy across the host's pauses; what is queued when a
        request starts waits for its end (at most `request_hold_max_us`, then the gate is
        forced for it), holding the launch's completion that long.
    stealing : bool
        Let best-effort atoms use idle latency-critical TPCs.
    steal_max_block_us : float
        Do not steal for kernels whose blocks (waves) are predicted to run longer than this:
        a running block cannot be preempted, so it bounds how fast TPCs come back. 1.5 ms
        let the ML bench's training steal most of its kernels without raising the tail.
    lc_idle_grace_us : float
        A latency-critical tenant counts as busy for this long after its last launch, so
        the host's gaps between the kernels of one request are not stolen.
    steal_poll_us : float
        How often a waiting best-effort thread reads a closed gate or a followed tenant's
        request signal (a word in shared memory), so it uses TPCs as soon as they are
        free; 0 waits blocking.
    steal_reserve_tpcs : int
        Of each latency-critical tenant's TPCs, its first this many are never stolen: a
        request starts at once on them. 0 (the default) steals them all: reserving 8 of 33
        lowered the tail a little and cost more training than it was worth.
    atomize_best_effort : bool
        Split best-effort launches into atoms (False: the no-atomization ablation).
    freeze_gc : bool
        Call ``gc.freeze()`` when the scheduler starts and whenever a thread enters a
        tenant (undone by `Scheduler.close`), so a full collection of CuPy's and Numba's
        many objects does not pause every thread for tens of milliseconds. Not in virtual
        time (the simulated device), where a pause costs nothing.
    blocking_waits : {"none", "best-effort", "all"}
        On the GPU, whose waits for atoms sleep in the driver (blocking-sync events, each an
        interrupt at completion) instead of spinning: nobody's (the default: sleeping
        cost throughput and tail alike), best-effort threads' only, or every thread's.
    yield_host_to_latency_critical : bool
        Without device gates, on the GPU: while a latency-critical tenant is busy, a
        best-effort thread issues only when at most `yield_queue_us` of its work remains
        queued, and otherwise waits with the GIL released, so the latency-critical thread
        does not lose GIL hand-offs at each of its driver calls.
    yield_queue_us : float
        That bound; 0 (the default) waits until the queue is predicted empty.
    lc_timing_every : int
        Time one in this many latency-critical launches with device events (for the
        predictor and the accounting): an untimed launch stays within a few microseconds of
        a plain CuPy launch, and one in 256 still gives about a hundred samples of a tenant
        launching 4000 kernels a second for 6 s.
    hold_best_effort_in_requests : bool
        On the GPU, while a latency-critical tenant of this process is inside
        `Tenant.request` (or `Tenant.on_tpcs`), best-effort threads stop at their next
        atom, GIL released, until the request ends: the request's thread then has the
        interpreter to itself (their queued atoms keep running on the GPU).
    request_hold_max_us : float
        The longest a best-effort thread is held by one request, and the longest a gate
        keeps queued stolen atoms waiting before it is forced for them: a latency-critical
        tenant busy without a break slows best-effort work but cannot stop it.
    short_best_effort_whole : bool
        A best-effort launch predicted to run within `atom_us` is issued unsplit through
        the original kernel (the same placement and accounting as its one atom, without
        building a rewritten-kernel plan), saving host time per launch; a launch never
        timed goes through the plan, whose first atom teaches the predictor.
    gil_switch_interval_s : float or None
        While the scheduler is open, ``sys.setswitchinterval`` is set to this (restored when
        the last scheduler of the process that set it closes): a latency-critical thread
        waiting for the GIL behind a busy
        best-effort thread would otherwise wait up to Python's default 5 ms. None leaves it.
    wait_timeout_s : float or None
        The longest one wait of the scheduler lasts: for an atom or a tenant's queued work
        (`Tenant.synchronize`, `Scheduler.synchronize`, `Scheduler.close`), for a thread
        inside a launch or the gate keeper's thread while closing. Past it the wait raises
        `SchedulerTimeoutError` naming the tenant, so work that can never finish (a kernel
        that never ends, a gate nobody opens) fails its program instead of hanging it; a
        minute is far beyond any atom, request or queue. The driver has no timed wait: on
        the GPU a best-effort tenant's waits then poll their events (the gaps growing with
        the time waited, at most 1 ms), while a latency-critical tenant's stay in the
        driver (its streams wait on no gate and no other tenant: they end or fail). None:
        every wait in the driver, unbounded.
    """

    atom_us: float = dataclasses.field(default_factory=lambda: get_settings().atom_us)
    queue_cap_us: float = 250.0
    home_atom_us: float = 4000.0
    home_queue_cap_us: float = 2000.0
    issue_ahead_of_drain: Literal["none", "home", "all"] = "none"
    device_gates: bool = True
    lend_best_effort_tpcs: Literal["gated", "priority", "none"] = "gated"
    steal_queue_us: float = 2000.0
    stealing: bool = True
    steal_max_block_us: float = 1500.0
    lc_idle_grace_us: float = 200.0
    steal_poll_us: float = 100.0
    steal_reserve_tpcs: int = 0
    atomize_best_effort: bool = True
    gil_switch_interval_s: float | None = 0.00005
    freeze_gc: bool = True
    lc_timing_every: int = 256
    yield_host_to_latency_critical: bool = True
    yield_queue_us: float = 0.0
    blocking_waits: Literal["none", "best-effort", "all"] = "none"
    hold_best_effort_in_requests: bool = True
    request_hold_max_us: float = 20000.0
    short_best_effort_whole: bool = True
    wait_timeout_s: float | None = 60.0

    def __post_init__(self) -> None:
        for name in ("atom_us", "home_atom_us", "queue_cap_us", "home_queue_cap_us", "steal_max_block_us",
                     "request_hold_max_us", "steal_queue_us"):
            value = getattr(self, name)
            require(is_number(value) and value > 0, f"Policy.{name}", "a positive number", value)
        for name in ("lc_idle_grace_us", "yield_queue_us", "steal_poll_us"):
            value = getattr(self, name)
            require(is_number(value) and value >= 0, f"Policy.{name}", "a number >= 0", value)
        require(is_int(self.lc_timing_every) and self.lc_timing_every >= 1, "Policy.lc_timing_every", "an int >= 1",
                self.lc_timing_every)
        require(is_int(self.steal_reserve_tpcs) and self.steal_reserve_tpcs >= 0, "Policy.steal_reserve_tpcs",
                "an int >= 0", self.steal_reserve_tpcs)
        require(self.blocking_waits in BLOCKING_WAITS, "Policy.blocking_waits", f"one of {BLOCKING_WAITS}",
                self.blocking_waits)
        require(self.lend_best_effort_tpcs in LEND_MODES, "Policy.lend_best_effort_tpcs", f"one of {LEND_MODES}",
                self.lend_best_effort_tpcs)
        require(self.issue_ahead_of_drain in ISSUE_AHEAD, "Policy.issue_ahead_of_drain", f"one of {ISSUE_AHEAD}",
                self.issue_ahead_of_drain)
        for field in dataclasses.fields(self):
            if isinstance(field.default, bool):
                value = getattr(self, field.name)
                require(isinstance(value, bool), f"Policy.{field.name}", "a bool", value)
        gil = self.gil_switch_interval_s
        require(gil is None or (is_number(gil) and gil > 0), "Policy.gil_switch_interval_s", "> 0 or None", gil)
        bound = self.wait_timeout_s
        require(bound is None or (is_number(bound) and math.isfinite(bound) and bound > 0), "Policy.wait_timeout_s",
                "a finite number > 0 or None", bound)
