"""ML kernels for lithos: ordinary CuPy RawKernel/RawModule and Numba kernels, with NumPy
references, a registry of test/benchmark cases (`kernels.registry`), workload drivers
(`kernels.workloads`) and model-shaped services and training (`kernels.models`).

Every op is a plain function taking CuPy arrays and a ``stream`` (a CuPy stream, any
object with ``__cuda_stream__``, or None for CuPy's current stream) and returning its
output: `kernels.ops` gathers them all (``from kernels.ops import gemm, attention``), and
each module holds its own (``kernels.gemm.gemm``). Kernel objects are built on first use
through ``cupy.RawKernel`` / ``cupy.RawModule`` / ``numba.cuda.jit`` as they are *at that
time*, so lithos' global opt-in intercepts them; `reset_cache` forgets them (call it
after switching the opt-in). Importing this package needs no GPU and does not import
Numba.
"""

from __future__ import annotations

from kernels._compile import KernelSource, reset_cache


def all_cupy_sources() -> list[KernelSource]:
    """Every CuPy kernel source of the package (each RawKernel variant, each RawModule)."""
    import importlib

    names = ("gemm", "attention", "norm", "elementwise", "conv", "reduce", "optim", "transformer", "convnet",
             "training")
    modules = [importlib.import_module(f"kernels.{n}") for n in names]
    return [src for mod in modules for src in mod.cupy_sources()]


__all__ = ["KernelSource", "all_cupy_sources", "reset_cache"]
