"""CPU tier: faults stay in their tenant and no wait hangs (docs/faults.md).

On the simulated device, driven from one thread in virtual time: a best-effort launch
interrupted mid-way or failing to issue, a context lost to a sticky error, work that can
never finish, a thread stuck inside a launch while the scheduler closes, gates left
closed or forced by processes that died, a gate keeper that fails.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from lithos_atom.errors import LithosCudaError
from lithos_sched import (
    KernelFaultError,
    Policy,
    Priority,
    Scheduler,
    SchedulerClosedError,
    SchedulerTimeoutError,
    SimDevice,
    SimKernel,
    TenantSpec,
)
from lithos_sched.request_signal import RequestSignal
from lithos_sched.timeline import SimTimeline
from tests.sim_helpers import ClockTimeline, FaultyTimeline, bound, sim_plan

SPECS = [TenantSpec("lc", Priority.LATENCY_CRITICAL, share=0.5), TenantSpec("be", Priority.BEST_EFFORT, share=0.5)]
ARRIVALS_US = [300.0 + 700.0 * i for i in range(12)]


def make(policy: Policy | None = None, timeline: type = SimTimeline) -> tuple[SimDevice, Scheduler]:
    device = SimDevice(num_tpcs=8, seed=0)
    sched = Scheduler(device, SPECS, policy or Policy(atom_us=200.0))
    sched.timeline = timeline(device)
    return device, sched


def ran_blocks(device: SimDevice, kernel: str) -> list[int]:
    return sorted(r.block for r in device.records if r.kernel == kernel)


def serve_requests(device: SimDevice, sched: Scheduler) -> dict[str, float]:
    """Latency-critical requests at `ARRIVALS_US` (each a `Tenant.request` of one kernel,
    played by virtual-time callbacks); returns the arrival of each request's kernel."""
    tl, lc = sched.timeline, sched.tenant("lc")
    arrived: dict[str, float] = {}

    def request(i: int) -> None:
        kernel = SimKernel(f"lc{i}", 16, 50.0)
        arrived[kernel.name] = tl.now_us()
        with bound(lc), lc.request():
            sched.submit_for(lc, sim_plan(device, kernel))

    for i, at in enumerate(ARRIVALS_US):
        tl.call_at(at, lambda i=i: request(i))
    return arrived


def latencies_us(device: SimDevice, arrived: dict[str, float]) -> list[float]:
    ends: dict[str, float] = {}
    for r in device.records:
        if r.kernel in arrived:
            ends[r.kernel] = max(ends.get(r.kernel, 0.0), r.end_us)
    assert set(ends) == set(arrived), "a request's kernel did not run"
    return [ends[k] - arrived[k] for k in arrived]


