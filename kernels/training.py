"""Kernels of a transformer training step that the other modules lack: causal attention forward
(with its log-sum-exp) and backward, LayerNorm backward, softmax cross-entropy over a vocabulary
split into chunks, column sums (bias gradients), deterministic embedding gradients, the
reduction of split-K partial products, a column-slice copy (the K-slices of a split GEMM)
and the fp32 -> storage-type cast of master weights.

One ``cupy.RawModule`` (``training``), templated on the storage type (``float``,
``__nv_bfloat16``); arithmetic in fp32; no atomics, so every result is the same bits on
every run.

- ``attn_fwd_train<T>``, ``attn_bwd_dot<T>``, ``attn_bwd_dkdv<T>``, ``attn_bwd_dq<T>``:
  FlashAttention-2-style causal attention for head dim 64 over the heads of a fused QKV
  projection ((tokens, 3 * hidden) rows). A block owns a 64-row tile of queries (forward,
  dQ) or keys (dK and dV) of one (sequence, head) and walks the other side in 64-row
  tiles through fp32 shared memory; 256 threads each own 4x4 of every 64x64 tile
  product. The forward writes ``O`` and the log2-domain log-sum-exp of each query's
  scores; the backward recomputes the probabilities from it, ``dot`` being
  ``rowsum(dO * O)``. dK/dV and dQ are separate kernels (each recomputing the scores)
  instead of one kernel adding dQ atomically. Dynamic shared memory of 66.5 KB (forward)
  and 83.7 KB (backward), above the 48 KB default (`opt_in_shared`).
- ``layernorm_bwd<T>``: ``dx = dres + rstd (g - mean(g) - xhat mean(g xhat))``, ``g = dy * w``,
  one block per row; it also writes the row's (mean, rstd) for ``layernorm_param_grads<T>``
  (``dw = sum_rows dy xhat``, ``db = sum_rows dy``), 32 columns per block.
- ``cross_entropy<T>``: per row, ``loss = logsumexp(x) - x[target]`` over the first
  ``vocab`` columns of logits stored as chunks ``(chunks, rows, chunk)``, and in place
  ``dx = (softmax(x) - onehot(target)) * scale`` (0 in the padding columns). Block per row
  (32-256 threads, about 4 columns each).
- ``colsum<T>``: fp32 column sums of a (rows, cols) matrix, 32 columns per block.
- ``segment_sum_rows``: ``out[ids[g]] (+)= sum of dx rows order[offsets[g]:offsets[g+1]]``,
  the rows of each group summed in order (embedding gradients without atomics).
- ``splitk_reduce<T>``: ``out = sum_s ws[s] (+ bias) (+ residual)``, slices in order.
- ``copy_cols<T>``: a column slice of a row-major matrix into a contiguous one.
- ``cast_f32<T>``: ``y = T(x)``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from kernels import dtypes
from kernels._compile import (
    CONVERT_SNIPPET,
    DEFAULT_MAX_DYNAMIC_SHMEM,
    REDUCE_SNIPPET,
    KernelSource,
    as_cupy_stream,
    cached,
    cdiv,
    check_array,
    module_function,
)
from kernels.norm import row_threads

THREADS = 256
ITEMS = 4   # elements per thread of copy_cols, splitk_reduce and cast_f32
TILE = 64
HEAD_DIM = 64
_TILE_BYTES = 4 * TILE * (TILE + 1)
#: Dynamic shared memory of the attention kernels.
ATTN_FWD_SHARED = 4 * _TILE_BYTES
ATTN_BWD_SHARED = 5 * _TILE_BYTES + 2 * 4 * TILE

_CODE = CONVERT_SNIPPET + REDUCE_SNIPPET + r"""
constexpr int TB = 64, HD = 64, LD = 65, NT = 256, ITEMS = 4;

// ---- attention (head dim 64, causal) ----
// Rows r0 .. r0+63 of one head's (S, 64) slice (row stride ld) into tile[64][LD], fp32, zeros past S.
template <typename T>
__device__ __forceinline__ void load_tile(float* tile, const T* __restrict__ src, long long ld, int r0, int S) {
    for (int idx = threadIdx.x; idx < TB * HD; idx += NT) {
        const int r = idx / HD, c = idx % HD;
        tile[r * LD + c] = r0 + r < S ? to_f32(src[(long long)(r0 + r) * ld + c]) : 0.0f;
    }
}

// acc[i][j] += sum_e A(ty*4 + i, e) B(tx*4 + j, e), e < 64, where X(r, e) = XT ? Xs[e][r] : Xs[r][e].
template <bool AT, bool BT>
__device__ __forceinline__ void tile_mma(float (&acc)[4][4], const float* As, const float* Bs) {
    const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
#pragma unroll 4
    for (int e = 0; e < TB; ++e) {
        float a[4], b[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            a[i] = AT ? As[e * LD + ty * 4 + i] : As[(ty * 4 + i) * LD + e];
            b[i] = BT ? Bs[e * LD + tx * 4 + i] : Bs[(tx * 4 + i) * LD + e];
        }
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
    }
}

__device__ __forceinline__ void zero(float (&acc)[4][4]) {
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;
}

