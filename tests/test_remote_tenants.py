"""CPU tier: latency-critical tenants of other processes followed and unfollowed while a
scheduler runs (`Scheduler.follow`, `Scheduler.unfollow`), and the default tenant of
threads bound to none (`Scheduler.set_default_tenant`)."""

from __future__ import annotations

import pytest

from lithos_atom.plan import KernelKey, LaunchPlan
from lithos_sched import Policy, Priority, Scheduler, SchedulerClosedError, SimDevice, SimKernel, TenantSpec
from lithos_sched.request_signal import RequestSignal
from lithos_sched.tenant import TenantConfigError

LC, BE = Priority.LATENCY_CRITICAL, Priority.BEST_EFFORT
LONG = SimKernel("long", grid_blocks=8 * 60, block_us=100.0)  # 60 waves of the 8-TPC device


def plan(device: SimDevice, kernel: SimKernel) -> LaunchPlan:
    """A plan launching block ranges of a simulated kernel."""
    key = KernelKey(kernel.name, (kernel.grid_blocks, 1, 1), (256, 1, 1), 0)
    return LaunchPlan.build(key, kernel.grid_blocks, kernel.grid_blocks,
                            lambda start, count, stream: stream.launch(kernel, start, count),
                            wave_blocks=kernel.blocks_per_sm * device.num_sms)


def best_effort_scheduler(**policy: float) -> Scheduler:
    """A process's scheduler with its one best-effort tenant on TPCs 4-7 of 8."""
    return Scheduler(SimDevice(num_tpcs=8, seed=0), [TenantSpec("be", BE, tpcs=(4, 5, 6, 7))],
                     Policy(lc_idle_grace_us=0.0, **policy))


def run(sched: Scheduler, kernel: SimKernel = LONG) -> tuple[float, float]:
    """Launch ``kernel`` as the best-effort tenant; its start and end (virtual us)."""
    be = sched.tenant("be")
    t0 = sched.timeline.now_us()
    sched.submit_for(be, plan(sched.device, kernel))
    be.synchronize()
    return t0, sched.timeline.now_us()


def stolen_tpcs_since(sched: Scheduler, t_us: float) -> set[int]:
    return {t for r in sched.atoms() if r.stolen and r.start_us >= t_us for t in r.tpcs} - {4, 5, 6, 7}


def test_a_tenant_followed_while_the_scheduler_runs_is_stolen_from_and_unfollowed_no_more(tmp_path):
    sched = best_effort_scheduler()
    t0, _ = run(sched)
    assert stolen_tpcs_since(sched, t0) == set()  # no latency-critical tenant: nothing to steal
    with RequestSignal.create(tmp_path) as signal:
        attached = RequestSignal.attach(signal.path)  # as another process would
        lc = sched.follow(TenantSpec("lc", LC, tpcs=(0, 1, 2, 3)), attached)
        assert sched.followed() == ["lc"] and lc.remote and lc.gate is attached.gate
        t1, _ = run(sched)
        assert stolen_tpcs_since(sched, t1) == {0, 1, 2, 3}
        sched.unfollow("lc")
        assert sched.followed() == [] and "lc" not in sched.tenants
        assert signal.gate.forced and signal.gate.is_open()  # for good: no atom waits on it
        t2, _ = run(sched)
        assert stolen_tpcs_since(sched, t2) == set()
        sched.close()
        assert attached.gate.memory.closed  # the scheduler closed the signal it took over
    assert not signal.path.exists()


def test_a_launch_in_progress_steals_the_tpcs_of_a_tenant_that_joins_meanwhile(tmp_path):
    sched = best_effort_scheduler()
    tl = sched.timeline
    with RequestSignal.create(tmp_path) as first, RequestSignal.create(tmp_path) as second:
        sched.follow(TenantSpec("lc1", LC, tpcs=(0, 1)), RequestSignal.attach(first.path))
        t0 = tl.now_us()
        tl.call_at(t0 + 1500.0, lambda: sched.follow(TenantSpec("lc2", LC, tpcs=(2, 3)),
                                                     RequestSignal.attach(second.path)))
        run(sched)
        assert stolen_tpcs_since(sched, t0) == {0, 1, 2, 3}
        assert {t for r in sched.atoms() if r.stolen and r.start_us < t0 + 1500.0 for t in r.tpcs} <= {0, 1, 4, 5, 6, 7}
        sched.close()


