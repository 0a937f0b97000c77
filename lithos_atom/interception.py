"""Swap lithos into CuPy and Numba while an atomizer is set, and back out exactly.

CuPy's ``RawKernel`` and ``RawModule`` are Cython classes whose methods cannot be patched,
so while an atomizer is set the public names ``cupy.RawKernel`` and ``cupy.RawModule``
refer to subclasses that route launches through the active atomizer. Every kernel CuPy
compiles from source (its ufuncs and routines, ElementwiseKernel, ReductionKernel, fuse,
cupyx.jit, and RawKernels created before the opt-in but first launched after it) is caught
where CuPy compiles it (`lithos_atom.cupy_generated`); that seam stays from the first
opt-in on, and its kernels launch as CuPy's whenever no atomizer is set. Numba launches are
intercepted at ``_Kernel.launch`` for every kernel. CuPy streams' ``end_capture`` returns
graphs whose launches go through the atomizer (`lithos_atom.graphs`). `uninstall` puts the
other original objects back, so ``cupy.RawKernel is`` the original again.
"""

from __future__ import annotations

import threading
from typing import Any

from lithos_atom import cupy_generated, numba_frontend
from lithos_atom.active import passthrough

_lock = threading.Lock()
_originals: dict[str, Any] = {}


def _make_classes(raw_kernel: type, raw_module: type) -> tuple[type, type]:
    from lithos_atom.atomizer import as_cupy_stream
    from lithos_atom.active import get_atomizer
    from lithos_atom.cupy_frontend import AtomizedRawKernel, source_of_module_function

    def launch(atomized: AtomizedRawKernel, fallback: Any, grid: Any, block: Any, args: Any,
               shared_mem: int, stream: Any) -> None:
        atomizer = get_atomizer()
        if atomizer is None:
            return fallback(grid, block, args, shared_mem=shared_mem, stream=stream)

        def original(s: Any) -> None:
            with passthrough():  # maybe from another thread: not caught again by the compile seam
                fallback(grid, block, args, shared_mem=shared_mem, stream=as_cupy_stream(s))

        with passthrough():  # kernels lithos launches while dispatching run as CuPy's
            atomizer.dispatch(original, stream, lambda: atomized.shape(grid, block, args, shared_mem=shared_mem),
                              lambda: atomized.plan(grid, block, args, shared_mem=shared_mem,
                                                    options=atomizer.options, sized=atomizer.wants_sized_plans),
                              atomized.source.name)

    class RawKernel(raw_kernel):  # type: ignore[misc, valid-type]
        __doc__ = raw_kernel.__doc__

        def __call__(self, grid: Any, block: Any, args: Any, *, shared_mem: int = 0, stream: Any = None) -> None:
            atomized = self.__dict__.get("_lithos_atomized")
            if atomized is None:
                atomized = self.__dict__["_lithos_atomized"] = AtomizedRawKernel(self)
            launch(atomized, super().__call__, grid, block, args, shared_mem, stream)

    class ModuleKernel:
        """A function of an intercepted ``RawModule``; attributes are the kernel's."""

        def __init__(self, kernel: Any, module: Any, name: str):
            self._kernel = kernel
            self._atomized = AtomizedRawKernel(kernel, source=source_of_module_function(module, name))

        def __call__(self, grid: Any, block: Any, args: Any, *, shared_mem: int = 0, stream: Any = None) -> None:
            launch(self._atomized, self._kernel, grid, block, args, shared_mem, stream)

        def __getattr__(self, name: str) -> Any:
            return getattr(self._kernel, name)

    class RawModule(raw_module):  # type: ignore[misc, valid-type]
        __doc__ = raw_module.__doc__

        def get_function(self, name: str) -> Any:
            return ModuleKernel(super().get_function(name), self, name)

    RawKernel.__name__ = RawKernel.__qualname__ = "RawKernel"
    RawModule.__name__ = RawModule.__qualname__ = "RawModule"
    return RawKernel, RawModule


def _stream_classes() -> tuple[type, ...]:
    """CuPy's Python stream classes (``end_capture`` is patched on each)."""
    import cupy

    return tuple(c for c in (cupy.cuda.Stream, getattr(cupy.cuda, "ExternalStream", None)) if c is not None)


def install() -> None:
    """Route CuPy and Numba kernel launches, and CuPy graph launches, through the active atomizer."""
    import cupy

    from lithos_atom.graphs import wrap_end_capture

    with _lock:
        if _originals:
            return
        _originals["RawKernel"], _originals["RawModule"] = cupy.RawKernel, cupy.RawModule
        cupy.RawKernel, cupy.RawModule = _make_classes(cupy.RawKernel, cupy.RawModule)
        for cls in _stream_classes():
            _originals[f"end_capture {cls.__name__}"] = cls.__dict__.get("end_capture")  # None: inherited
            cls.end_capture = wrap_end_capture(cls.end_capture)
        numba_frontend.acquire_hook()
        cupy_generated.install()


def uninstall() -> None:
    """Restore CuPy's and Numba's own objects."""
    import cupy

    with _lock:
        if not _originals:
            return
        cupy.RawKernel, cupy.RawModule = _originals.pop("RawKernel"), _originals.pop("RawModule")
        for cls in _stream_classes():
            own = _originals.pop(f"end_capture {cls.__name__}")
            if own is None:
                del cls.end_capture  # back to the inherited method
            else:
                cls.end_capture = own
        numba_frontend.release_hook()


def installed() -> bool:
    """Whether interception is in place."""
    return bool(_originals)
