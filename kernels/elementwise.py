"""Elementwise ops: GELU (tanh approximation), SiLU, residual add (+ bias), and the
elementwise pieces of training (GELU backward, MSE gradient) as a CuPy ``RawModule``
templated on the storage type and the vector width; plus a Numba GELU.

Every template ``op<T, VEC>`` gives each thread VEC consecutive elements: VEC =
16 / sizeof(T) (a float4-sized, 16-byte load and store per operand) when every pointer is
16-byte aligned, else 1. The last thread finishes a ragged tail element by element.
256 threads per block, grid ``ceil(n / (256 * VEC))``, one pass, no grid-stride loop.

`gelu_numba` is a Numba kernel with a grid-stride loop over a grid of at most 8 blocks
per SM.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from kernels import _compile, dtypes
from kernels._compile import (
    CONVERT_SNIPPET,
    KernelSource,
    aligned,
    as_cupy_stream,
    cdiv,
    check_array,
    check_out,
    empty,
    module_function,
    numba_kernel,
)

THREADS = 256

_CODE = CONVERT_SNIPPET + r"""
template <typename T, int VEC> struct alignas(sizeof(T) * VEC) Pack { T v[VEC]; };

template <typename T, int VEC>
__device__ __forceinline__ Pack<T, VEC> load_pack(const T* p) { return *reinterpret_cast<const Pack<T, VEC>*>(p); }
template <typename T, int VEC>
__device__ __forceinline__ void store_pack(T* p, const Pack<T, VEC>& v) { *reinterpret_cast<Pack<T, VEC>*>(p) = v; }

__device__ __forceinline__ long long first_element(int vec) {
    return ((long long)blockIdx.x * blockDim.x + threadIdx.x) * vec;
}

struct Gelu {
    __device__ __forceinline__ float operator()(float x) const {
        const float u = 0.7978845608028654f * fmaf(0.044715f * x, x * x, x);
        return 0.5f * x * (1.0f + tanhf(u));
    }
};
struct Silu {
    __device__ __forceinline__ float operator()(float x) const { return x / (1.0f + __expf(-x)); }
};
struct GeluGrad {   // d/dx of the tanh-approximation GELU, times the incoming gradient
    __device__ __forceinline__ float operator()(float x, float dy) const {
        const float c = 0.7978845608028654f, a = 0.044715f;
        const float t = tanhf(c * fmaf(a * x, x * x, x));
        const float dt = (1.0f - t * t) * c * fmaf(3.0f * a, x * x, 1.0f);
        return dy * (0.5f * (1.0f + t) + 0.5f * x * dt);
    }
};
struct ScaledDiff {
    float scale;
    __device__ __forceinline__ float operator()(float a, float b) const { return scale * (a - b); }
};

template <typename T, int VEC, typename Op>
__device__ __forceinline__ void map_unary(const T* __restrict__ x, T* __restrict__ y, long long n, Op op) {
    const long long i0 = first_element(VEC);
    if (i0 + VEC <= n) {
        Pack<T, VEC> a = load_pack<T, VEC>(x + i0);
#pragma unroll
        for (int e = 0; e < VEC; ++e) a.v[e] = from_f32<T>(op(to_f32(a.v[e])));
        store_pack<T, VEC>(y + i0, a);
    } else {
        for (long long i = i0; i < n; ++i) y[i] = from_f32<T>(op(to_f32(x[i])));
    }
}

template <typename T, int VEC, typename Op>
__device__ __forceinline__ void map_binary(const T* __restrict__ x, const T* __restrict__ z, T* __restrict__ y,
                                           long long n, Op op) {
    const long long i0 = first_element(VEC);
    if (i0 + VEC <= n) {
        Pack<T, VEC> a = load_pack<T, VEC>(x + i0);
        const Pack<T, VEC> b = load_pack<T, VEC>(z + i0);
#pragma unroll
        for (int e = 0; e < VEC; ++e) a.v[e] = from_f32<T>(op(to_f32(a.v[e]), to_f32(b.v[e])));
        store_pack<T, VEC>(y + i0, a);
    } else {
        for (long long i = i0; i < n; ++i) y[i] = from_f32<T>(op(to_f32(x[i]), to_f32(z[i])));
    }
}