def test_a_request_of_one_followed_tenant_leaves_the_others_tpcs_to_steal(tmp_path):
    sched = best_effort_scheduler()
    with RequestSignal.create(tmp_path) as first, RequestSignal.create(tmp_path) as second:
        sched.follow(TenantSpec("lc1", LC, tpcs=(0, 1)), RequestSignal.attach(first.path))
        sched.follow(TenantSpec("lc2", LC, tpcs=(2, 3)), RequestSignal.attach(second.path))
        with first.request():  # its gate closed: atoms go behind the other gate only
            t0, _ = run(sched)
            assert stolen_tpcs_since(sched, t0) == {2, 3}
            with second.request():
                t1, _ = run(sched)
                assert stolen_tpcs_since(sched, t1) == set()
        t2, _ = run(sched)
        assert stolen_tpcs_since(sched, t2) == {0, 1, 2, 3}
        sched.close()


def test_a_dead_tenants_closed_gate_holds_nothing_once_unfollowed(tmp_path):
    """A request opens on the remote tenant (its gate closes: atoms queued on its TPCs
    wait) and never ends, as when its process dies inside it; unfollowing it lets them go
    at once, instead of after the forced opening (`Policy.request_hold_max_us`)."""
    sched = best_effort_scheduler(request_hold_max_us=50_000.0)
    tl = sched.timeline
    with RequestSignal.create(tmp_path) as signal:
        sched.follow(TenantSpec("lc", LC, tpcs=(0, 1, 2, 3)), RequestSignal.attach(signal.path))
        run(sched, LONG)  # the predictor learns the blocks
        t0 = tl.now_us()
        request = signal.request()
        tl.call_at(t0 + 150.0, request.__enter__)
        tl.call_at(t0 + 1000.0, lambda: sched.unfollow("lc"))
        _, end = run(sched)
        starts = [r.start_us - t0 for r in sched.atoms() if r.stolen and r.start_us >= t0]
        assert not [t for t in starts if 150.0 < t < 1000.0]  # held by the closed gate
        assert [t for t in starts if t >= 1000.0]  # released when it was unfollowed
        assert end - t0 < 10_000.0  # not 50 ms behind the dead gate
        request.__exit__(None, None, None)
        sched.close()


def test_follow_and_unfollow_refuse_what_they_cannot_do(tmp_path):
    sched = best_effort_scheduler()
    with RequestSignal.create(tmp_path) as signal:
        with pytest.raises(TypeError, match="latency-critical"):
            sched.follow(TenantSpec("x", BE, tpcs=(0,)), signal)
        with pytest.raises(TenantConfigError, match="needs its TPC ids"):
            sched.follow(TenantSpec("x", LC, share=0.5), signal)
        with pytest.raises(TenantConfigError, match=r"overlap those of \['be'\]"):
            sched.follow(TenantSpec("x", LC, tpcs=(3, 4)), signal)
        with pytest.raises(TenantConfigError, match="'be' is a tenant of this scheduler already"):
            sched.follow(TenantSpec("be", LC, tpcs=(0,)), signal)
        with pytest.raises(KeyError, match="follows no tenant 'x'"):
            sched.unfollow("x")
        sched.follow(TenantSpec("x", LC, tpcs=(0,)), RequestSignal.attach(signal.path))
        with pytest.raises(RuntimeError, match="runs in another process"):
            sched.set_default_tenant("x")
        with pytest.raises(RuntimeError, match="another process"):
            sched.tenant("x").__enter__()
        sched.close()
        with pytest.raises(SchedulerClosedError):
            sched.follow(TenantSpec("y", LC, tpcs=(1,)), signal)


def test_threads_bound_to_no_tenant_launch_as_the_default_tenant():
    sched = Scheduler(SimDevice(num_tpcs=8, seed=0), [TenantSpec("lc", LC, tpcs=(0, 1)),
                                                      TenantSpec("be", BE, tpcs=(2, 3))])
    kernel = SimKernel("k", grid_blocks=16, block_us=10.0)
    issued: list[int] = []
    as_written = LaunchPlan.build(KernelKey("w", (1, 1, 1), (1, 1, 1), 0), 1, 1, lambda s, n, st: issued.append(n))
    sched.submit(as_written, None)  # no default tenant: runs as written
    assert issued == [1] and sched.tenant("be").stats.kernels == 0
    sched.set_default_tenant("be")
    sched.submit(plan(sched.device, kernel), None)
    sched.synchronize()
    assert sched.tenant("be").stats.kernels == 1
    assert {t for r in sched.atoms() for t in r.tpcs} <= {0, 1, 2, 3}  # its TPCs, and the idle ones it steals
    with sched.tenant("lc"):  # a bound thread still launches as its own tenant
        sched.submit(plan(sched.device, kernel), None)
    assert sched.tenant("lc").stats.kernels == 1 and sched.tenant("be").stats.kernels == 1
    sched.set_default_tenant(None)
    sched.submit(as_written, None)
    assert issued == [1, 1]
    with pytest.raises(KeyError, match="no tenant 'x'"):
        sched.set_default_tenant("x")
    sched.close()
