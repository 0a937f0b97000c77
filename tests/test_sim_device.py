"""CPU tier: the simulated device honours the partition contract in virtual time."""

from __future__ import annotations

import collections

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lithos_sched import PartitionError, SimDevice, SimKernel, open_device


def test_open_device_without_gpu_is_simulated_and_says_so(caplog):
    with pytest.warns(RuntimeWarning, match="SIMULATED"):
        dev = open_device()
    assert dev.simulated and dev.describe()["simulated"] is True
    assert any("SIMULATED" in r.getMessage() for r in caplog.records)
    dev.close()


# ---- confinement ---------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 3, 8, 33, 66])
def test_partition_blocks_run_only_on_its_sms(n):
    dev = SimDevice()
    part = dev.partition(range(66 - n, 66))
    part.normal.launch(SimKernel("k", 4 * n * 2, 10.0, blocks_per_sm=2))
    part.high.launch(SimKernel("h", 3, 10.0))
    dev.run_until_idle()
    used = {r.sm for r in dev.records}
    assert used == set(part.sm_ids) and len(part.sm_ids) == 2 * n
    assert part.sm_ids == tuple(range(2 * (66 - n), 132))


def test_overlapping_partitions_stay_confined_per_launch():
    dev = SimDevice(num_tpcs=8)
    a, b = dev.partition(range(0, 5)), dev.partition(range(3, 8))
    la = a.normal.launch(SimKernel("a", 100, 7.0, blocks_per_sm=3))
    lb = b.high.launch(SimKernel("b", 100, 5.0, blocks_per_sm=2))
    dev.run_until_idle()
    for launch, part in ((la, a), (lb, b)):
        assert {r.sm for r in dev.records if r.launch_id == launch} <= set(part.sm_ids)


# ---- overlap and scaling ---------------------------------------------------------------------


def test_disjoint_partitions_overlap_fully():
    dev = SimDevice()
    a, b = dev.partition(range(33)), dev.partition(range(33, 66))
    k = SimKernel("k", 66 * 10, 100.0)
    a.normal.launch(k)
    b.normal.launch(k)
    dev.run_until_idle()
    assert dev.now_us == pytest.approx(1000.0)  # together as fast as one alone


def test_two_kernels_on_one_partition_share_it():
    dev = SimDevice(num_tpcs=4)
    p = dev.partition(range(4))
    k = SimKernel("k", 8 * 10, 100.0)
    p.normal.launch(k)
    p.normal_b.launch(k)
    dev.run_until_idle()
    assert dev.now_us == pytest.approx(2000.0)  # the SMs are shared: twice as long


@pytest.mark.parametrize("n", [66, 33, 22, 11, 6])
def test_time_scales_with_tpcs(n):
    dev = SimDevice()
    part = dev.partition(range(n))
    k = SimKernel("k", 132 * 6, 100.0, blocks_per_sm=1)
    start = part.normal.record()
    part.normal.launch(k)
    end = part.normal.record()
    end.synchronize()
    ideal = 600.0 * 66 / n  # every n here divides the grid into whole waves
    assert abs(dev.elapsed_us(start, end) - ideal) / ideal < 0.05


def test_partial_waves_are_quantized():
    dev = SimDevice()
    part = dev.partition(range(10))  # 20 SMs
    end = part.normal.record()
    part.normal.launch(SimKernel("k", 41, 100.0))
    done = part.normal.record()
    done.synchronize()
    assert end.elapsed_ms(done) * 1000 == pytest.approx(300.0)  # 41 blocks = 3 waves of 20


def test_blocks_per_sm_packs_waves():
    dev = SimDevice(num_tpcs=5)  # 10 SMs x 4 blocks = waves of 40
    p = dev.partition(range(5))
    e0 = p.normal.record()
    p.normal.launch(SimKernel("k", 80, 50.0, blocks_per_sm=4))
    e1 = p.normal.record()
    e1.synchronize()
    assert e0.elapsed_us(e1) == pytest.approx(100.0)
    per_sm = collections.Counter(r.sm for r in dev.records if r.start_us == 0.0)
    assert set(per_sm.values()) == {4}


# ---- determinism and jitter -------------------------------------------------------------------


