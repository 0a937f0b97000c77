"""CPU tier: the simulated device honours the partition contract in virtual time."""

from __future__ import annotations

import pytest

from lithos_sched import PartitionError, SimDevice, SimKernel, open_device


def test_open_device_without_gpu_is_simulated_and_says_so():
    with pytest.warns(RuntimeWarning, match="SIMULATED"):
        dev = open_device()
    assert dev.simulated and dev.describe()["simulated"] is True
    dev.close()


@pytest.mark.parametrize("n", [1, 3, 8, 33, 66])
def test_partition_blocks_run_only_on_its_sms(n):
    dev = SimDevice()
    part = dev.partition(range(66 - n, 66))
    part.normal.launch(SimKernel("k", 4 * n * 2, 10.0, blocks_per_sm=2))
    part.high.launch(SimKernel("h", 3, 10.0))
    dev.run_until_idle()
    used = {r.sm for r in dev.records}
    assert used <= set(part.sm_ids) and len(part.sm_ids) == 2 * n


def test_disjoint_partitions_overlap_fully():
    dev = SimDevice()
    a, b = dev.partition(range(33)), dev.partition(range(33, 66))
    k = SimKernel("k", 66 * 10, 100.0)
    a.normal.launch(k)
    b.normal.launch(k)
    dev.run_until_idle()
    assert dev.now_us == pytest.approx(1000.0)  # together as fast as one alone


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
    assert abs(start.elapsed_ms(end) * 1000 - ideal) / ideal < 0.05


def test_partial_waves_are_quantized():
    dev = SimDevice()
    part = dev.partition(range(10))  # 20 SMs
    end = part.normal.record()
    part.normal.launch(SimKernel("k", 41, 100.0))
    done = part.normal.record()
    done.synchronize()
    assert end.elapsed_ms(done) * 1000 == pytest.approx(300.0)  # 41 blocks = 3 waves of 20


def test_deterministic_for_a_seed_and_jitter_varies_with_it():
    def run(seed):
        dev = SimDevice(seed=seed)
        dev.partition(range(10)).normal.launch(SimKernel("k", 200, 50.0, jitter=0.2))
        dev.run_until_idle()
        return [(r.sm, r.start_us, r.end_us) for r in dev.records]

    assert run(1) == run(1)
    assert run(1) != run(2)


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


def test_stream_order_and_events():
    dev = SimDevice(num_tpcs=4)
    p = dev.partition(range(4))
    e0 = p.normal.record()
    p.normal.launch(SimKernel("a", 8, 100.0))
    e1 = p.normal.record()
    p.high.wait(e1)  # later work on the high stream waits for "a"
    p.high.launch(SimKernel("b", 1, 10.0))
    e2 = p.high.record()
    assert not e1.query()
    e2.synchronize()
    assert e0.elapsed_ms(e1) == pytest.approx(0.1) and e1.elapsed_ms(e2) == pytest.approx(0.01)
    never = SimDevice(num_tpcs=1).partition([0]).normal.record()
    assert never.query()  # an event on an idle stream completes at once


def test_bad_configuration_names_the_problem():
    dev = SimDevice(num_tpcs=4)
    with pytest.raises(PartitionError, match="at least one"):
        dev.partition([])
    with pytest.raises(PartitionError, match="out of range"):
        dev.partition([4])
    with pytest.raises(PartitionError, match="duplicate"):
        dev.partition([1, 1])
    with pytest.raises(PartitionError, match="ints"):
        dev.partition(["0"])
    with pytest.raises(ValueError, match="grid_blocks"):
        SimKernel("k", 0, 1.0)
    with pytest.raises(ValueError, match="outside"):
        dev.partition([0]).normal.launch(SimKernel("k", 4, 1.0), 3, 5)
    p = dev.partition([2])
    p.close()
    with pytest.raises(PartitionError, match="closed"):
        p.stream("normal")
    dev.close()
    with pytest.raises(PartitionError, match="closed"):
        dev.partition([0])


def test_create_and_close_in_a_loop_leaks_nothing():
    dev = SimDevice(num_tpcs=8)
    for i in range(200):
        p = dev.partition([i % 8, (i + 3) % 8])
        p.normal.launch(SimKernel("k", 4, 1.0))
        p.close()
    assert dev.live_partitions() == 0
    dev.close()
