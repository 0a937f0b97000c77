"""Convolutional-network inference kernels, NHWC, fp16/bf16 on tensor cores.

One ``cupy.RawModule`` (``convnet``), templated on the storage type (``__half``,
``__nv_bfloat16``):

- ``conv_igemm<T>``: 2-D convolution as an implicit GEMM on tensor cores (``nvcuda::wmma``
  16x16x16, fp32 accumulation) with the epilogue of an inference network whose batch
  norm is folded into the convolution: ``y = relu(conv(x, w) + bias (+ residual))``. The
  GEMM is ``Y[m, k] = sum_j X_col[m, j] W[j, k]`` with m an output pixel (n, p, q), k an
  output channel and j = (r, s, c) a filter tap and input channel; with NHWC activations
  and RSCK weights, ``W`` is a row-major (R*S*C, K) matrix and each row of ``Y`` is one
  output pixel's channels, so the output is NHWC again. The im2col matrix is never built:
  64x32 tiles of it are gathered from the input (zero outside the padded image) into
  shared memory, 8 channels (16 bytes) at a time with ``cp.async`` when C % 8 == 0, one
  element at a time otherwise (e.g. a 3-channel image). 64x64 output tiles, 4 warps of
  32x32, two shared-memory stages; 2-D grid ``(ceil(N*P*Q/64), ceil(K/64))``, 128 threads.
- ``maxpool_nhwc<T>``: max over an R x S window (padding never wins). Thread per output.
- ``avgpool_nhwc<T>``: global average over the spatial positions, ``(N, H, W, C) -> (N, C)``.

`fold_batchnorm` turns a convolution followed by inference batch norm into the weights
and bias of one convolution.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kernels import dtypes
from kernels._compile import (
    CONVERT_SNIPPET,
    DEFAULT_OPTIONS,
    KernelSource,
    aligned,
    as_cupy_stream,
    cdiv,
    check_array,
    module_function,
    toolkit_include_options,
)

BM, BN, BK = 64, 64, 32
CONV_THREADS = 128
THREADS = 256

_CODE = CONVERT_SNIPPET + r"""
#include <mma.h>
using namespace nvcuda;

constexpr int BM = 64, BN = 64, BK = 32, NT = 128;
constexpr int A_LD = BK + 8, B_LD = BN + 8;                 // padded rows against bank conflicts
constexpr int A_STAGE = BM * A_LD, B_STAGE = BK * B_LD;     // elements per stage
constexpr int SMEM_BYTES = 2 * (A_STAGE + B_STAGE) * 2;     // two stages of 2-byte elements

#ifdef __CUDA_ARCH__
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid) {
    const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem));
    const int src_bytes = valid ? 16 : 0;   // 0: fill the 16 bytes with zeros, read nothing
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" :: "r"(dst), "l"(gmem), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
__device__ __forceinline__ void cp_async_wait_1() { asm volatile("cp.async.wait_group 1;\n" ::); }
#else   // host-side emulation (kernels._emulator, CPU tests): synchronous copies
inline void cp_async16(void* smem, const void* gmem, bool valid) {
    if (valid) memcpy(smem, gmem, 16); else memset(smem, 0, 16);
}
inline void cp_async_commit() {}
inline void cp_async_wait_1() {}
#endif

struct ConvShape {
    int N, H, W, C, K, R, S, P, Q, sh, sw, ph, pw;
    __device__ __forceinline__ int M() const { return N * P * Q; }
    __device__ __forceinline__ int KR() const { return R * S * C; }
    // Offset in x of im2col element (m, j), j = (r * S + s) * C + c; ok = inside the image.
    __device__ __forceinline__ long long src(int m, int j, bool& ok) const {
        const int c = j % C, rs = j / C, s = rs % S, r = rs / S;
        const int q = m % Q, npq = m / Q, p = npq % P, n = npq / P;
        const int h = p * sh - ph + r, w = q * sw - pw + s;
        ok = h >= 0 && h < H && w >= 0 && w < W;
        return (((long long)n * H + h) * W + w) * C + c;
    }
};

