"""The one place the kernels import ``numba.cuda`` (through lithos' numpy compatibility shim).

numba-cuda 0.30.4 uses ``numpy.row_stack``, which numpy 2.5 removed; `lithos_atom._compat`
restores the alias before importing. Importing this module costs Numba's import time, so
the op modules import it only when a Numba kernel is first built or launched.
"""

from __future__ import annotations

from typing import Any

try:
    from lithos_atom._compat import import_numba_cuda
except ImportError:  # kernels used without lithos_atom: the same shim, inline

    def import_numba_cuda() -> Any:
        import numpy as np

        if not hasattr(np, "row_stack"):
            np.row_stack = np.vstack  # removed in numpy 2.5, still used by numba-cuda 0.30
        from numba import cuda

        return cuda


cuda = import_numba_cuda()

from numba import float32  # noqa: E402  (after the shim)

__all__ = ["cuda", "float32", "as_numba_array", "as_numba_stream"]


def as_numba_array(x: Any) -> Any:
    """A Numba device array viewing CuPy array ``x`` without synchronizing its stream.

    Numba's default import of ``__cuda_array_interface__`` synchronizes on the stream the
    producer names (CuPy's current stream); the op already orders its work on its own
    stream, so that host-blocking synchronization is skipped.
    """
    return cuda.as_cuda_array(x, sync=False)


def as_numba_stream(cupy_stream: Any) -> Any:
    """The Numba stream for a ``cupy.cuda.Stream`` (same CUDA stream handle)."""
    ptr = int(cupy_stream.ptr)
    if ptr == 0:
        return cuda.default_stream()
    return cuda.external_stream(ptr)