def _jittered_run(seed: int) -> list[tuple[int, float, float]]:
    dev = SimDevice(seed=seed)
    dev.partition(range(10)).normal.launch(SimKernel("k", 200, 50.0, jitter=0.2))
    dev.run_until_idle()
    return [(r.sm, r.start_us, r.end_us) for r in dev.records]


def test_deterministic_for_a_seed_and_jitter_varies_with_it():
    assert _jittered_run(1) == _jittered_run(1)
    assert _jittered_run(1) != _jittered_run(2)


def test_jitter_keeps_the_mean_block_time():
    dev = SimDevice(seed=7)
    dev.partition(range(66)).normal.launch(SimKernel("k", 20_000, 100.0, jitter=0.3))
    dev.run_until_idle()
    durations = np.array([r.end_us - r.start_us for r in dev.records])
    assert durations.mean() == pytest.approx(100.0, rel=0.02) and durations.std() > 20.0


# ---- priorities and stream order ------------------------------------------------------------------


def test_high_priority_blocks_are_placed_first_but_running_blocks_are_not_preempted():
    dev = SimDevice(num_tpcs=2)
    part = dev.partition([0, 1])
    part.normal.launch(SimKernel("long", 8, 1000.0))  # 4 SMs busy for 1 ms, 4 blocks queued
    dev.run_until(10.0)
    part.high.launch(SimKernel("urgent", 4, 10.0))
    dev.run_until_idle()
    urgent = [r for r in dev.records if r.kernel == "urgent"]
    queued_long = [r for r in dev.records if r.kernel == "long" and r.start_us > 0]
    # the urgent blocks waited for the running blocks, then went ahead of the queued ones
    assert all(r.start_us == pytest.approx(1000.0) for r in urgent)
    assert min(r.start_us for r in queued_long) == pytest.approx(1010.0)


def test_priority_only_matters_on_shared_sms():
    dev = SimDevice(num_tpcs=4)
    be, lc = dev.partition([0, 1]), dev.partition([2, 3])
    be.normal.launch(SimKernel("be", 40, 1000.0))
    lc.normal.launch(SimKernel("lc", 4, 10.0))  # normal priority, but on its own TPCs
    dev.run_until_idle()
    assert all(r.start_us == 0.0 for r in dev.records if r.kernel == "lc")


def test_overlapping_partitions_give_high_priority_the_shared_sms_first():
    dev = SimDevice(num_tpcs=4)
    wide, narrow = dev.partition(range(4)), dev.partition([3])
    wide.normal.launch(SimKernel("be", 8 * 3, 100.0))  # 3 waves on all 8 SMs
    narrow.high.launch(SimKernel("lc", 4, 10.0))  # arrives while every SM is busy
    dev.run_until_idle()
    lc = [r for r in dev.records if r.kernel == "lc"]
    assert {r.sm for r in lc} == {6, 7}
    assert min(r.start_us for r in lc) == pytest.approx(100.0)  # after the first wave, not the last
    be_second_wave = [r for r in dev.records if r.kernel == "be" and r.sm in (6, 7) and r.start_us == 100.0]
    assert not be_second_wave  # the freed slots of SMs 6-7 went to the high-priority blocks


def test_a_stream_runs_its_launches_in_order():
    dev = SimDevice(num_tpcs=4)
    s = dev.partition(range(4)).normal
    first = s.launch(SimKernel("a", 3, 100.0))  # leaves 5 SMs idle
    second = s.launch(SimKernel("b", 3, 10.0))
    dev.run_until_idle()
    end_a = max(r.end_us for r in dev.records if r.launch_id == first)
    assert min(r.start_us for r in dev.records if r.launch_id == second) == pytest.approx(end_a)


def test_atoms_cover_the_grid_exactly_once():
    dev = SimDevice(num_tpcs=3)
    p = dev.partition(range(3))
    k = SimKernel("k", 100, 10.0)
    for start in range(0, 100, 30):
        p.normal.launch(k, start, min(30, 100 - start))
    dev.run_until_idle()
    assert sorted(r.block for r in dev.records) == list(range(100))


# ---- events and virtual time ----------------------------------------------------------------------


