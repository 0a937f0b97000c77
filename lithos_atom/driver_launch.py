"""CuPy kernel launches through lithos' own driver call.

``RawKernel.__call__`` packs its arguments in Cython and calls ``cuLaunchKernel`` with
the GIL released. lithos launches a CuPy kernel itself instead, through
`lithos_atom.driver_calls` (which keeps the GIL in latency-critical threads), whenever it
can pack the arguments to the same bytes CuPy would:

- a ``cupy.ndarray`` for a pointer parameter: its data pointer (CuPy passes a ``CArray``
  whose first field is that pointer; the driver reads the parameter's 8 bytes);
- ``None``: a null pointer; a ``cupy.cuda.MemoryPointer``: its address;
- a NumPy scalar or a NumPy array of one element: its bytes;
- a Python ``bool``, ``int`` or ``float`` or ``complex``: the bytes of the NumPy type CuPy
  picks (``bool``, ``int64`` or ``uint64`` from 2**63, ``float64``, ``complex128``).

A parameter narrower than its value takes the value's first bytes, as the driver reads
them from CuPy's buffer. Anything else (another argument type, a value narrower than its
parameter, an argument count other than the kernel's, a cooperative kernel, a grid or
block that is not a tuple of ints, a driver without ``cuFuncGetParamInfo``) goes through
CuPy's own call, which then also raises CuPy's own errors. An atom's arguments are packed
once per launch; each atom rewrites only its first block.
"""

from __future__ import annotations

import ctypes
import struct
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from lithos_atom import driver_calls
from lithos_atom.errors import LithosCudaError

_layouts: dict[int, tuple[tuple[int, int], ...] | None] = {}  # function handle -> parameter layout
_INT64_MIN, _UINT64_LIMIT, _INT64_LIMIT = -(2**63), 2**64, 2**63
_array_types: tuple[type, ...] | None = None
_memory_pointer: type | None = None


def _cupy_types() -> tuple[tuple[type, ...], type]:
    global _array_types, _memory_pointer
    if _array_types is None or _memory_pointer is None:
        import cupy

        _array_types = (cupy._core.core._ndarray_base,)
        _memory_pointer = cupy.cuda.MemoryPointer
    return _array_types, _memory_pointer


def _value_bytes(arg: Any) -> bytes | None:
    """The bytes CuPy passes for ``arg`` when it is not a device pointer; None if unsure."""
    kind = type(arg)
    if kind is bool:
        return b"\x01" if arg else b"\x00"
    if kind is int:
        if _INT64_MIN <= arg < _INT64_LIMIT:
            return struct.pack("<q", arg)
        return struct.pack("<Q", arg) if _INT64_LIMIT <= arg < _UINT64_LIMIT else None
    if kind is float:
        return struct.pack("<d", arg)
    if kind is complex:
        return struct.pack("<dd", arg.real, arg.imag)
    if isinstance(arg, np.generic) or (isinstance(arg, np.ndarray) and arg.size == 1):
        if arg.dtype.hasobject:
            return None
        return arg.tobytes()
    return None


class PackedParams:
    """A kernel's arguments packed for ``cuLaunchKernel``: one buffer, and the array of
    pointers into it that the driver reads (it copies them at launch, so the buffer may
    be rewritten for the next launch).

    Parameters
    ----------
    layout : tuple of (int, int)
        ``(offset, size)`` of each parameter.
    """

    __slots__ = ("buffer", "pointers", "layout")

    def __init__(self, layout: tuple[tuple[int, int], ...]):
        self.layout = layout
        end = max((o + s for o, s in layout), default=0)
        self.buffer = ctypes.create_string_buffer(max(1, end))
        base = ctypes.addressof(self.buffer)
        self.pointers = (ctypes.c_void_p * max(1, len(layout)))(*(base + o for o, _ in layout))

    def set(self, index: int, value: bytes) -> None:
        """Write ``value``'s first bytes (as many as the parameter holds) into parameter ``index``."""
        offset, size = self.layout[index]
        self.buffer[offset:offset + size] = value[:size]

    def set_u64(self, index: int, value: int) -> None:
        """Write an unsigned 64-bit parameter (an atom's first block)."""
        struct.pack_into("<Q", self.buffer, self.layout[index][0], value)


