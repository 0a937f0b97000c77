"""Plumbing shared by the model services: where their arrays live, random weights, request costs,
and the capture and replay of one request as a CUDA graph.

`DeviceArrays` (the default) allocates on the GPU and draws random weights there with
``cupy.random``; `EmulatorArrays` keeps every array in host memory for `kernels._emulator`,
so a model at a small size runs on a machine without a GPU (the CPU tests). A model never
downloads anything: its weights are random, drawn at construction from its seed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import numpy as np

from kernels import dtypes
from kernels._compile import as_cupy_stream

#: Stream handles that are not streams of one's own: the legacy and per-thread default streams.
DEFAULT_STREAM_HANDLES = (0, 1, 2)


@dataclasses.dataclass(frozen=True)
class Cost:
    """Work of one request or step.

    Attributes
    ----------
    flops : float
        Floating-point operations (a multiply-add is 2) of the GEMMs and attention; the
        elementwise and normalization kernels are not counted.
    bytes : float
        Minimum DRAM traffic: what the request must read and write at least once (its
        weights, its KV-cache span, its inputs and outputs, and the activations each
        kernel passes to the next), not what caches save or redundant reads add.
    """

    flops: float
    bytes: float


class DeviceArrays:
    """A model's arrays on the GPU (CuPy), random values drawn with ``cupy.random``.

    Parameters
    ----------
    seed : int
        Seeds every random draw, in the order the model makes them.
    """

    emulated = False

    def __init__(self, seed: int = 0):
        import cupy

        self.xp = cupy
        self._rng = np.random.default_rng(seed)

    def normal(self, shape: Sequence[int], scale: float = 1.0, shift: float = 0.0) -> Any:
        """float32 ``shift + scale * N(0, 1)`` in `xp` (to be finished with `store`)."""
        gen = self.xp.random.default_rng(int(self._rng.integers(0, 2**63 - 1)))
        x = gen.standard_normal(tuple(shape), dtype=np.float32)
        x *= np.float32(scale)
        x += np.float32(shift)
        return x

    def integers(self, high: int, shape: Sequence[int]) -> Any:
        """int32 draws from ``[0, high)`` on the device."""
        return self.asarray(self._rng.integers(0, high, tuple(shape)).astype(np.int32))

    def store(self, x: Any, kind: str) -> Any:
        """Array ``x`` of `xp` rounded to storage ``kind`` (bfloat16 as uint16 bits), C-contiguous."""
        xp = self.xp
        x = xp.ascontiguousarray(x, dtype=np.float32)
        if kind == dtypes.FLOAT32:
            return x
        if kind == dtypes.FLOAT16:
            return x.astype(np.float16)
        u = x.view(np.uint32).astype(np.uint64)
        return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)

    def asarray(self, host: np.ndarray) -> Any:
        """A device copy of host array ``host``."""
        return self.xp.asarray(np.ascontiguousarray(host))

    def empty(self, shape: Sequence[int], dtype: Any) -> Any:
        """An uninitialized device array."""
        return self.xp.empty(tuple(shape), dtype=dtype)

    def zeros(self, shape: Sequence[int], dtype: Any) -> Any:
        """A zero-filled device array."""
        return self.xp.zeros(tuple(shape), dtype=dtype)

    def to_host(self, x: Any) -> np.ndarray:
        """A host copy of device array ``x`` (synchronizes)."""
        return self.xp.asnumpy(x)

    def write(self, x: Any, values: np.ndarray, stream: Any) -> None:
        """Copy host ``values`` into device array ``x`` (same shape) on ``stream``."""
        x.set(np.ascontiguousarray(values, dtype=x.dtype), stream=stream)

    def assign(self, x: Any, values: Any) -> None:
        """``x[...] = values``: a scalar or an array of `xp` (e.g. from `normal`), at set-up."""
        x[...] = values

    def stream(self, stream: Any) -> Any:
        """The CuPy stream of ``stream``; refuses the default streams.

        Raises
        ------
        ValueError
            For None, the legacy default (null) stream or the per-thread default stream.
        """
        if stream is None:
            raise ValueError("pass a stream of your own: model requests never run on the default stream")
        s = as_cupy_stream(stream)
        if s.ptr in DEFAULT_STREAM_HANDLES:
            raise ValueError("model requests never run on the default (null or per-thread) stream")
        return s

    def own_stream(self, stream: Any) -> Any:
        """``stream`` (`stream` checks it), or a new non-blocking stream when None."""
        return self.xp.cuda.Stream(non_blocking=True) if stream is None else self.stream(stream)

    def synchronize(self) -> None:
        """Wait for the device (set-up work runs on CuPy's current stream)."""
        self.xp.cuda.get_current_stream().synchronize()


class EmulatorArrays(DeviceArrays):
    """A model's arrays in host memory, for `kernels._emulator` (CPU tests at small sizes).

    The arrays are ``cupy.ndarray`` views of NumPy memory: only emulated kernels may
    touch them. Random values are drawn with NumPy. Streams are ignored (None).
    """

    emulated = True

    def __init__(self, seed: int = 0):
        self.xp = np
        self._rng = np.random.default_rng(seed)

    def normal(self, shape: Sequence[int], scale: float = 1.0, shift: float = 0.0) -> np.ndarray:
        return (self._rng.standard_normal(tuple(shape)) * scale + shift).astype(np.float32)

    def integers(self, high: int, shape: Sequence[int]) -> Any:
        return self.asarray(self._rng.integers(0, high, tuple(shape)).astype(np.int32))

    def store(self, x: np.ndarray, kind: str) -> Any:
        from kernels import _emulator

        return _emulator.host_array(dtypes.to_storage(np.asarray(x, np.float32), kind))

    def asarray(self, host: np.ndarray) -> Any:
        from kernels import _emulator

        return _emulator.host_array(np.asarray(host))

    def empty(self, shape: Sequence[int], dtype: Any) -> Any:
        from kernels import _emulator

        return _emulator.empty(tuple(shape), dtype)

    def zeros(self, shape: Sequence[int], dtype: Any) -> Any:
        return self.asarray(np.zeros(tuple(shape), dtype=dtype))

    def to_host(self, x: Any) -> np.ndarray:
        from kernels import _emulator

        return np.array(_emulator.to_numpy(x))

    def write(self, x: Any, values: np.ndarray, stream: Any) -> None:
        from kernels import _emulator

        _emulator.to_numpy(x)[...] = values

    def assign(self, x: Any, values: Any) -> None:
        self.write(x, values, None)

    def stream(self, stream: Any) -> None:
        return None

    def own_stream(self, stream: Any) -> None:
        return None

    def synchronize(self) -> None:
        pass


def item(kind: str) -> int:
    """Bytes per element of storage ``kind``."""
    return dtypes.numpy_dtype(kind).itemsize


def check_batch_sizes(batch_sizes: Sequence[int]) -> tuple[int, ...]:
    """The batch sizes, sorted, each an int >= 1.

    Raises
    ------
    ValueError
        For an empty sequence or a size that is not a positive int.
    """
    sizes = tuple(sorted(set(batch_sizes)))
    if not sizes or any(isinstance(b, bool) or not isinstance(b, (int, np.integer)) or b < 1 for b in sizes):
        raise ValueError(f"batch_sizes must be positive ints, got {tuple(batch_sizes)!r}")
    return tuple(int(b) for b in sizes)


class GraphedService:
    """A latency-critical service whose request can run eagerly or as a captured CUDA graph.

    Subclasses set ``arrays`` (`DeviceArrays` or `EmulatorArrays`) and ``batch_sizes``,
    and implement `forward` (issue one request of a batch size on a stream, return its
    output) and `cost`. The graph of a batch size holds exactly the kernels `forward`
    launches, with the same buffers and arguments, so a replay computes the same bits as
    an eager run from the same state.
    """

    arrays: DeviceArrays
    batch_sizes: tuple[int, ...]

    def __init__(self) -> None:
        self._graphs: dict[Hashable, tuple[Any, Any]] = {}

    def forward(self, batch_size: int, stream: Any) -> Any:
        """Issue one request (no synchronization); returns its output (a workspace view)."""
        raise NotImplementedError

    def cost(self, batch_size: int) -> Cost:
        """FLOPs and minimum DRAM bytes of one request."""
        raise NotImplementedError

    def check_batch(self, batch_size: int) -> int:
        """``batch_size`` if it is one of `batch_sizes`; ValueError otherwise."""
        if batch_size not in self.batch_sizes:
            raise ValueError(f"batch_size must be one of {self.batch_sizes}, got {batch_size!r}")
        return int(batch_size)

    def capture(self, stream: Any, batch_sizes: Sequence[int] | None = None) -> None:
        """Capture one request per batch size as a CUDA graph (all of `batch_sizes` by default).

        Each request runs once eagerly first (kernels are built and loaded outside the
        capture), then is captured on ``stream`` and uploaded; the stream is synchronized.
        """
        for b in batch_sizes or self.batch_sizes:
            b = self.check_batch(b)
            self.capture_call(("forward", b), lambda s, b=b: self.forward(b, s), stream)

    def replay(self, batch_size: int, stream: Any) -> Any:
        """Launch the captured request of ``batch_size`` on ``stream``; returns its output."""
        return self.replay_call(("forward", self.check_batch(batch_size)), stream)

    def capture_call(self, key: Hashable, issue: Callable[[Any], Any], stream: Any) -> None:
        """Run ``issue(stream)`` eagerly, then capture it as the graph of ``key``."""
        if self.arrays.emulated:
            raise RuntimeError("CUDA graphs need the GPU (DeviceArrays)")
        s = self.arrays.stream(stream)
        issue(s)
        s.synchronize()
        s.begin_capture()
        try:
            out = issue(s)
        finally:
            graph = s.end_capture()
        graph.upload(s)
        s.synchronize()
        self._graphs[key] = (graph, out)

    def replay_call(self, key: Hashable, stream: Any) -> Any:
        """Launch the graph captured under ``key``; returns the output its capture returned."""
        try:
            graph, out = self._graphs[key]
        except KeyError:
            raise KeyError(f"nothing captured for {key!r}; call capture first") from None
        graph.launch(stream=self.arrays.stream(stream))
        return out
