"""The interface shared by the GPU (`GpuDevice`) and the simulated device (`SimDevice`).

A *device* splits its SMs once into units, TPCs (pairs of SMs) where the driver allows it,
and hands out a *partition* for any set of unit ids. A partition owns a high- and a
normal-priority *stream*; work issued on them runs only on the partition's SMs. Streams
record *events*, which order work across streams and time it.

Scheduler and benchmark code is written against these protocols only, so the same policy
runs on the GPU and, in virtual time, on the simulator. The protocols are structural
(`typing.Protocol`): the device classes do not inherit from them.

Null stream
-----------
No partition ever hands out the legacy default stream (handle 0) or the special handles
``CU_STREAM_LEGACY`` (1) and ``CU_STREAM_PER_THREAD`` (2): on the GPU they escape every
partition (work on ``cupy.cuda.Stream.null`` ran on all 132 SMs even with a green context
current; docs/design.md). Stream objects refuse such handles.

The GPU's partitions are green contexts (`lithos_sched.gpu_device`); the simulator's run
in virtual time (`lithos_sched.sim_device`).
"""

from __future__ import annotations

import collections
import numbers
from collections.abc import Iterable
from contextlib import AbstractContextManager
from typing import Any, Literal, Protocol, runtime_checkable

from lithos_sched.errors import PartitionError

StreamPriority = Literal["high", "normal"]
PRIORITIES: tuple[StreamPriority, ...] = ("high", "normal")

#: Stream handles that are not streams of a partition: the legacy default stream and the
#: driver's special ``CU_STREAM_LEGACY`` / ``CU_STREAM_PER_THREAD`` values.
NULL_STREAM_HANDLES = frozenset({0, 1, 2})


@runtime_checkable
class Event(Protocol):
    """A point in a stream's work."""

    def query(self) -> bool:
        """Whether the work before the event has finished (never blocks)."""

    def synchronize(self) -> None:
        """Wait until the event has completed (advances virtual time on the simulator)."""

    def elapsed_ms(self, end: Any) -> float:
        """Milliseconds from this event to ``end``; both must have completed."""


@runtime_checkable
class Stream(Protocol):
    """A FIFO queue of work confined to one partition.

    Attributes
    ----------
    handle : int
        The ``CUstream`` value on the GPU, an id on the simulator; never a null handle.
    priority : {"high", "normal"}
    partition : Partition
        The partition whose SMs run this stream's work.
    """

    handle: int
    priority: StreamPriority
    partition: Any

    def __cuda_stream__(self) -> tuple[int, int]:
        """The CUDA stream protocol: ``(0, handle)``."""

    def record(self) -> Any:
        """Record and return an `Event` after the work queued so far."""

    def wait(self, event: Any) -> None:
        """Make work queued later on this stream wait for ``event``."""

    def synchronize(self) -> None:
        """Wait until every operation queued on this stream has finished."""

    def use(self) -> AbstractContextManager[Any]:
        """A context manager yielding this stream; on the GPU it is CuPy's current stream
        inside the block."""


@runtime_checkable
class Partition(Protocol):
    """A set of TPCs (units) with its streams.

    Attributes
    ----------
    tpcs : frozenset of int
        The unit ids.
    sm_ids : tuple of int
        The SM ids (``%smid``) the partition's blocks run on, sorted.
    high, normal : Stream
        The high- and normal-priority streams.
    closed : bool
    """

    tpcs: frozenset[int]
    high: Any
    normal: Any
    closed: bool

    @property
    def sm_ids(self) -> tuple[int, ...]:
        """SM ids of the partition."""

    @property
    def num_tpcs(self) -> int:
        """Number of units (TPCs) in the partition."""

    @property
    def num_sms(self) -> int:
        """Number of SMs in the partition."""

    def stream(self, priority: StreamPriority = "normal") -> Any:
        """The stream of ``priority``."""

    def use(self, priority: StreamPriority = "normal") -> AbstractContextManager[Any]:
        """A context manager yielding the stream of ``priority``; on the GPU it is CuPy's
        current stream inside the block."""

    def close(self) -> None:
        """Wait for the partition's streams, then release it (idempotent)."""


@runtime_checkable
class Device(Protocol):
    """A GPU, real or simulated, that hands out partitions.

    Attributes
    ----------
    name : str
    num_tpcs : int
        Partitionable units: TPCs when ``sms_per_unit == 2``.
    num_sms : int
        SMs of the whole device.
    sms_per_unit : int
        SMs per unit actually obtained (2 = TPC granularity).
    simulated : bool
    closed : bool
    """

    name: str
    num_tpcs: int
    num_sms: int
    sms_per_unit: int
    simulated: bool
    closed: bool

    def partition(self, tpcs: Iterable[int]) -> Any:
        """The partition of exactly these unit ids (each distinct set is created once)."""

    def all_tpcs(self) -> frozenset[int]:
        """Every unit id of the device."""

    def live_partitions(self) -> int:
        """Partitions currently open."""

    def describe(self) -> dict[str, Any]:
        """``name``, ``driver_version``, ``sms``, ``tpcs``, ``sms_per_unit``, ``granularity``,
        ``simulated``."""

    def close(self) -> None:
        """Close every partition and release the device's resources (idempotent)."""

    def __enter__(self) -> Any: ...

    def __exit__(self, *exc: object) -> None: ...


def validate_tpcs(tpcs: Iterable[int], num_tpcs: int) -> frozenset[int]:
    """Check a requested unit set and return it as a frozenset.

    Parameters
    ----------
    tpcs : iterable of int
        Unit ids; numpy integers are accepted, bools and floats are not.
    num_tpcs : int
        Units on the device; valid ids are ``0 .. num_tpcs - 1``.

    Returns
    -------
    frozenset of int

    Raises
    ------
    PartitionError
        For a non-iterable, an empty set, non-int, duplicate or out-of-range ids; the
        message names the bad values.
    """
    if isinstance(tpcs, (str, bytes)) or not isinstance(tpcs, Iterable):
        raise PartitionError(f"TPC ids must be an iterable of ints, got {tpcs!r}")
    ids = list(tpcs)
    if not ids:
        raise PartitionError("a partition needs at least one TPC, got an empty set")
    bad = [t for t in ids if isinstance(t, bool) or not isinstance(t, numbers.Integral)]
    if bad:
        raise PartitionError(f"TPC ids must be ints, got {bad!r}")
    ids = [int(t) for t in ids]
    dup = sorted(t for t, n in collections.Counter(ids).items() if n > 1)
    if dup:
        raise PartitionError(f"duplicate TPC ids {dup}")
    out = sorted(t for t in ids if not 0 <= t < num_tpcs)
    if out:
        raise PartitionError(f"TPC ids {out} out of range: the device has TPCs 0..{num_tpcs - 1}")
    return frozenset(ids)


def validate_priority(priority: object) -> StreamPriority:
    """Return ``priority`` if it is ``"high"`` or ``"normal"``.

    Raises
    ------
    PartitionError
        Naming the bad value.
    """
    if priority not in PRIORITIES:
        raise PartitionError(f"priority must be 'high' or 'normal', got {priority!r}")
    return priority  # type: ignore[return-value]
