"""TPC partitions on a real GPU, built from CUDA green contexts.

The device's SMs are split once, with ``cuDevSmResourceSplitByCount`` and
``CU_DEV_SM_RESOURCE_SPLIT_IGNORE_SM_COSCHEDULING``, into groups of two SMs: one TPC each
(66 on an H100). A partition for any TPC set is a green context built from those groups
in one descriptor; groups of one split are disjoint, so disjoint TPC sets never share an
SM. Each partition has a high- and a normal-priority stream. Kernels loaded by CuPy or
Numba in the primary context run confined to the partition when launched on its streams;
the legacy default stream escapes every partition, so no partition hands it out.
"""

from __future__ import annotations

import collections
import contextlib
import threading
import time
import warnings
import weakref
from collections.abc import Iterable, Iterator
from typing import Any

from lithos_sched.errors import LithosCudaError, PartitionError, check

_SPLIT_IGNORE_SM_COSCHEDULING = 1


def validate_tpcs(tpcs: Iterable[int], num_tpcs: int) -> frozenset[int]:
    """Check a TPC set: non-empty, ints, no duplicates, in range.

    Raises
    ------
    PartitionError
        Naming the bad values.
    """
    if isinstance(tpcs, (str, bytes)):
        raise PartitionError(f"TPC ids must be ints, got {tpcs!r}")
    ids = list(tpcs)
    if not ids:
        raise PartitionError("a partition needs at least one TPC")
    bad = [t for t in ids if isinstance(t, bool) or not isinstance(t, int)]
    if bad:
        raise PartitionError(f"TPC ids must be ints, got {bad!r}")
    dup = sorted(t for t, n in collections.Counter(ids).items() if n > 1)
    if dup:
        raise PartitionError(f"duplicate TPC ids {dup}")
    out = sorted(t for t in ids if not 0 <= t < num_tpcs)
    if out:
        raise PartitionError(f"TPC ids {out} out of range: the device has TPCs 0..{num_tpcs - 1}")
    return frozenset(ids)


class GpuEvent:
    """A CUDA event (CuPy's) recorded on a partition stream."""

    def __init__(self, event: Any):
        self.cupy = event

    def query(self) -> bool:
        """Whether the event has completed."""
        return bool(self.cupy.done)

    def synchronize(self) -> None:
        """Wait for the event (the GIL is released)."""
        self.cupy.synchronize()

    def elapsed_ms(self, end: GpuEvent) -> float:
        """Milliseconds from this event to ``end``."""
        import cupy

        return float(cupy.cuda.get_elapsed_time(self.cupy, end.cupy))


class GpuStream:
    """A stream of a green-context partition.

    Attributes
    ----------
    handle : int
        The ``CUstream``, never 0.
    priority : str
        ``"high"`` or ``"normal"``.
    partition : GpuPartition
    cupy : cupy.cuda.Stream
        The same stream for CuPy (``with stream.cupy:`` makes it current).
    """

    def __init__(self, handle: int, priority: str, partition: GpuPartition):
        import cupy

        if not handle:
            raise PartitionError("refusing the legacy default stream: it escapes every partition")
        self.handle = int(handle)
        self.priority = priority
        self.partition = partition
        self.cupy = cupy.cuda.Stream.from_external(self)

    def __cuda_stream__(self) -> tuple[int, int]:
        return (0, self.handle)

    @property
    def numba(self) -> Any:
        """The same stream for Numba launches (``k[grid, block, stream.numba]``)."""
        from lithos_atom._compat import import_numba_cuda

        return import_numba_cuda().external_stream(self.handle)

    def record(self) -> GpuEvent:
        """Record an event on this stream."""
        import cupy

        event = cupy.cuda.Event()
        event.record(self.cupy)
        return GpuEvent(event)

    def wait(self, event: GpuEvent) -> None:
        """Make later work on this stream wait for ``event``."""
        self.cupy.wait_event(event.cupy)

    def synchronize(self) -> None:
        """Wait until all work on this stream has finished."""
        self.cupy.synchronize()

    def __repr__(self) -> str:
        return f"<GpuStream {self.priority} {self.handle:#x} of {self.partition!r}>"


