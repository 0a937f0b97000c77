"""Full reductions (sum, max) of float32 arrays: block reduction, then further passes.

``reduce_<op>_f32`` (``cupy.RawKernel``, one per op): block b reduces the contiguous chunk
``[b*chunk, (b+1)*chunk)`` (float4 loads when aligned, 16 elements per thread), with warp
shuffles and one shared-memory step, into ``partial[b]``; the same kernel reduces the
partials again until one value is left (a second pass for up to 4096 * 4096 elements).
Blocks are independent: no atomics, no grid-wide synchronization. 256 threads, 1-D grid.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kernels._compile import (
    REDUCE_SNIPPET,
    KernelSource,
    aligned,
    as_cupy_stream,
    cdiv,
    check_array,
    check_out,
    empty,
    raw_kernel,
)

THREADS = 256
ITEMS_PER_THREAD = 16
CHUNK = THREADS * ITEMS_PER_THREAD

_OPS = {
    "sum": ("0.0f", "a + b", "false"),
    "max": ("-INFINITY", "fmaxf(a, b)", "true"),
}

_CODE = r"""
__device__ __forceinline__ float combine(float a, float b) {{ return {expr}; }}

extern "C" __global__ void __launch_bounds__(256) {name}(const float* __restrict__ x, float* __restrict__ partial,
                                                         long long n, long long chunk, int vec)
{{
    __shared__ float red[32];
    const long long start = (long long)blockIdx.x * chunk;
    const long long end = min(n, start + chunk);
    float acc = {identity};
    long long i = start;
    if (vec) {{   // x 16-byte aligned and chunk % 4 == 0: start is a multiple of 4
        const long long nv = (end - start) / 4;
        const float4* xv = reinterpret_cast<const float4*>(x + start);
        for (long long j = threadIdx.x; j < nv; j += blockDim.x) {{
            const float4 v = xv[j];
            acc = combine(acc, combine(combine(v.x, v.y), combine(v.z, v.w)));
        }}
        i = start + 4 * nv;
    }}
    for (long long j = i + threadIdx.x; j < end; j += blockDim.x) acc = combine(acc, x[j]);
    acc = block_reduce<{is_max}>(acc, red);
    if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}}
"""


def reduce_source(op: str) -> KernelSource:
    """The RawKernel source of reduction ``op`` (``"sum"`` or ``"max"``)."""
    identity, expr, is_max = _OPS[op]
    name = f"reduce_{op}_f32"
    code = REDUCE_SNIPPET + _CODE.format(name=name, identity=identity, expr=expr, is_max=is_max)
    return KernelSource(key=name, code=code, kind="kernel", name=name)


def cupy_sources() -> list[KernelSource]:
    """Every CuPy kernel source of this module."""
    return [reduce_source(op) for op in _OPS]


def pass_sizes(n: int) -> list[int]:
    """Number of blocks of each pass for ``n`` elements (the last pass has one block)."""
    sizes = []
    while True:
        blocks = cdiv(n, CHUNK)
        sizes.append(blocks)
        if blocks == 1:
            return sizes
        n = blocks


def _reduce(op: str, x: Any, out: Any, stream: Any) -> Any:
    check_array(x, "x", dtypes=(np.float32,))
    check_out(out, (), np.float32)
    s = as_cupy_stream(stream)
    if out is None:
        out = empty((), np.float32, s)
    kernel = raw_kernel(reduce_source(op))
    src, n = x, int(x.size)
    for blocks in pass_sizes(n):
        dst = out if blocks == 1 else empty((blocks,), np.float32, s)
        kernel((blocks,), (THREADS,), (src, dst, np.int64(n), np.int64(CHUNK), np.int32(aligned(src))), stream=s)
        src, n = dst, blocks
    return out


def reduce_sum(x: Any, out: Any = None, *, stream: Any = None) -> Any:
    """Sum of all elements of a float32 array (fp32 accumulation, tree order).

    Parameters
    ----------
    x : cupy.ndarray
        C-contiguous float32, any shape.
    out : cupy.ndarray, optional
        0-d float32.
    stream : cupy stream, object with ``__cuda_stream__``, or None

    Returns
    -------
    cupy.ndarray
        0-d.
    """
    return _reduce("sum", x, out, stream)


def reduce_max(x: Any, out: Any = None, *, stream: Any = None) -> Any:
    """Maximum of all elements of a float32 array (NaNs are ignored, as by ``fmaxf``).

    Parameters
    ----------
    x : cupy.ndarray
        C-contiguous float32, any shape.
    out : cupy.ndarray, optional
        0-d float32.
    stream : cupy stream, object with ``__cuda_stream__``, or None

    Returns
    -------
    cupy.ndarray
        0-d.
    """
    return _reduce("max", x, out, stream)


def reference_sum(x: np.ndarray) -> np.ndarray:
    """float64 sum of a host array, as a 0-d array."""
    return np.asarray(np.asarray(x, np.float64).sum())


def reference_max(x: np.ndarray) -> np.ndarray:
    """float64 maximum of a host array, as a 0-d array."""
    return np.asarray(np.asarray(x, np.float64).max())
