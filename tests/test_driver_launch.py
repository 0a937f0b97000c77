"""CPU tier: lithos packs an atom's arguments to the bytes CuPy passes, and leaves to
CuPy's own call every launch it cannot pack exactly (the launches themselves, and their
bitwise equality with CuPy's, run in the GPU tier)."""

from __future__ import annotations

import ctypes
import struct

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lithos_atom import driver_calls, driver_launch
from lithos_atom.errors import LithosCudaError


class FakeArray:
    """Stands in for a cupy.ndarray: only its data pointer is read."""

    def __init__(self, ptr: int) -> None:
        self.data = type("Mem", (), {"ptr": ptr})()


class FakeMemoryPointer:
    def __init__(self, ptr: int) -> None:
        self.ptr = ptr


@pytest.fixture
def layout(monkeypatch):
    """Kernels whose parameter layout the test sets; CuPy's types replaced by stand-ins."""
    monkeypatch.setattr(driver_launch, "_array_types", (FakeArray,))
    monkeypatch.setattr(driver_launch, "_memory_pointer", FakeMemoryPointer)
    monkeypatch.setattr(driver_launch, "_layouts", {})

    def set_layout(function: int, params: tuple) -> None:
        driver_launch._layouts[function] = params
    return set_layout


def _param(packed, index: int) -> bytes:
    offset, size = packed.layout[index]
    return packed.buffer.raw[offset:offset + size]


def _pointed(packed, index: int) -> int:
    return packed.pointers[index] - ctypes.addressof(packed.buffer)


def test_each_argument_is_packed_to_cupys_bytes_at_its_offset(layout):
    layout(1, ((0, 8), (8, 8), (16, 4), (24, 8), (32, 2), (34, 1), (40, 8), (48, 16), (64, 8), (72, 4)))
    args = (FakeArray(0x7F0000001000), None, np.int32(-7), 3.25, np.float16(1.5), True, -(2**40),
            1 + 2j, FakeMemoryPointer(0xABC), np.array([9], np.uint32))
    packed = driver_launch.pack(1, args)
    assert packed is not None
    assert [_pointed(packed, i) for i in range(len(args))] == [o for o, _ in packed.layout]
    assert _param(packed, 0) == struct.pack("<Q", 0x7F0000001000)
    assert _param(packed, 1) == bytes(8)
    assert _param(packed, 2) == np.int32(-7).tobytes()
    assert _param(packed, 3) == np.float64(3.25).tobytes()
    assert _param(packed, 4) == np.float16(1.5).tobytes()
    assert _param(packed, 5) == b"\x01"
    assert _param(packed, 6) == np.int64(-(2**40)).tobytes()
    assert _param(packed, 7) == np.complex128(1 + 2j).tobytes()
    assert _param(packed, 8) == struct.pack("<Q", 0xABC)
    assert _param(packed, 9) == np.uint32(9).tobytes()


def test_a_narrower_parameter_takes_the_values_first_bytes_as_the_driver_reads_cupys(layout):
    layout(2, ((0, 4),))
    packed = driver_launch.pack(2, (2**33 + 5,))  # a Python int (int64) for an int parameter
    assert packed is not None and _param(packed, 0) == np.int64(2**33 + 5).tobytes()[:4]


@pytest.mark.parametrize("args, params, why", [
    ((np.int32(1),), ((0, 8),), "value narrower than its parameter"),
    ((FakeArray(1),), ((0, 16),), "a CArray parameter"),
    ((1, 2), ((0, 8),), "more arguments than parameters"),
    ((1,), ((0, 8), (8, 8)), "fewer arguments than parameters"),
    (("text",), ((0, 8),), "a type CuPy rejects"),
    ((2**64,), ((0, 8),), "an int out of range"),
    ((np.array([1, 2], np.int32),), ((0, 8),), "a NumPy array of two elements"),
    ((object(),), ((0, 8),), "an unknown object"),
])
def test_what_cannot_be_packed_exactly_is_left_to_cupy(layout, args, params, why):
    layout(3, params)
    assert driver_launch.pack(3, args) is None, why


def test_an_int_subclass_is_left_to_cupy(layout):
    import enum

    class Flag(enum.IntEnum):
        ON = 1

    layout(4, ((0, 8),))
    assert driver_launch.pack(4, (Flag.ON,)) is None  # CuPy keys on the exact type


def test_a_driver_without_param_info_leaves_every_launch_to_cupy(layout, monkeypatch):
    monkeypatch.setattr(driver_calls, "param_layout", lambda f: None)
    assert driver_launch.pack(5, (1,)) is None


@given(st.integers(min_value=-(2**63), max_value=2**64 - 1))
def test_python_ints_take_cupys_numpy_type(value):
    expected = (np.int64(value) if value < 2**63 else np.uint64(value)).tobytes()
    assert driver_launch._value_bytes(value) == expected


@given(st.floats(allow_nan=False) | st.sampled_from([float("nan"), float("inf")]))
def test_python_floats_are_float64(value):
    assert driver_launch._value_bytes(value) == np.float64(value).tobytes()


@given(st.sampled_from(["int8", "uint16", "int32", "uint64", "float16", "float32", "float64", "complex64", "bool"]),
       st.integers(0, 255))
def test_numpy_scalars_keep_their_own_bytes(dtype, raw):
    value = np.array(raw).astype(dtype)[()]
    assert driver_launch._value_bytes(value) == value.tobytes()


class Stream:
    ptr = 0x51


def test_a_thread_without_a_context_gets_cupys_and_launches_again(monkeypatch, layout):
    import cupy

    layout(7, ())
    attempts, made_current = [], []

    def launch_kernel(*a):
        attempts.append(a)
        if len(attempts) == 1:
            raise LithosCudaError("cuLaunchKernel", driver_calls.CUDA_ERROR_INVALID_CONTEXT,
                                  "CUDA_ERROR_INVALID_CONTEXT")

    monkeypatch.setattr(driver_calls, "launch_kernel", launch_kernel)
    monkeypatch.setattr(cupy.cuda.runtime, "free", lambda p: made_current.append(p))
    driver_launch.launch_packed(7, (1, 1, 1), (1, 1, 1), 0, Stream.ptr, driver_launch.PackedParams(()))
    assert len(attempts) == 2 and made_current == [0]


def test_other_launch_failures_are_raised(monkeypatch, layout):
    layout(7, ())

    def launch_kernel(*a):
        raise LithosCudaError("cuLaunchKernel", 1, "CUDA_ERROR_INVALID_VALUE")

    monkeypatch.setattr(driver_calls, "launch_kernel", launch_kernel)
    with pytest.raises(LithosCudaError, match="CUDA_ERROR_INVALID_VALUE"):
        driver_launch.launch_packed(7, (1, 1, 1), (1, 1, 1), 0, Stream.ptr, driver_launch.PackedParams(()))
