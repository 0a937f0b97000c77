"""Atomize one CuPy kernel and one Numba kernel: each launch runs as atoms of 4096 blocks.

On a GPU, both run atomized and the results are compared, bit for bit, with the unsplit
launches. Without a GPU, or with ``--sim``, no kernel can run: the example shows instead
what lithos does before the first launch, all on the CPU: each kernel's PTX (from NVRTC
and Numba's NVVM) rewritten so that one launch can run any range of the original blocks,
and the atoms one launch is split into.

Run: python examples/atomize_kernels.py [--sim]
"""

import sys

import numpy as np

import lithos
from lithos_atom._compat import import_numba_cuda

cuda = import_numba_cuda()

SAXPY = r'''
extern "C" __global__ void saxpy(const float* x, const float* y, float* out, float a, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = a * x[i] + y[i];
}'''
N = 10_000_000
BLOCKS = (N + 255) // 256
ATOM_BLOCKS = 4096


@cuda.jit
def scale(x, out):
    i = cuda.grid(1)
    if i < x.shape[0]:
        out[i] = 2.0 * x[i]


def on_gpu() -> None:
    """Run both kernels whole and atomized; print whether the results are identical."""
    import cupy

    saxpy = cupy.RawKernel(SAXPY, "saxpy")
    x = cupy.random.standard_normal(N, dtype=cupy.float32)
    y = cupy.random.standard_normal(N, dtype=cupy.float32)
    ref, out = cupy.empty_like(x), cupy.empty_like(x)
    saxpy((BLOCKS,), (256,), (x, y, ref, np.float32(3.0), np.int32(N)))
    lithos.atomize(saxpy, atom_blocks=ATOM_BLOCKS)((BLOCKS,), (256,), (x, y, out, np.float32(3.0), np.int32(N)))
    print("CuPy atomized == unsplit:", bool(cupy.array_equal(ref, out)))

    scale[BLOCKS, 256](x, ref)
    lithos.atomize(scale, atom_blocks=ATOM_BLOCKS)[BLOCKS, 256](x, out)
    cuda.synchronize()
    print("Numba atomized == unsplit:", bool(cupy.array_equal(ref, out)))


def on_cpu() -> None:
    """Rewrite both kernels' PTX for an H100 (compute capability 9.0) and show one
    launch's atoms."""
    from numba import float32

    from lithos_atom.compile import cuda_source_to_ptx
    from lithos_atom.plan import KernelKey, LaunchPlan
    from lithos_atom.ptx import ATOM_PARAMS, rewrite_module

    saxpy_ptx, _ = cuda_source_to_ptx(SAXPY, ("-std=c++17",), "90")  # as CuPy compiles it
    scale_ptx, _ = cuda.compile_ptx(scale.py_func, (float32[::1], float32[::1]), cc=(9, 0))
    for label, ptx in (("CuPy saxpy", saxpy_ptx), ("Numba scale", scale_ptx)):
        rewritten = rewrite_module(ptx)
        [entry] = rewritten.entries.values()
        print(f"{label}: PTX rewritten ({len(ptx.splitlines())} -> {len(rewritten.ptx.splitlines())} lines), "
              f"atomized: {entry.atomized}; its {entry.num_user_params} parameters are followed by "
              f"{', '.join(name for name, _ in ATOM_PARAMS)}")
    print(f"each atom launches the rewritten kernel on a range of the original blocks: one launch of saxpy on "
          f"{BLOCKS} blocks becomes")

    def show(start: int, count: int, stream: object) -> None:
        print(f"  saxpy<<<{count}, 256>>>(x, y, out, a, n, __lithos_atom_base={start}, __lithos_grid=({BLOCKS}, 1, 1))")

    plan = LaunchPlan.build(KernelKey("saxpy", (BLOCKS, 1, 1), (256, 1, 1), 0), BLOCKS, ATOM_BLOCKS, show)
    plan.issue_all(stream=None)


if __name__ == "__main__":
    if "--sim" in sys.argv[1:] or not lithos.gpu_available():
        print("No CUDA GPU (or --sim): no kernel runs here; showing the rewrite and the atoms instead")
        on_cpu()
    else:
        on_gpu()
