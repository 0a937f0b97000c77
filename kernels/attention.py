"""Fused attention forward, FlashAttention-style (online softmax, K/V tiles in shared memory).

``flash_attn_fwd_<dtype>_d<D>`` (``cupy.RawKernel``, one per storage type and head dim):
``O = softmax(scale * Q K^T [+ causal mask]) V`` for Q, K, V of shape (batch, heads, seq,
head_dim), head_dim 64 or 128, fp32/fp16/bf16 storage, fp32 arithmetic. A block owns 64
query rows of one (batch, head) and walks the keys in tiles of 32: Q^T (pre-scaled by
``scale * log2(e)``), K^T, V and P^T live in *dynamic* shared memory; 256 threads in a
16x16 layout each own 4 query rows x 2 keys of the score tile and 4 rows x D/16 columns
of the output accumulator; row maxima and sums are combined with warp shuffles inside
16-lane groups. The grid is 3-D: ``(ceil(Sq/64), heads, batch)``. With ``causal`` the key
loop stops at the block's last query row and the blocks with the most work (last query
tiles) are numbered first. Q, K, V and O may be strided views (e.g. heads split out of a
fused QKV projection) as long as the head dimension is contiguous.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from kernels import dtypes
from kernels._compile import (
    CONVERT_SNIPPET,
    KernelSource,
    as_cupy_stream,
    cdiv,
    check_array,
    empty,
    raw_kernel,
)

BLOCK_Q = 64
BLOCK_KV = 32
THREADS = 256
HEAD_DIMS = (64, 128)


def shared_bytes(head_dim: int) -> int:
    """Dynamic shared memory of the kernel for ``head_dim`` (43,520 B for 64; 78,336 B for 128)."""
    floats = head_dim * (BLOCK_Q + 4) + head_dim * (BLOCK_KV + 4) + BLOCK_KV * head_dim + BLOCK_KV * (BLOCK_Q + 4)
    return 4 * floats


_BODY = CONVERT_SNIPPET + r"""
template <typename T, int D, int BQ, int BKV>
__device__ __forceinline__ void flash_fwd(
    const T* __restrict__ Q, const T* __restrict__ K, const T* __restrict__ V, T* __restrict__ O,
    int Sq, int Sk,
    long long qsb, long long qsh, long long qss, long long ksb, long long ksh, long long kss,
    long long vsb, long long vsh, long long vss, long long osb, long long osh, long long oss,
    float scale_log2, int causal)
{
    constexpr int NT = 256;
    constexpr int RM = BQ / 16;   // query rows per thread
    constexpr int CN = BKV / 16;  // keys per thread in the score tile
    constexpr int DN = D / 16;    // output columns per thread
    constexpr int QLD = BQ + 4, KLD = BKV + 4, VLD = D, PLD = BQ + 4;
    static_assert(RM == 4 && CN == 2 && D % 64 == 0, "tile layout assumed below");

    extern __shared__ __align__(16) float smem[];
    float* Qs = smem;                // [D][QLD]  Q^T, scaled by scale*log2(e)
    float* Ks = Qs + D * QLD;        // [D][KLD]  K^T
    float* Vs = Ks + D * KLD;        // [BKV][VLD]
    float* Ps = Vs + BKV * VLD;      // [BKV][PLD] P^T

    const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
    const int qtile = causal ? (int)(gridDim.x - 1 - blockIdx.x) : (int)blockIdx.x;
    const int q0 = qtile * BQ;
    const long long b = blockIdx.z, h = blockIdx.y;
    Q += b * qsb + h * qsh;
    K += b * ksb + h * ksh;
    V += b * vsb + h * vsh;
    O += b * osb + h * osh;

    for (int idx = tid; idx < BQ * D; idx += NT) {
        const int r = idx / D, d = idx % D;
        Qs[d * QLD + r] = (q0 + r < Sq) ? to_f32(Q[(long long)(q0 + r) * qss + d]) * scale_log2 : 0.0f;
    }

    float m[RM], l[RM], acc[RM][DN];
#pragma unroll
    for (int i = 0; i < RM; ++i) {
        m[i] = -INFINITY;
        l[i] = 0.0f;
#pragma unroll
        for (int c = 0; c < DN; ++c) acc[i][c] = 0.0f;
    }

    const int kv_end = causal ? min(Sk, q0 + BQ) : Sk;
    for (int k0 = 0; k0 < kv_end; k0 += BKV) {
        __syncthreads();   // the previous tile's readers are done (and the Q tile is visible)
        for (int idx = tid; idx < BKV * D; idx += NT) {
            const int c = idx / D, d = idx % D;
            const bool ok = k0 + c < Sk;
            Ks[d * KLD + c] = ok ? to_f32(K[(long long)(k0 + c) * kss + d]) : 0.0f;
            Vs[c * VLD + d] = ok ? to_f32(V[(long long)(k0 + c) * vss + d]) : 0.0f;
        }
        __syncthreads();

        // S = Q K^T for rows ty*4 + i, keys tx*2 + j (log2 domain).
        float s[RM][CN];
#pragma unroll
        for (int i = 0; i < RM; ++i)
#pragma unroll
            for (int j = 0; j < CN; ++j) s[i][j] = 0.0f;
#pragma unroll 8
        for (int d = 0; d < D; ++d) {
            const float4 q = *reinterpret_cast<const float4*>(&Qs[d * QLD + ty * 4]);
            const float2 k = *reinterpret_cast<const float2*>(&Ks[d * KLD + tx * 2]);
            s[0][0] = fmaf(q.x, k.x, s[0][0]); s[0][1] = fmaf(q.x, k.y, s[0][1]);
            s[1][0] = fmaf(q.y, k.x, s[1][0]); s[1][1] = fmaf(q.y, k.y, s[1][1]);
            s[2][0] = fmaf(q.z, k.x, s[2][0]); s[2][1] = fmaf(q.z, k.y, s[2][1]);
            s[3][0] = fmaf(q.w, k.x, s[3][0]); s[3][1] = fmaf(q.w, k.y, s[3][1]);
        }

        // Online softmax: the 16 threads sharing ty (one half-warp) hold a row's keys.
#pragma unroll
        for (int i = 0; i < RM; ++i) {
            const int qi = q0 + ty * 4 + i;
            float mx = -INFINITY;
#pragma unroll
            for (int j = 0; j < CN; ++j) {
                const int kj = k0 + tx * 2 + j;
                if (kj >= Sk || (causal && kj > qi)) s[i][j] = -INFINITY;
                mx = fmaxf(mx, s[i][j]);
            }
#pragma unroll
            for (int o = 8; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
            const float m_new = fmaxf(m[i], mx);
            const float m_use = (m_new == -INFINITY) ? 0.0f : m_new;   // a row with no key yet
            const float corr = exp2f(m[i] - m_use);
            float rs = 0.0f;
#pragma unroll
            for (int j = 0; j < CN; ++j) {
                s[i][j] = exp2f(s[i][j] - m_use);
                rs += s[i][j];
            }
#pragma unroll
            for (int o = 8; o > 0; o >>= 1) rs += __shfl_xor_sync(0xffffffffu, rs, o);
            l[i] = l[i] * corr + rs;
            m[i] = m_new;
#pragma unroll
            for (int c = 0; c < DN; ++c) acc[i][c] *= corr;
#pragma unroll
            for (int j = 0; j < CN; ++j) Ps[(tx * 2 + j) * PLD + ty * 4 + i] = s[i][j];
        }
        __syncthreads();

        // O += P V: rows ty*4 + i, columns g*64 + tx*4 + {0..3}.
#pragma unroll 4
        for (int c = 0; c < BKV; ++c) {
            const float4 p = *reinterpret_cast<const float4*>(&Ps[c * PLD + ty * 4]);
            const float pr[4] = {p.x, p.y, p.z, p.w};
#pragma unroll
            for (int g = 0; g < DN / 4; ++g) {
                const float4 v = *reinterpret_cast<const float4*>(&Vs[c * VLD + g * 64 + tx * 4]);
#pragma unroll
                for (int i = 0; i < RM; ++i) {
                    acc[i][g * 4 + 0] = fmaf(pr[i], v.x, acc[i][g * 4 + 0]);
                    acc[i][g * 4 + 1] = fmaf(pr[i], v.y, acc[i][g * 4 + 1]);
                    acc[i][g * 4 + 2] = fmaf(pr[i], v.z, acc[i][g * 4 + 2]);
                    acc[i][g * 4 + 3] = fmaf(pr[i], v.w, acc[i][g * 4 + 3]);
                }
            }
        }
    }

#pragma unroll
    for (int i = 0; i < RM; ++i) {
        const int qi = q0 + ty * 4 + i;
        if (qi >= Sq) continue;
        const float inv = 1.0f / l[i];
        T* orow = O + (long long)qi * oss;
#pragma unroll
        for (int c = 0; c < DN; ++c) orow[(c / 4) * 64 + tx * 4 + (c % 4)] = from_f32<T>(acc[i][c] * inv);
    }
}
"""

_ENTRY = r"""
extern "C" __global__ void __launch_bounds__(256) {name}(
    const {t}* __restrict__ Q, const {t}* __restrict__ K, const {t}* __restrict__ V, {t}* __restrict__ O,
    int Sq, int Sk,
    long long qsb, long long qsh, long long qss, long long ksb, long long ksh, long long kss,
    long long vsb, long long vsh, long long vss, long long osb, long long osh, long long oss,
    float scale_log2, int causal)
{{
    flash_fwd<{t}, {d}, {bq}, {bkv}>(Q, K, V, O, Sq, Sk, qsb, qsh, qss, ksb, ksh, kss, vsb, vsh, vss,
                                     osb, osh, oss, scale_log2, causal);
}}
"""


def attention_source(kind: str, head_dim: int) -> KernelSource:
    """The RawKernel source for storage ``kind`` and ``head_dim``."""
    name = f"flash_attn_fwd_{dtypes.SUFFIX[kind]}_d{head_dim}"
    code = _BODY + _ENTRY.format(name=name, t=dtypes.CTYPE[kind], d=head_dim, bq=BLOCK_Q, bkv=BLOCK_KV)
    return KernelSource(key=name, code=code, kind="kernel", name=name)


def cupy_sources() -> list[KernelSource]:
    """Every CuPy kernel source of this module."""
    return [attention_source(k, d) for k in (dtypes.FLOAT32, dtypes.FLOAT16, dtypes.BFLOAT16) for d in HEAD_DIMS]


def _strides(x: Any) -> tuple[int, int, int]:
    item = x.dtype.itemsize
    return tuple(int(s) // item for s in x.strides[:3])  # type: ignore[return-value]


def check_attention_args(q: Any, k: Any, v: Any, causal: bool, out: Any) -> str:
    """Validate `attention` arguments; returns the storage kind."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        check_array(x, name, ndim=4, contiguous=False)
    kind = dtypes.check_kind(q, "q")
    for name, x in (("k", k), ("v", v)):
        if x.dtype != q.dtype:
            raise TypeError(f"{name} has dtype {x.dtype.name} but q has {q.dtype.name}")
    B, H, Sq, D = q.shape
    if D not in HEAD_DIMS:
        raise ValueError(f"q has head_dim {D}; supported: {HEAD_DIMS}")
    if k.shape[:2] != (B, H) or k.shape[3] != D:
        raise ValueError(f"k has shape {tuple(k.shape)}; expected ({B}, {H}, Sk, {D}) to match q {tuple(q.shape)}")
    if v.shape != k.shape:
        raise ValueError(f"v has shape {tuple(v.shape)}; expected k's shape {tuple(k.shape)}")
    if causal and k.shape[2] != Sq:
        raise ValueError(f"causal attention needs as many keys as queries (q has {Sq}, k has {k.shape[2]})")
    if H > 65535 or B > 65535:
        raise ValueError(f"batch ({B}) and heads ({H}) must each be at most 65535")
    if out is not None:
        check_array(out, "out", ndim=4, contiguous=False)
        if tuple(out.shape) != tuple(q.shape):
            raise ValueError(f"out has shape {tuple(out.shape)}; expected q's shape {tuple(q.shape)}")
        if out.dtype != q.dtype:
            raise TypeError(f"out has dtype {out.dtype.name}; expected {q.dtype.name}")
    for name, x in (("q", q), ("k", k), ("v", v), ("out", out)):
        if x is not None and x.strides[3] != x.dtype.itemsize:
            raise ValueError(f"{name} must be contiguous in its last (head) dimension, got strides {x.strides}")
        if x is not None and any(s < 0 for s in x.strides):
            raise ValueError(f"{name} has negative strides {x.strides}")
    return kind


def attention(
    q: Any,
    k: Any,
    v: Any,
    causal: bool = False,
    out: Any = None,
    *,
    scale: float | None = None,
    stream: Any = None,
) -> Any:
    """Fused scaled-dot-product attention forward.

    Parameters
    ----------
    q : cupy.ndarray
        (batch, heads, Sq, head_dim), head_dim 64 or 128; float32, float16 or bfloat16
        (uint16 bits). May be a strided view with a contiguous last dimension.
    k, v : cupy.ndarray
        (batch, heads, Sk, head_dim), q's dtype.
    causal : bool
        Mask keys after the query (needs Sk == Sq).
    out : cupy.ndarray, optional
        q's shape and dtype (may be a strided view); allocated when None.
    scale : float, optional
        Score scale; ``1/sqrt(head_dim)`` when None.
    stream : cupy stream, object with ``__cuda_stream__``, or None

    Returns
    -------
    cupy.ndarray
        ``out``.
    """
    kind = check_attention_args(q, k, v, causal, out)
    B, H, Sq, D = q.shape
    Sk = k.shape[2]
    s = as_cupy_stream(stream)
    if out is None:
        out = empty(q.shape, q.dtype, s)
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    smem = shared_bytes(D)
    kernel = raw_kernel(attention_source(kind, D), max_dynamic_shared=smem)
    strides = [np.int64(x) for t in (q, k, v, out) for x in _strides(t)]
    kernel((cdiv(Sq, BLOCK_Q), H, B), (THREADS,),
           (q, k, v, out, np.int32(Sq), np.int32(Sk), *strides, np.float32(scale * math.log2(math.e)),
            np.int32(bool(causal))),
           shared_mem=smem, stream=s)
    return out


def reference_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, causal: bool = False,
                        scale: float | None = None) -> np.ndarray:
    """float64 ``softmax(scale * q @ k^T [+ causal mask]) @ v`` of host arrays (B, H, S, D)."""
    q64, k64, v64 = dtypes.to_float64(q), dtypes.to_float64(k), dtypes.to_float64(v)
    D = q64.shape[-1]
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    scores = np.einsum("bhqd,bhkd->bhqk", q64, k64) * scale
    if causal:
        Sq, Sk = scores.shape[-2:]
        mask = np.triu(np.ones((Sq, Sk), dtype=bool), k=1)
        scores = np.where(mask, -np.inf, scores)
    scores -= scores.max(axis=-1, keepdims=True)
    p = np.exp(scores)
    p /= p.sum(axis=-1, keepdims=True)
    return np.einsum("bhqk,bhkd->bhqd", p, v64)
