"""The synthetic compute-bound kernel the benchmarks and GPU tests use.

Each thread runs a dependent FMA chain of ``iters`` steps, so a block's duration is set by
``iters`` and the SM's load, and blocks are independent (any split into atoms is valid).
"""

BURN = r'''
extern "C" __global__ void burn(float* out, int iters) {
    float a = threadIdx.x * 1e-3f + blockIdx.x, b = 0.999f, c = 1e-4f;
    for (int i = 0; i < iters; ++i) { a = fmaf(a, b, c); b = fmaf(b, a, c) * 0.5f + 0.5f; }
    out[(long long)blockIdx.x * blockDim.x + threadIdx.x] = a + b;
}'''

THREADS = 256  # threads per block of every burn launch