class GpuPartition:
    """A set of TPCs as a green context with a high- and two normal-priority streams.

    Made by `GpuDevice.partition`; do not construct directly.
    """

    def __init__(self, device: GpuDevice, tpcs: frozenset[int], resources: _GreenContext):
        self.device = device
        self.tpcs = tpcs
        self._resources = resources
        self.create_ms = resources.create_ms
        self.high = GpuStream(resources.high, "high", self)
        self.normal = GpuStream(resources.normal, "normal", self)
        # A second normal-priority stream lets consecutive atoms of one launch overlap
        # (the next starts while the last blocks of the previous drain).
        self.normal_b = GpuStream(resources.normal_b, "normal", self)
        self.closed = False

    @property
    def num_tpcs(self) -> int:
        """Number of TPCs."""
        return len(self.tpcs)

    @property
    def num_sms(self) -> int:
        """Number of SMs."""
        return len(self.tpcs) * self.device.sms_per_unit

    @property
    def sm_ids(self) -> tuple[int, ...]:
        """The SM ids (``%smid``) of this partition, from the device's one-time probe."""
        mapping = self.device.sm_map()
        return tuple(sorted(sm for t in self.tpcs for sm in mapping[t]))

    def stream(self, priority: str = "normal") -> GpuStream:
        """The ``"high"`` or ``"normal"`` priority stream."""
        self._check_open()
        if priority == "high":
            return self.high
        if priority == "normal":
            return self.normal
        raise PartitionError(f"priority must be 'high' or 'normal', got {priority!r}")

    @contextlib.contextmanager
    def use(self, priority: str = "normal") -> Iterator[GpuStream]:
        """Make this partition's stream CuPy's current stream inside the block.

        CuPy's own operations (ufuncs, reductions, cuBLAS matmul) issued in the block run
        on the partition's TPCs. Work sent explicitly to ``cupy.cuda.Stream.null`` still
        escapes the partition.
        """
        s = self.stream(priority)
        with s.cupy:
            yield s

    def _check_open(self) -> None:
        if self.closed:
            raise PartitionError(f"partition {sorted(self.tpcs)} is closed")
        self.device._check_open()

    def close(self) -> None:
        """Wait for the partition's streams and give its green context back to the device.

        The device keeps the context for the next partition of the same TPCs and destroys
        it in `GpuDevice.close`: the driver keeps about 4 MiB of device memory for every
        green context ever destroyed (measured on driver 580, raw driver calls), so
        create/destroy cycles would leak.
        """
        if self.closed:
            return
        for s in (self.high, self.normal, self.normal_b):
            s.synchronize()
        self.closed = True
        self.device._release(self)

    def __repr__(self) -> str:
        return f"<GpuPartition {self.num_tpcs} TPCs{' closed' if self.closed else ''}>"


class _GreenContext:
    """A green context of one TPC set with its two streams (owned by the device's pool)."""

    def __init__(self, device: GpuDevice, tpcs: frozenset[int]):
        from cuda.bindings import driver

        groups = [device._groups[t] for t in sorted(tpcs)]
        desc = check(driver.cuDevResourceGenerateDesc(groups, len(groups)), "cuDevResourceGenerateDesc")
        t0 = time.perf_counter()
        self.ctx = check(driver.cuGreenCtxCreate(desc, device._cu_device,
                                                 driver.CUgreenCtxCreate_flags.CU_GREEN_CTX_DEFAULT_STREAM),
                         "cuGreenCtxCreate")
        self.create_ms = (time.perf_counter() - t0) * 1000.0
        flags = driver.CUstream_flags.CU_STREAM_NON_BLOCKING
        self.high = int(check(driver.cuGreenCtxStreamCreate(self.ctx, flags, device.greatest_priority),
                              "cuGreenCtxStreamCreate"))
        self.normal = int(check(driver.cuGreenCtxStreamCreate(self.ctx, flags, 0), "cuGreenCtxStreamCreate"))
        self.normal_b = int(check(driver.cuGreenCtxStreamCreate(self.ctx, flags, 0), "cuGreenCtxStreamCreate"))
        self._finalizer = weakref.finalize(self, _destroy_green_context, self.ctx, [self.high, self.normal, self.normal_b])

    def destroy(self) -> None:
        self._finalizer()


def _destroy_green_context(ctx: Any, handles: list[int]) -> None:
    from cuda.bindings import driver

    for h in handles:
        check(driver.cuStreamDestroy(driver.CUstream(h)), "cuStreamDestroy")
    check(driver.cuGreenCtxDestroy(ctx), "cuGreenCtxDestroy")


