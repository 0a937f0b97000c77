"""Keeps a process's scheduler in step with its GPU's ledger while processes come and go.

`LedgerWatch` runs one daemon thread per process. Every ``period_s`` it reads the
ledger's generation (8 bytes, no lock) and checks that the other processes it knows of
still run (one /proc read each). When the generation moved (a process joined or left) or
a process died, it reads the ledger, which reclaims the dead process's entries, so its
TPCs are free again within about one period of its death, and brings the scheduler's
followed tenants in line (`Scheduler.follow`, `Scheduler.unfollow`): every
latency-critical tenant of another process that publishes a request signal is followed
while the scheduler has a best-effort tenant, and one that left or died is unfollowed,
its gate forced open so no best-effort atom waits for it. Every process runs a watch,
best-effort or not, so the first survivor to notice a death reclaims for all.

Each look also reads the forced word of the gates the scheduler knows (its own tenants'
and the followed ones'): a gate forced by a process that is gone (a best-effort process
killed while it let its stranded atoms through, `lithos_sched.gates`) is cleared, or the
latency-critical tenant would stay unprotected for good.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from typing import Any

from lithos_sched.ledger import Ledger, LedgerEntry
from lithos_sched.processes import ProcessId
from lithos_sched.request_signal import RequestSignal
from lithos_sched.scheduler import Scheduler, SchedulerClosedError
from lithos_sched.tenant import Priority, TenantConfigError, TenantSpec

log = logging.getLogger("lithos_sched")


class LedgerWatch:
    """Follows, in one scheduler, the latency-critical tenants other processes register.

    Parameters
    ----------
    ledger : Ledger
        The GPU's ledger, where this process's tenants are registered.
    scheduler : Scheduler
        This process's scheduler of that GPU.
    period_s : float
        How often the thread looks; 25 ms keeps a dead process's TPCs within about 30 ms
        of their return (the target is 100 ms) for a few microseconds of work per look.
    """

    def __init__(self, ledger: Ledger, scheduler: Scheduler, period_s: float = 0.025):
        if not isinstance(period_s, (int, float)) or isinstance(period_s, bool) or not period_s > 0:
            raise ValueError(f"LedgerWatch.period_s must be a number > 0, got {period_s!r}")
        self.ledger = ledger
        self.scheduler = scheduler
        self.period_s = float(period_s)
        self._me = ProcessId.current()
        self._steals = any(t.priority is Priority.BEST_EFFORT for t in scheduler.tenants.values())
        self._followed: dict[str, LedgerEntry] = {}
        self._peers: set[ProcessId] = set()
        self._generation = -1
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._warned: set[str] = set()

    def start(self) -> None:
        """Follow the tenants registered now (before returning), then watch for changes."""
        with self._on_device():
            self.sync()
        self._thread = threading.Thread(target=self._run, name="lithos-ledger-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """End the thread, waiting at most the scheduler's `Policy.wait_timeout_s` (one that
        does not end is left behind, a daemon, with a warning); idempotent. The followed
        tenants stay followed."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(self.scheduler.policy.wait_timeout_s)
            if thread.is_alive():
                self._warn(f"lithos: the ledger watch of {self.ledger.path} did not end within "
                           f"{self.scheduler.policy.wait_timeout_s} s; left running")

    def clear_dead_forcers(self) -> None:
        """Clear the forced word of every gate the scheduler knows that a process now gone set."""
        me = os.getpid()
        for t in self.scheduler._lc:
            gate = t.gate
            if gate is None or gate.memory.closed:
                continue
            pid = gate.forced_by()
            if pid is not None and pid != me and ProcessId.of(pid) is None:
                gate.force(False)

    def sync(self) -> None:
        """Read the ledger (reclaiming stale entries) and follow and unfollow to match it."""
        with self._lock:
            self._generation = self.ledger.generation()
            others = [e for e in self.ledger.entries() if e.process != self._me]
            self._peers = {e.process for e in others}
            if not self._steals:
                return
            wanted = {e.name: e for e in others if e.claim.priority is Priority.LATENCY_CRITICAL and e.claim.signal}
            for name, entry in list(self._followed.items()):
                if wanted.get(name) != entry:  # left, died, or a new tenant of the same name
                    self.scheduler.unfollow(name)
                    del self._followed[name]
            for name, entry in wanted.items():
                if name not in self._followed:
                    self._follow(entry)

    def _follow(self, entry: LedgerEntry) -> None:
        try:
            signal = RequestSignal.attach(entry.claim.signal)  # type: ignore[arg-type]
        except FileNotFoundError:
            return  # its process is leaving: the next change of the ledger says so
        except (PermissionError, ValueError) as exc:
            self._warn(f"lithos: not stealing the TPCs of tenant {entry.name!r}: {exc}")
            return
        try:
            self.scheduler.follow(TenantSpec(entry.name, Priority.LATENCY_CRITICAL, tpcs=tuple(sorted(entry.tpcs))),
                                  signal)
        except TenantConfigError as exc:
            signal.close()
            self._warn(f"lithos: not stealing the TPCs of tenant {entry.name!r}: {exc}")
            return
        except BaseException:
            signal.close()
            raise
        self._followed[entry.name] = entry

    def _warn(self, message: str) -> None:
        if message not in self._warned:
            self._warned.add(message)
            log.warning(message)

    def _changed(self) -> bool:
        """Whether the ledger changed or a known process died since the last `sync`."""
        return self.ledger.generation() != self._generation or not all(self.ledger.alive(p) for p in self._peers)

    def _on_device(self) -> Any:
        """CuPy's current device made the scheduler's GPU for the block: following a tenant
        maps its gate page and probes it with a stream, on the calling thread's device."""
        device = self.scheduler.device
        if device.simulated:
            return contextlib.nullcontext()
        import cupy

        return cupy.cuda.Device(device.device_id)

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            try:
                self.clear_dead_forcers()
                if self._changed():
                    with self._on_device():
                        self.sync()
            except SchedulerClosedError:
                return
            except Exception as exc:  # keep watching: a failed look is retried at the next period
                self._warn(f"lithos: ledger watch of {self.ledger.path}: {type(exc).__name__}: {exc}")
