"""2-D convolution, NCHW, forward, as an implicit GEMM (``cupy.RawKernel``, fp32).

``conv2d_nchw_igemm``: the GEMM ``Y[m, k] = sum_crs X_col[m, crs] W[k, crs]`` with m the
output pixel (n, p, q), k the output channel and crs the (input channel, filter row,
filter column) triple. The im2col matrix is never built: each thread gathers its share of
the 64x16 A tile straight from the input (zero outside the padded image), the 16x64 B
tile from the weights. 64x64 output tiles, 4x4 per thread, 256 threads, tiles prefetched
into registers one step ahead; 2-D grid ``(ceil(N*P*Q/64), ceil(K/64))``. Stride,
padding and dilation per axis; groups = 1; optional bias.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kernels._compile import KernelSource, as_cupy_stream, cdiv, check_array, check_out, empty, raw_kernel

BM, BN, BK = 64, 64, 16
THREADS = 256

_CODE = r"""
extern "C" __global__ void __launch_bounds__(256) conv2d_nchw_igemm(
    const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ bias,
    float* __restrict__ y,
    int N, int C, int H, int W, int K, int R, int S, int P, int Q,
    int stride_h, int stride_w, int pad_h, int pad_w, int dil_h, int dil_w, int has_bias)
{
    constexpr int BM = 64, BN = 64, BK = 16, NT = 256;
    __shared__ __align__(16) float As[BK][BM + 4];   // im2col tile: As[crs][pixel]
    __shared__ __align__(16) float Bs[BK][BN + 4];   // weight tile: Bs[crs][out channel]

    const int tid = threadIdx.x;
    const int tm = tid % 16, tn = tid / 16;          // pixels fastest: coalesced output stores
    const long long PQ = (long long)P * Q;
    const long long Mtot = (long long)N * PQ;
    const long long m0 = (long long)blockIdx.x * BM;
    const int n0 = blockIdx.y * BN;
    const int RS = R * S, CRS = C * RS;

    // This thread always gathers pixel a_m of the tile, for crs rows a_k + 4e.
    const int a_m = tid % BM, a_k = tid / BM;
    const long long gm_a = m0 + a_m;
    const bool m_ok = gm_a < Mtot;
    int img = 0, hb = 0, wb = 0;
    if (m_ok) {
        img = (int)(gm_a / PQ);
        const int pq = (int)(gm_a - (long long)img * PQ);
        hb = (pq / Q) * stride_h - pad_h;
        wb = (pq % Q) * stride_w - pad_w;
    }
    const float* ximg = x + (long long)img * C * H * W;
    // ... and weights of output channel n0 + b_n + 16e, crs b_k.
    const int b_k = tid % BK, b_n = tid / BK;

    float ra[4], rb[4];
    auto load = [&](int k0) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int kk = k0 + a_k + 4 * e;
            float v = 0.0f;
            if (m_ok && kk < CRS) {
                const int c = kk / RS, rs = kk - c * RS;
                const int r = rs / S, s = rs - r * S;
                const int hh = hb + r * dil_h, ww = wb + s * dil_w;
                if (hh >= 0 && hh < H && ww >= 0 && ww < W) v = ximg[((long long)c * H + hh) * W + ww];
            }
            ra[e] = v;
        }
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int kk = k0 + b_k, kn = n0 + b_n + 16 * e;
            rb[e] = (kk < CRS && kn < K) ? w[(long long)kn * CRS + kk] : 0.0f;
        }
    };
    auto store = [&]() {
#pragma unroll
        for (int e = 0; e < 4; ++e) As[a_k + 4 * e][a_m] = ra[e];
#pragma unroll
        for (int e = 0; e < 4; ++e) Bs[b_k][b_n + 16 * e] = rb[e];
    };

    float acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;

    const int ktiles = (CRS + BK - 1) / BK;
    load(0);
    store();
    __syncthreads();
    for (int t = 0; t < ktiles; ++t) {
        if (t + 1 < ktiles) load((t + 1) * BK);
#pragma unroll
        for (int kk = 0; kk < BK; ++kk) {
            const float4 a = *reinterpret_cast<const float4*>(&As[kk][tm * 4]);
            const float4 b = *reinterpret_cast<const float4*>(&Bs[kk][tn * 4]);
            const float av[4] = {a.x, a.y, a.z, a.w}, bv[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
        }
        __syncthreads();
        if (t + 1 < ktiles) {
            store();
            __syncthreads();
        }
    }

#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const long long gm = m0 + tm * 4 + i;
        if (gm >= Mtot) continue;
        const int im = (int)(gm / PQ);
        const long long pq = gm - (long long)im * PQ;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int kc = n0 + tn * 4 + j;
            if (kc < K) y[((long long)im * K + kc) * PQ + pq] = acc[i][j] + (has_bias ? bias[kc] : 0.0f);
        }
    }
}
"""

CONV_SOURCE = KernelSource(key="conv2d_nchw_igemm", code=_CODE, kind="kernel", name="conv2d_nchw_igemm")


def cupy_sources() -> list[KernelSource]:
    """Every CuPy kernel source of this module."""
    return [CONV_SOURCE]


def _pair(v: int | tuple[int, int], name: str) -> tuple[int, int]:
    pair = (v, v) if isinstance(v, (int, np.integer)) else tuple(v)
    if len(pair) != 2 or not all(isinstance(i, (int, np.integer)) for i in pair):
        raise TypeError(f"{name} must be an int or a pair of ints, got {v!r}")
    return int(pair[0]), int(pair[1])


def conv2d_output_shape(x_shape: tuple[int, ...], w_shape: tuple[int, ...], stride: Any = 1, padding: Any = 0,
                        dilation: Any = 1) -> tuple[int, int, int, int]:
    """``(N, K, P, Q)`` of a convolution of ``x_shape`` (N, C, H, W) with ``w_shape`` (K, C, R, S)."""
    N, _, H, W = x_shape
    K, _, R, S = w_shape
    sh, sw = _pair(stride, "stride")
    ph, pw = _pair(padding, "padding")
    dh, dw = _pair(dilation, "dilation")
    P = (H + 2 * ph - dh * (R - 1) - 1) // sh + 1
    Q = (W + 2 * pw - dw * (S - 1) - 1) // sw + 1
    return N, K, P, Q


def check_conv2d_args(x: Any, w: Any, bias: Any, stride: Any, padding: Any, dilation: Any,
                      out: Any) -> tuple[int, int, int, int]:
    """Validate `conv2d` arguments; returns the output shape."""
    check_array(x, "x", ndim=4, dtypes=(np.float32,))
    check_array(w, "w", ndim=4, dtypes=(np.float32,))
    if w.shape[1] != x.shape[1]:
        raise ValueError(f"w has {w.shape[1]} input channels but x has {x.shape[1]} (groups are not supported)")
    sh, sw = _pair(stride, "stride")
    ph, pw = _pair(padding, "padding")
    dh, dw = _pair(dilation, "dilation")
    if min(sh, sw, dh, dw) < 1 or min(ph, pw) < 0:
        raise ValueError(f"stride and dilation must be >= 1 and padding >= 0 (got {stride}, {dilation}, {padding})")
    shape = conv2d_output_shape(x.shape, w.shape, stride, padding, dilation)
    if shape[2] < 1 or shape[3] < 1:
        raise ValueError(f"the filter {tuple(w.shape[2:])} does not fit the padded input {tuple(x.shape[2:])}")
    if bias is not None:
        check_array(bias, "bias", ndim=1, dtypes=(np.float32,))
        if bias.shape[0] != w.shape[0]:
            raise ValueError(f"bias has {bias.shape[0]} elements; w has {w.shape[0]} output channels")
    if x.size >= 2**40 or np.prod(shape) >= 2**40 or w.shape[1] * w.shape[2] * w.shape[3] >= 2**31:
        raise ValueError("convolution too large")
    check_out(out, shape, np.float32)
    return shape


def conv2d(
    x: Any,
    w: Any,
    bias: Any = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    out: Any = None,
    *,
    stream: Any = None,
) -> Any:
    """2-D convolution (cross-correlation, as in deep-learning frameworks), NCHW, float32.

    Parameters
    ----------
    x : cupy.ndarray
        (N, C, H, W), C-contiguous float32.
    w : cupy.ndarray
        (K, C, R, S), C-contiguous float32.
    bias : cupy.ndarray, optional
        (K,) float32.
    stride, padding, dilation : int or pair of int
        Per (height, width).
    out : cupy.ndarray, optional
        (N, K, P, Q) float32.
    stream : cupy stream, object with ``__cuda_stream__``, or None

    Returns
    -------
    cupy.ndarray
    """
    N, K, P, Q = check_conv2d_args(x, w, bias, stride, padding, dilation, out)
    _, C, H, W = x.shape
    _, _, R, S = w.shape
    sh, sw = _pair(stride, "stride")
    ph, pw = _pair(padding, "padding")
    dh, dw = _pair(dilation, "dilation")
    s = as_cupy_stream(stream)
    if out is None:
        out = empty((N, K, P, Q), np.float32, s)
    grid = (cdiv(N * P * Q, BM), cdiv(K, BN))
    if grid[1] > 65535:
        raise ValueError(f"w has {K} output channels; at most {65535 * BN}")
    raw_kernel(CONV_SOURCE)(
        grid, (THREADS,),
        (x, w, w if bias is None else bias, out, *(np.int32(v) for v in (N, C, H, W, K, R, S, P, Q, sh, sw, ph, pw,
                                                                          dh, dw)), np.int32(bias is not None)),
        stream=s)
    return out


def reference_conv2d(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None = None, stride: Any = 1,
                     padding: Any = 0, dilation: Any = 1) -> np.ndarray:
    """float64 NCHW cross-correlation of host arrays (one matrix product per filter tap)."""
    x64, w64 = np.asarray(x, np.float64), np.asarray(w, np.float64)
    N, K, P, Q = conv2d_output_shape(x64.shape, w64.shape, stride, padding, dilation)
    sh, sw = _pair(stride, "stride")
    ph, pw = _pair(padding, "padding")
    dh, dw = _pair(dilation, "dilation")
    R, S = w64.shape[2:]
    xp = np.pad(x64, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    y = np.zeros((N, K, P, Q))
    for r in range(R):
        for s_ in range(S):
            h0, w0 = r * dh, s_ * dw
            patch = xp[:, :, h0:h0 + sh * (P - 1) + 1:sh, w0:w0 + sw * (Q - 1) + 1:sw]   # (N, C, P, Q)
            y += np.einsum("ncpq,kc->nkpq", patch, w64[:, :, r, s_], optimize=True)
    if bias is not None:
        y += np.asarray(bias, np.float64)[None, :, None, None]
    return y