// Sum / max over the 16 threads sharing ty (lanes 0-15 or 16-31 of a warp).
__device__ __forceinline__ float row_sum16(float v) {
#pragma unroll
    for (int o = 8; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float row_max16(float v) {
#pragma unroll
    for (int o = 8; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Write rows r0 + ty*4 + i (< S) of a 64x64 fp32 tile held 4x4 per thread, times scale.
template <typename T>
__device__ __forceinline__ void store_rows(T* __restrict__ dst, long long ld, int r0, int S, const float (&acc)[4][4],
                                           float scale) {
    const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int r = r0 + ty * 4 + i;
        if (r >= S) continue;
#pragma unroll
        for (int j = 0; j < 4; ++j) dst[(long long)r * ld + tx * 4 + j] = from_f32<T>(acc[i][j] * scale);
    }
}

// q, k, v: head h of sequence b at q + (b * S) * ld + h * 64 (rows of a fused QKV projection, stride ld);
// o: (b * S + s) * ldo + h * 64. lse[(b * H + h) * S + s] = log2 sum_k 2^(scores) (log2 units).
// Grid (ceil(S / 64), H, B); the query tiles with the most keys run first.
template <typename T>
__global__ void __launch_bounds__(256) attn_fwd_train(const T* __restrict__ q, const T* __restrict__ k,
                                                      const T* __restrict__ v, long long ld, T* __restrict__ o,
                                                      long long ldo, float* __restrict__ lse, int S, float scale_log2)
{
    extern __shared__ __align__(16) float smem[];
    float *Qs = smem, *Ks = Qs + TB * LD, *Vs = Ks + TB * LD, *Ps = Vs + TB * LD;
    const int tx = threadIdx.x % 16, ty = threadIdx.x / 16, h = blockIdx.y, b = blockIdx.z, H = gridDim.y;
    const int q0 = (gridDim.x - 1 - blockIdx.x) * TB;
    const long long head = (long long)b * S * ld + h * HD;
    load_tile(Qs, q + head, ld, q0, S);
    float m[4], l[4], acc[4][4];
    zero(acc);
#pragma unroll
    for (int i = 0; i < 4; ++i) { m[i] = -INFINITY; l[i] = 0.0f; }
    for (int k0 = 0; k0 <= q0; k0 += TB) {
        __syncthreads();   // the previous tile's readers are done (and Qs is visible)
        load_tile(Ks, k + head, ld, k0, S);
        load_tile(Vs, v + head, ld, k0, S);
        __syncthreads();
        float s[4][4];
        zero(s);
        tile_mma<false, false>(s, Qs, Ks);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int qi = q0 + ty * 4 + i;
            float mx = -INFINITY;
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const int kj = k0 + tx * 4 + j;
                s[i][j] = (kj > qi || kj >= S) ? -INFINITY : s[i][j] * scale_log2;
                mx = fmaxf(mx, s[i][j]);
            }
            const float m_new = fmaxf(m[i], row_max16(mx));
            const float m_use = m_new == -INFINITY ? 0.0f : m_new;
            const float corr = exp2f(m[i] - m_use);
            float rs = 0.0f;
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const float p = exp2f(s[i][j] - m_use);
                Ps[(ty * 4 + i) * LD + tx * 4 + j] = p;
                rs += p;
            }
            l[i] = l[i] * corr + row_sum16(rs);
            m[i] = m_new;
#pragma unroll
            for (int j = 0; j < 4; ++j) acc[i][j] *= corr;
        }
        __syncthreads();
        tile_mma<false, true>(acc, Ps, Vs);   // O[q][d] += P[q][k] V[k][d]
    }
    const long long orow = (long long)b * S * ldo + h * HD;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int qi = q0 + ty * 4 + i;
        if (qi >= S) continue;
        const float inv = 1.0f / l[i];
#pragma unroll
        for (int j = 0; j < 4; ++j) o[orow + (long long)qi * ldo + tx * 4 + j] = from_f32<T>(acc[i][j] * inv);
        if (tx == 0) lse[((long long)b * H + h) * S + qi] = m[i] + log2f(l[i]);
    }
}

// dot[(b * H + h) * S + s] = sum_d dO * O of each query row. Thread per row; grid ceil(B * H * S / 256).
template <typename T>
__global__ void __launch_bounds__(256) attn_bwd_dot(const T* __restrict__ o, const T* __restrict__ d_o, long long ldo,
                                                    float* __restrict__ dot, int S, int H, long long rows)
{
    const long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= rows) return;
    const long long s = idx % S, h = (idx / S) % H, b = idx / ((long long)S * H);
    const long long off = (b * S + s) * ldo + h * HD;
    float acc = 0.0f;
    for (int d = 0; d < HD; ++d) acc = fmaf(to_f32(o[off + d]), to_f32(d_o[off + d]), acc);
    dot[idx] = acc;
}

// Queries q0..q0+63, keys k0..k0+63: s = scaled scores (log2 units) -> p, and ds = p (dP - dot).
// Qs, dOs hold the query rows, Ks, Vs the key rows; ls, ds_rows the queries' lse and dot.
__device__ __forceinline__ void probs_and_grads(float (&p)[4][4], float (&ds)[4][4], const float* Qs,
                                                const float* dOs, const float* Ks, const float* Vs, const float* ls,
                                                const float* dots, int q0, int k0, int S, float scale_log2) {
    const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
    float dp[4][4];
    zero(p);
    zero(dp);
    tile_mma<false, false>(p, Qs, Ks);     // S[q][k]
    tile_mma<false, false>(dp, dOs, Vs);   // dP[q][k] = dO[q] . V[k]
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int qi = q0 + ty * 4 + i;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int kj = k0 + tx * 4 + j;
            p[i][j] = (qi < S && kj <= qi) ? exp2f(p[i][j] * scale_log2 - ls[ty * 4 + i]) : 0.0f;
            ds[i][j] = p[i][j] * (dp[i][j] - dots[ty * 4 + i]);
        }
    }
}

