"""CPU tier: `Policy.issue_ahead_of_drain` queues a best-effort atom behind the one in
flight once that one is predicted to end within the queue cap, where it says (the
tenant's own TPCs, stolen ones too, or nowhere), and the timelines' waits with a deadline
that it rests on (the simulated device's in virtual time, the GPU's polling loop against
a fake clock)."""

from __future__ import annotations

import pytest

from lithos_atom.bench.sim_colocation import sim_plan
from lithos_sched import Policy, Priority, Scheduler, SimDevice, SimKernel, TenantSpec
from lithos_sched.timeline import SimTimeline
from tests.sim_helpers import ClockTimeline

SPECS = [TenantSpec("lc", Priority.LATENCY_CRITICAL, share=0.5), TenantSpec("be", Priority.BEST_EFFORT, share=0.5)]
CAP_US = 100.0


def issues_of_best_effort_alone(ahead_of_drain: str, stealing: bool) -> list[tuple[float, int]]:
    """For each best-effort atom issued while the latency-critical tenant is idle (on
    stolen TPCs, or with ``stealing`` off on the tenant's own; the same atom length and
    cap on both): the predicted work still queued on its partition, and how many of the
    tenant's atoms there had not ended on the device. Each atom is also checked to be
    predicted to start after the work queued there, whichever of the partition's streams
    it went to."""
    device = SimDevice(num_tpcs=8, seed=0)
    sched = Scheduler(device, SPECS, Policy(atom_us=400.0, queue_cap_us=CAP_US, home_atom_us=400.0, device_gates=False,
                                            home_queue_cap_us=CAP_US, stealing=stealing,
                                            issue_ahead_of_drain=ahead_of_drain))
    sched.timeline = tl = SimTimeline(device)
    be = sched.tenant("be")
    seen: list[tuple[float, int]] = []
    issue = sched._issue

    def watched(tenant, plan, start, count, partition, stream, predicted, stolen):  # noqa: ANN001, ANN202
        if predicted is not None:  # the predictor knows the kernel: atoms are 4 waves
            there = [r for r in tenant.book.inflight if r.partition is partition]
            ahead = max([r.predicted_end_us - tl.now_us() for r in there], default=0.0)
            seen.append((ahead, sum(not tl.done(r.end) for r in there)))
        rec = issue(tenant, plan, start, count, partition, stream, predicted, stolen)
        if predicted is not None:
            assert rec.predicted_end_us - predicted >= max([r.predicted_end_us for r in there], default=0.0) - 1e-6
        return rec

    sched._issue = watched
    kernels = [SimKernel(f"be{i}", 16 * 40, 100.0) for i in range(3)]
    for k in kernels:  # the first launch teaches the predictor the block time
        sched.submit_for(be, sim_plan(device, k))
    sched.close()
    device.run_until_idle()
    for k in kernels:
        assert sorted(r.block for r in device.records if r.kernel == k.name) == list(range(k.grid_blocks))
    assert (be.stats.stolen_atoms > 0) is stealing
    return seen


@pytest.mark.parametrize(("mode", "stealing"), [("all", True), ("home", False)])
def test_the_next_atom_is_queued_within_the_cap_before_the_one_in_flight_ends(mode, stealing):
    seen = issues_of_best_effort_alone(mode, stealing)
    assert seen
    assert max(ahead for ahead, _ in seen) <= CAP_US + 1e-6  # the cap still bounds queued work
    assert any(ahead > 0 and running == 1 for ahead, running in seen)  # issued behind a running atom
    assert max(running for _, running in seen) <= 1  # never more than two in flight


@pytest.mark.parametrize(("mode", "stealing"), [("home", True), ("none", True), ("none", False)])
def test_elsewhere_the_next_atom_longer_than_the_cap_waits_for_the_queue_to_drain(mode, stealing):
    seen = issues_of_best_effort_alone(mode, stealing)
    assert seen
    assert all(running == 0 for _, running in seen)


@pytest.mark.parametrize("bad", [True, False, "stolen", None])
def test_issue_ahead_of_drain_refuses_other_values_by_name(bad):
    with pytest.raises(ValueError, match="Policy.issue_ahead_of_drain"):
        Policy(issue_ahead_of_drain=bad)


def test_the_simulated_timeline_stops_waiting_at_the_deadline_in_virtual_time():
    device = SimDevice(num_tpcs=8, seed=0)
    tl = SimTimeline(device)
    stream = device.partition(range(8)).normal
    stream.launch(SimKernel("long", 16, 1000.0))
    end = tl.record(stream)
    t0 = tl.now_us()
    assert tl.wait_until(end, None, 0.0, deadline_us=t0 + 300.0) is False
    assert tl.now_us() == pytest.approx(t0 + 300.0)
    assert tl.wait_until(end, lambda: False, 0.0, deadline_us=t0 + 5000.0) is True
    assert tl.now_us() == pytest.approx(t0 + 1000.0)  # the kernel's end, not the deadline


@pytest.mark.parametrize("poll_us", [100.0, 0.0])
def test_the_gpu_timeline_returns_at_the_deadline_without_sleeping_past_it(poll_us, monkeypatch):
    tl = ClockTimeline(done_at_us=5000.0, monkeypatch=monkeypatch)
    assert tl.wait_until(object(), None, poll_us, deadline_us=750.0) is False
    assert tl.clock_us == pytest.approx(750.0)
    assert max(tl.sleeps_us) <= (poll_us or 750.0) + 1e-9
    if not poll_us:
        assert len(tl.sleeps_us) == 1  # one sleep: the GIL is taken back once


def test_the_gpu_timeline_notices_the_event_within_one_poll_before_the_deadline(monkeypatch):
    tl = ClockTimeline(done_at_us=420.0, monkeypatch=monkeypatch)
    assert tl.wait_until(object(), None, 100.0, deadline_us=750.0) is True
    assert 420.0 <= tl.clock_us <= 520.0


def test_the_gpu_timeline_asks_stop_between_polls(monkeypatch):
    tl = ClockTimeline(done_at_us=5000.0, monkeypatch=monkeypatch)
    assert tl.wait_until(object(), lambda: tl.clock_us >= 300.0, 100.0) is False
    assert tl.clock_us == pytest.approx(300.0)
