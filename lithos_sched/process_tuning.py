"""The process-wide settings that open schedulers change, set and restored in one place."""

from __future__ import annotations

import gc
import sys
import threading

from lithos_sched.policy import Policy


class ProcessTuning:
    """The process-wide settings open schedulers change. The GIL switch interval
    (`Policy.gil_switch_interval_s`) is set by the first scheduler that wants it and
    restored by the last of them to close, so schedulers that overlap leave it as they
    found it. ``gc.freeze`` (`Policy.freeze_gc`) is undone by every close: frozen objects
    are never collected, the closed scheduler's among them, and the next scheduler or
    tenant thread freezes what is alive again."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._switching = 0  # open schedulers that set the switch interval
        self._saved_interval = 0.0

    def enter(self, policy: Policy, simulated: bool) -> tuple[bool, bool]:
        """Apply ``policy``'s settings for a new scheduler; returns what it took part in."""
        freeze = policy.freeze_gc
        switch = policy.gil_switch_interval_s is not None and not simulated
        with self._lock:
            if freeze:
                gc.collect()
                gc.freeze()
            if switch:
                if not self._switching:
                    self._saved_interval = sys.getswitchinterval()
                    sys.setswitchinterval(policy.gil_switch_interval_s)
                self._switching += 1
        return freeze, switch

    def leave(self, taken: tuple[bool, bool]) -> None:
        """Undo `enter` for a closing scheduler (``taken``: what `enter` returned)."""
        freeze, switch = taken
        with self._lock:
            if freeze:
                gc.unfreeze()
            if switch:
                self._switching -= 1
                if not self._switching:
                    sys.setswitchinterval(self._saved_interval)


#: The process's one `ProcessTuning`, which every scheduler goes through.
TUNING = ProcessTuning()