__device__ __forceinline__ void load_rows_stats(float* ls, float* dots, const float* __restrict__ lse,
                                                const float* __restrict__ dot, long long base, int q0, int S) {
    for (int r = threadIdx.x; r < TB; r += NT) {
        ls[r] = q0 + r < S ? lse[base + q0 + r] : 0.0f;
        dots[r] = q0 + r < S ? dot[base + q0 + r] : 0.0f;
    }
}

__device__ __forceinline__ void store_tile(float* tile, const float (&x)[4][4]) {
    const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) tile[(ty * 4 + i) * LD + tx * 4 + j] = x[i][j];
}

// dK and dV of keys k0 .. k0+63 (k0 = blockIdx.x * 64: the tiles with the most queries first), written
// to dk, dv with the layout and stride ld of k, v. Grid (ceil(S / 64), H, B).
template <typename T>
__global__ void __launch_bounds__(256) attn_bwd_dkdv(
    const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v, long long ld,
    const T* __restrict__ d_o, long long ldo, const float* __restrict__ lse, const float* __restrict__ dot,
    T* __restrict__ dk, T* __restrict__ dv, int S, float scale_log2, float scale)
{
    extern __shared__ __align__(16) float smem[];
    float *Ks = smem, *Vs = Ks + TB * LD, *Qs = Vs + TB * LD, *dOs = Qs + TB * LD, *Ps = dOs + TB * LD;
    float *ls = Ps + TB * LD, *dots = ls + TB;
    const int h = blockIdx.y, b = blockIdx.z, H = gridDim.y, k0 = blockIdx.x * TB;
    const long long head = (long long)b * S * ld + h * HD, ohead = (long long)b * S * ldo + h * HD;
    const long long stats = ((long long)b * H + h) * S;
    load_tile(Ks, k + head, ld, k0, S);
    load_tile(Vs, v + head, ld, k0, S);
    float dk_acc[4][4], dv_acc[4][4];
    zero(dk_acc);
    zero(dv_acc);
    for (int q0 = k0; q0 < S; q0 += TB) {
        __syncthreads();
        load_tile(Qs, q + head, ld, q0, S);
        load_tile(dOs, d_o + ohead, ldo, q0, S);
        load_rows_stats(ls, dots, lse, dot, stats, q0, S);
        __syncthreads();
        float p[4][4], ds[4][4];
        probs_and_grads(p, ds, Qs, dOs, Ks, Vs, ls, dots, q0, k0, S, scale_log2);
        store_tile(Ps, p);
        __syncthreads();
        tile_mma<true, true>(dv_acc, Ps, dOs);   // dV[k][d] += P[q][k] dO[q][d]
        __syncthreads();
        store_tile(Ps, ds);
        __syncthreads();
        tile_mma<true, true>(dk_acc, Ps, Qs);    // dK[k][d] += dS[q][k] Q[q][d]
    }
    store_rows(dk + head, ld, k0, S, dk_acc, scale);
    store_rows(dv + head, ld, k0, S, dv_acc, 1.0f);
}

// dQ of queries q0 .. q0+63 (the tiles with the most keys first), written to dq (q's layout).
template <typename T>
__global__ void __launch_bounds__(256) attn_bwd_dq(
    const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v, long long ld,
    const T* __restrict__ d_o, long long ldo, const float* __restrict__ lse, const float* __restrict__ dot,
    T* __restrict__ dq, int S, float scale_log2, float scale)
{
    extern __shared__ __align__(16) float smem[];
    float *Qs = smem, *dOs = Qs + TB * LD, *Ks = dOs + TB * LD, *Vs = Ks + TB * LD, *Ps = Vs + TB * LD;
    float *ls = Ps + TB * LD, *dots = ls + TB;
    const int h = blockIdx.y, b = blockIdx.z, H = gridDim.y, q0 = (gridDim.x - 1 - blockIdx.x) * TB;
    const long long head = (long long)b * S * ld + h * HD, ohead = (long long)b * S * ldo + h * HD;
    load_tile(Qs, q + head, ld, q0, S);
    load_tile(dOs, d_o + ohead, ldo, q0, S);
    load_rows_stats(ls, dots, lse, dot, ((long long)b * H + h) * S, q0, S);
    float dq_acc[4][4];
    zero(dq_acc);
    for (int k0 = 0; k0 <= q0; k0 += TB) {
        __syncthreads();
        load_tile(Ks, k + head, ld, k0, S);
        load_tile(Vs, v + head, ld, k0, S);
        __syncthreads();
        float p[4][4], ds[4][4];
        probs_and_grads(p, ds, Qs, dOs, Ks, Vs, ls, dots, q0, k0, S, scale_log2);
        store_tile(Ps, ds);
        __syncthreads();
        tile_mma<false, true>(dq_acc, Ps, Ks);   // dQ[q][d] += dS[q][k] K[k][d]
    }
    store_rows(dq + head, ld, q0, S, dq_acc, scale);
}

