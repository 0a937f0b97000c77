"""GPU tier: TPC partitions on green contexts run work only on their own SMs."""

from __future__ import annotations

import statistics

import numpy as np
import pytest

from lithos_atom.bench.burn import BURN, THREADS

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def device():
    from lithos_sched import open_device

    dev = open_device(simulate=False)
    yield dev
    dev.close()


def _burn_blocks(device, waves: int) -> tuple[object, int]:
    """The compute-bound kernel and a grid of ``waves`` full-device waves (whole waves on any
    partition whose SM count divides the device's)."""
    import cupy

    k = cupy.RawKernel(BURN, "burn")
    per_sm = cupy.cuda.driver.occupancyMaxActiveBlocksPerMultiprocessor(k.kernel.ptr, THREADS, 0)
    return k, per_sm * device.num_sms * waves


def _burn(device, stream, waves: int, iters: int = 3000, repeats: int = 3) -> float:
    """Median ms of a compute-bound kernel of ``waves`` full-device waves on ``stream``."""
    import cupy

    k, blocks = _burn_blocks(device, waves)
    out = cupy.empty(blocks * THREADS, np.float32)
    cs = stream.cupy if hasattr(stream, "cupy") else stream
    a, b = cupy.cuda.Event(), cupy.cuda.Event()
    times = []
    for _ in range(repeats):
        a.record(cs)
        k((blocks,), (THREADS,), (out, np.int32(iters)), stream=cs)
        b.record(cs)
        b.synchronize()
        times.append(cupy.cuda.get_elapsed_time(a, b))
    return statistics.median(times)


def test_device_splits_into_tpcs(device):
    desc = device.describe()
    assert device.sms_per_unit == 2 and desc["granularity"] == "TPC" and desc["unused_sms"] == 0, desc
    assert device.num_tpcs * 2 == device.num_sms and desc["driver_version"] >= 12040
    mapping = device.sm_map()
    all_sms = [sm for t in range(device.num_tpcs) for sm in mapping[t]]
    assert sorted(all_sms) == list(range(device.num_sms))  # disjoint pairs covering every SM
    assert all(len(v) == 2 for v in mapping.values())
    assert device.sm_map() is mapping  # probed once


def test_streams_belong_to_the_green_context_with_the_right_priorities(device):
    from cuda.bindings import driver

    from lithos_sched.errors import check

    part = device.partition([7, 9])
    for s, prio in ((part.high, device.greatest_priority), (part.normal, device.least_priority),
                    (part.normal_b, device.least_priority)):
        handle = driver.CUstream(s.handle)
        assert int(check(driver.cuStreamGetGreenCtx(handle), "cuStreamGetGreenCtx")) != 0
        assert check(driver.cuStreamGetPriority(handle), "cuStreamGetPriority") == prio
        assert s.__cuda_stream__() == (0, s.handle) and s.cupy.ptr == s.handle and s.handle not in (0, 1, 2)
    assert device.greatest_priority < device.least_priority


def test_creating_a_partition_leaves_the_primary_context_current(device):
    import cupy
    from cuda.bindings import driver

    from lithos_sched.errors import check

    before = int(check(driver.cuCtxGetCurrent(), "cuCtxGetCurrent"))
    tpcs = [1, 30, 61]
    assert not device.has_context(tpcs)
    part = device.partition(tpcs)
    assert int(check(driver.cuCtxGetCurrent(), "cuCtxGetCurrent")) == before != 0
    x = cupy.arange(1000, dtype=np.float32)  # CuPy keeps working on its own streams
    assert float((x * 2).sum()) == 999000.0
    part.close()


@pytest.mark.parametrize("tpcs", [[65], range(63, 66), range(58, 66), range(33, 66), range(66),
                                  range(0, 66, 3)], ids=["1", "3", "8", "33", "66", "22-scattered"])
def test_partition_runs_only_on_its_sms(device, tpcs):
    from lithos_sched.smid_probe import record_smids

    part = device.partition(tpcs)
    n = len(part.tpcs)
    blocks = max(64, 32 * part.num_sms)
    per_block = np.concatenate([record_smids(part.normal, blocks), record_smids(part.high, blocks),
                                record_smids(part.normal_b, blocks)])
    assert set(per_block.tolist()) <= set(part.sm_ids), sorted(set(per_block.tolist()) - set(part.sm_ids))
    assert len(set(per_block.tolist())) == len(part.sm_ids)  # and it uses all of them
    assert part.num_tpcs == n and len(part.sm_ids) == 2 * n == part.num_sms


def test_use_makes_the_partition_stream_current_and_restores(device):
    import cupy

    from lithos_sched.smid_probe import SMID

    part = device.partition(range(4))
    outer = cupy.cuda.get_current_stream()
    with part.use("high") as s:
        assert s is part.high and cupy.cuda.get_current_stream().ptr == s.handle
        ids = cupy.full(4096, -1, np.int32)
        cupy.RawKernel(SMID, "smid")((4096,), (32,), (ids,))  # no stream given: CuPy's current one
        seen = set(cupy.asnumpy(ids).tolist())
    assert cupy.cuda.get_current_stream().ptr == outer.ptr
    assert seen <= set(part.sm_ids)
    with part.normal_b.use() as s:  # any partition stream, directly
        assert s is part.normal_b and cupy.cuda.get_current_stream().ptr == s.handle
    assert cupy.cuda.get_current_stream().ptr == outer.ptr