def test_stream_order_and_events():
    dev = SimDevice(num_tpcs=4)
    p = dev.partition(range(4))
    e0 = p.normal.record()
    p.normal.launch(SimKernel("a", 8, 100.0))
    e1 = p.normal.record()
    p.high.wait(e1)  # later work on the high stream waits for "a"
    p.high.launch(SimKernel("b", 1, 10.0))
    e2 = p.high.record()
    assert not e1.query() and not e2.query()
    e2.synchronize()
    assert e1.query() and dev.now_us == pytest.approx(110.0)
    assert e0.elapsed_ms(e1) == pytest.approx(0.1) and e1.elapsed_us(e2) == pytest.approx(10.0)
    never = SimDevice(num_tpcs=1).partition([0]).normal.record()
    assert never.query()  # an event on an idle stream completes at once


def test_events_order_work_across_partitions():
    dev = SimDevice(num_tpcs=4)
    a, b = dev.partition([0, 1]), dev.partition([2, 3])
    a.normal.launch(SimKernel("a", 4, 50.0))
    done_a = a.normal.record()
    b.normal.wait(done_a)
    lb = b.normal.launch(SimKernel("b", 4, 5.0))
    b.normal.synchronize()
    assert min(r.start_us for r in dev.records if r.launch_id == lb) == pytest.approx(50.0)
    with pytest.raises(RuntimeError, match="two completed events"):
        a.normal.record().elapsed_us(_pending_event(dev))


def _pending_event(dev: SimDevice):
    p = dev.partition([0])
    p.normal.launch(SimKernel("x", 1, 1.0))
    return p.normal.record()


def test_discrete_event_stepping():
    dev = SimDevice(num_tpcs=1)
    s = dev.partition([0]).normal
    assert dev.step() is False and dev.next_completion_us() is None
    s.launch(SimKernel("k", 4, 30.0))  # 2 waves of 2
    assert dev.next_completion_us() == pytest.approx(30.0)
    assert dev.step() and dev.now_us == pytest.approx(30.0)
    dev.run_until(45.0)
    assert dev.now_us == 45.0 and len(dev.records) == 4
    with pytest.raises(ValueError, match="back in time"):
        dev.run_until(10.0)
    dev.run_until_idle()
    assert dev.now_us == pytest.approx(60.0) and s.idle()


# ---- invariants under random workloads ------------------------------------------------------------------

launches = st.lists(
    st.tuples(
        st.integers(0, 5),  # first TPC
        st.integers(1, 6),  # TPCs
        st.sampled_from(["high", "normal"]),
        st.integers(1, 60),  # blocks
        st.floats(1.0, 200.0),  # block_us
        st.integers(1, 4),  # blocks_per_sm
        st.floats(0.0, 300.0),  # issue time
    ),
    min_size=1, max_size=10,
)


@settings(max_examples=60, deadline=None)
@given(launches)
def test_invariants_hold_for_random_workloads(items):
    dev = SimDevice(num_tpcs=6, seed=1)
    expected = {}
    for first, n, prio, blocks, block_us, bps, t in sorted(items, key=lambda it: it[-1]):
        dev.run_until(max(dev.now_us, t))
        part = dev.partition(range(first, min(6, first + n)))
        k = SimKernel("k", blocks, block_us, blocks_per_sm=bps, jitter=0.1)
        expected[part.stream(prio).launch(k)] = (part, k)
    dev.run_until_idle()
    by_launch = collections.defaultdict(list)
    for r in dev.records:
        by_launch[r.launch_id].append(r)
    for launch_id, (part, k) in expected.items():
        recs = by_launch[launch_id]
        assert sorted(r.block for r in recs) == list(range(k.grid_blocks))  # every block once
        assert {r.sm for r in recs} <= set(part.sm_ids)  # confinement
    # no SM ever holds more than it fits: sweep start/end events per SM
    load = collections.defaultdict(float)
    bps_of = {lid: k.blocks_per_sm for lid, (_, k) in expected.items()}
    for t, delta, sm in sorted((x for r in dev.records
                                for x in ((r.end_us, -1.0 / bps_of[r.launch_id], r.sm),
                                          (r.start_us, 1.0 / bps_of[r.launch_id], r.sm)))):
        load[sm] += delta
        assert load[sm] <= 1.0 + 1e-9


# ---- errors and lifetime --------------------------------------------------------------------------------