// ---- LayerNorm backward ----
// Row r of x (T), its gradient dy (fp32) and the residual stream's gradient dres (fp32, if has_res):
// dx = dres + rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dy * w. dx may be dres. stats[r] = (mean, rstd).
template <typename T>
__global__ void __launch_bounds__(1024) layernorm_bwd(const T* __restrict__ x, const T* __restrict__ w,
                                                      const float* __restrict__ dy, const float* dres, float* dx,
                                                      float* __restrict__ stats, int cols, float eps, int has_res)
{
    __shared__ float red[32];
    const long long row = blockIdx.x;
    const T* xr = x + row * cols;
    const float* dyr = dy + row * cols;
    float s = 0.0f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) s += to_f32(xr[c]);
    const float mean = block_reduce<false>(s, red) / cols;
    float sq = 0.0f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        const float d = to_f32(xr[c]) - mean;
        sq += d * d;
    }
    const float rstd = rsqrtf(block_reduce<false>(sq, red) / cols + eps);
    float sg = 0.0f, sgx = 0.0f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        const float g = dyr[c] * to_f32(w[c]);
        sg += g;
        sgx += g * (to_f32(xr[c]) - mean) * rstd;
    }
    const float mg = block_reduce<false>(sg, red) / cols;
    const float mgx = block_reduce<false>(sgx, red) / cols;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        const float xhat = (to_f32(xr[c]) - mean) * rstd;
        float v = rstd * (dyr[c] * to_f32(w[c]) - mg - xhat * mgx);
        if (has_res) v += dres[row * cols + c];
        dx[row * cols + c] = v;
    }
    if (threadIdx.x == 0) {
        stats[2 * row] = mean;
        stats[2 * row + 1] = rstd;
    }
}

// dw[c] = sum_r dy[r, c] xhat[r, c], db[c] = sum_r dy[r, c]; block (32, 8) owns 32 columns.
template <typename T>
__global__ void __launch_bounds__(256) layernorm_param_grads(const T* __restrict__ x, const float* __restrict__ dy,
                                                             const float* __restrict__ stats, float* __restrict__ dw,
                                                             float* __restrict__ db, int rows, int cols)
{
    __shared__ float sw[8][33], sb[8][33];
    const int c = blockIdx.x * 32 + threadIdx.x;
    float aw = 0.0f, ab = 0.0f;
    if (c < cols)
        for (int r = threadIdx.y; r < rows; r += 8) {
            const long long i = (long long)r * cols + c;
            const float g = dy[i];
            aw = fmaf(g, (to_f32(x[i]) - stats[2 * r]) * stats[2 * r + 1], aw);
            ab += g;
        }
    sw[threadIdx.y][threadIdx.x] = aw;
    sb[threadIdx.y][threadIdx.x] = ab;
    __syncthreads();
    if (threadIdx.y == 0 && c < cols) {
        for (int y = 1; y < 8; ++y) { aw += sw[y][threadIdx.x]; ab += sb[y][threadIdx.x]; }
        dw[c] = aw;
        db[c] = ab;
    }
}

// out[c] = sum_r x[r, c] in fp32; block (32, 8) owns 32 columns.
template <typename T>
__global__ void __launch_bounds__(256) colsum(const T* __restrict__ x, float* __restrict__ out, int rows, int cols)
{
    __shared__ float part[8][33];
    const int c = blockIdx.x * 32 + threadIdx.x;
    float a = 0.0f;
    if (c < cols)
        for (int r = threadIdx.y; r < rows; r += 8) a += to_f32(x[(long long)r * cols + c]);
    part[threadIdx.y][threadIdx.x] = a;
    __syncthreads();
    if (threadIdx.y == 0 && c < cols) {
        for (int y = 1; y < 8; ++y) a += part[y][threadIdx.x];
        out[c] = a;
    }
}

// ---- loss ----
// Logits of row r, column j live at x[((j / chunk) * rows + r) * chunk + j % chunk]; columns >= vocab are padding.
// loss[r] = logsumexp - x[target]; x becomes (softmax - onehot(target)) * scale (0 in the padding). Block per row.
template <typename T>
__global__ void __launch_bounds__(256) cross_entropy(T* __restrict__ x, const int* __restrict__ targets,
                                                     float* __restrict__ loss, int rows, int chunk, int chunks,
                                                     int vocab, float scale)
{
    __shared__ float red[32];
    const int r = blockIdx.x, target = targets[r];
    auto at = [&](int j) -> T& { return x[((long long)(j / chunk) * rows + r) * chunk + j % chunk]; };
    float m = -INFINITY, s = 0.0f;
    for (int j = threadIdx.x; j < vocab; j += blockDim.x) {
        const float v = to_f32(at(j));
        if (v > m) { s = s * expf(m - v) + 1.0f; m = v; }
        else s += expf(v - m);
    }
    const float m_all = block_reduce<true>(m, red);
    const float s_all = block_reduce<false>(m == -INFINITY ? 0.0f : s * expf(m - m_all), red);
    if (threadIdx.x == 0) loss[r] = logf(s_all) + m_all - to_f32(at(target));
    __syncthreads();   // the target's logit is read before it is overwritten
    const float inv = 1.0f / s_all;
    for (int j = threadIdx.x; j < chunk * chunks; j += blockDim.x) {
        const float p = j < vocab ? expf(to_f32(at(j)) - m_all) * inv : 0.0f;
        at(j) = from_f32<T>((p - (j == target ? 1.0f : 0.0f)) * scale);
    }
}

// ---- embedding gradients, split-K, copies ----
// out[ids[g] * d + i] = (accumulate ? out[...] : 0) + sum of dx[order[k] * d + i], k in [offsets[g], offsets[g+1]).
__global__ void __launch_bounds__(256) segment_sum_rows(const float* __restrict__ dx, const int* __restrict__ order,
                                                        const int* __restrict__ offsets, const int* __restrict__ ids,
                                                        float* __restrict__ out, int d, int accumulate)
{
    const int g = blockIdx.x, lo = offsets[g], hi = offsets[g + 1];
    float* o = out + (long long)ids[g] * d;
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
        float s = accumulate ? o[i] : 0.0f;
        for (int k = lo; k < hi; ++k) s += dx[(long long)order[k] * d + i];
        o[i] = s;
    }
}

