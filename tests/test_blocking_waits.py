"""CPU tier: `Policy.blocking_waits` decides whose atom events are blocking-sync (the
events a thread waits on sleep in the driver instead of spinning), checked on the
simulated device through the flags the scheduler asks its timeline for."""

from __future__ import annotations

from typing import Any

import pytest

from lithos_atom.bench.sim_colocation import sim_plan
from lithos_sched import Policy, Priority, Scheduler, SimDevice, SimKernel, TenantSpec

SPECS = [TenantSpec("lc", Priority.LATENCY_CRITICAL, share=0.5), TenantSpec("be", Priority.BEST_EFFORT, share=0.5)]


class FlagRecorder:
    """The scheduler's timeline, noting the ``blocking`` flag of every event recorded."""

    def __init__(self, inner: Any):
        self.inner = inner
        self.flags: list[bool] = []

    def record(self, stream: Any, blocking: bool = False) -> Any:
        self.flags.append(blocking)
        return self.inner.record(stream, blocking)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def blocking_flags(mode: str, who: str) -> list[bool]:
    """The flags of the events recorded for one launch of tenant ``who``."""
    sched = Scheduler(SimDevice(num_tpcs=8, seed=0), SPECS, Policy(blocking_waits=mode))
    try:
        sched.timeline = recorder = FlagRecorder(sched.timeline)
        sched.submit_for(sched.tenant(who), sim_plan(sched.device, SimKernel(who, 8 * 40, 100.0)))
        sched.tenant(who).synchronize()
        return recorder.flags
    finally:
        sched.close()


@pytest.mark.parametrize(("mode", "lc_sleeps", "be_sleeps"), [
    ("none", False, False), ("best-effort", False, True), ("all", True, True)])
def test_blocking_waits_chooses_whose_waited_events_are_blocking_sync(mode, lc_sleeps, be_sleeps):
    for who, sleeps in (("lc", lc_sleeps), ("be", be_sleeps)):
        flags = blocking_flags(mode, who)
        assert flags, "the launch recorded no event"
        # the atoms' end events (waited on) follow the mode; their start events never block
        assert any(flags) is sleeps
        assert not all(flags)


@pytest.mark.parametrize("bad", [True, "best_effort", "", None])
def test_blocking_waits_refuses_other_values_by_name(bad):
    with pytest.raises(ValueError, match="Policy.blocking_waits"):
        Policy(blocking_waits=bad)
