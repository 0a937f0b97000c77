"""The Numba kernels, as plain Python functions (``cuda.jit`` is applied lazily by the ops).

Kept undecorated so that `kernels._compile.numba_kernel` builds (and `reset_cache`
forgets) the ``@cuda.jit`` objects, and so that tests can ``numba.cuda.compile_ptx``
each one with the signature in `SIGNATURES` on a machine without a GPU. Importing this
module imports Numba.

- `sgemm`: ``C = A @ B`` (float32), 64x64 tiles in ``cuda.shared.array``, 4x4 outputs
  per thread; block (16, 16), grid (ceil(N/64), ceil(M/64)).
- `softmax_rows`: row-wise softmax (float32), one block of `SOFTMAX_THREADS` per row,
  shared-memory tree reductions.
- `gelu`: tanh-approximation GELU (float32, 1-D), grid-stride loop.
"""

from __future__ import annotations

import math

import numpy as np

from kernels._numba import cuda, float32

SOFTMAX_THREADS = 128

_GELU_C = np.float32(math.sqrt(2.0 / math.pi))
_GELU_A = np.float32(0.044715)
_HALF = np.float32(0.5)
_ONE = np.float32(1.0)
_NEG_INF = np.float32(-np.inf)


def sgemm(A, B, C):  # pragma: no cover - compiled by Numba
    sA = cuda.shared.array((16, 64), float32)   # [k][m]
    sB = cuda.shared.array((16, 64), float32)   # [k][n]
    acc = cuda.local.array((4, 4), float32)
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    tid = ty * 16 + tx
    m0 = cuda.blockIdx.y * 64
    n0 = cuda.blockIdx.x * 64
    M = A.shape[0]
    K = A.shape[1]
    N = B.shape[1]
    for i in range(4):
        for j in range(4):
            acc[i, j] = float32(0.0)
    for k0 in range(0, K, 16):
        for e in range(4):   # A tile 64x16: consecutive threads read consecutive k
            idx = tid + e * 256
            kk = idx % 16
            mm = idx // 16
            v = float32(0.0)
            if m0 + mm < M and k0 + kk < K:
                v = A[m0 + mm, k0 + kk]
            sA[kk, mm] = v
        for e in range(4):   # B tile 16x64: consecutive threads read consecutive n
            idx = tid + e * 256
            nn = idx % 64
            kk = idx // 64
            v = float32(0.0)
            if n0 + nn < N and k0 + kk < K:
                v = B[k0 + kk, n0 + nn]
            sB[kk, nn] = v
        cuda.syncthreads()
        for kk in range(16):
            # Rows ty + 16*i and columns tx + 16*j: conflict-free shared reads, coalesced stores.
            a0 = sA[kk, ty]
            a1 = sA[kk, ty + 16]
            a2 = sA[kk, ty + 32]
            a3 = sA[kk, ty + 48]
            for j in range(4):
                b = sB[kk, tx + 16 * j]
                acc[0, j] += a0 * b
                acc[1, j] += a1 * b
                acc[2, j] += a2 * b
                acc[3, j] += a3 * b
        cuda.syncthreads()
    for i in range(4):
        gm = m0 + ty + 16 * i
        if gm < M:
            for j in range(4):
                gn = n0 + tx + 16 * j
                if gn < N:
                    C[gm, gn] = acc[i, j]


def softmax_rows(x, y):  # pragma: no cover - compiled by Numba
    red = cuda.shared.array(128, float32)   # SOFTMAX_THREADS
    row = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    n = x.shape[1]
    m = _NEG_INF
    for j in range(tid, n, 128):
        m = max(m, x[row, j])
    red[tid] = m
    cuda.syncthreads()
    step = 64
    while step > 0:
        if tid < step:
            red[tid] = max(red[tid], red[tid + step])
        cuda.syncthreads()
        step //= 2
    row_max = red[0]
    cuda.syncthreads()
    s = float32(0.0)
    for j in range(tid, n, 128):
        s += math.exp(x[row, j] - row_max)
    red[tid] = s
    cuda.syncthreads()
    step = 64
    while step > 0:
        if tid < step:
            red[tid] += red[tid + step]
        cuda.syncthreads()
        step //= 2
    inv = _ONE / red[0]
    for j in range(tid, n, 128):
        y[row, j] = math.exp(x[row, j] - row_max) * inv


def gelu(x, y):  # pragma: no cover - compiled by Numba
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    for i in range(start, x.shape[0], stride):
        v = x[i]
        y[i] = _HALF * v * (_ONE + math.tanh(_GELU_C * (v + _GELU_A * v * v * v)))


#: name -> (function, signature for ``numba.cuda.compile_ptx``)
SIGNATURES = {
    "sgemm": (sgemm, "void(float32[:, ::1], float32[:, ::1], float32[:, ::1])"),
    "softmax_rows": (softmax_rows, "void(float32[:, ::1], float32[:, ::1])"),
    "gelu": (gelu, "void(float32[::1], float32[::1])"),
}