class GpuDevice:
    """A GPU whose TPCs can be handed out as partitions.

    Parameters
    ----------
    device_id : int
        CUDA device ordinal.
    """

    simulated = False

    def __init__(self, device_id: int = 0):
        import cupy
        from cuda.bindings import driver

        self.device_id = device_id
        # Green contexts retain the primary context; have CuPy create it first so it is not
        # initialized and torn down around every green context.
        cupy.cuda.Device(device_id).use()
        cupy.empty(1, dtype="u1")
        check(driver.cuInit(0), "cuInit")
        self._cu_device = check(driver.cuDeviceGet(device_id), "cuDeviceGet")
        self.name = check(driver.cuDeviceGetName(256, self._cu_device), "cuDeviceGetName").split(b"\0")[0].decode()
        self.driver_version = check(driver.cuDriverGetVersion(), "cuDriverGetVersion")
        resource = check(driver.cuDeviceGetDevResource(self._cu_device, driver.CUdevResourceType.CU_DEV_RESOURCE_TYPE_SM),
                         "cuDeviceGetDevResource")
        self.num_sms = int(resource.sm.smCount)
        self._groups, self.sms_per_unit, self.split = _split(resource, self.num_sms)
        self.num_tpcs = len(self._groups)
        low, high = check(driver.cuCtxGetStreamPriorityRange(), "cuCtxGetStreamPriorityRange")
        self.greatest_priority = int(high)
        self._partitions: dict[frozenset[int], GpuPartition] = {}
        self._pool: dict[frozenset[int], _GreenContext] = {}
        self._lock = threading.Lock()
        self._sm_map: dict[int, tuple[int, ...]] | None = None
        self.closed = False

    def all_tpcs(self) -> frozenset[int]:
        """Every TPC id of the device."""
        return frozenset(range(self.num_tpcs))

    def partition(self, tpcs: Iterable[int]) -> GpuPartition:
        """The partition of exactly these TPCs (created once, then cached).

        Raises
        ------
        PartitionError
            For an empty set, non-int or duplicate ids, ids out of range, or a closed device.
        """
        self._check_open()
        key = validate_tpcs(tpcs, self.num_tpcs)
        with self._lock:
            part = self._partitions.get(key)
            if part is None or part.closed:
                resources = self._pool.pop(key, None) or _GreenContext(self, key)
                part = self._partitions[key] = GpuPartition(self, key, resources)
            return part

    def live_partitions(self) -> int:
        """Partitions (green contexts) currently alive."""
        return sum(1 for p in self._partitions.values() if not p.closed)

    def sm_map(self) -> dict[int, tuple[int, ...]]:
        """TPC id to the SM ids its blocks ran on, probed once with a ``%smid`` kernel."""
        if self._sm_map is None:
            from lithos_sched.smid_probe import probe_tpc_sms

            self._sm_map = probe_tpc_sms(self)
        return self._sm_map

    def describe(self) -> dict[str, Any]:
        """Name, driver, SMs, TPC granularity; ``simulated`` is False."""
        return {
            "name": self.name, "simulated": False, "driver_version": self.driver_version,
            "sms": self.num_sms, "tpcs": self.num_tpcs, "sms_per_unit": self.sms_per_unit, "split": self.split,
        }

    def _release(self, part: GpuPartition) -> None:
        with self._lock:
            if self._partitions.get(part.tpcs) is part:
                del self._partitions[part.tpcs]
            self._pool[part.tpcs] = part._resources

    def _check_open(self) -> None:
        if self.closed:
            raise PartitionError("the device is closed")

    def close(self) -> None:
        """Close every partition."""
        if self.closed:
            return
        for part in list(self._partitions.values()):
            part.close()
        for resources in self._pool.values():
            resources.destroy()
        self._pool.clear()
        self.closed = True

    def __enter__(self) -> GpuDevice:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<GpuDevice {self.name!r} {self.num_tpcs} units of {self.sms_per_unit} SMs>"


def _split(resource: Any, num_sms: int) -> tuple[list[Any], int, str]:
    """Split the SMs into the finest groups the driver gives: TPCs (2 SMs) when it can."""
    from cuda.bindings import driver

    attempts = ((_SPLIT_IGNORE_SM_COSCHEDULING, 2, "TPC (ignore SM co-scheduling, 2 SMs)"),
                (0, 2, "default (co-scheduling aligned)"))
    last: Exception | None = None
    for flags, min_count, label in attempts:
        try:
            groups, n, _remaining = check(driver.cuDevSmResourceSplitByCount(num_sms, resource, flags, min_count),
                                          "cuDevSmResourceSplitByCount")
        except LithosCudaError as exc:
            last = exc
            continue
        groups = list(groups)[: int(n)]
        if not groups:
            continue
        size = int(groups[0].sm.smCount)
        if size != 2:
            warnings.warn(f"lithos: this driver splits SMs into groups of {size}, not TPCs; partitions are "
                          f"{size}-SM units", RuntimeWarning, stacklevel=3)
        return groups, size, label
    raise LithosCudaError("cuDevSmResourceSplitByCount", getattr(last, "code", -1), getattr(last, "name", "no groups"))
