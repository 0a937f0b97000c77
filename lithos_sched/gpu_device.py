"""TPC partitions on a real GPU, built from CUDA green contexts.

How it follows the measured facts of docs/design.md:

- The device's SM resource is split **once** per process and device, with
  ``cuDevSmResourceSplitByCount(n, sm, CU_DEV_SM_RESOURCE_SPLIT_IGNORE_SM_COSCHEDULING, 2)``
  (``n=0`` first asks for the count): on an H100, 66 disjoint groups of 2 SMs, one TPC
  each. Groups of different split calls may overlap, so every partition is built from
  this one split. Where the driver refuses the flag or gives bigger groups, the finest
  split it offers is used and `GpuDevice.sms_per_unit` says what was obtained (with a
  warning).
- A partition for any TPC set is one green context made from those groups in one
  ``cuDevResourceGenerateDesc``, created with ``CU_GREEN_CTX_DEFAULT_STREAM``, with a
  high-priority and two normal-priority ``CU_STREAM_NON_BLOCKING`` streams
  (``cuGreenCtxStreamCreate``; priorities from ``cuCtxGetStreamPriorityRange``).
- Kernels loaded by CuPy (or Numba) in the primary context run confined when launched on
  those streams, so the primary context is initialized first and is the one current
  around every driver call here; creating a green context never leaves it current (the
  thread's previous context is restored), so CuPy keeps working.
- The legacy default stream escapes every partition: streams refuse null handles and
  `GpuPartition.use` makes the partition stream CuPy's current stream.
- ``cuDevSmResourceSplit`` (CUDA 13.1), which ``cuda.core``'s ``SMResource.split`` relies
  on for co-scheduling control, is not in a 13.0 driver, so ``cuda.bindings`` is used.

A partition's green context outlives `GpuPartition.close`: the device keeps it, idle, for
the next partition of the same TPCs (up to ``max_idle_contexts``, least recently used
first out) and destroys it in `GpuDevice.close` or at exit. The driver was measured to
keep about 4 MiB of device memory for every green context destroyed (driver 580, raw
driver calls, ``scripts/green_leak.py``), so create/destroy cycles would leak.

The split itself is `lithos_sched.gpu_split`; a partition's streams and events are
`lithos_sched.gpu_stream`.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time
import weakref
from collections.abc import Iterable, Iterator
from typing import Any

from lithos_sched.device_api import StreamPriority, validate_priority, validate_tpcs
from lithos_sched.errors import LithosCudaError, PartitionError, check
from lithos_sched.faults import is_sticky
from lithos_sched.gpu_split import TPC_SMS, cuda_driver, split_for
from lithos_sched.gpu_stream import GpuStream

log = logging.getLogger("lithos_sched")

_CUDA_ERROR_DEINITIALIZED = 4  # at interpreter exit the driver may be gone before our finalizers


def _activate_primary(device_id: int) -> None:
    """Have the CUDA runtime (through CuPy) create the device's primary context.

    Green contexts retain the primary context; creating it first keeps it from being
    initialized and torn down around each of them (driver documentation), and it is the
    context CuPy loads kernels and allocates memory in.
    """
    import cupy

    with cupy.cuda.Device(device_id):
        cupy.empty(1, dtype="u1")


@contextlib.contextmanager
def _bound(ctx: Any) -> Iterator[None]:
    """Make ``ctx`` current on this thread inside the block; restore the previous context
    afterwards, also when a call inside changed it."""
    driver = cuda_driver()
    prev = check(driver.cuCtxGetCurrent(), "cuCtxGetCurrent")
    if int(prev) != int(ctx):
        check(driver.cuCtxSetCurrent(ctx), "cuCtxSetCurrent")
    try:
        yield
    finally:
        if int(check(driver.cuCtxGetCurrent(), "cuCtxGetCurrent")) != int(prev):
            check(driver.cuCtxSetCurrent(prev), "cuCtxSetCurrent")


# ---- green contexts, partitions --------------------------------------------------------


class _GreenContext:
    """A green context for one TPC set and its streams; owned by the device."""

    def __init__(self, device: GpuDevice, tpcs: frozenset[int]):
        driver = cuda_driver()
        groups = [device._groups[t] for t in sorted(tpcs)]
        flags = driver.CUstream_flags.CU_STREAM_NON_BLOCKING
        with _bound(device._primary):
            desc = check(driver.cuDevResourceGenerateDesc(groups, len(groups)), "cuDevResourceGenerateDesc")
            t0 = time.perf_counter()
            ctx = check(driver.cuGreenCtxCreate(desc, device._cu_device,
                                                driver.CUgreenCtxCreate_flags.CU_GREEN_CTX_DEFAULT_STREAM),
                        "cuGreenCtxCreate")
            self.create_ms = (time.perf_counter() - t0) * 1000.0
            handles: list[int] = []
            try:
                for priority in (device.greatest_priority, device.least_priority, device.least_priority):
                    handles.append(int(check(driver.cuGreenCtxStreamCreate(ctx, flags, priority),
                                             "cuGreenCtxStreamCreate")))
            except BaseException:
                _destroy_green_context(device._primary, ctx, handles)
                raise
        self.high, self.normal, self.normal_b = handles
        # Runs on destroy(), on garbage collection, or at exit, whichever comes first.
        self._finalizer = weakref.finalize(self, _destroy_green_context, device._primary, ctx, handles)

    def destroy(self) -> None:
        """Destroy the streams and the green context (once)."""
        self._finalizer()


def _destroy_green_context(primary: Any, ctx: Any, handles: list[int]) -> None:
    driver = cuda_driver()
    try:
        with _bound(primary):
            for h in handles:
                stream = driver.CUstream(h)
                check(driver.cuStreamSynchronize(stream), "cuStreamSynchronize")
                check(driver.cuStreamDestroy(stream), "cuStreamDestroy")
            check(driver.cuGreenCtxDestroy(ctx), "cuGreenCtxDestroy")
    except LithosCudaError as exc:
        # at exit the process tears everything down anyway, and a context lost to a fault
        # (a sticky error) took its green contexts with it
        if exc.code != _CUDA_ERROR_DEINITIALIZED and not is_sticky(exc):
            raise


def _release_primary(cu_device: Any) -> None:
    try:
        check(cuda_driver().cuDevicePrimaryCtxRelease(cu_device), "cuDevicePrimaryCtxRelease")
    except LithosCudaError as exc:
        if exc.code != _CUDA_ERROR_DEINITIALIZED:
            raise


class GpuPartition:
    """A set of TPCs as a green context, with a high- and two normal-priority streams.

    Made by `GpuDevice.partition`; do not construct directly.

    Attributes
    ----------
    device : GpuDevice
    tpcs : frozenset of int
    high, normal : GpuStream
        The high- and normal-priority streams.
    normal_b : GpuStream
        A second normal-priority stream: consecutive atoms of one launch can overlap
        (the next starts while the previous one's last blocks drain).
    create_ms : float
        How long ``cuGreenCtxCreate`` took for this TPC set.
    closed : bool
        True once every holder closed it (each `GpuDevice.partition` call of its set is
        one holder), or the device closed.
    """

    def __init__(self, device: GpuDevice, tpcs: frozenset[int], context: _GreenContext):
        self.device = device
        self.tpcs = tpcs
        self._context = context
        self.create_ms = context.create_ms
        self.closed = False
        self._holders = 1  # `GpuDevice.partition` calls not yet matched by a close()
        self.high = GpuStream(context.high, "high", self)
        self.normal = GpuStream(context.normal, "normal", self)
        self.normal_b = GpuStream(context.normal_b, "normal", self)

    @property
    def num_tpcs(self) -> int:
        """Number of TPCs (units)."""
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

    def stream(self, priority: StreamPriority = "normal") -> GpuStream:
        """The ``"high"`` or ``"normal"`` priority stream."""
        self.check_open()
        return self.high if validate_priority(priority) == "high" else self.normal

    def use(self, priority: StreamPriority = "normal") -> contextlib.AbstractContextManager[GpuStream]:
        """Make this partition's stream of ``priority`` CuPy's current stream inside the block
        (see `GpuStream.use`)."""
        return self.stream(priority).use()

    def check_open(self) -> None:
        """Raise `PartitionError` once this partition or its device is closed."""
        if self.closed:
            raise PartitionError(f"partition of TPCs {sorted(self.tpcs)} is closed")
        self.device.check_open()

    def close(self) -> None:
        """Release this holder's claim; the last one waits for the partition's streams and
        hands its green context back to the device.

        `GpuDevice.partition` returns the open partition of a set to every caller, so one
        caller closing it must not close it under the others.
        """
        with self.device._lock:
            self._holders -= 1
            if self._holders > 0:
                return
        self._close_now()

    def _close_now(self) -> None:
        """Wait for the streams and release the green context, whoever still holds it."""
        if self.closed:
            return
        for s in (self.high, self.normal, self.normal_b):
            s._drain()
        self.closed = True
        self.device._release(self)

    def __repr__(self) -> str:
        return f"<GpuPartition {self.num_tpcs} TPCs{' closed' if self.closed else ''}>"


class GpuDevice:
    """A GPU whose TPCs can be handed out as partitions.

    Parameters
    ----------
    device_id : int
        CUDA device ordinal.
    max_idle_contexts : int
        Green contexts of closed partitions kept for reuse; beyond this the least
        recently used are destroyed.

    Attributes
    ----------
    name : str
    uuid : str
        The GPU's identity whatever ``CUDA_VISIBLE_DEVICES`` says (``GPU-xxxxxxxx-...``).
    driver_version : int
        ``cuDriverGetVersion`` (13000 = CUDA 13.0).
    num_sms : int
        SMs of the device.
    num_tpcs : int
        Units of the split: TPCs when ``sms_per_unit == 2``.
    sms_per_unit : int
    split : str
        How the SMs were split.
    greatest_priority, least_priority : int
        The stream priority range; high streams get the greatest (numerically lowest).
    simulated : bool
        Always False.

    Raises
    ------
    RuntimeError
        Without a CUDA driver.
    PartitionError
        For a bad ``device_id`` or ``max_idle_contexts``.
    LithosCudaError
        When a driver call fails.
    """

    simulated = False

    def __init__(self, device_id: int = 0, *, max_idle_contexts: int = 128):
        if isinstance(device_id, bool) or not isinstance(device_id, int) or device_id < 0:
            raise PartitionError(f"device_id must be a non-negative int, got {device_id!r}")
        if isinstance(max_idle_contexts, bool) or not isinstance(max_idle_contexts, int) or max_idle_contexts < 0:
            raise PartitionError(f"max_idle_contexts must be a non-negative int, got {max_idle_contexts!r}")
        try:
            driver = cuda_driver()
            init = driver.cuInit(0)
        except Exception as exc:  # no libcuda: a CPU-only machine
            raise RuntimeError(f"no CUDA driver ({exc}); use open_device(simulate=True)") from exc
        check(init, "cuInit")
        count = check(driver.cuDeviceGetCount(), "cuDeviceGetCount")
        if device_id >= count:
            raise PartitionError(f"device_id {device_id} out of range: {count} CUDA device(s)")
        self.device_id = device_id
        self.max_idle_contexts = max_idle_contexts
        _activate_primary(device_id)
        self._cu_device = check(driver.cuDeviceGet(device_id), "cuDeviceGet")
        self._primary = check(driver.cuDevicePrimaryCtxRetain(self._cu_device), "cuDevicePrimaryCtxRetain")
        # Keeps the primary context alive as long as the device; created before any green
        # context's finalizer, so at exit it runs after them (finalizers run newest first).
        self._primary_finalizer = weakref.finalize(self, _release_primary, self._cu_device)
        raw_name = check(driver.cuDeviceGetName(256, self._cu_device), "cuDeviceGetName")
        self.name = raw_name.split(b"\0")[0].decode()
        self.driver_version = int(check(driver.cuDriverGetVersion(), "cuDriverGetVersion"))
        split, self.num_sms = split_for(device_id, self._cu_device)
        self._groups = split.groups
        self.sms_per_unit = split.sms_per_unit
        self.split = split.label
        self.unused_sms = split.unused_sms
        self.num_tpcs = len(split.groups)
        with _bound(self._primary):
            least, greatest = check(driver.cuCtxGetStreamPriorityRange(), "cuCtxGetStreamPriorityRange")
        self.least_priority, self.greatest_priority = int(least), int(greatest)
        self._open: dict[frozenset[int], GpuPartition] = {}
        self._idle: collections.OrderedDict[frozenset[int], _GreenContext] = collections.OrderedDict()
        self._lock = threading.RLock()
        self._sm_map: dict[int, tuple[int, ...]] | None = None
        self.closed = False

    # ---- the device interface -------------------------------------------------------

    def all_tpcs(self) -> frozenset[int]:
        """Every TPC (unit) id of the device."""
        return frozenset(range(self.num_tpcs))

    def partition(self, tpcs: Iterable[int]) -> GpuPartition:
        """The partition of exactly these TPCs.

        An open partition of the same set is returned as is; otherwise a new one is made
        on the set's idle green context, or on a new one (~1-3 ms). Each call holds the
        partition until a matching `GpuPartition.close`: it stays open while any
        caller still holds it.

        Raises
        ------
        PartitionError
            For an empty set, non-int, duplicate or out-of-range ids, or a closed device.
        LithosCudaError
            When the driver refuses the green context or its streams.
        """
        self.check_open()
        key = validate_tpcs(tpcs, self.num_tpcs)
        with self._lock:
            self.check_open()
            part = self._open.get(key)
            if part is not None:
                part._holders += 1
            else:
                context = self._idle.pop(key, None) or _GreenContext(self, key)
                try:
                    part = GpuPartition(self, key, context)
                except BaseException:
                    self._idle[key] = context
                    raise
                self._open[key] = part
            return part

    def live_partitions(self) -> int:
        """Partitions currently open."""
        return len(self._open)

    def live_green_contexts(self) -> int:
        """Green contexts alive: those of open partitions plus idle ones kept for reuse."""
        with self._lock:
            return len(self._open) + len(self._idle)

    def has_context(self, tpcs: Iterable[int]) -> bool:
        """Whether a green context for exactly this TPC set exists (open or idle)."""
        key = validate_tpcs(tpcs, self.num_tpcs)
        with self._lock:
            return key in self._open or key in self._idle

    def sm_map(self) -> dict[int, tuple[int, ...]]:
        """TPC (unit) id to its SM ids, probed once with a ``%smid`` kernel.

        Raises
        ------
        RuntimeError
            If the probe does not find ``sms_per_unit`` distinct SMs per unit.
        """
        from lithos_sched.smid_probe import sms_of, unit_map_problems

        with self._lock:  # one probe, even when several threads ask at once
            if self._sm_map is None:
                mapping: dict[int, tuple[int, ...]] = {}
                for t in range(self.num_tpcs):
                    part = self.partition([t])  # one more holder: closing it leaves a user's open
                    try:
                        mapping[t] = tuple(sorted(sms_of(part.normal, blocks=32 * self.sms_per_unit)))
                    finally:
                        part.close()
                problems = unit_map_problems(mapping, self.sms_per_unit)
                if problems:
                    raise RuntimeError("smid probe: " + "; ".join(problems[:4]))
                self._sm_map = mapping
            return self._sm_map

    @property
    def uuid(self) -> str:
        """``GPU-`` and the 16 bytes of ``cuDeviceGetUuid`` as ``nvidia-smi -L`` prints a
        GPU's (a MIG instance's own bytes under MIG): the same in every process, whichever
        ordinal ``CUDA_VISIBLE_DEVICES`` gives the device there."""
        raw = check(cuda_driver().cuDeviceGetUuid(self._cu_device), "cuDeviceGetUuid").bytes.hex()
        return f"GPU-{raw[:8]}-{raw[8:12]}-{raw[12:16]}-{raw[16:20]}-{raw[20:]}"

    def describe(self) -> dict[str, Any]:
        """Name, driver version, SMs, TPCs and the granularity obtained; ``simulated`` False."""
        return {
            "name": self.name, "simulated": False, "driver_version": self.driver_version,
            "sms": self.num_sms, "tpcs": self.num_tpcs, "sms_per_unit": self.sms_per_unit,
            "granularity": "TPC" if self.sms_per_unit == TPC_SMS else f"{self.sms_per_unit}-SM units",
            "split": self.split, "unused_sms": self.unused_sms,
        }

    def close(self) -> None:
        """Close every partition, destroy every green context, release the primary context."""
        with self._lock:
            if self.closed:
                return
            try:
                for part in list(self._open.values()):
                    part._close_now()
                while self._idle:
                    self._idle.popitem(last=False)[1].destroy()
            finally:
                self.closed = True
                self._primary_finalizer()

    def __enter__(self) -> GpuDevice:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<GpuDevice {self.name!r} {self.num_tpcs} units of {self.sms_per_unit} SMs>"

    # ---- internals ------------------------------------------------------------------

    def _release(self, part: GpuPartition) -> None:
        with self._lock:
            if self._open.get(part.tpcs) is not part:
                return
            del self._open[part.tpcs]
            self._idle[part.tpcs] = part._context
            while len(self._idle) > self.max_idle_contexts:
                self._idle.popitem(last=False)[1].destroy()

    def check_open(self) -> None:
        """Raise `PartitionError` once the device is closed."""
        if self.closed:
            raise PartitionError(f"device {self.device_id} ({self.name}) is closed")