// Stage the im2col tile (BM pixels x BK taps) and the weight tile (BK taps x BN channels).
template <typename T>
__device__ __forceinline__ void load_stage(const T* __restrict__ x, const T* __restrict__ w, T* As, T* Bs,
                                           const ConvShape& cs, int m0, int n0, int k0, int vec_a, int vec_b)
{
    const int tid = threadIdx.x, M = cs.M(), KR = cs.KR();
    const T zero = from_f32<T>(0.0f);
    if (vec_a) {   // C % 8 == 0: a chunk of 8 taps is 8 channels of one pixel and filter position
#pragma unroll
        for (int e = 0; e < (BM * BK / 8) / NT; ++e) {
            const int chunk = tid + e * NT, row = chunk / (BK / 8), col = (chunk % (BK / 8)) * 8;
            bool ok = m0 + row < M && k0 + col < KR;
            long long off = 0;
            if (ok) off = cs.src(m0 + row, k0 + col, ok);
            cp_async16(As + row * A_LD + col, x + (ok ? off : 0), ok);
        }
    } else {
        for (int idx = tid; idx < BM * BK; idx += NT) {
            const int row = idx / BK, col = idx % BK;
            bool ok = m0 + row < M && k0 + col < KR;
            long long off = 0;
            if (ok) off = cs.src(m0 + row, k0 + col, ok);
            As[row * A_LD + col] = ok ? x[off] : zero;
        }
    }
    if (vec_b) {   // K % 8 == 0: 8 output channels of one tap
#pragma unroll
        for (int e = 0; e < (BK * BN / 8) / NT; ++e) {
            const int chunk = tid + e * NT, row = chunk / (BN / 8), col = (chunk % (BN / 8)) * 8;
            const bool ok = k0 + row < KR && n0 + col < cs.K;
            cp_async16(Bs + row * B_LD + col, ok ? w + (long long)(k0 + row) * cs.K + n0 + col : w, ok);
        }
    } else {
        for (int idx = tid; idx < BK * BN; idx += NT) {
            const int row = idx / BN, col = idx % BN;
            const bool ok = k0 + row < KR && n0 + col < cs.K;
            Bs[row * B_LD + col] = ok ? w[(long long)(k0 + row) * cs.K + n0 + col] : zero;
        }
    }
}

// y (N, P, Q, K) = relu?(conv(x (N, H, W, C), w (R, S, C, K)) + bias[k] (+ residual (N, P, Q, K))).
template <typename T>
__global__ void __launch_bounds__(128) conv_igemm(
    const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ bias, const T* __restrict__ residual,
    T* __restrict__ y, int N, int H, int W, int C, int K, int R, int S, int P, int Q, int sh, int sw, int ph, int pw,
    int has_residual, int relu, int vec_a, int vec_b)
{
    __shared__ __align__(128) unsigned char smem_raw[SMEM_BYTES];
    T* As = reinterpret_cast<T*>(smem_raw);   // [2][BM][A_LD]
    T* Bs = As + 2 * A_STAGE;                  // [2][BK][B_LD]
    const ConvShape cs{N, H, W, C, K, R, S, P, Q, sh, sw, ph, pw};
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int wm = warp / 2, wn = warp % 2;    // warp tile: rows wm*32 .. +32, cols wn*32 .. +32
    const int m0 = blockIdx.x * BM, n0 = blockIdx.y * BN;

    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.0f);

    const int ktiles = (cs.KR() + BK - 1) / BK;
    load_stage(x, w, As, Bs, cs, m0, n0, 0, vec_a, vec_b);
    cp_async_commit();
    for (int t = 0; t < ktiles; ++t) {
        const int s = t & 1;
        if (t + 1 < ktiles)   // the other stage was released by the barrier ending iteration t-1
            load_stage(x, w, As + (s ^ 1) * A_STAGE, Bs + (s ^ 1) * B_STAGE, cs, m0, n0, (t + 1) * BK, vec_a, vec_b);
        cp_async_commit();
        cp_async_wait_1();    // every group but the newest is complete: stage s has landed
        __syncthreads();
        const T* as = As + s * A_STAGE;
        const T* bs = Bs + s * B_STAGE;
#pragma unroll
        for (int kk = 0; kk < BK; kk += 16) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> fa[2];
            wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> fb[2];
#pragma unroll
            for (int i = 0; i < 2; ++i) wmma::load_matrix_sync(fa[i], as + (wm * 32 + i * 16) * A_LD + kk, A_LD);
#pragma unroll
            for (int j = 0; j < 2; ++j) wmma::load_matrix_sync(fb[j], bs + kk * B_LD + wn * 32 + j * 16, B_LD);
#pragma unroll
            for (int i = 0; i < 2; ++i)
#pragma unroll
                for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
        }
        __syncthreads();
    }

    // Epilogue: each warp stages one 16x16 fragment at a time in its own 1 KiB of shared memory.
    float* stage = reinterpret_cast<float*>(smem_raw) + warp * 256;
    const int r = lane / 2, c0 = (lane % 2) * 8, M = cs.M();
