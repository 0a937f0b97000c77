"""Matrix multiplication: fp32 SIMT SGEMM, fp16/bf16 tensor-core GEMM (WMMA), a Numba
SGEMM, and a tiled transpose.

- ``sgemm_<BM>x<BN>_<ta><tb>`` (``cupy.RawKernel``, one per tile and transpose variant):
  ``C = alpha * op(A) @ op(B)`` in fp32. Shared-memory tiles of BMxBK and BKxBN, a
  register block of TMxTN per thread (128x128 tiles with 8x8 per thread for large
  problems, 64x64 with 4x4 when fewer tiles would leave SMs idle), global loads for the
  next k-tile prefetched into registers while the current one is multiplied. Transposed
  operands are read in their stored layout (coalesced), so ``A.T @ B`` and ``A @ B.T``
  cost no extra pass. 2-D grid ``(ceil(N/BN), ceil(M/BM))``, 256 threads.
- ``wmma_gemm<Tin, Tout>`` (``cupy.RawModule`` with name expressions): fp16 or bf16
  inputs, fp32 accumulation on tensor cores through ``nvcuda::wmma`` (16x16x16), fp16,
  bf16 or fp32 output. 128x128x32 block tiles, 8 warps of 32x64, two shared-memory
  stages filled with ``cp.async`` (zero-filled at the edges) when rows are 16-byte
  aligned, plain loads otherwise; 37,888 bytes of *dynamic* shared memory.
- ``splitk_sum`` (``cupy.RawKernel``): the second pass of a split-K SGEMM
  (`gemm` with ``split_k``): ``out = alpha * (P0 + P1 + ...)`` over the slices' partial
  products, always summed in slice order, so the result does not depend on which slice
  finished first (deterministic, unlike atomics).
- ``transpose_<b>`` (``cupy.RawKernel``): 32x32 shared-memory tiles, 32x8 threads.
- `gemm_numba`: a Numba ``@cuda.jit`` SGEMM, 64x64 tiles in ``cuda.shared.array``, 4x4
  per thread.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kernels import _compile, dtypes
from kernels._compile import (
    CONVERT_SNIPPET,
    DEFAULT_OPTIONS,
    KernelSource,
    as_cupy_stream,
    cdiv,
    check_array,
    check_out,
    empty,
    module_function,
    numba_kernel,
    raw_kernel,
    toolkit_include_options,
)

# ---- fp32 SGEMM (RawKernel per tile config and transpose flags) ---------------------------

#: name -> (BM, BN, BK, TM, TN, min blocks per SM for __launch_bounds__)
SGEMM_TILES = {
    "128x128": (128, 128, 8, 8, 8, 2),
    "64x64": (64, 64, 16, 4, 4, 2),
}
SGEMM_THREADS = 256

_SGEMM_BODY = r"""
// C[M,N] = alpha * op(A)[M,K] @ op(B)[K,N]. op(A) = A (row-major M x K, lda >= K) or
// A^T (A stored K x M, lda >= M); op(B) = B (K x N) or B^T (B stored N x K).
template <int BM, int BN, int BK, int TM, int TN, bool TA, bool TB>
__device__ __forceinline__ void sgemm_block(
    const float* __restrict__ A, const float* __restrict__ B, float* __restrict__ C,
    int M, int N, int K, long long lda, long long ldb, long long ldc, float alpha, int vec_store)
{
    constexpr int TX = BN / TN, TY = BM / TM, NT = TX * TY;
    constexpr int APT = BM * BK / NT, BPT = BK * BN / NT;   // elements each thread loads per tile
    constexpr int GM = TM / 4, GN = TN / 4;                 // 4-wide row / column groups per thread
    static_assert(TM % 4 == 0 && TN % 4 == 0, "register blocks are groups of 4");
    static_assert((BM * BK) % NT == 0 && (BK * BN) % NT == 0, "tiles split evenly over the threads");

    __shared__ __align__(16) float As[BK][BM + 4];   // op(A) tile, k-major: As[k][m]
    __shared__ __align__(16) float Bs[BK][BN + 4];   // op(B) tile: Bs[k][n]

    const int tid = threadIdx.x;
    const int tx = tid % TX, ty = tid / TX;
    const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;

    float acc[TM][TN];
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] = 0.0f;

    float ra[APT], rb[BPT];

    // Global -> registers. Consecutive threads walk the stored contiguous dimension.
    auto load_global = [&](int k0) {
#pragma unroll
        for (int e = 0; e < APT; ++e) {
            const int idx = tid + e * NT;
            int m, k;
            if (TA) { m = idx % BM; k = idx / BM; } else { k = idx % BK; m = idx / BK; }
            const int gm = m0 + m, gk = k0 + k;
            float v = 0.0f;
            if (gm < M && gk < K) v = TA ? A[(long long)gk * lda + gm] : A[(long long)gm * lda + gk];
            ra[e] = v;
        }
#pragma unroll
        for (int e = 0; e < BPT; ++e) {
            const int idx = tid + e * NT;
            int n, k;
            if (TB) { k = idx % BK; n = idx / BK; } else { n = idx % BN; k = idx / BN; }
            const int gn = n0 + n, gk = k0 + k;
            float v = 0.0f;
            if (gn < N && gk < K) v = TB ? B[(long long)gn * ldb + gk] : B[(long long)gk * ldb + gn];
            rb[e] = v;
        }
    };
    auto store_shared = [&]() {
#pragma unroll
        for (int e = 0; e < APT; ++e) {
            const int idx = tid + e * NT;
            int m, k;
            if (TA) { m = idx % BM; k = idx / BM; } else { k = idx % BK; m = idx / BK; }
            As[k][m] = ra[e];
        }
#pragma unroll
        for (int e = 0; e < BPT; ++e) {
            const int idx = tid + e * NT;
            int n, k;
            if (TB) { k = idx % BK; n = idx / BK; } else { n = idx % BN; k = idx / BN; }
            Bs[k][n] = rb[e];
        }
    };

    const int ktiles = (K + BK - 1) / BK;
    load_global(0);
    store_shared();
    __syncthreads();
    for (int t = 0; t < ktiles; ++t) {
        if (t + 1 < ktiles) load_global((t + 1) * BK);   // in flight while this tile is multiplied
#pragma unroll
        for (int k = 0; k < BK; ++k) {
            float a[TM], b[TN];
#pragma unroll
            for (int g = 0; g < GM; ++g) {
                const float4 v = *reinterpret_cast<const float4*>(&As[k][g * TY * 4 + ty * 4]);
                a[g * 4 + 0] = v.x; a[g * 4 + 1] = v.y; a[g * 4 + 2] = v.z; a[g * 4 + 3] = v.w;
            }
#pragma unroll
            for (int g = 0; g < GN; ++g) {
                const float4 v = *reinterpret_cast<const float4*>(&Bs[k][g * TX * 4 + tx * 4]);
                b[g * 4 + 0] = v.x; b[g * 4 + 1] = v.y; b[g * 4 + 2] = v.z; b[g * 4 + 3] = v.w;
            }
#pragma unroll
            for (int i = 0; i < TM; ++i)
#pragma unroll
                for (int j = 0; j < TN; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
        }
        __syncthreads();
        if (t + 1 < ktiles) {
            store_shared();
            __syncthreads();
        }
    }

    // Thread (ty, tx) owns rows g*TY*4 + ty*4 + {0..3} and columns g*TX*4 + tx*4 + {0..3}.
#pragma unroll
    for (int i = 0; i < TM; ++i) {
        const int gm = m0 + (i / 4) * TY * 4 + ty * 4 + (i % 4);
        if (gm >= M) continue;
        float* crow = C + (long long)gm * ldc;
#pragma unroll
        for (int g = 0; g < GN; ++g) {
            const int gn = n0 + g * TX * 4 + tx * 4;
            if (vec_store && gn + 3 < N) {
                *reinterpret_cast<float4*>(crow + gn) = make_float4(
                    alpha * acc[i][g * 4 + 0], alpha * acc[i][g * 4 + 1],
                    alpha * acc[i][g * 4 + 2], alpha * acc[i][g * 4 + 3]);
            } else {
#pragma unroll
                for (int j = 0; j < 4; ++j)
                    if (gn + j < N) crow[gn + j] = alpha * acc[i][g * 4 + j];
            }
        }
    }
}
"""

_SGEMM_ENTRY = r"""
extern "C" __global__ void __launch_bounds__({threads}, {min_blocks})
{name}(const float* __restrict__ A, const float* __restrict__ B, float* __restrict__ C,
       int M, int N, int K, long long lda, long long ldb, long long ldc, float alpha, int vec_store)
{{
    sgemm_block<{bm}, {bn}, {bk}, {tm}, {tn}, {ta}, {tb}>(A, B, C, M, N, K, lda, ldb, ldc, alpha, vec_store);
}}
"""


def sgemm_source(tile: str, trans_a: bool, trans_b: bool) -> KernelSource:
    """The RawKernel source of one SGEMM variant."""
    bm, bn, bk, tm, tn, min_blocks = SGEMM_TILES[tile]
    name = f"sgemm_{tile}_{'t' if trans_a else 'n'}{'t' if trans_b else 'n'}"
    entry = _SGEMM_ENTRY.format(threads=SGEMM_THREADS, min_blocks=min_blocks, name=name, bm=bm, bn=bn, bk=bk,
                                tm=tm, tn=tn, ta=str(trans_a).lower(), tb=str(trans_b).lower())
    return KernelSource(key=name, code=_SGEMM_BODY + entry, kind="kernel", name=name)


_SPLITK_SUM_CODE = r"""
// out[i] = alpha * (ws[0][i] + ws[1][i] + ...), i < mn; ws holds `splits` partial products of mn
// floats each. The slices are added in order: the same bits whatever the launch's split into blocks.
extern "C" __global__ void __launch_bounds__(256) splitk_sum(const float* __restrict__ ws, float* __restrict__ out,
                                                             long long mn, int splits, float alpha)
{
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= mn) return;
    float sum = ws[i];
    for (int s = 1; s < splits; ++s) sum += ws[(long long)s * mn + i];
    out[i] = alpha * sum;
}
"""
SPLITK_SUM_SOURCE = KernelSource(key="splitk_sum", code=_SPLITK_SUM_CODE, kind="kernel", name="splitk_sum")
SPLITK_SUM_THREADS = 256


# ---- fp16 / bf16 tensor-core GEMM (RawModule, templated) ----------------------------------

WMMA_BM, WMMA_BN, WMMA_BK = 128, 128, 32
WMMA_THREADS = 256
WMMA_A_LD, WMMA_B_LD = WMMA_BK + 8, WMMA_BN + 8   # padded rows (elements) against bank conflicts
#: Dynamic shared memory: two stages of the A and B tiles (2-byte elements).
WMMA_SHARED_BYTES = 2 * (WMMA_BM * WMMA_A_LD + WMMA_BK * WMMA_B_LD) * 2

_WMMA_CODE = CONVERT_SNIPPET + r"""
#include <mma.h>
using namespace nvcuda;