_U64 = struct.Struct("<Q")
_local = threading.local()  # per thread: the PackedParams of each function, reused launch after launch


def pack(function: int, args: tuple, into: PackedParams | None = None) -> PackedParams | None:
    """Pack ``args`` for the kernel ``function`` as CuPy would; None where CuPy must do it.

    ``into``: a `PackedParams` of the same function to write over (its buffer may be
    reused once the launch that read it has returned).
    """
    try:
        layout = _layouts[function]
    except KeyError:
        layout = _layouts[function] = driver_calls.param_layout(function)
    if layout is None or len(layout) != len(args):
        return None
    if _array_types is None:
        _cupy_types()
    packed = into if into is not None else PackedParams(layout)
    buffer = packed.buffer
    for i, arg in enumerate(args):
        offset, size = layout[i]
        if isinstance(arg, _array_types):  # type: ignore[arg-type]
            if size != 8:
                return None  # a CArray parameter: CuPy's struct, not only the pointer
            _U64.pack_into(buffer, offset, arg.data.ptr)
            continue
        if arg is None:
            value = bytes(8)
        elif isinstance(arg, _memory_pointer):  # type: ignore[arg-type]
            value = _U64.pack(arg.ptr)
        else:
            value = _value_bytes(arg)
            if value is None:
                return None
        if len(value) < size:
            return None  # the driver would read past CuPy's value: leave that to CuPy
        buffer[offset:offset + size] = value[:size]
    return packed


_MAX_DIM = 2**31 - 1


def _dim3(value: Any) -> tuple[int, int, int] | None:
    if type(value) is not tuple or not 1 <= len(value) <= 3:
        return None
    if not all(isinstance(d, (int, np.integer)) and d <= _MAX_DIM for d in value):
        return None
    dims = (value + (1, 1))[:3]
    return max(1, int(dims[0])), max(1, int(dims[1])), max(1, int(dims[2]))  # CuPy's clamp


def launch(kernel: Any, grid: Any, block: Any, args: Any, shared_mem: Any, stream: Any,
           call: Callable[..., Any] | None = None) -> None:
    """Launch the CuPy kernel ``kernel`` as ``kernel(grid, block, args, shared_mem=...,
    stream=...)`` would, through `launch_packed` when the arguments allow.

    Parameters
    ----------
    kernel : cupy.RawKernel
    grid, block, args, shared_mem
        As for ``RawKernel.__call__``.
    stream : cupy.cuda.Stream
    call : callable, optional
        CuPy's own call of the kernel, for what cannot be packed here (default
        ``kernel``; an intercepting subclass passes its base class's ``__call__``).
    """
    if (not kernel.enable_cooperative_groups and type(shared_mem) is int and shared_mem >= 0 and type(args) in (tuple, list)):
        g, b = _dim3(grid), _dim3(block)
        if g is not None and b is not None:
            function = kernel.kernel.ptr  # CuPy compiles on first use and caches per device
            reused = _local.__dict__.setdefault("packed", {})
            packed = pack(function, tuple(args), reused.get(function))
            if packed is not None:
                reused[function] = packed
                launch_packed(function, g, b, shared_mem, stream.ptr, packed)
                return
    (call or kernel)(grid, block, args, shared_mem=shared_mem, stream=stream)


def launch_packed(function: int, grid: tuple[int, int, int], block: tuple[int, int, int], shared_mem: int,
                  stream: int, packed: PackedParams) -> None:
    """``cuLaunchKernel`` through `lithos_atom.driver_calls`; a thread with no current
    context gets CuPy's (the primary context) first, as CuPy's own launch would."""
    try:
        driver_calls.launch_kernel(function, grid, block, shared_mem, stream, packed.pointers)
    except LithosCudaError as exc:
        if exc.code != driver_calls.CUDA_ERROR_INVALID_CONTEXT:
            raise
        import cupy

        cupy.cuda.runtime.free(0)
        driver_calls.launch_kernel(function, grid, block, shared_mem, stream, packed.pointers)
