"""CuPy's own kernels as atoms: ufuncs, routines, ElementwiseKernel, ReductionKernel, fuse, cupyx.jit.

Every kernel CuPy compiles for itself, and every ``RawKernel``/``RawModule`` it loads from
source, passes through one Python function, ``cupy.cuda.compiler._compile_module_with_cache``
(``cupy._core.core.compile_with_cache`` looks it up on the module at each call). While the
seam is installed, that function's result is handed back as a `GeneratedModule`: the same
loaded module, whose ``get_function`` returns `GeneratedFunction` objects that remember
the kernel's source. CuPy's Cython code launches kernels through ``Function.linear_launch``
(a ``cpdef`` method) and ``Function.__call__``; both dispatch to a Python subclass's
override, so the launches of these functions reach `Atomizer.dispatch` under the opt-in and
go straight to CuPy's own launch otherwise. Why this seam, and what it cannot reach:
docs/design.md, "CuPy's generated kernels".
"""

from __future__ import annotations

import dataclasses
import sys
import threading
from typing import Any

from lithos_atom.active import intercepting, passthrough
from lithos_atom.atomizer import as_cupy_stream
from lithos_atom.cupy_frontend import AtomizedRawKernel, CupySource

_lock = threading.Lock()
_state: dict[str, Any] = {}  # "original": CuPy's compile function while installed; "classes"
_forgotten = False  # whether the kernels CuPy loaded before the first install were dropped


class _OriginalLaunch:
    """Calls CuPy's own launch of a `GeneratedFunction` (the kernel `AtomizedRawKernel` wraps)."""

    def __init__(self, function: Any, base: type, cooperative: bool):
        self._function = function
        self._base = base
        self._cooperative = cooperative

    def __call__(self, grid: Any, block: Any, args: Any, *, shared_mem: int = 0, stream: Any = None) -> None:
        self._base.__call__(self._function, tuple(grid), tuple(block), args, shared_mem, stream, self._cooperative)