constexpr int BM = 128, BN = 128, BK = 32;
constexpr int A_LD = BK + 8, B_LD = BN + 8;
constexpr int A_STAGE = BM * A_LD, B_STAGE = BK * B_LD;   // elements per stage
constexpr int NT = 256;

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

// Stage the A tile (BM x BK of row-major M x K) and the B tile (BK x BN of row-major K x N).
template <typename T>
__device__ __forceinline__ void load_stage(const T* __restrict__ A, const T* __restrict__ B, T* As, T* Bs,
                                           int M, int N, int K, int m0, int n0, int k0, int vec)
{
    const int tid = threadIdx.x;
    if (vec) {   // K % 8 == 0, N % 8 == 0, 16-byte aligned bases: 8-element chunks are all-in or all-out
#pragma unroll
        for (int e = 0; e < (BM * BK / 8) / NT; ++e) {
            const int c = tid + e * NT, row = c / (BK / 8), col = (c % (BK / 8)) * 8;
            const bool ok = (m0 + row < M) && (k0 + col < K);
            const T* src = ok ? A + (long long)(m0 + row) * K + k0 + col : A;
            cp_async16(As + row * A_LD + col, src, ok);
        }
#pragma unroll
        for (int e = 0; e < (BK * BN / 8) / NT; ++e) {
            const int c = tid + e * NT, row = c / (BN / 8), col = (c % (BN / 8)) * 8;
            const bool ok = (k0 + row < K) && (n0 + col < N);
            const T* src = ok ? B + (long long)(k0 + row) * N + n0 + col : B;
            cp_async16(Bs + row * B_LD + col, src, ok);
        }
    } else {     // any shape: element loads with bounds checks
        const T zero = from_f32<T>(0.0f);
        for (int idx = tid; idx < BM * BK; idx += NT) {
            const int row = idx / BK, col = idx % BK;
            const int gm = m0 + row, gk = k0 + col;
            As[row * A_LD + col] = (gm < M && gk < K) ? A[(long long)gm * K + gk] : zero;
        }
        for (int idx = tid; idx < BK * BN; idx += NT) {
            const int row = idx / BN, col = idx % BN;
            const int gk = k0 + row, gn = n0 + col;
            Bs[row * B_LD + col] = (gk < K && gn < N) ? B[(long long)gk * N + gn] : zero;
        }
    }
}

