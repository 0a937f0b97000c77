"""CPU tier: partition configuration, errors and the GPU device's bookkeeping, without a GPU.

The GPU device's logic (one split, fallback granularity, context cache, current-context
restore, lifetime) runs here against a fake ``cuda.bindings.driver`` that keeps count of
every handle it hands out.
"""

from __future__ import annotations

import types

import numpy as np
import pytest

from lithos_sched import (
    Device,
    Event,
    LithosCudaError,
    Partition,
    PartitionError,
    SimDevice,
    Stream,
    open_device,
)
from lithos_sched import gpu_device as gd
from lithos_sched import gpu_split
from lithos_sched.device_api import NULL_STREAM_HANDLES, validate_priority, validate_tpcs
from lithos_sched.errors import check
from lithos_sched.smid_probe import unit_map_problems

# ---- TPC sets and priorities ----------------------------------------------------------


@pytest.mark.parametrize("tpcs", [[0, 5, 3], range(4, 8), {1, 2}, (t for t in [7]), np.array([2, 6]),
                                  [np.int64(3), np.uint8(1)]])
def test_valid_tpc_sets(tpcs):
    got = validate_tpcs(tpcs, 8)
    assert isinstance(got, frozenset) and all(type(t) is int for t in got)


@pytest.mark.parametrize("tpcs, match", [
    ([], "at least one TPC"),
    (range(0), "at least one TPC"),
    ([8], r"TPC ids \[8\] out of range.*0\.\.7"),
    ([-1, 3, 9], r"\[-1, 9\] out of range"),
    ([1, 2, 2, 1], r"duplicate TPC ids \[1, 2\]"),
    ([1.0], r"must be ints, got \[1\.0\]"),
    (["0"], r"must be ints, got \['0'\]"),
    ([True], r"must be ints, got \[True\]"),
    ([None, 2], r"must be ints, got \[None\]"),
    (3, "iterable of ints, got 3"),
    ("01", "iterable of ints, got '01'"),
])
def test_bad_tpc_sets_name_the_bad_value(tpcs, match):
    with pytest.raises(PartitionError, match=match):
        validate_tpcs(tpcs, 8)


def test_partition_error_is_a_value_error():
    assert issubclass(PartitionError, ValueError)


def test_priorities():
    assert validate_priority("high") == "high" and validate_priority("normal") == "normal"
    for bad in ("low", "HIGH", 0, None):
        with pytest.raises(PartitionError, match=f"got {bad!r}"):
            validate_priority(bad)


# ---- driver errors ----------------------------------------------------------------------


def test_check_unpacks_results_and_names_driver_errors():
    assert check((0,), "f") is None
    assert check((0, 7), "f") == 7
    assert check((0, 1, 2), "f") == (1, 2)
    with pytest.raises(LithosCudaError) as info:
        check((400, None), "cuStreamSynchronize")  # a plain int code: the name is looked up
    err = info.value
    assert (err.call, err.code, err.name) == ("cuStreamSynchronize", 400, "CUDA_ERROR_INVALID_HANDLE")
    assert "cuStreamSynchronize failed: CUDA_ERROR_INVALID_HANDLE (400)" in str(err)
    with pytest.raises(LithosCudaError, match="CUDA_ERROR_OUT_OF_MEMORY"):
        check((_Code(2, "CUDA_ERROR_OUT_OF_MEMORY"),), "cuGreenCtxCreate")  # an enum member keeps its name


class _Code:
    """A stand-in for a ``CUresult`` member: an int value with a name."""

    def __init__(self, value: int, name: str):
        self.value, self.name = value, name

    def __int__(self) -> int:
        return self.value


# ---- the smid map check ---------------------------------------------------------------


def test_unit_map_problems():
    assert unit_map_problems({0: (4, 5), 1: (0, 1)}, 2) == []
    problems = unit_map_problems({0: (4,), 1: (0, 1), 2: (1, 7)}, 2)
    assert any("unit 0 ran on 1 SMs" in p for p in problems)
    assert any("SM 1 ran blocks of unit 1 and of unit 2" in p for p in problems)