template <typename T, int VEC>
__global__ void __launch_bounds__(256) gelu_fwd(const T* __restrict__ x, T* __restrict__ y, long long n) {
    map_unary<T, VEC>(x, y, n, Gelu());
}

template <typename T, int VEC>
__global__ void __launch_bounds__(256) silu_fwd(const T* __restrict__ x, T* __restrict__ y, long long n) {
    map_unary<T, VEC>(x, y, n, Silu());
}

template <typename T, int VEC>
__global__ void __launch_bounds__(256) gelu_bwd(const T* __restrict__ x, const T* __restrict__ dy,
                                                T* __restrict__ dx, long long n) {
    map_binary<T, VEC>(x, dy, dx, n, GeluGrad());
}

template <typename T, int VEC>
__global__ void __launch_bounds__(256) scaled_diff(const T* __restrict__ a, const T* __restrict__ b,
                                                   T* __restrict__ y, long long n, float scale) {
    map_binary<T, VEC>(a, b, y, n, ScaledDiff{scale});
}

// y = x + r (+ bias[i % cols]). With VEC > 1 and a bias, cols % VEC == 0 (a pack never wraps a row).
template <typename T, int VEC>
__global__ void __launch_bounds__(256) residual_add(const T* __restrict__ x, const T* __restrict__ r,
                                                    const T* __restrict__ bias, T* __restrict__ y,
                                                    long long n, int cols, int has_bias) {
    const long long i0 = first_element(VEC);
    if (i0 + VEC <= n) {
        Pack<T, VEC> a = load_pack<T, VEC>(x + i0);
        const Pack<T, VEC> b = load_pack<T, VEC>(r + i0);
        const int c0 = has_bias ? (int)(i0 % cols) : 0;
#pragma unroll
        for (int e = 0; e < VEC; ++e) {
            float v = to_f32(a.v[e]) + to_f32(b.v[e]);
            if (has_bias) v += to_f32(bias[c0 + e]);
            a.v[e] = from_f32<T>(v);
        }
        store_pack<T, VEC>(y + i0, a);
    } else {
        for (long long i = i0; i < n; ++i) {
            float v = to_f32(x[i]) + to_f32(r[i]);
            if (has_bias) v += to_f32(bias[i % cols]);
            y[i] = from_f32<T>(v);
        }
    }
}
"""

_KERNELS = ("gelu_fwd", "silu_fwd", "gelu_bwd", "scaled_diff", "residual_add")
_KINDS = (dtypes.FLOAT32, dtypes.FLOAT16, dtypes.BFLOAT16)


def _vec_width(kind: str) -> int:
    return 16 // dtypes.numpy_dtype(kind).itemsize


ELEMENTWISE_SOURCE = KernelSource(
    key="elementwise", code=_CODE, kind="module",
    name_expressions=tuple(f"{k}<{dtypes.CTYPE[t]}, {v}>" for k in _KERNELS for t in _KINDS
                           for v in (_vec_width(t), 1)),
)


def cupy_sources() -> list[KernelSource]:
    """Every CuPy kernel source of this module."""
    return [ELEMENTWISE_SOURCE]


def _launch(kernel: str, kind: str, vec: int, n: int, args: tuple, s: Any) -> None:
    fn = module_function(ELEMENTWISE_SOURCE, f"{kernel}<{dtypes.CTYPE[kind]}, {vec}>")
    fn((cdiv(cdiv(n, vec), THREADS),), (THREADS,), args, stream=s)


def _check_like(x: Any, name: str, other: Any, other_name: str) -> None:
    check_array(other, other_name)
    if other.shape != x.shape:
        raise ValueError(f"{other_name} has shape {tuple(other.shape)}; expected {name}'s {tuple(x.shape)}")
    if other.dtype != x.dtype:
        raise TypeError(f"{other_name} has dtype {other.dtype.name} but {name} has {x.dtype.name}")


def _unary(kernel: str, x: Any, out: Any, stream: Any) -> Any:
    check_array(x, "x")
    kind = dtypes.check_kind(x, "x")
    check_out(out, tuple(x.shape), x.dtype)
    s = as_cupy_stream(stream)
    if out is None:
        out = empty(x.shape, x.dtype, s)
    vec = _vec_width(kind) if aligned(x, out) else 1
    _launch(kernel, kind, vec, x.size, (x, out, np.int64(x.size)), s)
    return out


def gelu(x: Any, out: Any = None, *, stream: Any = None) -> Any:
    """GELU, tanh approximation: ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``.

    Parameters
    ----------
    x : cupy.ndarray
        C-contiguous, float32, float16 or bfloat16 (uint16 bits).
    out : cupy.ndarray, optional
        x's shape and dtype (may be x: in place).
    stream : cupy stream, object with ``__cuda_stream__``, or None

    Returns
    -------
    cupy.ndarray
    """
    return _unary("gelu_fwd", x, out, stream)


def silu(x: Any, out: Any = None, *, stream: Any = None) -> Any:
    """SiLU: ``x * sigmoid(x)``.

    Parameters
    ----------
    x : cupy.ndarray
        C-contiguous, float32, float16 or bfloat16 (uint16 bits).
    out : cupy.ndarray, optional
        x's shape and dtype (may be x: in place).
    stream : cupy stream, object with ``__cuda_stream__``, or None

    Returns
    -------
    cupy.ndarray
    """
    return _unary("silu_fwd", x, out, stream)


def gelu_backward(x: Any, grad_out: Any, out: Any = None, *, stream: Any = None) -> Any:
    """Gradient of `gelu` at ``x``: ``grad_out * gelu'(x)``.

    Parameters
    ----------
    x : cupy.ndarray
        The forward input. C-contiguous, float32, float16 or bfloat16 (uint16 bits).
    grad_out : cupy.ndarray
        Gradient of the loss with respect to ``gelu(x)``; x's shape and dtype.
    out : cupy.ndarray, optional
        x's shape and dtype (may be ``grad_out``).
    stream : cupy stream, object with ``__cuda_stream__``, or None

    Returns
    -------
    cupy.ndarray
    """
    check_array(x, "x")
    kind = dtypes.check_kind(x, "x")
    _check_like(x, "x", grad_out, "grad_out")
    check_out(out, tuple(x.shape), x.dtype)
    s = as_cupy_stream(stream)
    if out is None:
        out = empty(x.shape, x.dtype, s)
    vec = _vec_width(kind) if aligned(x, grad_out, out) else 1
    _launch("gelu_bwd", kind, vec, x.size, (x, grad_out, out, np.int64(x.size)), s)
    return out


def mse_grad(pred: Any, target: Any, out: Any = None, *, stream: Any = None) -> Any:
    """Gradient of ``mean((pred - target)**2)`` with respect to ``pred``: ``2 (pred - target) / n``.

    Parameters
    ----------
    pred, target : cupy.ndarray
        Same shape, C-contiguous, float32, float16 or bfloat16 (uint16 bits).
    out : cupy.ndarray, optional
        pred's shape and dtype.
    stream : cupy stream, object with ``__cuda_stream__``, or None

    Returns
    -------
    cupy.ndarray
    """
    check_array(pred, "pred")
    kind = dtypes.check_kind(pred, "pred")
    _check_like(pred, "pred", target, "target")
    check_out(out, tuple(pred.shape), pred.dtype)
    s = as_cupy_stream(stream)
    if out is None:
        out = empty(pred.shape, pred.dtype, s)
    vec = _vec_width(kind) if aligned(pred, target, out) else 1
    _launch("scaled_diff", kind, vec, pred.size,
            (pred, target, out, np.int64(pred.size), np.float32(2.0 / pred.size)), s)
    return out


def residual_add(x: Any, residual: Any, bias: Any = None, out: Any = None, *, stream: Any = None) -> Any:
    """``x + residual (+ bias)``, the bias broadcast over the last dimension.

    Parameters
    ----------
    x, residual : cupy.ndarray
        Same shape, C-contiguous, float32, float16 or bfloat16 (uint16 bits).
    bias : cupy.ndarray, optional
        1-D of ``x.shape[-1]`` elements, x's dtype.
    out : cupy.ndarray, optional
        x's shape and dtype (may be x or residual).
    stream : cupy stream, object with ``__cuda_stream__``, or None

    Returns
    -------
    cupy.ndarray
    """
    check_array(x, "x")
    kind = dtypes.check_kind(x, "x")
    _check_like(x, "x", residual, "residual")
    cols = int(x.shape[-1]) if x.ndim else 1
    if bias is not None:
        check_array(bias, "bias", ndim=1)
        if bias.dtype != x.dtype:
            raise TypeError(f"bias has dtype {bias.dtype.name} but x has {x.dtype.name}")
        if bias.shape[0] != cols:
            raise ValueError(f"bias has {bias.shape[0]} elements; x's last dimension is {cols}")
    check_out(out, tuple(x.shape), x.dtype)
    s = as_cupy_stream(stream)
    if out is None:
        out = empty(x.shape, x.dtype, s)
    vec = _vec_width(kind)
    if not aligned(x, residual, out) or (bias is not None and cols % vec != 0):
        vec = 1
    _launch("residual_add", kind, vec, x.size,
            (x, residual, x if bias is None else bias, out, np.int64(x.size), np.int32(cols),
             np.int32(bias is not None)), s)
    return out


def gelu_numba(x: Any, out: Any = None, *, stream: Any = None) -> Any:
    """GELU (tanh approximation) of a float32 array with the Numba grid-stride kernel.

    Parameters
    ----------
    x : cupy.ndarray
        C-contiguous float32, any shape.
    out : cupy.ndarray, optional
        x's shape, float32.
    stream : cupy stream, object with ``__cuda_stream__``, or None

    Returns
    -------
    cupy.ndarray
    """
    check_array(x, "x", dtypes=(np.float32,))
    check_out(out, tuple(x.shape), np.float32)
    s = as_cupy_stream(stream)
    if out is None:
        out = empty(x.shape, np.float32, s)
    from kernels import numba_kernels
    from kernels._numba import as_numba_array, as_numba_stream

    blocks = max(1, min(cdiv(x.size, THREADS), 8 * _compile.sm_count()))
    kernel = numba_kernel("gelu_numba", numba_kernels.gelu)
    kernel[blocks, THREADS, as_numba_stream(s)](as_numba_array(x.reshape(-1)), as_numba_array(out.reshape(-1)))
    return out


_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def reference_gelu(x: np.ndarray) -> np.ndarray:
    """float64 tanh-approximation GELU of a host array."""
    x64 = dtypes.to_float64(x)
    return 0.5 * x64 * (1.0 + np.tanh(_SQRT_2_OVER_PI * (x64 + 0.044715 * x64**3)))


def reference_silu(x: np.ndarray) -> np.ndarray:
    """float64 SiLU of a host array."""
    x64 = dtypes.to_float64(x)
    return x64 / (1.0 + np.exp(-x64))


def reference_gelu_backward(x: np.ndarray, grad_out: np.ndarray) -> np.ndarray:
    """float64 ``grad_out * gelu'(x)`` (tanh approximation)."""
    x64, g64 = dtypes.to_float64(x), dtypes.to_float64(grad_out)
    t = np.tanh(_SQRT_2_OVER_PI * (x64 + 0.044715 * x64**3))
    dt = (1.0 - t**2) * _SQRT_2_OVER_PI * (1.0 + 3 * 0.044715 * x64**2)
    return g64 * (0.5 * (1.0 + t) + 0.5 * x64 * dt)


def reference_mse_grad(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """float64 ``2 (pred - target) / n``."""
    p64, t64 = dtypes.to_float64(pred), dtypes.to_float64(target)
    return 2.0 * (p64 - t64) / p64.size


def reference_residual_add(x: np.ndarray, residual: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """float64 ``x + residual (+ bias)``."""
    y = dtypes.to_float64(x) + dtypes.to_float64(residual)
    return y if bias is None else y + dtypes.to_float64(bias)