// C[M,N] = alpha * A[M,K] @ B[K,N]; all row-major and contiguous. 2-D grid (ceil(N/128), ceil(M/128)).
template <typename Tin, typename Tout>
__global__ void __launch_bounds__(256, 2) wmma_gemm(const Tin* __restrict__ A, const Tin* __restrict__ B,
                                                  Tout* __restrict__ C, int M, int N, int K, float alpha, int vec)
{
    extern __shared__ __align__(128) unsigned char smem_raw[];
    Tin* As = reinterpret_cast<Tin*>(smem_raw);   // [2][BM][A_LD]
    Tin* Bs = As + 2 * A_STAGE;                    // [2][BK][B_LD]

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int wm = warp / 2, wn = warp % 2;        // warp tile: rows wm*32 .. +32, cols wn*64 .. +64
    const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;

    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][4];
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) wmma::fill_fragment(acc[i][j], 0.0f);

    const int ktiles = (K + BK - 1) / BK;
    load_stage(A, B, As, Bs, M, N, K, m0, n0, 0, vec);
    cp_async_commit();
    for (int t = 0; t < ktiles; ++t) {
        const int s = t & 1;
        if (t + 1 < ktiles)   // the other stage was released by the barrier ending iteration t-1
            load_stage(A, B, As + (s ^ 1) * A_STAGE, Bs + (s ^ 1) * B_STAGE, M, N, K, m0, n0, (t + 1) * BK, vec);
        cp_async_commit();
        cp_async_wait_1();    // every group but the newest is complete: stage s has landed
        __syncthreads();
        const Tin* as = As + s * A_STAGE;
        const Tin* bs = Bs + s * B_STAGE;
#pragma unroll
        for (int kk = 0; kk < BK; kk += 16) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, Tin, wmma::row_major> fa[2];
            wmma::fragment<wmma::matrix_b, 16, 16, 16, Tin, wmma::row_major> fb[4];
#pragma unroll
            for (int i = 0; i < 2; ++i) wmma::load_matrix_sync(fa[i], as + (wm * 32 + i * 16) * A_LD + kk, A_LD);
#pragma unroll
            for (int j = 0; j < 4; ++j) wmma::load_matrix_sync(fb[j], bs + kk * B_LD + wn * 64 + j * 16, B_LD);
#pragma unroll
            for (int i = 0; i < 2; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
        }
        __syncthreads();
    }

    // Epilogue: each warp stages one 16x16 fragment at a time in its own 1 KiB of shared memory.
    float* stage = reinterpret_cast<float*>(smem_raw) + warp * 256;
    const int r = lane / 2, c0 = (lane % 2) * 8;
