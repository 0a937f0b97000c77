"""The global opt-in: existing CuPy/Numba code launches through the atomizer unchanged.

Run: python examples/opt_in.py
"""

import cupy
import numpy as np

import lithos

lithos.set_atomizer(lithos.Atomizer(atom_us=250))  # from here on, RawKernel/RawModule/@cuda.jit launch as atoms

k = cupy.RawKernel(r'''
extern "C" __global__ void inc(float* x, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] += 1.0f;
}''', "inc")
x = cupy.zeros(1 << 24, np.float32)
for _ in range(3):  # the first launch runs whole and is timed; later ones are split into ~250 us atoms
    k(((x.size + 255) // 256,), (256,), (x, np.int32(x.size)))
print("all elements == 3:", bool((x == 3).all()))

lithos.set_atomizer(None)  # CuPy's and Numba's own classes are back
