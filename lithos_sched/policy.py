"""`Policy`: the scheduler's settings, each with the measurement behind its default."""

from __future__ import annotations

import dataclasses
from typing import Literal

from lithos_sched.fields import is_int, is_number, require

#: The values of `Policy.blocking_waits`.
BLOCKING_WAITS = ("none", "best-effort", "all")
#: The values of `Policy.issue_ahead_of_drain`.
ISSUE_AHEAD = ("none", "home", "all")


@dataclasses.dataclass(frozen=True)
class Policy:
    """Scheduling policy.

    Attributes
    ----------
    atom_us : float
        Target duration of a best-effort atom. LithOS uses 250-500 us from C++; each atom
        issued from Python costs tens of microseconds of GIL time that a latency-critical
        thread may wait for, so the default is longer. The hardware already dispatches a
        latency-critical kernel's blocks ahead of queued best-effort blocks on shared SMs
        (measured), so the atom size bounds queued work, not the latency-critical wait.
    queue_cap_us : float
        A best-effort thread issues its next atom once the work it has queued on the
        stream is predicted to drain within this time (it waits for its queued atoms to
        end, so an atom longer than this is waited for to its end unless
        `issue_ahead_of_drain` says otherwise). LithOS keeps ~100 us outstanding from
        C++; issuing an atom from Python takes tens of microseconds and may wait for the
        GIL, so the default leaves room for one atom of host delay.
    home_atom_us : float
        Target duration of a best-effort atom on TPCs no latency-critical tenant uses.
        No latency-critical kernel waits behind those, so the atom only has to be short
        enough to leave the tenant's next launch a chance to steal; longer atoms mean
        fewer issues from Python, each a burst of GIL time a latency-critical thread may
        wait for (measured on the H100: a best-effort tenant scheduled on its own TPCs
        alone raised a plain latency-critical tenant's p99 from 1.30 to 2.60 ms with
        1 ms atoms, bench/results/h100-2026-11-25-session4-diagnostics).
    home_queue_cap_us : float
        The same cap on the best-effort tenant's own TPCs, which no latency-critical tenant
        uses: there, queued work delays nobody, and a deeper queue hides the host's time
        to issue the next atom (the GPU would otherwise idle between atoms).
    issue_ahead_of_drain : {"none", "home", "all"}
        Where a best-effort thread, when the one atom it has left in flight on a partition
        is longer than the cap, waits for it only until the cap before its predicted end
        and then queues the next atom behind it: nowhere (the default), on its tenant's
        own TPCs, or on stolen TPCs too. Otherwise it waits for the atom to end, as no
        queued atom's end comes within the cap sooner, and the partition idles for the
        host's time to issue the next one: on the H200 beside the inference service, the
        training process's GPU idled 10-16 % of the time in gaps of 49-114 us (median)
        between atoms (bench/results/h200-2026-12-04-run24-splitk-diag,
        -run27-diag-splitk-ab). Measured there across processes, each against ``"none"``
        interleaved over three rounds: ``"all"`` closed those gaps (median 4-28 us,
        training 0.02-0.08 of alone higher in every round) but raised the inference p99
        by 0.41-0.54 ms in every round, as a request arriving on its TPCs then waits
        behind the queued atom too (bench/results/h200-2026-12-04-run28-diag-issue-ahead);
        ``"home"`` lowered training by 0.016-0.021 in every round: a second atom of
        `home_atom_us` queued at home holds the thread there when the service goes idle,
        and the stolen TPCs' share fell from 0.61-0.62 to 0.55-0.56
        (bench/results/h200-2026-12-04-run29-diag-issue-ahead-home).
    device_gates : bool
        Queue best-effort atoms on stolen TPCs behind device-side gates
        (`lithos_sched.gates`) that each latency-critical tenant closes when its work starts
        and opens when it ends, from its own stream: stolen atoms are queued up to
        `steal_queue_us` ahead, a request stops them at the next atom boundary and its end
        resumes them, with no host round trip. Stolen atoms then run on a partition of the
        stolen TPCs only, beside the tenant's own queue at home, so a closed gate stops
        nothing at home. False, or a device that cannot map the gate words (one warning):
        the host decides every stolen atom, with the queue caps, holds and polls below.
    steal_queue_us : float
        With `device_gates`, how much best-effort work is queued on stolen TPCs while
        their gates are open (while one is closed the rest of the launch goes home). Deeper
        queues keep stolen TPCs busy across the host's pauses; what is queued when a
        request starts waits for its end (at most `request_hold_max_us`, then the gate is
        forced for it), holding the launch's completion that long.
    stealing : bool
        Let best-effort atoms use idle latency-critical TPCs.
    steal_max_block_us : float
        Do not steal for kernels whose blocks (waves) are predicted to run longer than
        this: a running block cannot be preempted, so it bounds how fast TPCs come back.
        Measured on the H200 beside the ML bench's training, interleaved over six rounds
        (bench/results/h200-2026-12-04-run6-diag-steal, -run7-diag-share): at 1000 us its
        backward GEMM (blocks of ~1.02 ms, 40 % of its GPU time) never stole and training
        reached 0.51 of alone; at 1500 us, 0.58-0.63, with the inference p99 lower in two
        of three paired rounds and 0.02 ms higher in the third; at 4000 us, 0.67-0.73,
        with the p99 above 1500's in five of six paired rounds (by 0.23-0.47 ms).
    lc_idle_grace_us : float
        A latency-critical tenant counts as busy for this long after its last launch, so
        the gaps between the kernels of one request are not stolen.
    steal_reserve_tpcs : int
        Of each latency-critical tenant's TPCs, its first this many are never stolen: a
        request that arrives while stolen blocks run starts at once on them instead of
        waiting up to one stolen wave, and spreads to the others as those blocks end.
        They are the TPCs a right-sized request runs on first (`Tenant.on_tpcs`). 0 (the
        default) steals them all. Measured on the H200 with 8 of the inference process's
        33 TPCs reserved, interleaved over three rounds
        (bench/results/h200-2026-12-04-run22-diag-mps-reserve): the request's p99 GPU wait
        fell from 1.56-1.93 to 1.37-1.59 ms and training lost 0.03-0.06 of alone, with
        the p99 lower in all three rounds by 0.04-0.35 ms; neither setting met every
        target of the ML bench in any of those rounds, and 0 keeps the training.
    steal_poll_us : float
        While a best-effort thread waits for room on its own partition and a
        latency-critical tenant followed in another process (`Tenant.follow_requests`)
        is busy, it reads that tenant's request signal about this often, and stops
        waiting as soon as the TPCs are free to steal: its next atom then goes to the
        stolen TPCs instead of queueing behind its own. A blocking wait would hold it
        on its own partition for up to one queue cap and one atom
        (`home_queue_cap_us` + `home_atom_us`) after every request. Only the signal, a
        word in shared memory, is read: the other process's interpreter is not touched.
        0 waits blocking. Measured on the H200 beside training, interleaved over three
        rounds (bench/results/h200-2026-12-04-run17-diag-mps-poll): training 0.71-0.72 of
        alone against 0.69-0.70 blocking, higher in every round, the inference p99 lower in
        two of three.
    atomize_best_effort : bool
        Split best-effort launches into atoms (False: the no-atomization ablation).
    freeze_gc : bool
        Call ``gc.freeze()`` when the scheduler starts and whenever a thread enters a
        tenant (undone by `Scheduler.close`): the objects alive then (CuPy's and Numba's
        many; entering a tenant imports Numba) leave the collector's view, so a full
        collection no longer pauses every thread for tens of milliseconds (measured: 75 ms
        without freezing; 25 ms with Numba imported after the first freeze).
    blocking_waits : {"none", "best-effort", "all"}
        On the GPU, whose waits for atoms sleep in the driver (blocking-sync events)
        instead of spinning a core: nobody's (the default), best-effort threads' only, or
        every thread's. Every blocking-sync event costs an interrupt when the GPU reaches
        it, and the spinning waits release the GIL too. ``"all"`` was measured on the H100
        with an early scheduler (bench/results/h100-2026-11-25-run7b-blocking-events:
        latency-critical p99 6.48 ms against 2.09 ms spinning). ``"best-effort"`` keeps
        the latency-critical thread's waits spinning while the best-effort thread, which
        waits for queue room most of the time (about 65 % of a run beside training, run8 of
        bench/results/h200-2026-12-04-*), stops spinning a core beside it. Measured on the
        H200 beside training, interleaved over three rounds
        (bench/results/h200-2026-12-04-run11-diag-blocking): training 0.01-0.05 lower in
        every round, the inference p99 lower in two and higher in one; hence not the default.
    yield_host_to_latency_critical : bool
        On the GPU, while a latency-critical tenant is busy (work in flight, or a launch
        within `lc_idle_grace_us`), a best-effort thread issues only when at most
        `yield_queue_us` of its work remains queued; otherwise it waits with the GIL
        released (see ``Scheduler._yield_to_latency_critical``).
    yield_queue_us : float
        That bound. 0 (the default) waits until the queue is predicted empty, which
        keeps a best-effort thread off the GIL for longer while a latency-critical
        request is being issued, at the price of its GPU queue running dry sooner.
        Measured on the H100 against one atom (1000 us), interleaved over three rounds
        (bench/results/h100-2026-11-25-session4-diagnostics/run22-diag-arms-yield.json):
        the latency-critical p99 was lower or equal in all six pairs and best-effort
        throughput the same.
    lc_timing_every : int
        Time one in this many latency-critical launches with device events (for the
        predictor and the accounting). Latency-critical kernels run unsplit, straight
        from the front end; skipping the events and their bookkeeping on the other
        launches keeps a launch within a few microseconds of a plain CuPy launch. A
        timed launch cost about 200 us of host time on a lent H100 host whose thread
        had slept between requests (bench/results/h100-2026-11-25-session4-diagnostics),
        against 11 us untimed. On the H200 beside training (interleaved over three rounds,
        bench/results/h200-2026-12-04-run9-diag-timing), timing none instead of one in 32
        lowered the inference p50 in every round (by 0.11-0.22 ms) and the p99 in two of
        three: hence one in 256, which still gives the accounting about a hundred samples
        of a tenant launching 4000 kernels a second for 6 s.
    hold_best_effort_in_requests : bool
        On the GPU, while a latency-critical tenant is inside `Tenant.request` (or
        `Tenant.on_tpcs`), best-effort threads stop at their next atom, GIL released,
        until the request ends: the request's thread then has the interpreter to itself
        (their queued atoms keep running on the GPU). Measured on the H200 (run1 of
        bench/results/h200-2026-12-04-*): without it, the inference service's issue phase
        under lithos reached 4.7 ms at p99 beside training, against 2.1 ms alone.
    request_hold_max_us : float
        The longest a best-effort thread is held by one request; past it the thread goes
        on with the rest of its launch, so a latency-critical tenant that never leaves a
        request (or serves back to back) slows best-effort work but cannot stop it.
    short_best_effort_whole : bool
        A best-effort launch predicted to run within `atom_us` on its tenant's own TPCs
        (one atom on any partition it may go to) is issued unsplit through the original
        kernel: the same placement, queue cap, events and accounting as its one atom, but
        no rewritten-kernel plan is built and no arguments are packed. That saved about
        1.5 us of host time per launch of the ML bench's batch inference on the H200, and
        batch inference beside the inference service gained 0.02-0.07 of alone in every
        round of an A/B (bench/results/h200-2026-12-04-run12-diag-short-whole). A launch
        whose kernel was never timed goes through the plan (its first atom teaches the
        predictor). False: every best-effort launch builds a plan.
    gil_switch_interval_s : float or None
        While the scheduler is open, ``sys.setswitchinterval`` is set to this (restored by
        `Scheduler.close`): a latency-critical thread waiting for the GIL behind a busy
        best-effort thread would otherwise wait up to Python's default 5 ms. None leaves it.
    """

    atom_us: float = 1000.0
    queue_cap_us: float = 250.0
    home_atom_us: float = 4000.0
    home_queue_cap_us: float = 2000.0
    issue_ahead_of_drain: Literal["none", "home", "all"] = "none"
    device_gates: bool = True
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
        require(self.issue_ahead_of_drain in ISSUE_AHEAD, "Policy.issue_ahead_of_drain", f"one of {ISSUE_AHEAD}",
                self.issue_ahead_of_drain)
        gil = self.gil_switch_interval_s
        require(gil is None or (is_number(gil) and gil > 0), "Policy.gil_switch_interval_s", "> 0 or None", gil)
