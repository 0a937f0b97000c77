"""CPU tier: `Tenant.request` marks a latency-critical request, and on the GPU path best-effort
threads hold their Python until it ends (`Scheduler._hold_for_requests`). Run on the simulated
device with the GPU-only hold switched on; threads play the two tenants."""

from __future__ import annotations

import threading

import pytest

from lithos_sched import Policy, Priority, Scheduler, SimDevice, TenantSpec
from lithos_sched import tenant_runtime as scheduler_module

SPECS = [TenantSpec("lc", Priority.LATENCY_CRITICAL, share=0.5), TenantSpec("be", Priority.BEST_EFFORT, share=0.5)]


def scheduler(policy: Policy | None = None) -> Scheduler:
    sched = Scheduler(SimDevice(num_tpcs=8, seed=0), SPECS, policy or Policy())
    sched.timeline.virtual = False  # take the GPU path: virtual time has no GIL to hold for
    return sched


class RequestThread(threading.Thread):
    """A thread bound to tenant ``lc`` that opens a request and keeps it open until told."""

    def __init__(self, sched: Scheduler):
        super().__init__(daemon=True)
        self.sched = sched
        self.opened, self.leave = threading.Event(), threading.Event()
        self.left = False

    def run(self) -> None:
        lc = self.sched.tenant("lc")
        scheduler_module._current.tenant = lc  # bound as `with lc:` does, without CuPy
        with lc.request():
            self.opened.set()
            self.leave.wait(10)
            self.left = True


def test_a_request_marks_the_tenant_busy_and_nested_blocks_count_once():
    sched = scheduler(Policy(lc_idle_grace_us=0.0))
    sched.timeline.virtual = True
    lc = sched.tenant("lc")
    scheduler_module._current.tenant = lc
    try:
        assert lc.idle()
        with lc.request():
            with lc.request():
                assert not lc.idle() and sched.requests_open == 1
            assert not lc.idle() and sched.requests_open == 1
        assert lc.idle() and sched.requests_open == 0
        with lc.on_tpcs(2):  # a block on fewer TPCs is a request too
            assert sched.requests_open == 1
        assert lc.stats.requests == 2
    finally:
        scheduler_module._current.tenant = None


def test_a_best_effort_thread_is_held_until_the_request_ends():
    sched = scheduler(Policy(request_hold_max_us=10e6))
    be = sched.tenant("be")
    lc_thread = RequestThread(sched)
    lc_thread.start()
    assert lc_thread.opened.wait(10)
    released: list[bool] = []
    be_thread = threading.Thread(target=lambda: released.append((sched._hold_for_requests(be), lc_thread.left)))
    be_thread.start()
    be_thread.join(0.05)
    assert be_thread.is_alive()  # still held: the request is open
    lc_thread.leave.set()
    be_thread.join(10)
    assert released == [(True, True)]  # released by the request's end, not by the bound
    assert be.stats.request_hold_ms > 0


def test_the_hold_is_bounded_so_an_endless_request_cannot_stop_best_effort_work():
    sched = scheduler(Policy(request_hold_max_us=1000.0))
    lc_thread = RequestThread(sched)
    lc_thread.start()
    assert lc_thread.opened.wait(10)
    try:
        assert sched._hold_for_requests(sched.tenant("be")) is False  # the bound ran out
        assert not lc_thread.left
    finally:
        lc_thread.leave.set()
        lc_thread.join(10)


def test_close_releases_held_threads_and_no_hold_without_a_request_or_when_switched_off():
    sched = scheduler(Policy(request_hold_max_us=10e6))
    be = sched.tenant("be")
    assert sched._hold_for_requests(be) is True and be.stats.request_hold_ms == 0.0
    lc_thread = RequestThread(sched)
    lc_thread.start()
    assert lc_thread.opened.wait(10)
    off = scheduler(Policy(hold_best_effort_in_requests=False))
    off._requests_open = 1
    assert off._hold_for_requests(off.tenant("be")) is True and off.tenant("be").stats.request_hold_ms == 0.0
    released: list[bool] = []
    be_thread = threading.Thread(target=lambda: released.append(sched._hold_for_requests(be)))
    be_thread.start()
    be_thread.join(0.05)
    assert be_thread.is_alive()
    sched._closing = True
    with sched._request_done:
        sched._request_done.notify_all()  # as close() does before draining
    be_thread.join(10)
    assert released == [True]
    lc_thread.leave.set()
    lc_thread.join(10)


def test_request_refuses_best_effort_tenants_and_unbound_threads_by_name():
    sched = scheduler()
    with pytest.raises(TypeError, match="latency-critical"):
        with sched.tenant("be").request():
            pass
    with pytest.raises(RuntimeError, match="inside `with` tenant 'lc'"):
        with sched.tenant("lc").request():
            pass
    with pytest.raises(ValueError, match="request_hold_max_us"):
        Policy(request_hold_max_us=0)


def test_a_request_opened_while_waiting_for_room_holds_before_the_next_atom(monkeypatch):
    """A best-effort thread that waited for queue room while a request opened is held
    before it issues again, not only at its next pass (the wait can end mid-request)."""
    from lithos_atom.bench.sim_colocation import sim_plan
    from lithos_sched import SimKernel

    sched = scheduler(Policy(request_hold_max_us=10e6, stealing=False, device_gates=False))  # the host path
    be = sched.tenant("be")
    events: list[str] = []
    first_wait = [True]

    def wait_for_room(tenant, partition):  # noqa: ANN001, ANN202
        events.append("wait")
        if first_wait.pop() if first_wait else False:
            sched._requests_open = 1  # the request opens during the wait
            return True
        return False

    def hold(tenant):  # noqa: ANN001, ANN202
        events.append(f"hold, {sched.requests_open} open")
        sched._requests_open = 0  # held until the request ends
        return True

    issue = sched._issue
    monkeypatch.setattr(sched, "_wait_for_room", wait_for_room)
    monkeypatch.setattr(sched, "_hold_for_requests", hold)
    monkeypatch.setattr(sched, "_yield_to_latency_critical", lambda tenant: None)
    monkeypatch.setattr(sched, "_issue", lambda *a, **k: (events.append("issue"), issue(*a, **k))[1])
    kernel = SimKernel("be", 8, 100.0)
    sched.submit_for(be, sim_plan(sched.device, kernel))
    assert events == ["hold, 0 open", "wait", "hold, 1 open", "wait", "issue"]
