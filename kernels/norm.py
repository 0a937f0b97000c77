"""Row-wise normalizations: softmax, LayerNorm, RMSNorm (CuPy ``RawModule`` templated on
the storage type), and a Numba softmax.

All kernels of the module ``norm`` are templates instantiated for ``float``, ``__half``
and ``__nv_bfloat16`` (fp32 arithmetic); rows are the last dimension of a C-contiguous
array.

- ``softmax_warp<T>``: one warp per row, 8 rows per 256-thread block, an online
  (max, sum) pass then a write pass; used for rows of at most 1024 elements.
  Grid ``ceil(rows/8)``.
- ``softmax_block<T>``: one block per row for longer rows, the same two passes with
  warp-shuffle + shared-memory block reductions. Grid ``rows``.
- ``layernorm_fwd<T>`` / ``rmsnorm_fwd<T>``: one block per row; mean and variance (or
  mean square) by block reductions, then the normalized, scaled (and shifted) write.
  Grid ``rows``, block 32-256 threads (about 4 elements per thread).
- `softmax_numba`: a Numba kernel, one 128-thread block per row (float32).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kernels import dtypes
from kernels._compile import (
    CONVERT_SNIPPET,
    REDUCE_SNIPPET,
    KernelSource,
    as_cupy_stream,
    cdiv,
    check_array,
    check_out,
    empty,
    module_function,
    numba_kernel,
)

WARP_ROWS_PER_BLOCK = 8
WARP_SOFTMAX_MAX_COLS = 1024
BLOCK_SOFTMAX_THREADS = 256

_CODE = CONVERT_SNIPPET + REDUCE_SNIPPET + r"""
// Combine a running (max, sum-of-exp) with one value.
__device__ __forceinline__ void online_add(float& m, float& s, float x) {
    if (x > m) { s = s * __expf(m - x) + 1.0f; m = x; }
    else       { s += __expf(x - m); }
}
__device__ __forceinline__ float rescale(float s, float m, float m_all) {
    return m == -INFINITY ? 0.0f : s * __expf(m - m_all);
}

template <typename T>
__global__ void __launch_bounds__(256) softmax_warp(const T* __restrict__ x, T* __restrict__ y, int rows, int cols)
{
    const int lane = threadIdx.x & 31;
    const long long row = (long long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= rows) return;             // whole warps exit together; no block barrier follows
    const T* xr = x + row * cols;
    T* yr = y + row * cols;
    float m = -INFINITY, s = 0.0f;
    for (int c = lane; c < cols; c += 32) online_add(m, s, to_f32(xr[c]));
    const float m_all = warp_max(m);
    const float inv = 1.0f / warp_sum(rescale(s, m, m_all));
    for (int c = lane; c < cols; c += 32) yr[c] = from_f32<T>(__expf(to_f32(xr[c]) - m_all) * inv);
}

template <typename T>
__global__ void __launch_bounds__(1024) softmax_block(const T* __restrict__ x, T* __restrict__ y, int cols)
{
    __shared__ float red[32];
    const long long row = blockIdx.x;
    const T* xr = x + row * cols;
    T* yr = y + row * cols;
    float m = -INFINITY, s = 0.0f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) online_add(m, s, to_f32(xr[c]));
    const float m_all = block_reduce<true>(m, red);
    const float inv = 1.0f / block_reduce<false>(rescale(s, m, m_all), red);
    for (int c = threadIdx.x; c < cols; c += blockDim.x) yr[c] = from_f32<T>(__expf(to_f32(xr[c]) - m_all) * inv);
}

template <typename T>
__global__ void __launch_bounds__(1024) layernorm_fwd(const T* __restrict__ x, const T* __restrict__ w,
                                                      const T* __restrict__ b, T* __restrict__ y,
                                                      int cols, float eps, int has_bias)
{
    __shared__ float red[32];
    const long long row = blockIdx.x;
    const T* xr = x + row * cols;
    T* yr = y + row * cols;
    float sum = 0.0f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) sum += to_f32(xr[c]);
    const float mean = block_reduce<false>(sum, red) / cols;
    float sq = 0.0f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        const float d = to_f32(xr[c]) - mean;
        sq += d * d;
    }
    const float rstd = rsqrtf(block_reduce<false>(sq, red) / cols + eps);
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        float v = (to_f32(xr[c]) - mean) * rstd * to_f32(w[c]);
        if (has_bias) v += to_f32(b[c]);
        yr[c] = from_f32<T>(v);
    }
}

