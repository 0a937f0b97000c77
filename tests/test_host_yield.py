"""CPU tier: a best-effort thread's host yield to a busy latency-critical tenant
(`Scheduler._yield_to_latency_critical`), run on the simulated device with the GPU-only
yield switched on, so its virtual time shows when the thread would go on issuing."""

from __future__ import annotations

import pytest

from lithos_atom.plan import KernelKey
from lithos_sched import Policy, Priority, Scheduler, SimDevice, TenantSpec
from lithos_sched.sim_kernel import SimKernel
from lithos_sched.scheduler import AtomRecord
from lithos_sched.timeline import SimTimeline

SPECS = [TenantSpec("lc", Priority.LATENCY_CRITICAL, share=0.5), TenantSpec("be", Priority.BEST_EFFORT, share=0.5)]


def scheduler(policy: Policy) -> tuple[Scheduler, SimTimeline]:
    device = SimDevice(num_tpcs=8, seed=0)
    sched = Scheduler(device, SPECS, policy)
    sched.timeline.virtual = False  # take the GPU path: virtual time has no GIL to yield
    return sched, sched.timeline


def busy_latency_critical(sched: Scheduler, kernel_us: float) -> float:
    """Put one unsplit kernel of ``kernel_us`` on the latency-critical tenant's stream
    (as its launch path does); returns when it will end."""
    lc = sched.tenant("lc")
    tl = sched.timeline
    start = tl.now_us()
    lc.stream.launch(SimKernel("lc", 1, kernel_us))
    lc.book.last_submit_us = start
    return start + kernel_us


def queue_best_effort(sched: Scheduler, atom_us: float) -> None:
    """Queue one best-effort atom of ``atom_us`` on its home partition's stream."""
    be = sched.tenant("be")
    stream = be.home.normal
    tl = sched.timeline
    begin = tl.record(stream)
    stream.launch(SimKernel("be", 1, atom_us))
    end = tl.record(stream)
    key = KernelKey("be", (1, 1, 1), (32, 1, 1), 0, ())
    starts = max([r.predicted_end_us for r in be.book.inflight], default=tl.now_us())  # after those queued before
    be.book.inflight.append(AtomRecord(be, key, 0, 1, be.home, stream, begin, end, 1, atom_us, starts + atom_us, False))


@pytest.fixture
def policy() -> Policy:
    """Issue again once one atom of work is left (the bound used before the default became 0)."""
    return Policy(atom_us=1000.0, lc_idle_grace_us=0.0, yield_queue_us=1000.0)


def test_with_work_queued_the_best_effort_thread_waits_while_the_latency_critical_tenant_is_busy(policy):
    sched, tl = scheduler(policy)
    try:
        for _ in range(3):
            queue_best_effort(sched, 1000.0)
        lc_end = busy_latency_critical(sched, 800.0)
        sched._yield_to_latency_critical(sched.tenant("be"))
        # it woke when one atom was left (at 2000 us) and found the latency-critical tenant idle
        assert lc_end <= tl.now_us() == 2000.0
        assert sched.tenant("lc").idle()
        assert sched.tenant("be").stats.yield_wait_ms == pytest.approx(2.0)  # accounted as such
        assert sched.tenant("be").stats.queue_wait_ms == 0.0
    finally:
        sched.close()


def test_with_less_than_an_atom_queued_it_goes_on_issuing_at_once(policy):
    sched, tl = scheduler(policy)
    try:
        queue_best_effort(sched, 900.0)  # under one atom: its TPCs would soon idle if it waited
        busy_latency_critical(sched, 800.0)
        before = tl.now_us()
        sched._yield_to_latency_critical(sched.tenant("be"))
        assert tl.now_us() == before
        assert not sched.tenant("lc").idle()
    finally:
        sched.close()


def test_it_goes_on_issuing_once_its_queue_runs_low_even_if_the_latency_critical_tenant_is_still_busy(policy):
    sched, tl = scheduler(policy)
    try:
        for _ in range(4):
            queue_best_effort(sched, 1000.0)
        lc_end = busy_latency_critical(sched, 10_000.0)
        sched._yield_to_latency_critical(sched.tenant("be"))
        assert tl.now_us() == 3000.0  # one atom (3000 - 4000 us) still queued
        assert tl.now_us() < lc_end
        assert not sched.tenant("lc").idle()
    finally:
        sched.close()


@pytest.mark.parametrize("mode, lc_holds, be_holds", [
    ("latency-critical", True, False), ("all", True, True), ("none", False, False)])
def test_only_latency_critical_threads_keep_the_gil_in_driver_calls(monkeypatch, mode, lc_holds, be_holds):
    from lithos_atom import driver_calls
    from lithos_atom.settings import reload_settings

    monkeypatch.setenv("LITHOS_HOLD_GIL", mode)
    reload_settings()
    try:
        sched = Scheduler(SimDevice(num_tpcs=8, seed=0), SPECS, Policy())
        with sched.tenant("lc"):
            assert driver_calls.holds_gil() is lc_holds
        with sched.tenant("be"):
            assert driver_calls.holds_gil() is be_holds
        assert driver_calls.holds_gil() is (mode == "all")  # restored on leaving the tenant
        sched.close()
    finally:
        monkeypatch.delenv("LITHOS_HOLD_GIL")
        reload_settings()


def test_a_lower_yield_bound_keeps_the_best_effort_thread_waiting_until_its_queue_drains():
    sched, tl = scheduler(Policy(atom_us=1000.0, lc_idle_grace_us=0.0, yield_queue_us=0.0))
    try:
        queue_best_effort(sched, 900.0)  # under one atom, but the bound is an empty queue
        busy_latency_critical(sched, 5000.0)
        sched._yield_to_latency_critical(sched.tenant("be"))
        assert tl.now_us() == 900.0  # waited for its last atom, then issued although still busy
        assert not sched.tenant("lc").idle()
    finally:
        sched.close()


def test_a_negative_yield_bound_is_refused_by_name():
    with pytest.raises(ValueError, match="Policy.yield_queue_us"):
        Policy(yield_queue_us=-1.0)
