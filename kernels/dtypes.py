"""Storage types of the kernels: float32, float16 and bfloat16.

NumPy (and CuPy without ``ml_dtypes``) has no bfloat16, so bfloat16 tensors are carried
as ``uint16`` arrays holding bfloat16 bit patterns; an array of ``ml_dtypes.bfloat16``
is accepted too. `to_bf16_bits` and `from_bf16_bits` convert on the host.
"""

from __future__ import annotations

from typing import Any

import numpy as np

FLOAT32 = "float32"
FLOAT16 = "float16"
BFLOAT16 = "bfloat16"

#: Storage kind -> CUDA C++ type.
CTYPE = {FLOAT32: "float", FLOAT16: "__half", BFLOAT16: "__nv_bfloat16"}

#: Short suffixes used in kernel and case names.
SUFFIX = {FLOAT32: "f32", FLOAT16: "f16", BFLOAT16: "bf16"}


def storage_kind(dtype: Any) -> str | None:
    """``"float32"``, ``"float16"``, ``"bfloat16"`` (``uint16`` bits or ml_dtypes), or None."""
    dt = np.dtype(dtype)
    if dt == np.float32:
        return FLOAT32
    if dt == np.float16:
        return FLOAT16
    if dt == np.uint16 or dt.name == "bfloat16":
        return BFLOAT16
    return None


def check_kind(x: Any, name: str, allowed: tuple[str, ...] = (FLOAT32, FLOAT16, BFLOAT16)) -> str:
    """The storage kind of array ``x``; TypeError naming ``name`` if not in ``allowed``."""
    kind = storage_kind(x.dtype)
    if kind not in allowed:
        hint = " (bfloat16 travels as uint16 bit patterns)" if BFLOAT16 in allowed else ""
        raise TypeError(f"{name} has dtype {np.dtype(x.dtype).name}; expected {', '.join(allowed)}{hint}")
    return kind


def numpy_dtype(kind: str) -> np.dtype:
    """The NumPy/CuPy dtype arrays of storage ``kind`` have (bfloat16 -> uint16)."""
    return {FLOAT32: np.dtype(np.float32), FLOAT16: np.dtype(np.float16), BFLOAT16: np.dtype(np.uint16)}[kind]


def to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """Round float values to bfloat16 (nearest even) and return their bits as ``uint16``."""
    f = np.ascontiguousarray(x, dtype=np.float32)
    u = f.view(np.uint32).astype(np.uint64)
    rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    nan = np.isnan(f)
    out = rounded.astype(np.uint16)
    out[nan] = 0x7FC0
    return out


def from_bf16_bits(bits: np.ndarray) -> np.ndarray:
    """The float32 values of bfloat16 bit patterns (``uint16``)."""
    b = np.ascontiguousarray(bits, dtype=np.uint16)
    return (b.astype(np.uint32) << 16).view(np.float32)


def to_storage(x: np.ndarray, kind: str) -> np.ndarray:
    """Host array ``x`` converted to storage ``kind`` (bfloat16 as uint16 bits)."""
    if kind == BFLOAT16:
        return to_bf16_bits(x)
    return np.asarray(x, dtype=numpy_dtype(kind))


def to_float64(x: np.ndarray, kind: str | None = None) -> np.ndarray:
    """Host array of storage ``kind`` (inferred from its dtype when None) as float64."""
    kind = kind or storage_kind(x.dtype)
    if kind == BFLOAT16 and np.dtype(x.dtype) == np.uint16:
        return from_bf16_bits(x).astype(np.float64)
    return np.asarray(x, dtype=np.float64)


def unit_roundoff(kind: str) -> float:
    """Unit roundoff of storage ``kind`` (2**-24, 2**-11, 2**-8)."""
    return {FLOAT32: 2.0**-24, FLOAT16: 2.0**-11, BFLOAT16: 2.0**-8}[kind]
