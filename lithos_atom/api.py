"""``lithos.atomize``: wrap one CuPy or Numba kernel so its launches run as atoms.

The wrappers are the front ends' (`lithos_atom.cupy_frontend`, `lithos_atom.numba_frontend`);
the opt-in for unchanged code is `lithos_atom.optin`. Every launch of either kind goes
through `Atomizer.dispatch` in `lithos_atom.atomizer`: read that next.
"""

from __future__ import annotations

from typing import Any

from lithos_atom.atomizer import AtomizeOptions
from lithos_atom.settings import get_settings


def _is_numba_dispatcher(obj: Any) -> bool:
    return type(obj).__name__ == "CUDADispatcher" and type(obj).__module__.startswith("numba")


def _is_cupy_raw_kernel(obj: Any) -> bool:
    import cupy

    return isinstance(obj, cupy._core.raw.RawKernel)


def _is_cupy_raw_module(obj: Any) -> bool:
    import cupy

    return isinstance(obj, cupy._core.raw.RawModule)


def atomize(
    kernel: Any = None,
    *,
    atom_blocks: int | None = None,
    atom_us: float | None = None,
    strict: bool | None = None,
) -> Any:
    """Make a kernel's launches run as block-range atoms, keeping its call syntax.

    Usable as ``atomize(kernel, ...)``, as a bare decorator ``@atomize`` over a Numba
    ``@cuda.jit`` kernel, or as ``@atomize(atom_us=500)``.

    Parameters
    ----------
    kernel : cupy.RawKernel, RawModule function or numba CUDADispatcher, optional
        The kernel. CuPy kernels keep ``k(grid, block, args, shared_mem=..., stream=...)``;
        Numba kernels keep ``k[grid, block, stream, shmem](*args)``.
    atom_blocks : int, optional
        Blocks per atom (wins over ``atom_us``).
    atom_us : float, optional
        Target atom duration in microseconds (default ``LITHOS_ATOM_US``, 1000:
        `lithos_atom.settings.DEFAULT_ATOM_US`).
    strict : bool, optional
        Raise `UnsupportedKernelError` for kernels that cannot be split, instead of
        running them whole with a warning (default ``LITHOS_STRICT``, off).

    Returns
    -------
    AtomizedRawKernel or AtomizedNumbaKernel, or a decorator when ``kernel`` is None.

    Raises
    ------
    TypeError
        If ``kernel`` is not a CuPy raw kernel or a Numba CUDA kernel (a Numba device
        function is not: it is called from kernels, never launched).
    ValueError
        Naming the parameter or the ``LITHOS_*`` variable, when one is invalid.
    """
    options = AtomizeOptions(atom_blocks=atom_blocks, atom_us=atom_us, strict=strict)
    get_settings()  # a bad LITHOS_* variable is refused here, not at the first launch

    def wrap(k: Any) -> Any:
        from lithos_atom.cupy_frontend import AtomizedRawKernel
        from lithos_atom.numba_frontend import AtomizedNumbaKernel

        if isinstance(k, (AtomizedRawKernel, AtomizedNumbaKernel)):
            raise TypeError(f"{k!r} is already atomized")
        if _is_numba_dispatcher(k):
            if k.targetoptions.get("device"):
                raise TypeError(f"kernel must be a CuPy or Numba kernel, got the Numba device function "
                                f"{k.py_func.__name__!r} (cuda.jit(device=True) functions are called from kernels, "
                                "never launched)")
            return AtomizedNumbaKernel(k, options)
        module_kernel = getattr(k, "_atomized", None)  # a function of an intercepted RawModule
        if isinstance(module_kernel, AtomizedRawKernel):
            return AtomizedRawKernel(k._kernel, options, source=module_kernel.source)
        if _is_cupy_raw_kernel(k):
            return AtomizedRawKernel(k, options)
        raise TypeError(
            f"lithos.atomize takes a cupy.RawKernel, a RawModule function or a numba @cuda.jit kernel, "
            f"got {type(k).__name__}; for a RawModule function use "
            f"atomize_module_function(module, name)"
        )

    if kernel is None:
        return wrap
    return wrap(kernel)


def atomize_module_function(module: Any, name: str, **options: Any) -> Any:
    """Atomize function ``name`` (a name or name expression) of a ``cupy.RawModule``.

    Parameters
    ----------
    module : cupy.RawModule
    name : str
    **options
        As for `atomize`.

    Returns
    -------
    AtomizedRawKernel

    Raises
    ------
    TypeError
        If ``module`` is not a ``cupy.RawModule`` or ``name`` not a str.
    ValueError
        Naming the option or the ``LITHOS_*`` variable, when one is invalid.
    """
    from lithos_atom.cupy_frontend import AtomizedRawKernel, source_of_module_function

    atomize_options = AtomizeOptions(**options)
    get_settings()  # a bad LITHOS_* variable is refused here, not at the first launch
    if not _is_cupy_raw_module(module):
        raise TypeError(f"module must be a cupy.RawModule, got {type(module).__name__}")
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    return AtomizedRawKernel(module.get_function(name), atomize_options, source=source_of_module_function(module, name))