#pragma unroll
    for (int i = 0; i < 2; ++i) {
#pragma unroll
        for (int j = 0; j < 2; ++j) {
            wmma::store_matrix_sync(stage, acc[i][j], 16, wmma::mem_row_major);
            __syncwarp();
            const int gm = m0 + wm * 32 + i * 16 + r, gn = n0 + wn * 32 + j * 16 + c0;
            if (gm < M) {
                const long long row = (long long)gm * K;
#pragma unroll
                for (int e = 0; e < 8; ++e) {
                    if (gn + e >= K) break;
                    float v = stage[r * 16 + c0 + e] + to_f32(bias[gn + e]);
                    if (has_residual) v += to_f32(residual[row + gn + e]);
                    if (relu) v = fmaxf(v, 0.0f);
                    y[row + gn + e] = from_f32<T>(v);
                }
            }
            __syncwarp();
        }
    }
}

// y (N, P, Q, C) = max of x (N, H, W, C) over each R x S window (stride st, padding pd).
template <typename T>
__global__ void __launch_bounds__(256) maxpool_nhwc(const T* __restrict__ x, T* __restrict__ y, int N, int H, int W,
                                                    int C, int P, int Q, int R, int S, int st, int pd)
{
    const long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long long)N * P * Q * C) return;
    const int c = idx % C;
    const long long npq = idx / C;
    const int q = npq % Q, p = (npq / Q) % P, n = npq / ((long long)P * Q);
    float m = -INFINITY;
    for (int r = 0; r < R; ++r) {
        const int h = p * st - pd + r;
        if (h < 0 || h >= H) continue;
        for (int s = 0; s < S; ++s) {
            const int w = q * st - pd + s;
            if (w >= 0 && w < W) m = fmaxf(m, to_f32(x[(((long long)n * H + h) * W + w) * C + c]));
        }
    }
    y[idx] = from_f32<T>(m);
}