#pragma unroll
    for (int i = 0; i < 2; ++i) {
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            wmma::store_matrix_sync(stage, acc[i][j], 16, wmma::mem_row_major);
            __syncwarp();
            const int gm = m0 + wm * 32 + i * 16 + r;
            const int gn = n0 + wn * 64 + j * 16 + c0;
            if (gm < M) {
                Tout* crow = C + (long long)gm * N;
#pragma unroll
                for (int e = 0; e < 8; ++e)
                    if (gn + e < N) crow[gn + e] = from_f32<Tout>(alpha * stage[r * 16 + c0 + e]);
            }
            __syncwarp();
        }
    }
}
"""

_WMMA_INSTANCES = {
    ("float16", "float16"): "wmma_gemm<__half, __half>",
    ("float16", "float32"): "wmma_gemm<__half, float>",
    ("bfloat16", "bfloat16"): "wmma_gemm<__nv_bfloat16, __nv_bfloat16>",
    ("bfloat16", "float32"): "wmma_gemm<__nv_bfloat16, float>",
}
WMMA_SOURCE = KernelSource(key="wmma_gemm", code=_WMMA_CODE, kind="module",
                           name_expressions=tuple(_WMMA_INSTANCES.values()),
                           options=DEFAULT_OPTIONS + toolkit_include_options())

# ---- transpose (RawKernel per element size) -----------------------------------------------

_TRANSPOSE_CODE = r"""
// out[C, R] = in[R, C]^T through a 32x32 shared tile; block (32, 8), grid (ceil(C/32), ceil(R/32)).
extern "C" __global__ void __launch_bounds__(256) {name}(const {t}* __restrict__ in, {t}* __restrict__ out,
                                                         int R, int C)
{{
    __shared__ {t} tile[32][33];
    const int c = blockIdx.x * 32 + threadIdx.x;
    const int r0 = blockIdx.y * 32;
#pragma unroll
    for (int k = threadIdx.y; k < 32; k += 8)
        if (r0 + k < R && c < C) tile[k][threadIdx.x] = in[(long long)(r0 + k) * C + c];
    __syncthreads();
    const int oc = r0 + threadIdx.x;                 // column of out = row of in
    const int orow0 = blockIdx.x * 32;
#pragma unroll
    for (int k = threadIdx.y; k < 32; k += 8)
        if (orow0 + k < C && oc < R) out[(long long)(orow0 + k) * R + oc] = tile[threadIdx.x][k];
}}
"""
_TRANSPOSE_TYPES = {4: "unsigned int", 2: "unsigned short"}


def transpose_source(itemsize: int) -> KernelSource:
    """The RawKernel source of the transpose of ``itemsize``-byte elements."""
    name = f"transpose_{itemsize * 8}b"
    return KernelSource(key=name, code=_TRANSPOSE_CODE.format(name=name, t=_TRANSPOSE_TYPES[itemsize]),
                        kind="kernel", name=name)


def cupy_sources() -> list[KernelSource]:
    """Every CuPy kernel source of this module."""
    srcs = [sgemm_source(tile, ta, tb) for tile in SGEMM_TILES for ta in (False, True) for tb in (False, True)]
    return [*srcs, SPLITK_SUM_SOURCE, WMMA_SOURCE, *(transpose_source(s) for s in _TRANSPOSE_TYPES)]


NUMBA_TILE = 64   # kernels.numba_kernels.sgemm: 64x64 tiles, block (16, 16)

# ---- public ops ---------------------------------------------------------------------------


def _logical_shape(x: Any, trans: bool) -> tuple[int, int]:
    return (x.shape[1], x.shape[0]) if trans else (x.shape[0], x.shape[1])


def check_gemm_args(a: Any, b: Any, out: Any, trans_a: bool, trans_b: bool) -> tuple[int, int, int, str, str]:
    """Validate `gemm` arguments; returns ``(M, N, K, input kind, output kind)``."""
    check_array(a, "a", ndim=2)
    check_array(b, "b", ndim=2)
    ka = dtypes.check_kind(a, "a")
    kb = dtypes.check_kind(b, "b")
    if ka != kb:
        raise TypeError(f"a ({ka}) and b ({kb}) must have the same dtype")
    M, K = _logical_shape(a, trans_a)
    Kb, N = _logical_shape(b, trans_b)
    if K != Kb:
        raise ValueError(f"inner dimensions differ: op(a) is {M}x{K}, op(b) is {Kb}x{N}")
    out_kind = ka
    if out is not None:
        check_array(out, "out", ndim=2)
        out_kind = dtypes.check_kind(out, "out")
        if ka == dtypes.FLOAT32 and out_kind != dtypes.FLOAT32:
            raise TypeError(f"out must be float32 for float32 inputs, got {out.dtype.name}")
        if ka != dtypes.FLOAT32 and out_kind not in (ka, dtypes.FLOAT32):
            raise TypeError(f"out must be {ka} or float32 for {ka} inputs, got {out.dtype.name}")
        check_out(out, (M, N), out.dtype)
    if max(cdiv(M, 64), cdiv(N, 64)) > 65535 or M >= 2**31 or N >= 2**31 or K >= 2**31:
        raise ValueError(f"gemm of {M}x{N}x{K} is too large for the 2-D grid")
    return M, N, K, ka, out_kind


def gemm(
    a: Any,
    b: Any,
    out: Any = None,
    *,
    trans_a: bool = False,
    trans_b: bool = False,
    alpha: float = 1.0,
    tile: str | None = None,
    split_k: int = 1,
    stream: Any = None,
) -> Any:
    """Matrix product ``out = alpha * op(a) @ op(b)`` on the GPU.

    float32 inputs run the SIMT SGEMM (transposes read in place); float16 and bfloat16
    (``uint16`` bits) inputs run the tensor-core WMMA kernel with fp32 accumulation
    (transposed operands are first transposed by `transpose`).

    Parameters
    ----------
    a, b : cupy.ndarray
        2-D, C-contiguous, same dtype (float32, float16, or bfloat16 as uint16).
    out : cupy.ndarray, optional
        ``(M, N)`` result; float32, or the input dtype for 16-bit inputs. Allocated
        (input dtype) when None.
    trans_a, trans_b : bool
        Use ``a.T`` / ``b.T`` as the operand.
    alpha : float
        Scale of the product.
    tile : str, optional
        float32 only: force the SGEMM tile (``"128x128"`` or ``"64x64"``); by default
        `sgemm_tile_for` picks it from the problem size and the SM count.
    split_k : int
        float32 only: split the reduction into this many contiguous K-slices, as even
        as can be. Each slice runs as its own SGEMM into a workspace of
        ``split_k x M x N`` floats, then ``splitk_sum`` adds the slices in order, so the
        result is deterministic (it differs from ``split_k=1`` by rounding only). Every
        block then runs over a ``split_k``-th of K: shorter blocks, which a GPU cannot
        preempt, give back their SMs sooner to a scheduler such as lithos', at the cost
        of the workspace's extra memory traffic.
    stream : cupy stream, object with ``__cuda_stream__``, or None
        Where the kernels run (None: CuPy's current stream).

    Returns
    -------
    cupy.ndarray
        ``out``.
    """
    M, N, K, kind, out_kind = check_gemm_args(a, b, out, trans_a, trans_b)
    if tile is not None and (tile not in SGEMM_TILES or kind != dtypes.FLOAT32):
        raise ValueError(f"tile must be None or one of {sorted(SGEMM_TILES)} (float32 only), got {tile!r}")
    if isinstance(split_k, bool) or not isinstance(split_k, (int, np.integer)) or not 1 <= split_k <= max(K, 1):
        raise ValueError(f"split_k must be an int from 1 to K ({K}), got {split_k!r}")
    if split_k > 1 and kind != dtypes.FLOAT32:
        raise ValueError(f"split_k is float32 only, got {kind} inputs with split_k={split_k}")
    s = as_cupy_stream(stream)
    if out is None:
        out = empty((M, N), dtypes.numpy_dtype(out_kind), s)
    if kind == dtypes.FLOAT32:
        if split_k > 1:
            _launch_split_k(a, b, out, M, N, K, trans_a, trans_b, alpha, tile, int(split_k), s)
        else:
            _launch_sgemm(a, b, out, M, N, K, trans_a, trans_b, alpha, tile, s, a.shape[1], b.shape[1])
        return out
    if trans_a:
        a = transpose(a, stream=s)
    if trans_b:
        b = transpose(b, stream=s)
    vec = int(K % 8 == 0 and N % 8 == 0 and a.data.ptr % 16 == 0 and b.data.ptr % 16 == 0)
    fn = module_function(WMMA_SOURCE, _WMMA_INSTANCES[(kind, out_kind)])
    fn((cdiv(N, WMMA_BN), cdiv(M, WMMA_BM)), (WMMA_THREADS,),
       (a, b, out, np.int32(M), np.int32(N), np.int32(K), np.float32(alpha), np.int32(vec)),
       shared_mem=WMMA_SHARED_BYTES, stream=s)
    return out


def sgemm_tile_for(M: int, N: int, sm_count: int) -> str:
    """The SGEMM tile: 128x128 when that still gives at least one block per SM, else 64x64."""
    return "128x128" if cdiv(M, 128) * cdiv(N, 128) >= sm_count else "64x64"


def _launch_sgemm(a: Any, b: Any, out: Any, M: int, N: int, K: int, ta: bool, tb: bool, alpha: float,
                  tile: str | None, s: Any, lda: int, ldb: int) -> None:
    tile = tile or sgemm_tile_for(M, N, _compile.sm_count())
    bm, bn = SGEMM_TILES[tile][:2]
    kernel = raw_kernel(sgemm_source(tile, ta, tb))
    vec_store = int(N % 4 == 0 and out.data.ptr % 16 == 0)
    kernel((cdiv(N, bn), cdiv(M, bm)), (SGEMM_THREADS,),
           (a, b, out, np.int32(M), np.int32(N), np.int32(K), np.int64(lda), np.int64(ldb),
            np.int64(N), np.float32(alpha), np.int32(vec_store)),
           stream=s)


def _launch_split_k(a: Any, b: Any, out: Any, M: int, N: int, K: int, ta: bool, tb: bool, alpha: float,
                    tile: str | None, splits: int, s: Any) -> None:
    """`gemm` with ``split_k=splits``: one SGEMM per K-slice into a workspace, then ``splitk_sum``."""
    tile = tile or sgemm_tile_for(M, N, _compile.sm_count())
    ws = empty((splits, M, N), np.float32, s)
    for i in range(splits):
        k0, k1 = i * K // splits, (i + 1) * K // splits   # none empty, as splits <= K
        # The slice's operands are views into a and b: same leading dimensions, shifted bases.
        a_k = a[k0:k1, :] if ta else a[:, k0:k1]
        b_k = b[:, k0:k1] if tb else b[k0:k1, :]
        _launch_sgemm(a_k, b_k, ws[i], M, N, k1 - k0, ta, tb, 1.0, tile, s, a.shape[1], b.shape[1])
    mn = M * N
    raw_kernel(SPLITK_SUM_SOURCE)((cdiv(mn, SPLITK_SUM_THREADS),), (SPLITK_SUM_THREADS,),
                                  (ws, out, np.int64(mn), np.int32(splits), np.float32(alpha)), stream=s)


def transpose(x: Any, out: Any = None, *, stream: Any = None) -> Any:
    """``out = x.T`` as a new C-contiguous array (4- or 2-byte elements).

    Parameters
    ----------
    x : cupy.ndarray
        2-D, C-contiguous, itemsize 4 or 2.
    out : cupy.ndarray, optional
        ``(x.shape[1], x.shape[0])``, same dtype.
    stream : cupy stream, object with ``__cuda_stream__``, or None

    Returns
    -------
    cupy.ndarray
    """
    check_array(x, "x", ndim=2)
    if x.dtype.itemsize not in _TRANSPOSE_TYPES:
        raise TypeError(f"x has dtype {x.dtype.name}; transpose handles 4- and 2-byte elements")
    R, C = x.shape
    if cdiv(R, 32) > 65535:
        raise ValueError(f"x has {R} rows; at most {65535 * 32} fit the grid")
    check_out(out, (C, R), x.dtype)
    s = as_cupy_stream(stream)
    if out is None:
        out = empty((C, R), x.dtype, s)
    kernel = raw_kernel(transpose_source(x.dtype.itemsize))
    kernel((cdiv(C, 32), cdiv(R, 32)), (32, 8), (x, out, np.int32(R), np.int32(C)), stream=s)
    return out


def gemm_numba(a: Any, b: Any, out: Any = None, *, stream: Any = None) -> Any:
    """``out = a @ b`` (float32) with the Numba tiled kernel.

    Parameters
    ----------
    a, b : cupy.ndarray
        2-D, C-contiguous float32.
    out : cupy.ndarray, optional
        ``(M, N)`` float32.
    stream : cupy stream, object with ``__cuda_stream__``, or None

    Returns
    -------
    cupy.ndarray
    """
    M, N, K, kind, _ = check_gemm_args(a, b, out, False, False)
    if kind != dtypes.FLOAT32:
        raise TypeError(f"gemm_numba takes float32 inputs, got {a.dtype.name}")
    s = as_cupy_stream(stream)
    if out is None:
        out = empty((M, N), np.float32, s)
    from kernels import numba_kernels
    from kernels._numba import as_numba_array, as_numba_stream

    kernel = numba_kernel("sgemm_numba", numba_kernels.sgemm)
    kernel[(cdiv(N, NUMBA_TILE), cdiv(M, NUMBA_TILE)), (16, 16), as_numba_stream(s)](
        as_numba_array(a), as_numba_array(b), as_numba_array(out))
    return out


def reference_gemm(a: np.ndarray, b: np.ndarray, *, trans_a: bool = False, trans_b: bool = False,
                   alpha: float = 1.0) -> np.ndarray:
    """float64 ``alpha * op(a) @ op(b)`` of host arrays (bfloat16 as uint16 bits)."""
    a64, b64 = dtypes.to_float64(a), dtypes.to_float64(b)
    return alpha * ((a64.T if trans_a else a64) @ (b64.T if trans_b else b64))
