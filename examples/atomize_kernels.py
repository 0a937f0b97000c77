"""Atomize one CuPy kernel and one Numba kernel; check they match the unsplit launch.

Needs a CUDA GPU. Run: python examples/atomize_kernels.py
"""

import cupy
import numpy as np

import lithos
from lithos_atom._compat import import_numba_cuda

cuda = import_numba_cuda()

saxpy = cupy.RawKernel(r'''
extern "C" __global__ void saxpy(const float* x, const float* y, float* out, float a, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = a * x[i] + y[i];
}''', "saxpy")


@cuda.jit
def scale(x, out):
    i = cuda.grid(1)
    if i < x.shape[0]:
        out[i] = 2.0 * x[i]


n = 10_000_000
x = cupy.random.standard_normal(n, dtype=cupy.float32)
y = cupy.random.standard_normal(n, dtype=cupy.float32)
blocks = (n + 255) // 256

ref, out = cupy.empty_like(x), cupy.empty_like(x)
saxpy((blocks,), (256,), (x, y, ref, np.float32(3.0), np.int32(n)))
lithos.atomize(saxpy, atom_blocks=4096)((blocks,), (256,), (x, y, out, np.float32(3.0), np.int32(n)))
print("CuPy atomized == unsplit:", bool(cupy.array_equal(ref, out)))

scale[blocks, 256](x, ref)
lithos.atomize(scale, atom_blocks=4096)[blocks, 256](x, out)
cuda.synchronize()
print("Numba atomized == unsplit:", bool(cupy.array_equal(ref, out)))
