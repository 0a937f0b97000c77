"""The streams and events of a partition on a real GPU.

A `GpuStream` is one of the ``CU_STREAM_NON_BLOCKING`` streams of a partition's green
context (`lithos_sched.gpu_device`), wrapped for CuPy (``.cupy``, ``use``) and Numba
(``.numba``); it refuses the null handles, since the legacy default stream escapes every
partition, and every use checks that its partition is still open. A `GpuEvent` is a CuPy
event recorded on one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from lithos_sched.device_api import NULL_STREAM_HANDLES, StreamPriority, validate_priority
from lithos_sched.errors import PartitionError

if TYPE_CHECKING:
    from lithos_sched.gpu_device import GpuPartition


class GpuEvent:
    """A CUDA event (CuPy's) recorded on a stream.

    Attributes
    ----------
    cupy : cupy.cuda.Event
    """

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
        The ``CUstream``; never a null handle (0, 1 or 2), which would escape the partition.
    priority : {"high", "normal"}
    partition : GpuPartition

    Raises
    ------
    PartitionError
        At construction, for a null handle.
    """

    def __init__(self, handle: int, priority: StreamPriority, partition: GpuPartition):
        import cupy

        handle = int(handle)
        if handle in NULL_STREAM_HANDLES:
            raise PartitionError(f"refusing stream handle {handle}: the default stream escapes every partition")
        self.handle = handle
        self.priority = validate_priority(priority)
        self.partition = partition
        # CuPy keeps a reference to this object; it never destroys an external stream.
        self._cupy = cupy.cuda.Stream.from_external(self)
        self._numba: Any = None

    def __cuda_stream__(self) -> tuple[int, int]:
        """The CUDA stream protocol (version 0, handle)."""
        self.partition.check_open()
        return (0, self.handle)

    @property
    def cupy(self) -> Any:
        """The same stream for CuPy: ``with stream.cupy:`` or ``k(..., stream=stream.cupy)``."""
        self.partition.check_open()
        return self._cupy

    @property
    def numba(self) -> Any:
        """The same stream for Numba launches: ``k[grid, block, stream.numba](...)``."""
        self.partition.check_open()
        if self._numba is None:
            from lithos_atom._compat import import_numba_cuda

            self._numba = import_numba_cuda().external_stream(self.handle)
        return self._numba

    def record(self) -> GpuEvent:
        """Record an event (timing enabled) after the work queued so far."""
        import cupy

        event = cupy.cuda.Event()
        event.record(self.cupy)
        return GpuEvent(event)

    def wait(self, event: Any) -> None:
        """Make later work on this stream wait for ``event`` (a `GpuEvent` or CuPy event)."""
        self.cupy.wait_event(getattr(event, "cupy", event))

    def synchronize(self) -> None:
        """Wait until all work on this stream has finished (the GIL is released)."""
        self.partition.check_open()
        self._drain()

    @contextlib.contextmanager
    def use(self) -> Iterator[GpuStream]:
        """Make this stream CuPy's current stream inside the block, and restore the previous one.

        CuPy operations issued in the block without an explicit stream (ufuncs,
        reductions, copies, cuBLAS ``a @ b``) run on the partition's TPCs. Work sent
        explicitly to ``cupy.cuda.Stream.null`` (or any stream not of this partition)
        still escapes the partition: the legacy default stream runs on every SM.

        Yields
        ------
        GpuStream
            This stream.
        """
        import cupy

        with cupy.cuda.Device(self.partition.device.device_id), self.cupy:
            current = cupy.cuda.get_current_stream().ptr
            if current != self.handle:  # would mean CuPy ignored the stream: work would escape
                raise RuntimeError(f"CuPy's current stream is {current:#x}, not the partition's {self.handle:#x}")
            yield self

    def _drain(self) -> None:
        self._cupy.synchronize()

    def __repr__(self) -> str:
        return f"<GpuStream {self.priority} {self.handle:#x} of {self.partition!r}>"