// out[i] = sum_s ws[s * n + i] (+ bias[i % cols]) (+ residual[i]), i < n, the slices added in order.
template <typename T>
__global__ void __launch_bounds__(256) splitk_reduce(const float* __restrict__ ws, int splits, long long n, int cols,
                                                     const T* __restrict__ bias, const T* __restrict__ residual,
                                                     T* __restrict__ out, int has_bias, int has_residual)
{
    const long long first = (long long)blockIdx.x * blockDim.x * ITEMS + threadIdx.x;
#pragma unroll
    for (int k = 0; k < ITEMS; ++k) {
        const long long i = first + (long long)k * blockDim.x;
        if (i >= n) return;
        float v = ws[i];
        for (int s = 1; s < splits; ++s) v += ws[(long long)s * n + i];
        if (has_bias) v += to_f32(bias[i % cols]);
        if (has_residual) v += to_f32(residual[i]);
        out[i] = from_f32<T>(v);
    }
}

// dst (rows, width) = columns [0, width) of src (rows, >= width, row stride ld).
template <typename T>
__global__ void __launch_bounds__(256) copy_cols(const T* __restrict__ src, long long ld, T* __restrict__ dst,
                                                 int rows, int width)
{
    const long long first = (long long)blockIdx.x * blockDim.x * ITEMS + threadIdx.x, n = (long long)rows * width;
#pragma unroll
    for (int k = 0; k < ITEMS; ++k) {
        const long long i = first + (long long)k * blockDim.x;
        if (i >= n) return;
        dst[i] = src[(i / width) * ld + i % width];
    }
}