# ---- open_device and the interface ---------------------------------------------------------


def test_open_device_options():
    dev = open_device(0, simulate=True, num_tpcs=4, seed=3, max_idle_contexts=2)  # a GPU option, ignored
    assert isinstance(dev, SimDevice) and dev.num_tpcs == 4 and dev.seed == 3 and dev.simulated
    with pytest.raises(TypeError, match=r"unknown options \['num_tpc'\]"):
        open_device(simulate=True, num_tpc=4)


def test_sim_device_implements_the_interface():
    with SimDevice(num_tpcs=4) as dev:
        part = dev.partition([0, 1])
        assert isinstance(dev, Device) and isinstance(part, Partition)
        assert isinstance(part.high, Stream) and isinstance(part.normal.record(), Event)
        desc = dev.describe()
        assert {"name", "driver_version", "sms", "tpcs", "sms_per_unit", "granularity", "simulated"} <= set(desc)
        assert desc["granularity"] == "TPC" and desc["simulated"] is True


# ---- a fake driver for the GPU device's bookkeeping ------------------------------------------------


class FakeDriver:
    """Just enough of ``cuda.bindings.driver`` for `GpuDevice`, counting live handles.

    ``split`` maps split flags to the SMs per group the "driver" gives, or to an error
    code when it refuses.
    """

    CUstream = int
    CUstream_flags = types.SimpleNamespace(CU_STREAM_NON_BLOCKING=1)
    CUgreenCtxCreate_flags = types.SimpleNamespace(CU_GREEN_CTX_DEFAULT_STREAM=1)
    CUdevResourceType = types.SimpleNamespace(CU_DEV_RESOURCE_TYPE_SM=1)
    PRIMARY = 0x1000

    def __init__(self, sms: int = 132, split: dict[int, int] | None = None, count_query_works: bool = True):
        self.sms = sms
        self.split = {1: 2, 0: 8} if split is None else split
        self.count_query_works = count_query_works
        self.current = 0  # a fresh thread: no context current
        self.primary_refs = 0
        self.green: dict[int, bool] = {}
        self.streams: dict[int, tuple[int, int, int]] = {}  # handle: (green ctx, flags, priority)
        self.split_calls: list[tuple[int, int, int]] = []
        self.fail_stream_create = False
        self._next = 0x2000

    def _handle(self) -> int:
        self._next += 0x10
        return self._next

    @staticmethod
    def _resource(sms: int) -> types.SimpleNamespace:
        return types.SimpleNamespace(sm=types.SimpleNamespace(smCount=sms))

    def cuInit(self, flags):
        return (0,)

    def cuDeviceGetCount(self):
        return (0, 1)

    def cuDeviceGet(self, ordinal):
        return (0, 100 + ordinal)

    def cuDeviceGetName(self, length, dev):
        return (0, b"Fake H100\0\0\0")

    def cuDriverGetVersion(self):
        return (0, 13000)

    def cuDevicePrimaryCtxRetain(self, dev):
        self.primary_refs += 1
        return (0, self.PRIMARY)

    def cuDevicePrimaryCtxRelease(self, dev):
        self.primary_refs -= 1
        return (0,)

    def cuCtxGetCurrent(self):
        return (0, self.current)

    def cuCtxSetCurrent(self, ctx):
        self.current = int(ctx)
        return (0,)

    def cuCtxGetStreamPriorityRange(self):
        assert self.current == self.PRIMARY, "priority range asked with no context current"
        return (0, 0, -5)

    def cuDeviceGetDevResource(self, dev, kind):
        return (0, self._resource(self.sms))

    def cuDevSmResourceSplitByCount(self, n, resource, flags, min_count):
        self.split_calls.append((n, flags, min_count))
        size = self.split.get(flags)
        if size is None or size < 0:
            return (-size if size else 1, None, None, None)  # CUDA_ERROR_INVALID_VALUE by default
        fits = self.sms // size
        if n == 0:
            return (0, [], fits if self.count_query_works else 0, self._resource(self.sms))
        made = min(n, fits)
        return (0, [self._resource(size) for _ in range(made)], made, self._resource(self.sms - made * size))

    def cuDevResourceGenerateDesc(self, groups, n):
        assert len(groups) == n
        return (0, ("desc", n))

    def cuGreenCtxCreate(self, desc, dev, flags):
        assert flags == 1 and self.current == self.PRIMARY, "create green contexts with the primary current"
        g = self._handle()
        self.green[g] = True
        self.current = g  # misbehave: the device must restore the thread's context
        return (0, g)

    def cuGreenCtxStreamCreate(self, g, flags, priority):
        if self.fail_stream_create:
            return (2, None)
        assert self.green.get(g), "stream of a dead green context"
        h = self._handle()
        self.streams[h] = (g, flags, priority)
        return (0, h)

    def cuStreamSynchronize(self, h):
        return (0,) if h in self.streams else (400,)

    def cuStreamDestroy(self, h):
        return (0,) if self.streams.pop(h, None) else (400,)

    def cuGreenCtxDestroy(self, g):
        assert not any(s[0] == g for s in self.streams.values()), "green context destroyed before its streams"
        return (0,) if self.green.pop(g, None) else (400,)


