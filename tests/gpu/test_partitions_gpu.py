"""GPU tier: TPC partitions on green contexts run work only on their own SMs."""

from __future__ import annotations

import statistics

import numpy as np
import pytest

from lithos_atom.bench.burn import BURN, THREADS

pytestmark = pytest.mark.gpu


def _burn(device, stream, waves: int, iters: int = 3000) -> float:
    """Run a compute-bound kernel of `waves` full-device waves on `stream`; return ms."""
    import cupy

    k = cupy.RawKernel(BURN, "burn")
    per_sm = cupy.cuda.driver.occupancyMaxActiveBlocksPerMultiprocessor(k.kernel.ptr, THREADS, 0)
    blocks = per_sm * device.num_sms * waves
    out = cupy.empty(blocks * THREADS, np.float32)
    cs = stream.cupy if hasattr(stream, "cupy") else stream
    a, b = cupy.cuda.Event(), cupy.cuda.Event()
    times = []
    for _ in range(3):
        a.record(cs)
        k((blocks,), (THREADS,), (out, np.int32(iters)), stream=cs)
        b.record(cs)
        b.synchronize()
        times.append(cupy.cuda.get_elapsed_time(a, b))
    return statistics.median(times)


def test_device_splits_into_tpcs(device):
    assert device.sms_per_unit == 2, device.describe()
    assert device.num_tpcs * 2 == device.num_sms
    mapping = device.sm_map()
    all_sms = [sm for t in range(device.num_tpcs) for sm in mapping[t]]
    assert sorted(all_sms) == list(range(device.num_sms))  # disjoint pairs covering every SM
    assert all(len(v) == 2 for v in mapping.values())


@pytest.mark.parametrize("n", [1, 3, 8, 33, 66])
def test_partition_runs_only_on_its_sms(device, n):
    from lithos_sched.smid_probe import sms_of

    tpcs = list(range(device.num_tpcs - n, device.num_tpcs))
    part = device.partition(tpcs)
    seen = sms_of(part.normal, blocks=max(64, 16 * n)) | sms_of(part.high, blocks=max(64, 16 * n))
    assert seen <= set(part.sm_ids)
    assert len(seen) == len(part.sm_ids)  # and it uses all of them
    assert part.num_tpcs == n and len(part.sm_ids) == 2 * n


def test_disjoint_partitions_overlap_fully(device):
    half = device.num_tpcs // 2
    a, b = device.partition(range(half)), device.partition(range(half, device.num_tpcs))
    alone = _burn(device, a.normal, waves=6)
    import cupy

    k = cupy.RawKernel(BURN, "burn")
    per_sm = cupy.cuda.driver.occupancyMaxActiveBlocksPerMultiprocessor(k.kernel.ptr, THREADS, 0)
    blocks = per_sm * device.num_sms * 6
    outs = [cupy.empty(blocks * THREADS, np.float32) for _ in range(2)]
    start = cupy.cuda.Event()
    ends = [cupy.cuda.Event(), cupy.cuda.Event()]
    start.record(a.normal.cupy)
    b.normal.cupy.wait_event(start)
    for part, out, end in zip((a, b), outs, ends):
        k((blocks,), (THREADS,), (out, np.int32(3000)), stream=part.normal.cupy)
        end.record(part.normal.cupy)
    for e in ends:
        e.synchronize()
    together = max(cupy.cuda.get_elapsed_time(start, e) for e in ends)
    assert together < 1.15 * alone, (together, alone)


def test_compute_bound_time_scales_with_tpcs(device):
    full = _burn(device, device.partition(range(device.num_tpcs)).normal, waves=12, iters=6000)
    for n in (33, 22, 11):
        t = _burn(device, device.partition(range(n)).normal, waves=12, iters=6000)
        ideal = device.num_tpcs / n
        assert abs(t / full - ideal) / ideal < 0.05, (n, t, full)


def test_cublas_matmul_under_partition_is_confined(device):
    import cupy

    from lithos_sched.smid_probe import sms_of

    small = device.partition(range(3))
    rest = device.partition(range(3, device.num_tpcs))
    a = cupy.random.standard_normal((8192, 8192), dtype=cupy.float32)
    b = cupy.random.standard_normal((8192, 8192), dtype=cupy.float32)
    full_stream = cupy.cuda.Stream(non_blocking=True)

    def timed(stream_ctx, cs):
        s, e = cupy.cuda.Event(), cupy.cuda.Event()
        with stream_ctx:
            s.record(cs)
            a @ b
            e.record(cs)
        e.synchronize()
        return cupy.cuda.get_elapsed_time(s, e)

    timed(full_stream, full_stream)
    t_full = timed(full_stream, full_stream)
    with small.use() as s:
        t_small = timed(s.cupy, s.cupy)
        # while the matmul runs on 3 TPCs, the other partition's blocks see only their SMs
        with s.cupy:
            a @ b
        seen = sms_of(rest.normal, blocks=1024)
        s.synchronize()
    assert seen <= set(rest.sm_ids)
    assert t_small > 8 * t_full, (t_small, t_full)  # 3 of 66 TPCs: ~22x slower if confined


def test_create_and_close_partitions_leaks_nothing(device):
    import cupy

    def churn(n: int) -> None:
        for i in range(n):  # 20 distinct TPC sets, each created and closed again and again
            p = device.partition([i % 20, (i % 20 + 7) % device.num_tpcs])
            p.close()
            assert p.closed

    live = device.live_partitions()
    churn(20)  # each distinct set keeps one green context for reuse
    before_free = cupy.cuda.runtime.memGetInfo()[0]
    churn(50)
    after_free = cupy.cuda.runtime.memGetInfo()[0]
    assert device.live_partitions() == live
    assert before_free - after_free < 16 * 2**20, (before_free - after_free) / 2**20


def test_bad_partition_requests_raise(device):
    from lithos_sched import PartitionError

    with pytest.raises(PartitionError, match="at least one"):
        device.partition([])
    with pytest.raises(PartitionError, match="out of range"):
        device.partition([device.num_tpcs])
    with pytest.raises(PartitionError, match="duplicate"):
        device.partition([1, 1])
    p = device.partition([5])
    p.close()
    with pytest.raises(PartitionError, match="closed"):
        p.stream("high")