template <typename T>
__global__ void __launch_bounds__(1024) rmsnorm_fwd(const T* __restrict__ x, const T* __restrict__ w,
                                                    T* __restrict__ y, int cols, float eps)
{
    __shared__ float red[32];
    const long long row = blockIdx.x;
    const T* xr = x + row * cols;
    T* yr = y + row * cols;
    float sq = 0.0f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        const float v = to_f32(xr[c]);
        sq += v * v;
    }
    const float rstd = rsqrtf(block_reduce<false>(sq, red) / cols + eps);
    for (int c = threadIdx.x; c < cols; c += blockDim.x) yr[c] = from_f32<T>(to_f32(xr[c]) * rstd * to_f32(w[c]));
}
"""

_KERNELS = ("softmax_warp", "softmax_block", "layernorm_fwd", "rmsnorm_fwd")
_KINDS = (dtypes.FLOAT32, dtypes.FLOAT16, dtypes.BFLOAT16)
NORM_SOURCE = KernelSource(
    key="norm", code=_CODE, kind="module",
    name_expressions=tuple(f"{k}<{dtypes.CTYPE[t]}>" for k in _KERNELS for t in _KINDS),
)


def cupy_sources() -> list[KernelSource]:
    """Every CuPy kernel source of this module."""
    return [NORM_SOURCE]


def _fn(kernel: str, kind: str) -> Any:
    return module_function(NORM_SOURCE, f"{kernel}<{dtypes.CTYPE[kind]}>")


def row_threads(cols: int) -> int:
    """Threads per block for a row of ``cols``: about 4 elements each, 32 to 256."""
    return int(min(256, max(32, 32 * cdiv(cdiv(cols, 4), 32))))


def _rows_cols(x: Any) -> tuple[int, int]:
    cols = int(x.shape[-1])
    rows = int(x.size // cols)
    if cols >= 2**31 or rows >= 2**31:
        raise ValueError(f"x of shape {tuple(x.shape)} is too large")
    return rows, cols


def _check_rowwise(x: Any, out: Any) -> str:
    check_array(x, "x")
    if x.ndim == 0:
        raise ValueError("x must have at least one dimension")
    kind = dtypes.check_kind(x, "x")
    check_out(out, tuple(x.shape), x.dtype)
    return kind


def _check_param(p: Any, name: str, x: Any) -> None:
    check_array(p, name, ndim=1)
    if p.dtype != x.dtype:
        raise TypeError(f"{name} has dtype {p.dtype.name} but x has {x.dtype.name}")
    if p.shape[0] != x.shape[-1]:
        raise ValueError(f"{name} has {p.shape[0]} elements; x's last dimension is {x.shape[-1]}")


def softmax(x: Any, out: Any = None, *, stream: Any = None) -> Any:
    """Softmax over the last dimension.

    Parameters
    ----------
    x : cupy.ndarray
        C-contiguous, float32, float16 or bfloat16 (uint16 bits).
    out : cupy.ndarray, optional
        x's shape and dtype.
    stream : cupy stream, object with ``__cuda_stream__``, or None

    Returns
    -------
    cupy.ndarray
    """
    kind = _check_rowwise(x, out)
    rows, cols = _rows_cols(x)
    s = as_cupy_stream(stream)
    if out is None:
        out = empty(x.shape, x.dtype, s)
    if cols <= WARP_SOFTMAX_MAX_COLS:
        _fn("softmax_warp", kind)((cdiv(rows, WARP_ROWS_PER_BLOCK),), (32 * WARP_ROWS_PER_BLOCK,),
                                  (x, out, np.int32(rows), np.int32(cols)), stream=s)
    else:
        _fn("softmax_block", kind)((rows,), (BLOCK_SOFTMAX_THREADS,), (x, out, np.int32(cols)), stream=s)
    return out


def layernorm(x: Any, weight: Any, bias: Any = None, eps: float = 1e-5, out: Any = None, *,
              stream: Any = None) -> Any:
    """LayerNorm over the last dimension: ``(x - mean) / sqrt(var + eps) * weight + bias``.

    Parameters
    ----------
    x : cupy.ndarray
        C-contiguous, float32, float16 or bfloat16 (uint16 bits).
    weight : cupy.ndarray
        1-D, ``x.shape[-1]`` elements, x's dtype.
    bias : cupy.ndarray, optional
        Like ``weight``; no shift when None.
    eps : float
        Added to the variance.
    out : cupy.ndarray, optional
        x's shape and dtype.
    stream : cupy stream, object with ``__cuda_stream__``, or None

    Returns
    -------
    cupy.ndarray
    """
    kind = _check_rowwise(x, out)
    _check_param(weight, "weight", x)
    if bias is not None:
        _check_param(bias, "bias", x)
    rows, cols = _rows_cols(x)
    s = as_cupy_stream(stream)
    if out is None:
        out = empty(x.shape, x.dtype, s)
    _fn("layernorm_fwd", kind)((rows,), (row_threads(cols),),
                               (x, weight, weight if bias is None else bias, out, np.int32(cols),
                                np.float32(eps), np.int32(bias is not None)), stream=s)
    return out


def rmsnorm(x: Any, weight: Any, eps: float = 1e-6, out: Any = None, *, stream: Any = None) -> Any:
    """RMSNorm over the last dimension: ``x / sqrt(mean(x**2) + eps) * weight``.

    Parameters
    ----------
    x : cupy.ndarray
        C-contiguous, float32, float16 or bfloat16 (uint16 bits).
    weight : cupy.ndarray
        1-D, ``x.shape[-1]`` elements, x's dtype.
    eps : float
        Added to the mean square.
    out : cupy.ndarray, optional
        x's shape and dtype.
    stream : cupy stream, object with ``__cuda_stream__``, or None

    Returns
    -------
    cupy.ndarray
    """
    kind = _check_rowwise(x, out)
    _check_param(weight, "weight", x)
    rows, cols = _rows_cols(x)
    s = as_cupy_stream(stream)
    if out is None:
        out = empty(x.shape, x.dtype, s)
    _fn("rmsnorm_fwd", kind)((rows,), (row_threads(cols),), (x, weight, out, np.int32(cols), np.float32(eps)),
                             stream=s)
    return out


def softmax_numba(x: Any, out: Any = None, *, stream: Any = None) -> Any:
    """Softmax over the last dimension of a 2-D float32 array with the Numba kernel.

    Parameters
    ----------
    x : cupy.ndarray
        2-D, C-contiguous float32.
    out : cupy.ndarray, optional
        x's shape, float32.
    stream : cupy stream, object with ``__cuda_stream__``, or None

    Returns
    -------
    cupy.ndarray
    """
    check_array(x, "x", ndim=2, dtypes=(np.float32,))
    check_out(out, tuple(x.shape), np.float32)
    s = as_cupy_stream(stream)
    if out is None:
        out = empty(x.shape, np.float32, s)
    from kernels import numba_kernels
    from kernels._numba import as_numba_array, as_numba_stream

    kernel = numba_kernel("softmax_numba", numba_kernels.softmax_rows)
    kernel[x.shape[0], numba_kernels.SOFTMAX_THREADS, as_numba_stream(s)](as_numba_array(x), as_numba_array(out))
    return out


def reference_softmax(x: np.ndarray) -> np.ndarray:
    """float64 softmax over the last axis of a host array (bfloat16 as uint16 bits)."""
    x64 = dtypes.to_float64(x)
    e = np.exp(x64 - x64.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def reference_layernorm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None,
                        eps: float = 1e-5) -> np.ndarray:
    """float64 LayerNorm over the last axis of host arrays."""
    x64 = dtypes.to_float64(x)
    mean = x64.mean(axis=-1, keepdims=True)
    var = ((x64 - mean) ** 2).mean(axis=-1, keepdims=True)
    y = (x64 - mean) / np.sqrt(var + eps) * dtypes.to_float64(weight)
    return y if bias is None else y + dtypes.to_float64(bias)


def reference_rmsnorm(x: np.ndarray, weight: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """float64 RMSNorm over the last axis of host arrays."""
    x64 = dtypes.to_float64(x)
    return x64 / np.sqrt((x64**2).mean(axis=-1, keepdims=True) + eps) * dtypes.to_float64(weight)