def run_beside_requests(fail_at_wait: int | None) -> tuple[SimDevice, Scheduler, list[float], SimKernel, tuple]:
    """A best-effort launch beside the latency-critical requests; its thread raises at
    its ``fail_at_wait``-th wait (None: healthy). Then it launches again and everything
    runs to the end; also returns the latency-critical gate's state before closing
    (open, forced, requests open)."""
    device, sched = make()
    tl, be = sched.timeline, sched.tenant("be")
    arrived = serve_requests(device, sched)
    waits = {"n": 0}
    real_wait = tl.wait_until

    def wait_until(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        waits["n"] += 1
        if waits["n"] == fail_at_wait:
            raise RuntimeError("the best-effort thread failed mid-launch")
        return real_wait(*args, **kwargs)

    tl.wait_until = wait_until
    first = SimKernel("be0", 16 * 60, 100.0)
    if fail_at_wait is None:
        sched.submit_for(be, sim_plan(device, first))
    else:
        with pytest.raises(RuntimeError, match="failed mid-launch"):
            sched.submit_for(be, sim_plan(device, first))
    sched.submit_for(be, sim_plan(device, SimKernel("be1", 16 * 20, 100.0)))  # the tenant is usable
    be.synchronize()
    tl.advance_to(ARRIVALS_US[-1] + 5000.0)
    gate = sched.tenant("lc").gate
    state = (gate.is_open(), gate.forced, sched._requests_open)
    sched.close()
    return device, sched, latencies_us(device, arrived), first, state


def test_a_best_effort_thread_that_raises_mid_launch_loses_nothing_and_the_requests_keep_their_latency():
    _, _, healthy, _, _ = run_beside_requests(None)
    device, sched, faulty, first, gate_state = run_beside_requests(3)
    assert ran_blocks(device, "be0") == list(range(first.grid_blocks))  # every submitted block, once
    assert ran_blocks(device, "be1") == list(range(16 * 20))
    assert float(np.percentile(faulty, 99)) <= 1.5 * float(np.percentile(healthy, 99))
    assert gate_state == (True, False, 0)  # open, not forced, no request left open
    assert sched.tenant("be").book.in_launch is False and device.live_partitions() == 0


def test_a_launch_that_fails_to_issue_is_not_issued_again_and_the_tenant_goes_on():
    device, sched = make()
    be = sched.tenant("be")
    kernel = SimKernel("k", 16 * 40, 100.0)
    plan = sim_plan(device, kernel)
    real_issue, calls = plan.issue_range, {"n": 0}

    def issue_range(start: int, count: int, stream: object) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise ValueError("the front end could not launch this atom")
        real_issue(start, count, stream)

    plan.issue_range = issue_range
    with pytest.raises(ValueError, match="could not launch"):
        sched.submit_for(be, plan)
    be.synchronize()
    ran = ran_blocks(device, "k")
    assert len(ran) == len(set(ran)) and ran == list(range(len(ran))) and 0 < len(ran) < kernel.grid_blocks
    sched.submit_for(be, sim_plan(device, SimKernel("next", 16 * 4, 100.0)))
    be.synchronize()
    assert ran_blocks(device, "next") == list(range(64))
    sched.close()


def test_a_lost_context_names_the_tenant_then_refuses_every_tenant_and_close_returns():
    device, sched = make(timeline=FaultyTimeline)
    tl, lc, be = sched.timeline, sched.tenant("lc"), sched.tenant("be")
    tl.call_at(1500.0, tl.fault)  # a kernel traps: the context is lost mid-launch
    with pytest.raises(KernelFaultError) as caught:
        sched.submit_for(be, sim_plan(device, SimKernel("train", 16 * 100, 100.0)))
    err = caught.value
    assert err.tenant == "be" and err.sticky and sched.fault is err
    assert "tenant 'be'" in str(err) and "'train'" in str(err) and "CUDA_ERROR_ILLEGAL_ADDRESS" in str(err)
    with pytest.raises(KernelFaultError, match="tenant 'lc': the CUDA context was lost to an earlier fault"):
        sched.submit_for(lc, sim_plan(device, SimKernel("infer", 16, 50.0)))
    with bound(lc), pytest.raises(KernelFaultError, match="tenant 'lc'"):
        with lc.request():
            pass
    with pytest.raises(KernelFaultError, match="tenant 'be'"):
        be.synchronize()
    assert lc.gate.is_open() and not sched._requests_open
    t0 = time.monotonic()
    sched.close()  # the fault was raised already: close cleans up and returns
    assert time.monotonic() - t0 < 5.0
    with pytest.raises(SchedulerClosedError):
        sched.submit_for(be, sim_plan(device, SimKernel("late", 16, 50.0)))


def test_a_request_whose_context_is_lost_still_closes_its_signal_and_opens_its_gate(tmp_path):
    device, sched = make(timeline=FaultyTimeline)
    tl, lc = sched.timeline, sched.tenant("lc")
    with RequestSignal.create(tmp_path) as signal:
        lc.publish_requests(signal)
        with bound(lc), pytest.raises(KernelFaultError, match="tenant 'lc'.*end of a request"):
            with lc.request():
                assert signal.open_requests == 1 and not signal.gate.is_open()
                tl.fault()
        assert signal.open_requests == 0 and signal.gate.is_open()  # followers are not left waiting
        assert not sched._requests_open
        sched.close()


def test_a_cuda_error_that_loses_no_context_names_the_tenant_and_leaves_the_scheduler_usable():
    device, sched = make()
    be = sched.tenant("be")
    plan = sim_plan(device, SimKernel("k", 16 * 4, 100.0))
    plan.issue_range = lambda *a: (_ for _ in ()).throw(LithosCudaError("cuLaunchKernel", 1, "CUDA_ERROR_INVALID_VALUE"))
    with pytest.raises(KernelFaultError, match="tenant 'be': a launch of kernel 'k' failed") as caught:
        sched.submit_for(be, plan)
    assert not caught.value.sticky and sched.fault is None
    sched.submit_for(be, sim_plan(device, SimKernel("ok", 16 * 4, 100.0)))
    be.synchronize()
    assert ran_blocks(device, "ok") == list(range(64))
    sched.close()


def test_work_that_never_finishes_times_out_naming_the_tenant_and_close_returns():
    device, sched = make(Policy(atom_us=200.0, wait_timeout_s=0.5))
    be = sched.tenant("be")
    sched.submit_for(be, sim_plan(device, SimKernel("endless", 16, 1e12)))  # blocks that never end
    t0 = device.now_us
    with pytest.raises(SchedulerTimeoutError, match="tenant 'be' waited 0.5 s for kernel 'endless'") as caught:
        be.synchronize()
    assert caught.value.tenant == "be" and device.now_us - t0 == pytest.approx(0.5e6)
    assert sched.tenant("lc").gate.is_open()
    with pytest.raises(SchedulerTimeoutError, match="tenant 'be'"):
        sched.close()
    assert sched._closed


def test_close_returns_while_a_tenant_thread_is_stuck_inside_a_launch():
    device, sched = make(Policy(atom_us=200.0, wait_timeout_s=0.3))
    be = sched.tenant("be")
    plan = sim_plan(device, SimKernel("k", 16 * 4, 100.0))
    inside, release = threading.Event(), threading.Event()
    real_issue = plan.issue_range

    def stuck(start: int, count: int, stream: object) -> None:
        inside.set()
        release.wait(10)  # a thread blocked in a driver call that does not return
        real_issue(start, count, stream)

    plan.issue_range = stuck
    thread = threading.Thread(target=lambda: sched.submit_for(be, plan), daemon=True)
    thread.start()
    assert inside.wait(5)
    t0 = time.monotonic()
    with pytest.raises(SchedulerTimeoutError, match="tenant 'be' was still inside a launch"):
        sched.close()
    assert 0.25 <= time.monotonic() - t0 < 5.0
    release.set()
    thread.join(10)
    assert not thread.is_alive()


def best_effort_only(policy: Policy | None = None) -> tuple[SimDevice, Scheduler]:
    """A scheduler of one best-effort tenant on half of 8 TPCs; the others are free to follow."""
    device = SimDevice(num_tpcs=8, seed=0)
    sched = Scheduler(device, [TenantSpec("be", Priority.BEST_EFFORT, tpcs=(0, 1, 2, 3))], policy)
    sched.timeline = SimTimeline(device)
    return device, sched


def test_atoms_behind_the_gate_of_a_process_that_died_in_a_request_finish_and_close_clears_the_force(tmp_path):
    device, sched = best_effort_only(Policy(atom_us=200.0, request_hold_max_us=2000.0))
    tl, be = sched.timeline, sched.tenant("be")
    with RequestSignal.create(tmp_path) as signal:
        sched.follow(TenantSpec("remote", Priority.LATENCY_CRITICAL, tpcs=(4, 5, 6, 7)), signal)
        kernel = SimKernel("k", 12 * 40, 100.0)
        sched.submit_for(be, sim_plan(device, kernel))  # teaches the predictor
        be.synchronize()
        # a request opens while stolen atoms are queued, and its process dies inside it
        tl.call_at(tl.now_us() + 150.0, lambda: tl.store_gate(signal.gate, 0))
        sched.submit_for(be, sim_plan(device, SimKernel("k2", 12 * 40, 100.0)))
        done = tl.record(be.stream)
        tl.synchronize(done)  # does not hang: the keeper forced the dead tenant's gate
        assert be.stats.forced_gate_opens >= 1 and ran_blocks(device, "k2") == list(range(12 * 40))
        with RequestSignal.attach(signal.path) as other:  # how other processes see the page
            signal.gate.force(True)  # as if this process's keeper still held it forced
            sched.close()  # closes the signal it followed
            assert other.gate.forced_by() is None  # other processes' atoms stop at it again


def test_a_gate_keeper_that_fails_forces_every_gate_open_and_close_clears_them(caplog):
    device, sched = make()
    tl, lc = sched.timeline, sched.tenant("lc")
    tl.store_gate(lc.gate, 0)  # a request that will never end

    def broken() -> None:
        raise RuntimeError("a check of the keeper failed")

    sched._gate_keeper.at(100.0, broken)
    with caplog.at_level(logging.WARNING, logger="lithos_sched"):
        tl.advance_to(200.0)
    assert isinstance(sched._gate_keeper.failed, RuntimeError) and lc.gate.is_open()
    assert lc.gate.forced_by() == os.getpid() and "gate keeper failed" in caplog.text
    sched._clear_forced_gates()  # what close does, before the page goes
    assert not lc.gate.forced
    sched.close()


def test_a_gate_forced_by_a_process_that_died_is_cleared_by_the_ledger_watch(tmp_path):
    from lithos_sched.ledger import Ledger
    from lithos_sched.ledger_watch import LedgerWatch

    device, sched = best_effort_only()
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    gone = int(child.stdout)  # a pid whose process has exited
    with RequestSignal.create(tmp_path) as signal, Ledger(device.uuid, device.num_tpcs, directory=tmp_path) as ledger:
        sched.follow(TenantSpec("remote", Priority.LATENCY_CRITICAL, tpcs=(4, 5, 6, 7)), signal)
        watch = LedgerWatch(ledger, sched)
        signal.gate.memory.words[signal.gate.index + 1] = (gone << 1) | 1
        assert signal.gate.forced_by() == gone
        watch.clear_dead_forcers()
        assert not signal.gate.forced
        signal.gate.force(True)  # a live forcer (this process) is left alone
        watch.clear_dead_forcers()
        assert signal.gate.forced_by() == os.getpid()
        signal.gate.force(False)
        sched.close()


def test_a_ledger_locked_too_long_is_a_timeout_naming_the_file(tmp_path, monkeypatch):
    import fcntl

    from lithos_sched import ledger as ledger_module
    from lithos_sched.ledger import Ledger

    with Ledger("SIM-9", 8, directory=tmp_path) as ledger:
        fd = os.open(ledger.path, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # another open file: as another process's lock
            monkeypatch.setattr(ledger_module, "LOCK_TIMEOUT_S", 0.2)
            t0 = time.monotonic()
            with pytest.raises(TimeoutError, match=f"ledger {ledger.path} stayed locked"):
                ledger.entries()
            assert time.monotonic() - t0 < 2.0
            fcntl.flock(fd, fcntl.LOCK_UN)
            assert ledger.entries() == []
        finally:
            os.close(fd)


def test_a_bounded_gpu_wait_polls_with_growing_pauses_and_times_out(monkeypatch):
    tl = ClockTimeline(done_at_us=float("inf"), monkeypatch=monkeypatch)
    with pytest.raises(TimeoutError, match="within 0.01 s"):
        tl.wait_until(object(), None, 0.0, timeout_us=10_000.0)
    assert tl.clock_us == pytest.approx(10_000.0)
    assert tl.sleeps_us[0] == 50.0 and max(tl.sleeps_us) <= 1000.0 and len(tl.sleeps_us) < 60
    tl = ClockTimeline(done_at_us=420.0, monkeypatch=monkeypatch)
    assert tl.wait_until(object(), None, 0.0, timeout_us=10_000.0) is True
    assert 420.0 <= tl.clock_us <= 420.0 * 1.25 + 50.0  # noticed within a quarter of the time waited


def test_a_latency_critical_tenants_waits_on_the_gpu_stay_in_the_driver():
    device, sched = make()
    assert sched._wait_bound_us(sched.tenant("be")) == 60e6
    assert sched._wait_bound_us(sched.tenant("lc")) == 60e6  # virtual time bounds every wait
    sched.timeline.virtual = False  # as on the GPU's timeline
    try:
        assert sched._wait_bound_us(sched.tenant("lc")) is None and sched._wait_bound_us(sched.tenant("be")) == 60e6
    finally:
        del sched.timeline.virtual
    sched.close()


@pytest.mark.parametrize("value", [0, -1.0, float("inf"), float("nan"), "60", True])
def test_wait_timeout_must_be_a_finite_positive_number_or_none(value):
    with pytest.raises(ValueError, match="Policy.wait_timeout_s must be a finite number > 0 or None"):
        Policy(wait_timeout_s=value)
    assert Policy(wait_timeout_s=None).wait_timeout_s is None