@pytest.fixture
def fake(monkeypatch):
    drv = FakeDriver()
    monkeypatch.setattr(gd, "cuda_driver", lambda: drv)
    monkeypatch.setattr(gpu_split, "cuda_driver", lambda: drv)
    monkeypatch.setattr(gd, "_activate_primary", lambda device_id: None)
    monkeypatch.setattr(gd.GpuStream, "_drain", lambda self: None)  # no CUDA runtime to wait on here
    monkeypatch.setattr(gpu_split, "_splits", {})
    return drv


def test_split_is_made_once_at_tpc_granularity(fake):
    dev = gd.GpuDevice()
    assert (dev.num_sms, dev.num_tpcs, dev.sms_per_unit, dev.unused_sms) == (132, 66, 2, 0)
    assert fake.split_calls == [(0, 1, 2), (66, 1, 2)]  # n=0 asks the count first, then one split
    gd.GpuDevice().close()
    assert len(fake.split_calls) == 2  # kept for the process
    assert dev.describe()["granularity"] == "TPC" and dev.describe()["driver_version"] == 13000
    assert (dev.greatest_priority, dev.least_priority) == (-5, 0)
    assert fake.current == 0  # nothing left current on the thread
    dev.close()


def test_split_falls_back_to_the_finest_the_driver_offers(fake):
    fake.split = {1: -101, 0: 8}  # the flag is refused (CUDA_ERROR_INVALID_DEVICE)
    with pytest.warns(RuntimeWarning, match=r"CUDA_ERROR_INVALID_DEVICE.*8-SM units .*4 SMs unused"):
        dev = gd.GpuDevice()
    assert (dev.sms_per_unit, dev.num_tpcs, dev.unused_sms) == (8, 16, 4)
    assert dev.describe()["granularity"] == "8-SM units" and dev.split.startswith("default")
    assert dev.partition([15]).num_sms == 8
    dev.close()


def test_split_prefers_the_finer_of_two_coarse_splits(fake):
    fake.split = {1: 4, 0: 8}
    with pytest.warns(RuntimeWarning, match="4-SM units"):
        dev = gd.GpuDevice()
    assert dev.sms_per_unit == 4 and dev.num_tpcs == 33
    dev.close()


def test_split_failure_names_the_driver_error(fake):
    fake.split = {}
    with pytest.raises(LithosCudaError, match="CUDA_ERROR_INVALID_VALUE") as info:
        gd.GpuDevice()
    assert info.value.call == "cuDevSmResourceSplitByCount"


def test_split_without_a_count_answer_asks_for_what_fits(fake):
    fake.count_query_works = False
    dev = gd.GpuDevice()
    assert dev.num_tpcs == 66 and fake.split_calls[1] == (66, 1, 2)
    dev.close()