template <typename T>
__global__ void __launch_bounds__(256) cast_f32(const float* __restrict__ x, T* __restrict__ y, long long n)
{
    const long long first = (long long)blockIdx.x * blockDim.x * ITEMS + threadIdx.x;
#pragma unroll
    for (int k = 0; k < ITEMS; ++k) {
        const long long i = first + (long long)k * blockDim.x;
        if (i >= n) return;
        y[i] = from_f32<T>(x[i]);
    }
}
"""

_KINDS = (dtypes.FLOAT32, dtypes.BFLOAT16)
_TEMPLATES = ("attn_fwd_train", "attn_bwd_dot", "attn_bwd_dkdv", "attn_bwd_dq", "layernorm_bwd",
              "layernorm_param_grads", "colsum", "cross_entropy", "splitk_reduce", "copy_cols", "cast_f32")
TRAINING_SOURCE = KernelSource(
    key="training", code=_CODE, kind="module",
    name_expressions=(*(f"{k}<{dtypes.CTYPE[t]}>" for k in _TEMPLATES for t in _KINDS), "segment_sum_rows"),
)


def cupy_sources() -> list[KernelSource]:
    """Every CuPy kernel source of this module."""
    return [TRAINING_SOURCE]


def _fn(kernel: str, kind: str | None = None) -> Any:
    return module_function(TRAINING_SOURCE, kernel if kind is None else f"{kernel}<{dtypes.CTYPE[kind]}>")


def opt_in_shared(fn: Any, key: tuple, nbytes: int) -> Any:
    """Let module function ``fn`` use ``nbytes`` of dynamic shared memory (once per built function).

    A ``cupy.RawModule`` function has no ``max_dynamic_shared_size_bytes`` property, so the
    limit is raised with ``cuFuncSetAttribute``; objects without a device handle (the
    CPU emulator's functions) take the attribute itself.
    """
    def open_up() -> bool:
        if hasattr(fn, "ptr"):
            import cupy

            cupy.cuda.driver.funcSetAttribute(fn.ptr, 8, nbytes)   # CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
        else:
            fn.max_dynamic_shared_size_bytes = nbytes
        return True

    if nbytes > DEFAULT_MAX_DYNAMIC_SHMEM:
        cached(("shared", *key, nbytes), open_up)
    return fn


def _kind(x: Any, name: str) -> str:
    return dtypes.check_kind(x, name, _KINDS)


def _check(x: Any, name: str, shape: tuple[int, ...], dtype: Any, contiguous: bool = True) -> None:
    check_array(x, name, contiguous=contiguous)
    if tuple(x.shape) != shape:
        raise ValueError(f"{name} has shape {tuple(x.shape)}; expected {shape}")
    if x.dtype != np.dtype(dtype):
        raise TypeError(f"{name} has dtype {x.dtype.name}; expected {np.dtype(dtype).name}")


# ---- attention ----------------------------------------------------------------------------------------


def _check_attention(qkv: Any, batch: int, n_heads: int) -> tuple[str, int, int]:
    check_array(qkv, "qkv", ndim=2)
    kind = _kind(qkv, "qkv")
    tokens, width = qkv.shape
    if width != 3 * n_heads * HEAD_DIM or tokens % batch:
        raise ValueError(f"qkv has shape {tuple(qkv.shape)}; expected (batch * seq, 3 * {n_heads} * {HEAD_DIM})")
    return kind, tokens // batch, width


def attention_forward(qkv: Any, out: Any, lse: Any, *, batch: int, n_heads: int, stream: Any = None) -> Any:
    """Causal attention of the heads of a fused QKV projection, keeping the log-sum-exp.

    Parameters
    ----------
    qkv : cupy.ndarray
        (batch * seq, 3 * n_heads * 64), C-contiguous, float32 or bfloat16 (uint16 bits):
        per token the query heads, the key heads, the value heads.
    out : cupy.ndarray
        (batch * seq, n_heads * 64), qkv's dtype: the heads' outputs side by side.
    lse : cupy.ndarray
        (batch, n_heads, seq) float32: log2 of each query's sum of 2^(score * log2 e).
    batch, n_heads : int
    stream : cupy stream, object with ``__cuda_stream__``, or None

    Returns
    -------
    cupy.ndarray
        ``out``.
    """
    kind, S, width = _check_attention(qkv, batch, n_heads)
    _check(out, "out", (qkv.shape[0], width // 3), qkv.dtype)
    _check(lse, "lse", (batch, n_heads, S), np.float32)
    d = width // 3
    scale_log2 = math.log2(math.e) / math.sqrt(HEAD_DIM)
    fn = opt_in_shared(_fn("attn_fwd_train", kind), ("attn_fwd_train", kind), ATTN_FWD_SHARED)
    fn((cdiv(S, TILE), n_heads, batch), (THREADS,),
       (qkv, qkv[:, d:], qkv[:, 2 * d:], np.int64(width), out, np.int64(d), lse, np.int32(S), np.float32(scale_log2)),
       shared_mem=ATTN_FWD_SHARED, stream=as_cupy_stream(stream))
    return out


def attention_backward(qkv: Any, out: Any, lse: Any, grad_out: Any, dot: Any, grad_qkv: Any, *, batch: int,
                       n_heads: int, stream: Any = None) -> Any:
    """Gradients of `attention_forward` with respect to its queries, keys and values.

    Parameters
    ----------
    qkv, out, lse : cupy.ndarray
        The forward's input and outputs.
    grad_out : cupy.ndarray
        Gradient of the loss with respect to ``out``; out's shape and dtype.
    dot : cupy.ndarray
        (batch, n_heads, seq) float32 workspace (``rowsum(grad_out * out)``).
    grad_qkv : cupy.ndarray
        qkv's shape and dtype: the gradients, laid out as qkv.
    batch, n_heads : int
    stream : cupy stream, object with ``__cuda_stream__``, or None

    Returns
    -------
    cupy.ndarray
        ``grad_qkv``.
    """
    kind, S, width = _check_attention(qkv, batch, n_heads)
    d = width // 3
    for name, x in (("out", out), ("grad_out", grad_out)):
        _check(x, name, (qkv.shape[0], d), qkv.dtype)
    for name, x in (("lse", lse), ("dot", dot)):
        _check(x, name, (batch, n_heads, S), np.float32)
    _check(grad_qkv, "grad_qkv", tuple(qkv.shape), qkv.dtype)
    s = as_cupy_stream(stream)
    rows = batch * n_heads * S
    _fn("attn_bwd_dot", kind)((cdiv(rows, THREADS),), (THREADS,),
                              (out, grad_out, np.int64(d), dot, np.int32(S), np.int32(n_heads), np.int64(rows)),
                              stream=s)
    scale = 1.0 / math.sqrt(HEAD_DIM)
    q, k, v = qkv, qkv[:, d:], qkv[:, 2 * d:]
    common = (np.int64(width), grad_out, np.int64(d), lse, dot)
    tail = (np.int32(S), np.float32(scale * math.log2(math.e)), np.float32(scale))
    grid = (cdiv(S, TILE), n_heads, batch)
    fn = opt_in_shared(_fn("attn_bwd_dkdv", kind), ("attn_bwd_dkdv", kind), ATTN_BWD_SHARED)
    fn(grid, (THREADS,), (q, k, v, *common, grad_qkv[:, d:], grad_qkv[:, 2 * d:], *tail),
       shared_mem=ATTN_BWD_SHARED, stream=s)
    fn = opt_in_shared(_fn("attn_bwd_dq", kind), ("attn_bwd_dq", kind), ATTN_BWD_SHARED)
    fn(grid, (THREADS,), (q, k, v, *common, grad_qkv, *tail), shared_mem=ATTN_BWD_SHARED, stream=s)
    return grad_qkv


# ---- LayerNorm, loss, reductions ----------------------------------------------------------------------


def layernorm_backward(x: Any, weight: Any, grad_out: Any, grad_in: Any, stats: Any, grad_weight: Any,
                       grad_bias: Any, *, residual_grad: Any = None, eps: float = 1e-5, stream: Any = None) -> Any:
    """Gradients of ``layernorm(x, weight, bias)``, added to the residual stream's gradient.

    Parameters
    ----------
    x : cupy.ndarray
        (rows, cols) forward input, C-contiguous, float32 or bfloat16 (uint16 bits).
    weight : cupy.ndarray
        (cols,), x's dtype.
    grad_out : cupy.ndarray
        (rows, cols) float32: gradient with respect to the LayerNorm's output.
    grad_in : cupy.ndarray
        (rows, cols) float32: receives the gradient with respect to x, plus
        ``residual_grad`` (which it may be).
    stats : cupy.ndarray
        (rows, 2) float32 workspace (each row's mean and 1/std).
    grad_weight, grad_bias : cupy.ndarray
        (cols,) float32.
    residual_grad : cupy.ndarray, optional
        (rows, cols) float32 gradient reaching x along the residual path.
    eps : float
    stream : cupy stream, object with ``__cuda_stream__``, or None

    Returns
    -------
    cupy.ndarray
        ``grad_in``.
    """
    check_array(x, "x", ndim=2)
    kind = _kind(x, "x")
    rows, cols = x.shape
    _check(weight, "weight", (cols,), x.dtype)
    for name, a in (("grad_out", grad_out), ("grad_in", grad_in)) + ((("residual_grad", residual_grad),)
                                                                      if residual_grad is not None else ()):
        _check(a, name, (rows, cols), np.float32)
    _check(stats, "stats", (rows, 2), np.float32)
    for name, a in (("grad_weight", grad_weight), ("grad_bias", grad_bias)):
        _check(a, name, (cols,), np.float32)
    s = as_cupy_stream(stream)
    has_res = residual_grad is not None
    _fn("layernorm_bwd", kind)((rows,), (row_threads(cols),),
                               (x, weight, grad_out, residual_grad if has_res else grad_in, grad_in, stats,
                                np.int32(cols), np.float32(eps), np.int32(has_res)), stream=s)
    _fn("layernorm_param_grads", kind)((cdiv(cols, 32),), (32, 8),
                                       (x, grad_out, stats, grad_weight, grad_bias, np.int32(rows), np.int32(cols)),
                                       stream=s)
    return grad_in


def cross_entropy(logits: Any, targets: Any, loss: Any, *, vocab: int, scale: float, stream: Any = None) -> Any:
    """Softmax cross-entropy per row; the logits are replaced by their gradient.

    Parameters
    ----------
    logits : cupy.ndarray
        (chunks, rows, chunk), C-contiguous, float32 or bfloat16 (uint16 bits): column j of
        row r at ``[j // chunk, r, j % chunk]``; columns ``>= vocab`` are padding (ignored,
        their gradient 0). Overwritten with ``(softmax - onehot(target)) * scale``.
    targets : cupy.ndarray
        (rows,) int32, each below ``vocab``.
    loss : cupy.ndarray
        (rows,) float32: ``logsumexp - logit[target]``.
    vocab : int
    scale : float
        Gradient scale (``1 / rows`` for the mean loss).
    stream : cupy stream, object with ``__cuda_stream__``, or None

    Returns
    -------
    cupy.ndarray
        ``loss``.
    """
    check_array(logits, "logits", ndim=3)
    kind = _kind(logits, "logits")
    chunks, rows, chunk = logits.shape
    if not 1 <= vocab <= chunks * chunk:
        raise ValueError(f"vocab must be in 1..{chunks * chunk}, got {vocab}")
    _check(targets, "targets", (rows,), np.int32)
    _check(loss, "loss", (rows,), np.float32)
    _fn("cross_entropy", kind)((rows,), (row_threads(chunks * chunk),),
                               (logits, targets, loss, np.int32(rows), np.int32(chunk), np.int32(chunks),
                                np.int32(vocab), np.float32(scale)), stream=as_cupy_stream(stream))
    return loss


def colsum(x: Any, out: Any, *, stream: Any = None) -> Any:
    """``out = x.sum(axis=0)`` in fp32 (bias gradients).

    Parameters
    ----------
    x : cupy.ndarray
        (rows, cols), C-contiguous, float32 or bfloat16 (uint16 bits).
    out : cupy.ndarray
        (cols,) float32.
    stream : cupy stream, object with ``__cuda_stream__``, or None

    Returns
    -------
    cupy.ndarray
        ``out``.
    """
    check_array(x, "x", ndim=2)
    kind = _kind(x, "x")
    _check(out, "out", (x.shape[1],), np.float32)
    _fn("colsum", kind)((cdiv(x.shape[1], 32),), (32, 8), (x, out, np.int32(x.shape[0]), np.int32(x.shape[1])),
                        stream=as_cupy_stream(stream))
    return out


def segment_sum_rows(grad: Any, groups: tuple[Any, Any, Any], out: Any, *, accumulate: bool,
                     stream: Any = None) -> Any:
    """Embedding gradient: ``out[ids[g]] (+)= sum of the rows of grad in group g``, without atomics.

    Parameters
    ----------
    grad : cupy.ndarray
        (tokens, d) float32 gradient with respect to the embedding's output.
    groups : tuple of cupy.ndarray
        ``(order, offsets, ids)`` int32 from `embedding_groups`: the rows of group g are
        ``order[offsets[g]:offsets[g + 1]]``, its table row ``ids[g]``.
    out : cupy.ndarray
        (table rows, d) float32.
    accumulate : bool
        Add to ``out`` (else overwrite the groups' rows; other rows are left alone).
    stream : cupy stream, object with ``__cuda_stream__``, or None

    Returns
    -------
    cupy.ndarray
        ``out``.
    """
    check_array(grad, "grad", ndim=2, dtypes=(np.float32,))
    check_array(out, "out", ndim=2, dtypes=(np.float32,))
    order, offsets, ids = groups
    if out.shape[1] != grad.shape[1] or order.shape != (grad.shape[0],) or offsets.shape != (ids.shape[0] + 1,):
        raise ValueError("grad, out and the groups do not match")
    _fn("segment_sum_rows")((ids.shape[0],), (min(THREADS, 32 * cdiv(out.shape[1], 32)),),
                            (grad, order, offsets, ids, out, np.int32(out.shape[1]), np.int32(accumulate)),
                            stream=as_cupy_stream(stream))
    return out


def embedding_groups(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(order, offsets, unique ids)`` int32 of host ids for `segment_sum_rows` (rows in order)."""
    ids = np.asarray(ids).reshape(-1)
    order = np.argsort(ids, kind="stable")
    unique, counts = np.unique(ids, return_counts=True)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    return order.astype(np.int32), offsets.astype(np.int32), unique.astype(np.int32)


# ---- split GEMMs, copies ----------------------------------------------------------------------------


def splitk_reduce(partials: Any, out: Any, *, bias: Any = None, residual: Any = None, stream: Any = None) -> Any:
    """``out = partials[0] + partials[1] + ... (+ bias) (+ residual)``, the slices added in order.

    Parameters
    ----------
    partials : cupy.ndarray
        (splits, rows, cols) float32: the partial products of a GEMM split over K.
    out : cupy.ndarray
        (rows, cols), float32 or bfloat16 (uint16 bits), C-contiguous.
    bias : cupy.ndarray, optional
        (cols,), out's dtype.
    residual : cupy.ndarray, optional
        out's shape and dtype.
    stream : cupy stream, object with ``__cuda_stream__``, or None

    Returns
    -------
    cupy.ndarray
        ``out``.
    """
    check_array(partials, "partials", ndim=3, dtypes=(np.float32,))
    check_array(out, "out", ndim=2)
    kind = _kind(out, "out")
    splits, rows, cols = partials.shape
    if tuple(out.shape) != (rows, cols):
        raise ValueError(f"out has shape {tuple(out.shape)}; expected ({rows}, {cols})")
    if bias is not None:
        _check(bias, "bias", (cols,), out.dtype)
    if residual is not None:
        _check(residual, "residual", (rows, cols), out.dtype)
    n = rows * cols
    _fn("splitk_reduce", kind)((cdiv(n, THREADS * ITEMS),), (THREADS,),
                               (partials, np.int32(splits), np.int64(n), np.int32(cols),
                                out if bias is None else bias, out if residual is None else residual, out,
                                np.int32(bias is not None), np.int32(residual is not None)),
                               stream=as_cupy_stream(stream))
    return out


def copy_cols(src: Any, out: Any, *, stream: Any = None) -> Any:
    """``out = src`` where ``src`` is a column slice (rows with a stride) of a row-major matrix.

    Parameters
    ----------
    src : cupy.ndarray
        (rows, width) view with contiguous rows, float32 or bfloat16 (uint16 bits).
    out : cupy.ndarray
        (rows, width), C-contiguous, src's dtype.
    stream : cupy stream, object with ``__cuda_stream__``, or None

    Returns
    -------
    cupy.ndarray
        ``out``.
    """
    check_array(src, "src", ndim=2, contiguous=False)
    kind = _kind(src, "src")
    if src.strides[1] != src.dtype.itemsize:
        raise ValueError(f"src must have contiguous rows, got strides {src.strides}")
    _check(out, "out", tuple(src.shape), src.dtype)
    rows, width = src.shape
    _fn("copy_cols", kind)((cdiv(rows * width, THREADS * ITEMS),), (THREADS,),
                           (src, np.int64(src.strides[0] // src.dtype.itemsize), out, np.int32(rows),
                            np.int32(width)), stream=as_cupy_stream(stream))
    return out


def cast_f32(x: Any, out: Any, *, stream: Any = None) -> Any:
    """``out = x`` rounded to out's storage type (fp32 master weights to their compute copy).

    Parameters
    ----------
    x : cupy.ndarray
        float32, C-contiguous.
    out : cupy.ndarray
        x's size, float32 or bfloat16 (uint16 bits), C-contiguous.
    stream : cupy stream, object with ``__cuda_stream__``, or None

    Returns
    -------
    cupy.ndarray
        ``out``.
    """
    check_array(x, "x", dtypes=(np.float32,))
    check_array(out, "out")
    kind = _kind(out, "out")
    if out.size != x.size:
        raise ValueError(f"out has {out.size} elements; x has {x.size}")
    n = int(x.size)
    _fn("cast_f32", kind)((cdiv(n, THREADS * ITEMS),), (THREADS,), (x, out, np.int64(n)),
                          stream=as_cupy_stream(stream))
    return out


# ---- float64 references -------------------------------------------------------------------------------


def reference_attention_backward(q: np.ndarray, k: np.ndarray, v: np.ndarray,
                                 grad_out: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """float64 causal attention (B, H, S, D) and its gradients: ``(out, dq, dk, dv)``."""
    q64, k64, v64, g64 = (dtypes.to_float64(t) for t in (q, k, v, grad_out))
    S, D = q64.shape[-2:]
    scores = np.einsum("bhqd,bhkd->bhqk", q64, k64) / math.sqrt(D)
    scores = np.where(np.triu(np.ones((S, S), bool), 1), -np.inf, scores)
    p = np.exp(scores - scores.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    out = p @ v64
    dp = g64 @ v64.swapaxes(-1, -2)
    ds = p * (dp - (dp * p).sum(-1, keepdims=True)) / math.sqrt(D)
    return out, ds @ k64, ds.swapaxes(-1, -2) @ q64, p.swapaxes(-1, -2) @ g64


def reference_layernorm_backward(x: np.ndarray, weight: np.ndarray,
                                 grad_out: np.ndarray, eps: float = 1e-5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """float64 ``(dx, dweight, dbias)`` of a LayerNorm over the last axis of (rows, cols)."""
    x64, w64, g64 = (dtypes.to_float64(t) for t in (x, weight, grad_out))
    mean = x64.mean(-1, keepdims=True)
    rstd = 1.0 / np.sqrt(((x64 - mean) ** 2).mean(-1, keepdims=True) + eps)
    xhat = (x64 - mean) * rstd
    g = g64 * w64
    dx = rstd * (g - g.mean(-1, keepdims=True) - xhat * (g * xhat).mean(-1, keepdims=True))
    return dx, (g64 * xhat).sum(0), g64.sum(0)


def reference_cross_entropy(logits: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float64 per-row loss and gradient ``softmax - onehot`` of (rows, vocab) logits."""
    x = dtypes.to_float64(logits)
    m = x.max(-1, keepdims=True)
    lse = np.log(np.exp(x - m).sum(-1, keepdims=True)) + m
    rows = np.arange(x.shape[0])
    grad = np.exp(x - lse)
    grad[rows, targets] -= 1.0
    return lse[:, 0] - x[rows, targets], grad