def test_numba_kernel_on_a_partition_stream_is_confined(device):
    from lithos_atom._compat import import_numba_cuda

    cuda = import_numba_cuda()

    @cuda.jit
    def spin(out, iters):
        i = cuda.grid(1)
        a = np.float32(i) * np.float32(1e-3)
        for _ in range(iters):
            a = a * np.float32(0.999) + np.float32(1e-4)
        out[i] = a

    small, full = device.partition(range(6)), device.partition(range(device.num_tpcs))
    blocks = 132 * 16 * 4
    out = cuda.device_array(blocks * 128, np.float32)

    def timed(stream) -> float:
        spin[blocks, 128, stream.numba](out, 20000)  # compile and warm
        start = stream.record()
        spin[blocks, 128, stream.numba](out, 20000)
        end = stream.record()
        end.synchronize()
        return start.elapsed_ms(end)

    t_full, t_small = timed(full.normal), timed(small.normal)
    assert t_small > 5 * t_full, (t_small, t_full)  # 6 of 66 TPCs: ~11x slower if confined


def test_disjoint_partitions_overlap_fully(device):
    import cupy

    half = device.num_tpcs // 2
    a, b = device.partition(range(half)), device.partition(range(half, device.num_tpcs))
    alone = _burn(device, a.normal, waves=6)
    k, blocks = _burn_blocks(device, 6)
    outs = [cupy.empty(blocks * THREADS, np.float32) for _ in range(2)]
    start = a.normal.record()
    b.normal.wait(start)
    ends = []
    for part, out in zip((a, b), outs):
        k((blocks,), (THREADS,), (out, np.int32(3000)), stream=part.normal.cupy)
        ends.append(part.normal.record())
    for e in ends:
        e.synchronize()
    together = max(start.elapsed_ms(e) for e in ends)
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

    small = device.partition(range(6))
    rest = device.partition(range(6, device.num_tpcs))
    a = cupy.random.standard_normal((8192, 8192), dtype=cupy.float32)
    b = cupy.random.standard_normal((8192, 8192), dtype=cupy.float32)
    plain = cupy.cuda.Stream(non_blocking=True)
    cupy.cuda.Device().synchronize()

    def timed(stream) -> float:
        s, e = cupy.cuda.Event(), cupy.cuda.Event()
        with stream:
            s.record()
            a @ b
            e.record()
        e.synchronize()
        return cupy.cuda.get_elapsed_time(s, e)

    timed(plain)
    t_full = timed(plain)
    with small.use() as s:
        t_small = timed(s.cupy)
    assert t_small > 5 * t_full, (t_small, t_full)  # 6 of 66 TPCs: ~11x slower if confined

    # While matmuls run on the 6 TPCs, a compute-bound kernel on the other 60 runs as fast
    # as alone, and its blocks see only their own SMs.
    burn_alone = _burn(device, rest.normal, waves=6, iters=100_000, repeats=1)
    with small.use():
        for _ in range(3):
            a @ b
    burn_beside = _burn(device, rest.normal, waves=6, iters=100_000, repeats=1)
    seen = sms_of(rest.normal, blocks=32 * rest.num_sms)
    assert not small.normal.record().query()  # the matmuls were still running throughout
    small.normal.synchronize()
    assert seen <= set(rest.sm_ids)
    assert burn_beside < 1.15 * burn_alone, (burn_beside, burn_alone)


def test_create_and_close_partitions_leaks_nothing(device):
    import cupy

    def churn(n: int) -> None:
        for i in range(n):  # 20 distinct TPC sets, each created and closed again and again
            p = device.partition([i % 20, (i % 20 + 7) % device.num_tpcs])
            p.close()
            assert p.closed

    churn(20)  # each distinct set keeps one green context for reuse
    live, contexts = device.live_partitions(), device.live_green_contexts()
    before_free = cupy.cuda.runtime.memGetInfo()[0]
    churn(50)
    after_free = cupy.cuda.runtime.memGetInfo()[0]
    assert device.live_partitions() == live
    assert device.live_green_contexts() == contexts
    assert before_free - after_free < 16 * 2**20, (before_free - after_free) / 2**20


def test_bad_partition_requests_raise(device):
    from lithos_sched import PartitionError

    with pytest.raises(PartitionError, match="at least one"):
        device.partition([])
    with pytest.raises(PartitionError, match="out of range"):
        device.partition([device.num_tpcs])
    with pytest.raises(PartitionError, match="duplicate"):
        device.partition([1, 1])
    with pytest.raises(PartitionError, match="ints"):
        device.partition([1.5])
    p = device.partition([5])
    p.close()
    with pytest.raises(PartitionError, match="closed"):
        p.stream("high")
    with pytest.raises(PartitionError, match="closed"):
        p.normal.cupy


def test_benchmark_helpers(device):
    from lithos_atom.bench.partition_bench import launch_cost_us, partition_create_ms

    create = partition_create_ms(device, samples=4, seed=123)
    assert create["samples"] == 4 and 0 < create["median_ms"] < 100, create
    launch = launch_cost_us(device, launches=400)
    assert all(launch[k] > 0 for k in ("launch_us_partition_stream", "launch_us_ordinary_stream",
                                       "launch_us_null_stream")), launch
    assert launch["launch_us_partition_stream"] < 3 * launch["launch_us_ordinary_stream"], launch


def test_a_partition_stays_open_until_every_holder_closed_it(device):
    import cupy

    first, second = device.partition([3, 4]), device.partition([3, 4])
    assert first is second
    first.close()
    assert not second.closed
    with second.use("normal"):
        assert int(cupy.arange(10).sum()) == 45  # the other holder still runs on it
    second.close()
    assert second.closed


def test_a_closed_device_releases_every_green_context():
    from lithos_sched import GpuDevice, PartitionError

    dev = GpuDevice()
    parts = [dev.partition([t]) for t in range(3)]
    parts[0].close()
    assert dev.live_green_contexts() == 3
    dev.close()
    assert dev.live_green_contexts() == 0 and all(p.closed for p in parts)
    with pytest.raises(PartitionError, match="closed"):
        dev.partition([0])