def _make_classes(module_cls: type, function_cls: type) -> tuple[type, type]:
    class GeneratedFunction(function_cls):  # type: ignore[misc, valid-type]
        """A CuPy kernel function whose launches go through the active atomizer."""

        lithos_source: CupySource

        def __call__(self, grid: tuple, block: tuple, args: Any, shared_mem: int = 0, stream: Any = None,
                     enable_cooperative_groups: bool = False) -> None:
            atomizer = intercepting()
            if atomizer is None:
                return function_cls.__call__(self, grid, block, args, shared_mem, stream, enable_cooperative_groups)
            self._dispatch(atomizer, tuple(grid), tuple(block), args, shared_mem, stream, enable_cooperative_groups)

        def linear_launch(self, size: int, args: Any, shared_mem: int = 0, block_max_size: int = 128,
                          stream: Any = None, enable_cooperative_groups: bool = False) -> None:
            atomizer = intercepting()
            if atomizer is None or size == 0:
                return function_cls.linear_launch(self, size, args, shared_mem, block_max_size, stream,
                                                  enable_cooperative_groups)
            # CuPy's own grid for a linear launch (cupy/cuda/function.pyx)
            grid = min(0x7FFFFFFF, (size + block_max_size - 1) // block_max_size)
            self._dispatch(atomizer, (grid,), (min(block_max_size, size),), args, shared_mem, stream,
                           enable_cooperative_groups)

        def _dispatch(self, atomizer: Any, grid: tuple, block: tuple, args: Any, shared_mem: int, stream: Any,
                      cooperative: bool) -> None:
            atomized = self.__dict__.get("_lithos_atomized" + "_coop" * cooperative)
            if atomized is None:
                source = self.lithos_source
                if cooperative:
                    source = dataclasses.replace(source, cooperative=True)
                atomized = AtomizedRawKernel(_OriginalLaunch(self, function_cls, cooperative), source=source)
                self.__dict__["_lithos_atomized" + "_coop" * cooperative] = atomized
            original = _OriginalLaunch(self, function_cls, cooperative)
            with passthrough():  # kernels lithos itself launches meanwhile run as CuPy's
                atomizer.dispatch(
                    lambda s: original(grid, block, args, shared_mem=shared_mem, stream=as_cupy_stream(s)), stream,
                    lambda: atomized.shape(grid, block, args, shared_mem=shared_mem),
                    lambda: atomized.plan(grid, block, args, shared_mem=shared_mem, options=atomizer.options,
                                          sized=atomizer.wants_sized_plans),
                    self.lithos_source.name)

    class GeneratedModule(module_cls):  # type: ignore[misc, valid-type]
        """A module CuPy compiled from source; its functions remember the source."""

        lithos_source: CupySource

        def get_function(self, name: str | bytes) -> Any:
            if isinstance(name, bytes):
                name = name.decode()
            function = GeneratedFunction(self, name)
            function.lithos_source = dataclasses.replace(self.lithos_source, name=name)
            return function

    return GeneratedModule, GeneratedFunction


def _classes() -> tuple[type, type]:
    classes = _state.get("classes")
    if classes is None:
        import cupy

        classes = _state["classes"] = _make_classes(cupy.cuda.function.Module, cupy.cuda.function.Function)
    return classes


def source_of_compile(source: str, options: tuple = (), **kwargs: Any) -> CupySource:
    """The `CupySource` of one call of CuPy's ``_compile_module_with_cache`` (name left empty).

    Parameters
    ----------
    source : str
        The CUDA source as CuPy compiles it (its headers already prepended).
    options : tuple of str
        The NVRTC options as CuPy assembled them (include paths, C++ standard, user's).
    **kwargs
        The call's keyword arguments (``backend``, ``enable_cooperative_groups``,
        ``name_expressions``, ``jitify``; others are ignored).
    """
    options = tuple(options)
    return CupySource(
        code=source,
        name="",
        options=options,
        name_expressions=tuple(kwargs.get("name_expressions") or ()),
        backend=kwargs.get("backend") or "nvrtc",
        jitify=bool(kwargs.get("jitify")) or "-DCUPY_USE_JITIFY" in options,
        cooperative=bool(kwargs.get("enable_cooperative_groups")),
    )


def adopt(module: Any, source: CupySource) -> Any:
    """A `GeneratedModule` that takes over ``module`` (a loaded ``cupy.cuda.function.Module``).

    The loaded module's handle moves to the new object (the old one no longer unloads it).
    """
    module_cls, _ = _classes()
    adopted = module_cls()
    adopted.lithos_source = source
    adopted.ptr, module.ptr = module.ptr, 0
    if module.mapping is not None:
        adopted._set_mapping(module.mapping)
    return adopted


def _compile_hook(source: str, options: tuple = (), **kwargs: Any) -> Any:
    module = _state["original"](source, options, **kwargs)
    import cupy

    if kwargs.get("to_ltoir") or type(module) is not cupy.cuda.function.Module:
        return module  # LTO-IR bytes, or a module CuPy did not make (HIP): left as it is
    return adopt(module, source_of_compile(source, options, **kwargs))


def forget_loaded_kernels() -> None:
    """Drop the kernels CuPy loaded and memoized so far, so later launches compile through the seam.

    CuPy memoizes generated kernels per process (``cupy._util.memoize``, cleared with
    ``clear_memo``) and per object (a ufunc's or ElementwiseKernel's memo dict, a fused
    function's or ``cupyx.jit.rawkernel``'s cache); the object memos of such objects bound
    to a module attribute (CuPy's own, and a user module's) are cleared. Compiled code
    stays in CuPy's disk cache, so the reload costs a few milliseconds per kernel.
    """
    import cupy
    from cupy._core import _kernel

    cupy._util.clear_memo()
    kinds = (_kernel.ufunc, _kernel.ElementwiseKernel)
    for module in list(sys.modules.values()):
        for value in list(getattr(module, "__dict__", {}).values()):
            if isinstance(value, kinds):
                for memo in ("_kernel_memo", "_elementwise_kernel_memo"):
                    getattr(value, memo, {}).clear()
            elif type(value).__name__ == "Fusion" and callable(getattr(value, "clear_cache", None)):
                value.clear_cache()
            elif type(value).__name__ == "_JitRawKernel" and isinstance(getattr(value, "_cache", None), dict):
                value._cache.clear()


def install() -> None:
    """Hand CuPy's compiled modules back as `GeneratedModule` objects (idempotent).

    The first install in a process also drops the kernels CuPy loaded before
    (`forget_loaded_kernels`).
    """
    global _forgotten
    from cupy.cuda import compiler

    with _lock:
        if "original" in _state:
            return
        _classes()
        _state["original"] = compiler._compile_module_with_cache
        compiler._compile_module_with_cache = _compile_hook
        if not _forgotten:
            _forgotten = True
            forget_loaded_kernels()


def uninstall() -> None:
    """Put CuPy's compile function back (functions compiled meanwhile launch as CuPy's without an atomizer)."""
    from cupy.cuda import compiler

    with _lock:
        original = _state.pop("original", None)
        if original is not None:
            compiler._compile_module_with_cache = original


def installed() -> bool:
    """Whether CuPy's compile function is the seam's."""
    return "original" in _state