def test_partitions_are_cached_and_leave_the_thread_context_alone(fake):
    dev = gd.GpuDevice()
    fake.current = 0x77  # whatever the thread had current, it keeps
    a = dev.partition([3, 1, 2])
    assert fake.current == 0x77
    assert dev.partition(range(1, 4)) is a and a.tpcs == frozenset({1, 2, 3}) and a.num_tpcs == 3
    assert a.num_sms == 6 and len(fake.green) == 1
    prios = sorted(p for (_, _, p) in fake.streams.values())
    assert prios == [-5, 0, 0] and all(f == 1 for (_, f, _) in fake.streams.values())  # non-blocking
    assert a.high.priority == "high" and a.stream("high") is a.high and a.stream() is a.normal
    assert a.high.__cuda_stream__() == (0, a.high.handle) and a.high.cupy.ptr == a.high.handle
    dev.close()


def test_streams_refuse_null_handles():
    for handle in sorted(NULL_STREAM_HANDLES):
        with pytest.raises(PartitionError, match=f"refusing stream handle {handle}"):
            gd.GpuStream(handle, "normal", partition=None)


def test_closed_partitions_and_devices_refuse_use(fake):
    dev = gd.GpuDevice()
    p = dev.partition([5])
    normal = p.normal
    p.close()
    assert p.closed
    p.close()  # idempotent
    for use in (lambda: p.stream("high"), lambda: normal.cupy, lambda: normal.__cuda_stream__(),
                lambda: normal.synchronize(), lambda: p.use().__enter__()):
        with pytest.raises(PartitionError, match=r"partition of TPCs \[5\] is closed"):
            use()
    q = dev.partition([5])
    assert q is not p and not q.closed  # a new partition on the cached context
    with pytest.raises(PartitionError, match="priority"):
        q.stream("urgent")
    dev.close()
    assert q.closed
    with pytest.raises(PartitionError, match="device 0 .* is closed"):
        dev.partition([0])
    dev.close()  # idempotent


def test_bad_device_options(fake):
    with pytest.raises(PartitionError, match="device_id must be a non-negative int, got '0'"):
        gd.GpuDevice("0")
    with pytest.raises(PartitionError, match="device_id 1 out of range: 1 CUDA device"):
        gd.GpuDevice(1)
    with pytest.raises(PartitionError, match="max_idle_contexts"):
        gd.GpuDevice(max_idle_contexts=-1)


def test_create_and_close_in_a_loop_leaks_nothing(fake):
    dev = gd.GpuDevice()
    for i in range(50):
        dev.partition([i % 5, 10 + i % 5]).close()
    assert dev.live_partitions() == 0
    assert dev.live_green_contexts() == len(fake.green) == 5  # one per distinct set, reused
    assert len(fake.streams) == 15
    dev.close()
    assert not fake.green and not fake.streams and fake.primary_refs == 0


def test_idle_contexts_are_bounded(fake):
    dev = gd.GpuDevice(max_idle_contexts=3)
    held = dev.partition([60])
    for t in range(10):
        dev.partition([t]).close()
    assert dev.live_green_contexts() == len(fake.green) == 4  # 3 idle + the open one
    assert dev.has_context([9]) and not dev.has_context([0]) and dev.has_context([60])
    assert not held.closed
    dev.close()
    assert not fake.green and not fake.streams


def test_a_failed_stream_creation_destroys_the_green_context(fake):
    dev = gd.GpuDevice()
    fake.fail_stream_create = True
    with pytest.raises(LithosCudaError, match="cuGreenCtxStreamCreate failed: CUDA_ERROR_OUT_OF_MEMORY"):
        dev.partition([0])
    assert not fake.green and dev.live_green_contexts() == 0 and fake.current == 0
    fake.fail_stream_create = False
    assert dev.partition([0]).num_tpcs == 1
    dev.close()


def test_unclosed_devices_are_released_when_collected(fake):
    import gc

    dev = gd.GpuDevice()
    dev.partition([1, 2])
    dev.partition([3]).close()
    del dev
    gc.collect()
    assert not fake.green and not fake.streams and fake.primary_refs == 0
