"""CPU tier: a soak of eight tenants that come and go on the simulated device
(``scripts/soak_sim.py``), a virtual second and a half in about two real ones: every block ran
exactly once, no request or gate was left behind, and the process holds what it held
after the warm-up."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from lithos_sched import Policy, Priority, Scheduler, SimDevice, SimKernel, TenantSpec
from lithos_sched.request_signal import RequestSignal
from lithos_sched.timeline import SimTimeline
from tests.sim_helpers import sim_plan

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import soak_sim  # noqa: E402


def test_eight_tenants_coming_and_going_leak_nothing_and_lose_no_block(tmp_path):
    result = soak_sim.SimSoak(virtual_s=1.5, seed=1, folder=tmp_path, rotate_ms=30.0).run()
    assert result["ok"], {k: result[k] for k in ("checks", "problems", "pending", "resources")}
    assert result["joined"] == result["left"] >= 40 and result["interrupted"] >= 2
    assert result["launches"] > 1500 and result["virtual_s"] >= 1.5
    for kind in ("lc_requests", "lc_on_tpcs", "lc_unmarked", "lc_graphs", "lc_plans", "be_graphs", "follows"):
        assert result[kind] > 0, kind
    assert list(tmp_path.iterdir()) == []  # the ledger and every request signal are gone


def test_an_unfollowed_tenants_signal_is_released_once_no_stolen_atom_waits_on_its_gate(tmp_path):
    device = SimDevice(num_tpcs=8, seed=0)
    sched = Scheduler(device, [TenantSpec("be", Priority.BEST_EFFORT, tpcs=(0, 1, 2, 3))], Policy(atom_us=200.0))
    sched.timeline = SimTimeline(device)
    be = sched.tenant("be")
    with RequestSignal.create(tmp_path) as owner:
        for round_ in range(3):
            followed = RequestSignal.attach(owner.path)
            sched.follow(TenantSpec(f"lc{round_}", Priority.LATENCY_CRITICAL, tpcs=(4, 5, 6, 7)), followed)
            sched.submit_for(be, sim_plan(device, SimKernel(f"k{round_}", 8 * 40, 100.0)))
            be.synchronize()
            assert be.stats.stolen_atoms > 0
            sched.unfollow(f"lc{round_}")
            sched.atoms()  # retires what finished
            sched.follow(TenantSpec("probe", Priority.LATENCY_CRITICAL, tpcs=(4, 5, 6, 7)), RequestSignal.attach(owner.path))
            assert followed._memory.closed  # released at the next change: no stolen atom in flight
            sched.unfollow("probe")
        assert len(sched._unfollowed_signals) <= 1
        assert device.live_partitions() >= 1
        sched.close()
    assert device.live_partitions() == 0


def test_overlapping_schedulers_leave_the_switch_interval_as_they_found_it():
    from lithos_sched.process_tuning import ProcessTuning

    tuning, policy, before = ProcessTuning(), Policy(gil_switch_interval_s=0.0002, freeze_gc=False), sys.getswitchinterval()
    first = tuning.enter(policy, simulated=False)
    second = tuning.enter(policy, simulated=False)
    try:
        tuning.leave(first)  # the first to open closes first: the other still wants it
        assert sys.getswitchinterval() == pytest.approx(0.0002)
    finally:
        tuning.leave(second)
    assert sys.getswitchinterval() == before
