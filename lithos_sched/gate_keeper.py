"""Opens the gates that latency-critical launches outside any request closed, and the
gates that stayed closed too long on a best-effort tenant's stranded atoms.

A request opens its tenant's gate itself, by a stream write at its end. A launch outside
any request cannot: the next kernel of the same request may follow within microseconds,
and reopening between them would let a best-effort atom in ahead of it. Such a launch
closes the gate and leaves it held; the keeper opens it (a host store) once the tenant is
idle: no work on the device and no launch within `Policy.lc_idle_grace_us`. Nothing else
may be counted on to do it: a best-effort thread can be blocked in CuPy's own
``synchronize`` on atoms queued behind that very gate.

Atoms queued on stolen TPCs before a gate closed wait for it to open, and so does the
completion of their launch. A latency-critical tenant busy without a break would hold
them for ever; the scheduler asks the keeper (`GateKeeper.at`) to look again after
`Policy.request_hold_max_us` and open the gate if they still have not started, as the
host's hold lets a best-effort thread go after that long.

On the GPU the keeper is one daemon thread per scheduler, asleep until it has something
to do. On the simulated device it is timers of the virtual timeline.

A keeper that cannot judge fails open: if one of its checks raises (the context lost to a
fault, say), it logs that once and forces every gate it keeps for good, so no atom waits
behind a gate that nobody would open any more (`GateKeeper.failed`); the scheduler clears
the gates this process forced when it closes.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger("lithos_sched")


class GateKeeper:
    """Runs the scheduler's gate-opening checks at their times.

    Parameters
    ----------
    scheduler : Scheduler
        Whose latency-critical tenants' gates it keeps; its `Policy` gives the idle grace
        and the poll (`Policy.lc_idle_grace_us`, `Policy.steal_poll_us`), and on the
        simulated device its timeline runs the keeper's timers.
    """

    def __init__(self, scheduler: Any):
        self._scheduler = scheduler
        self._tenants = [t for t in scheduler.tenants.values() if t.gate is not None]
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._held_armed = False
        self._stopped = False
        self.failed: BaseException | None = None

    def held(self) -> bool:
        """Whether any gate is held by launches now."""
        return any(t.gate_held for t in self._tenants)

    def arm(self) -> None:
        """A gate was just held: open it once its tenant is idle."""
        if self._scheduler.device.simulated:
            if not self._held_armed:
                self._held_armed = True
                self._scheduler.timeline.call_at(self._held_wake_us(), lambda: self._run_safely(self._on_held_timer))
            return
        self._wake_thread()

    def at(self, t_us: float, fn: Callable[[], None]) -> None:
        """Run ``fn`` at host time ``t_us`` (the timeline's clock), from the keeper; an
        exception it raises makes the keeper fail open (see the module)."""
        if self._scheduler.device.simulated:
            self._scheduler.timeline.call_at(t_us, lambda: self._run_safely(fn))
            return
        with self._cond:
            heapq.heappush(self._timers, (t_us, next(self._seq), fn))
        self._wake_thread()

    def stop(self) -> None:
        """End the keeper's thread, waiting at most `Policy.wait_timeout_s` (a thread that
        does not end is left behind, a daemon, with a warning), and open every gate still
        held (idempotent)."""
        with self._cond:
            self._stopped = True
            self._cond.notify()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(self._scheduler.policy.wait_timeout_s)
            if thread.is_alive():
                log.warning("lithos: the gate keeper's thread did not end within %s s; left running",
                            self._scheduler.policy.wait_timeout_s)
        for t in self._tenants:
            t.release_gate()

    def _run_safely(self, fn: Callable[[], None]) -> None:
        """``fn()`` unless the keeper stopped; if it raises, fail open (once logged): force
        every gate for good."""
        if self._stopped:
            return  # a timer of a closed scheduler (the simulated device's timers outlive it)
        try:
            fn()
        except Exception as exc:
            if self.failed is None:
                self.failed = exc
                log.warning("lithos: the gate keeper failed (%s: %s); every gate of the scheduler is forced open "
                            "from now on, so no best-effort atom waits behind one", type(exc).__name__, exc)
            for t in self._scheduler._lc:
                if t.gate is not None and not t.gate.memory.closed:
                    self._scheduler.timeline.force_gate(t.gate, True)

    def _wake_thread(self) -> None:
        with self._cond:
            if self._thread is None and not self._stopped:
                self._thread = threading.Thread(target=self._run, name="lithos-gate-keeper", daemon=True)
                self._thread.start()
            self._cond.notify()

    def _open_idle(self) -> None:
        for t in self._tenants:
            t.release_gate_if_idle()

    def _held_wake_us(self) -> float:
        """No sooner than one poll from now, and not before the earliest holder's grace ends."""
        policy = self._scheduler.policy
        now = self._scheduler.timeline.now_us()
        held = [t.held_since_us for t in self._tenants if t.gate_held]
        return max(now + max(policy.steal_poll_us, 1.0), min(held, default=now) + policy.lc_idle_grace_us)

    def _on_held_timer(self) -> None:
        self._held_armed = False
        self._open_idle()
        if self.held():
            self.arm()

    def _next_wake_us(self) -> float | None:
        wakes = [self._timers[0][0]] if self._timers else []
        if self.held():
            wakes.append(self._held_wake_us())
        return min(wakes, default=None)

    def _run(self) -> None:
        clock = self._scheduler.timeline.now_us
        while True:
            due: list[Callable[[], None]] = []
            with self._cond:
                while not self._stopped:
                    wake = self._next_wake_us()
                    if wake is None:
                        self._cond.wait()
                        continue
                    delay_us = wake - clock()
                    if delay_us <= 0 or not self._cond.wait(delay_us / 1e6):
                        break  # its time came (a notify means something changed: look again)
                if self._stopped:
                    return
                now = clock()
                while self._timers and self._timers[0][0] <= now:
                    due.append(heapq.heappop(self._timers)[2])
            for fn in due:
                self._run_safely(fn)
            self._run_safely(self._open_idle)
