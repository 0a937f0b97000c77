"""Atom launches through lithos' own driver call.

An atom is the rewritten kernel launched on a range of blocks, with the user's arguments
and four more (the first block, the original grid). CuPy's ``Function.__call__`` would pack
every argument again for each atom, in Cython, and release the GIL in ``cuLaunchKernel``.
lithos packs them once per launch (`pack`), when it can pack them to the same bytes CuPy
would, and each atom rewrites only its first block before `launch_packed` (the front end
packs from a launch's second atom on: a launch of one atom goes through CuPy's call):

- a ``cupy.ndarray`` for a pointer parameter: its data pointer (CuPy passes a ``CArray``
  whose first field is that pointer; the driver reads the parameter's 8 bytes);
- ``None``: a null pointer; a ``cupy.cuda.MemoryPointer``: its address;
- a NumPy scalar or a NumPy array of one element: its bytes;
- a Python ``bool``, ``int`` or ``float`` or ``complex``: the bytes of the NumPy type CuPy
  picks (``bool``, ``int64`` or ``uint64`` from 2**63, ``float64``, ``complex128``).

A parameter narrower than its value takes the value's first bytes, as the driver reads
them from CuPy's buffer. Anything else (another argument type, a value narrower than its
parameter, an argument count other than the kernel's, a driver without
``cuFuncGetParamInfo``) makes `pack` return None, and the atoms go through CuPy's call.

A latency-critical launch, which runs whole and once, keeps CuPy's own call: packing it
here cost more host time than CuPy's Cython does.
"""

from __future__ import annotations

import ctypes
import struct
from typing import Any

import numpy as np

from lithos_atom import driver_calls

_layouts: dict[int, tuple[tuple[int, int], ...] | None] = {}  # function handle -> parameter layout
_INT64_MIN, _UINT64_LIMIT, _INT64_LIMIT = -(2**63), 2**64, 2**63
_U64 = struct.Struct("<Q")
_array_types: tuple[type, ...] | None = None  # CuPy's, imported on the first pack
_memory_pointer: type | None = None


def _load_cupy_types() -> None:
    global _array_types, _memory_pointer
    import cupy

    _array_types = (cupy._core.core._ndarray_base,)
    _memory_pointer = cupy.cuda.MemoryPointer


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

    def set_u64(self, index: int, value: int) -> None:
        """Write an unsigned 64-bit parameter (an atom's first block)."""
        _U64.pack_into(self.buffer, self.layout[index][0], value)


def pack(function: int, args: tuple) -> PackedParams | None:
    """Pack ``args`` for the kernel ``function`` as CuPy would; None where CuPy must do it."""
    try:
        layout = _layouts[function]
    except KeyError:
        layout = _layouts[function] = driver_calls.param_layout(function)
    if layout is None or len(layout) != len(args):
        return None
    if _array_types is None:
        _load_cupy_types()
    packed = PackedParams(layout)
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


def launch_packed(function: int, grid: tuple[int, int, int], block: tuple[int, int, int], shared_mem: int,
                  stream: int, packed: PackedParams) -> None:
    """``cuLaunchKernel`` through `lithos_atom.driver_calls`, in CuPy's context when the
    thread has none yet (as CuPy's own launch would)."""
    driver_calls.in_cupy_context(driver_calls.launch_kernel, function, grid, block, shared_mem, stream,
                                 packed.pointers)