// y[n, c] = mean of x[n, :, :, c] over the HW spatial positions (fp32 sum).
template <typename T>
__global__ void __launch_bounds__(256) avgpool_nhwc(const T* __restrict__ x, T* __restrict__ y, int N, int HW, int C)
{
    const long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long long)N * C) return;
    const int c = idx % C;
    const T* xn = x + (idx / C) * HW * C + c;
    float s = 0.0f;
    for (int i = 0; i < HW; ++i) s += to_f32(xn[(long long)i * C]);
    y[idx] = from_f32<T>(s / HW);
}
"""

_KINDS = (dtypes.FLOAT16, dtypes.BFLOAT16)
CONVNET_SOURCE = KernelSource(
    key="convnet", code=_CODE, kind="module",
    name_expressions=tuple(f"{k}<{dtypes.CTYPE[t]}>" for k in ("conv_igemm", "maxpool_nhwc", "avgpool_nhwc")
                           for t in _KINDS),
    options=DEFAULT_OPTIONS + toolkit_include_options(),
)


def cupy_sources() -> list[KernelSource]:
    """Every CuPy kernel source of this module."""
    return [CONVNET_SOURCE]


def _fn(kernel: str, kind: str) -> Any:
    return module_function(CONVNET_SOURCE, f"{kernel}<{dtypes.CTYPE[kind]}>")


def conv_output_hw(h: int, w: int, kernel: tuple[int, int], stride: int, padding: int) -> tuple[int, int]:
    """Output height and width of a convolution or pooling window."""
    return (h + 2 * padding - kernel[0]) // stride + 1, (w + 2 * padding - kernel[1]) // stride + 1


def _check_like(x: Any, name: str, ref: Any, shape: tuple[int, ...]) -> None:
    check_array(x, name)
    if x.dtype != ref.dtype:
        raise TypeError(f"{name} has dtype {x.dtype.name}; expected {ref.dtype.name}")
    if tuple(x.shape) != shape:
        raise ValueError(f"{name} has shape {tuple(x.shape)}; expected {shape}")


def conv2d_nhwc(x: Any, w: Any, bias: Any, out: Any, *, stride: int = 1, padding: int = 0, residual: Any = None,
                relu: bool = False, stream: Any = None) -> Any:
    """``out = relu?(conv2d(x, w) + bias (+ residual))``, NHWC, on tensor cores.

    Parameters
    ----------
    x : cupy.ndarray
        (N, H, W, C), C-contiguous, float16 or bfloat16 (uint16 bits).
    w : cupy.ndarray
        (R, S, C, K), x's dtype.
    bias : cupy.ndarray
        (K,), x's dtype (a folded batch norm's shift).
    out : cupy.ndarray
        (N, P, Q, K), x's dtype.
    stride, padding : int
        The same for both spatial axes.
    residual : cupy.ndarray, optional
        out's shape and dtype, added before the ReLU (a residual block's shortcut).
    relu : bool
    stream : cupy stream, object with ``__cuda_stream__``, or None

    Returns
    -------
    cupy.ndarray
        ``out``.
    """
    check_array(x, "x", ndim=4)
    kind = dtypes.check_kind(x, "x", _KINDS)
    check_array(w, "w", ndim=4)
    N, H, W, C = x.shape
    R, S, Cw, K = w.shape
    if Cw != C or w.dtype != x.dtype:
        raise ValueError(f"w has shape {tuple(w.shape)} and dtype {w.dtype.name}; expected (R, S, {C}, K) "
                         f"{x.dtype.name}")
    if stride < 1 or padding < 0:
        raise ValueError(f"stride must be >= 1 and padding >= 0, got {stride}, {padding}")
    P, Q = conv_output_hw(H, W, (R, S), stride, padding)
    if P < 1 or Q < 1:
        raise ValueError(f"the filter {R}x{S} does not fit the padded input {H}x{W}")
    _check_like(bias, "bias", x, (K,))
    _check_like(out, "out", x, (N, P, Q, K))
    if residual is not None:
        _check_like(residual, "residual", x, (N, P, Q, K))
    if N * P * Q >= 2**31 or x.size >= 2**40:
        raise ValueError("convolution too large")
    vec_a = int(C % 8 == 0 and aligned(x))
    vec_b = int(K % 8 == 0 and aligned(w))
    ints = (N, H, W, C, K, R, S, P, Q, stride, stride, padding, padding, residual is not None, relu, vec_a, vec_b)
    _fn("conv_igemm", kind)((cdiv(N * P * Q, BM), cdiv(K, BN)), (CONV_THREADS,),
                            (x, w, bias, out if residual is None else residual, out, *(np.int32(v) for v in ints)),
                            stream=as_cupy_stream(stream))
    return out


def maxpool2d_nhwc(x: Any, out: Any, *, kernel: int = 3, stride: int = 2, padding: int = 1,
                   stream: Any = None) -> Any:
    """Max pooling over ``kernel x kernel`` windows, NHWC.

    Parameters
    ----------
    x : cupy.ndarray
        (N, H, W, C), C-contiguous, float16 or bfloat16 (uint16 bits).
    out : cupy.ndarray
        (N, P, Q, C), x's dtype.
    kernel, stride, padding : int
    stream : cupy stream, object with ``__cuda_stream__``, or None

    Returns
    -------
    cupy.ndarray
        ``out``.
    """
    check_array(x, "x", ndim=4)
    kind = dtypes.check_kind(x, "x", _KINDS)
    N, H, W, C = x.shape
    if padding >= kernel:
        raise ValueError(f"padding ({padding}) must be smaller than the window ({kernel})")
    P, Q = conv_output_hw(H, W, (kernel, kernel), stride, padding)
    _check_like(out, "out", x, (N, P, Q, C))
    n = N * P * Q * C
    _fn("maxpool_nhwc", kind)((cdiv(n, THREADS),), (THREADS,),
                              (x, out, *(np.int32(v) for v in (N, H, W, C, P, Q, kernel, kernel, stride, padding))),
                              stream=as_cupy_stream(stream))
    return out


def avgpool_nhwc(x: Any, out: Any, *, stream: Any = None) -> Any:
    """Global average pooling, ``(N, H, W, C) -> (N, C)``.

    Parameters
    ----------
    x : cupy.ndarray
        (N, H, W, C), C-contiguous, float16 or bfloat16 (uint16 bits).
    out : cupy.ndarray
        (N, C), x's dtype.
    stream : cupy stream, object with ``__cuda_stream__``, or None

    Returns
    -------
    cupy.ndarray
        ``out``.
    """
    check_array(x, "x", ndim=4)
    kind = dtypes.check_kind(x, "x", _KINDS)
    N, H, W, C = x.shape
    _check_like(out, "out", x, (N, C))
    _fn("avgpool_nhwc", kind)((cdiv(N * C, THREADS),), (THREADS,), (x, out, np.int32(N), np.int32(H * W), np.int32(C)),
                              stream=as_cupy_stream(stream))
    return out


def fold_batchnorm(w: Any, gamma: Any, beta: Any, mean: Any, var: Any, eps: float = 1e-5) -> tuple[Any, Any]:
    """Fold inference batch norm into the convolution before it.

    ``bn(conv(x, w)) = conv(x, w * a) + (beta - mean * a)`` with ``a = gamma / sqrt(var + eps)``
    per output channel. Works on NumPy or CuPy arrays alike.

    Parameters
    ----------
    w : array
        (K, C, R, S) convolution weights (the usual KCRS layout).
    gamma, beta, mean, var : array
        (K,) batch-norm scale, shift, running mean and running variance.
    eps : float

    Returns
    -------
    tuple of arrays
        The folded weights in RSCK layout ((R, S, C, K), as `conv2d_nhwc` takes them) and
        the (K,) bias.
    """
    a = gamma / (var + eps) ** 0.5
    folded = (w * a[:, None, None, None]).transpose(2, 3, 1, 0)
    return folded, beta - mean * a


# ---- float64 references ------------------------------------------------------------------------------


def reference_conv2d_nhwc(x: np.ndarray, w: np.ndarray, bias: np.ndarray, stride: int = 1, padding: int = 0,
                          residual: np.ndarray | None = None, relu: bool = False) -> np.ndarray:
    """float64 `conv2d_nhwc` of host arrays (x NHWC, w RSCK)."""
    from kernels.conv import reference_conv2d

    f64 = dtypes.to_float64
    y = reference_conv2d(f64(x).transpose(0, 3, 1, 2), f64(w).transpose(3, 2, 0, 1), f64(bias), stride,
                         padding).transpose(0, 2, 3, 1)
    if residual is not None:
        y = y + f64(residual)
    return np.maximum(y, 0.0) if relu else y


def reference_maxpool_nhwc(x: np.ndarray, kernel: int = 3, stride: int = 2, padding: int = 1) -> np.ndarray:
    """float64 max pooling of a host NHWC array."""
    x64 = dtypes.to_float64(x)
    N, H, W, C = x64.shape
    P, Q = conv_output_hw(H, W, (kernel, kernel), stride, padding)
    xp = np.pad(x64, ((0, 0), (padding, padding), (padding, padding), (0, 0)), constant_values=-np.inf)
    windows = [xp[:, r:r + stride * (P - 1) + 1:stride, s:s + stride * (Q - 1) + 1:stride]
               for r in range(kernel) for s in range(kernel)]
    return np.max(windows, axis=0)