def test_bad_configuration_names_the_problem():
    dev = SimDevice(num_tpcs=4)
    with pytest.raises(PartitionError, match="at least one"):
        dev.partition([])
    with pytest.raises(PartitionError, match=r"\[4\] out of range"):
        dev.partition([4])
    with pytest.raises(PartitionError, match=r"duplicate TPC ids \[1\]"):
        dev.partition([1, 1])
    with pytest.raises(PartitionError, match="ints"):
        dev.partition(["0"])
    with pytest.raises(PartitionError, match="'low'"):
        dev.partition([0]).stream("low")
    with pytest.raises(ValueError, match="grid_blocks"):
        SimKernel("k", 0, 1.0)
    with pytest.raises(ValueError, match="block_us"):
        SimKernel("k", 1, float("nan"))
    with pytest.raises(ValueError, match="blocks_per_sm"):
        SimKernel("k", 1, 1.0, blocks_per_sm=11)
    with pytest.raises(ValueError, match="num_tpcs"):
        SimDevice(num_tpcs=0)
    with pytest.raises(ValueError, match="outside"):
        dev.partition([0]).normal.launch(SimKernel("k", 4, 1.0), 3, 5)
    p = dev.partition([2])
    p.close()
    for use in (lambda: p.stream("normal"), lambda: p.normal.launch(SimKernel("k", 1, 1.0)),
                lambda: p.high.record()):
        with pytest.raises(PartitionError, match=r"TPCs \[2\] is closed"):
            use()
    assert dev.partition([2]) is not p  # a closed set can be opened again
    dev.close()
    with pytest.raises(PartitionError, match="closed"):
        dev.partition([0])


def test_partitions_are_cached_and_use_yields_their_streams():
    dev = SimDevice(num_tpcs=4)
    p = dev.partition([3, 1])
    assert dev.partition({1, 3}) is p and dev.has_context([1, 3]) and not dev.has_context([1])
    with p.use("high") as s:
        assert s is p.high and s.__cuda_stream__() == (0, s.handle) and s.handle != 0
    with p.use() as s:
        assert s is p.normal


def test_closing_drains_the_streams():
    dev = SimDevice(num_tpcs=2)
    p = dev.partition([0, 1])
    p.normal.launch(SimKernel("k", 8, 100.0))
    p.close()
    assert dev.now_us == pytest.approx(200.0) and p.closed


def test_create_and_close_in_a_loop_leaks_nothing():
    dev = SimDevice(num_tpcs=8)
    for i in range(200):
        p = dev.partition([i % 8, (i + 3) % 8])
        p.normal.launch(SimKernel("k", 4, 1.0))
        p.stream("high", new=True).launch(SimKernel("k", 2, 1.0))
        p.close()
    assert dev.live_partitions() == 0
    assert not dev._streams  # the streams of closed partitions are gone too
    kept = dev.partition([0])
    dev.close()
    assert kept.closed and dev.closed


def test_a_partition_stays_open_until_every_holder_closed_it():
    dev = SimDevice()
    first, second = dev.partition(range(4)), dev.partition(range(4))
    assert first is second  # one partition per TPC set, two holders
    first.close()
    assert not second.closed
    second.normal.launch(SimKernel("k", 8, 10.0))  # the other holder still uses it
    second.close()
    assert second.closed and not dev.has_context(range(4))
    held = dev.partition(range(2))
    dev.partition(range(2))
    dev.close()  # the device closes every partition, however many hold it
    assert held.closed


def test_a_wait_keeps_the_record_it_was_given_when_the_event_is_recorded_again():
    from lithos_sched.sim_kernel import SimEvent, SimKernel

    dev = SimDevice(num_tpcs=4, seed=0)
    a, b = dev.partition([0, 1]), dev.partition([2, 3])
    marker = SimEvent(dev)
    a.normal.launch(SimKernel("first", 1, 100.0))
    a.normal.record_into(marker)
    b.normal.wait(marker)  # waits for "first" only
    a.normal.launch(SimKernel("second", 1, 1000.0))
    a.normal.record_into(marker)  # a later record, after "second"
    waited = b.normal.record()
    waited.synchronize()
    assert waited.time_us == pytest.approx(100.0, abs=5.0) and not marker.query()
    marker.synchronize()
    assert marker.time_us == pytest.approx(1100.0, abs=10.0)
