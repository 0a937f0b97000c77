"""The global opt-in: existing CuPy code launches through lithos, unchanged.

`lithos.set_atomizer` swaps ``cupy.RawKernel`` and ``cupy.RawModule`` for lithos'
subclasses (and hooks Numba's launches): kernels created from then on launch through the
atomizer, which runs the first launch of each kernel shape whole and timed and later ones
as ~250 us atoms. Kernels created before are CuPy's own. ``set_atomizer(None)`` puts
CuPy's classes back.

On a GPU, three launches of one kernel add 3 to every element. Without a GPU, or with
``--sim``, no kernel can run: the same code runs with an atomizer that takes each launch
handed to it and prints it instead (`DryRun`), on NumPy arrays the launches never touch.

Run: python examples/opt_in.py [--sim]
"""

import sys
from typing import Any

import cupy
import numpy as np

import lithos

INC = r'''
extern "C" __global__ void inc(float* x, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] += 1.0f;
}'''


class DryRun(lithos.Atomizer):
    """An atomizer that takes every intercepted launch and, there being no GPU, prints it
    instead of running it."""

    def launch_whole(self, launch: Any, stream: Any, describe: Any) -> bool:
        print("  the launch reached lithos' atomizer (not run: no GPU)")
        return True


def main(atomizer: lithos.Atomizer, x: Any) -> None:
    """Opt in with ``atomizer``, launch ``inc`` on ``x`` three times, opt out."""
    cupys_own = cupy.RawKernel
    before = cupy.RawKernel(INC, "inc")
    lithos.set_atomizer(atomizer)  # from here on, RawKernel/RawModule/@cuda.jit launch through it
    k = cupy.RawKernel(INC, "inc")  # unchanged user code
    print("kernel created before the opt-in goes through lithos:", isinstance(before, cupy.RawKernel))
    print("kernel created after it goes through lithos:", isinstance(k, cupy.RawKernel))
    for _ in range(3):  # the first launch runs whole and is timed; later ones run as ~250 us atoms
        k(((x.size + 255) // 256,), (256,), (x, np.int32(x.size)))
    lithos.set_atomizer(None)
    print("cupy.RawKernel is CuPy's own again:", cupy.RawKernel is cupys_own)


if __name__ == "__main__":
    if "--sim" in sys.argv[1:] or not lithos.gpu_available():
        print("No CUDA GPU (or --sim): no kernel runs here; the launches go to a dry-run atomizer")
        main(DryRun(), np.zeros(1 << 24, np.float32))
    else:
        x = cupy.zeros(1 << 24, np.float32)
        main(lithos.Atomizer(atom_us=250), x)
        print("all elements == 3:", bool((x == 3).all()))
