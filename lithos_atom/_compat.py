"""Compatibility shims for the libraries lithos builds on.

numba-cuda 0.30.4 calls ``numpy.row_stack``, which numpy 2.5 removed; the lent H100's
image ships exactly that pair, so ``from numba import cuda`` fails there without help.
``numpy.vstack`` is what ``row_stack`` always was (an alias), so restoring the alias
is exact, and it is only done when the name is missing.
"""

from __future__ import annotations

import types


def import_numba_cuda() -> types.ModuleType:
    """Import and return ``numba.cuda``, restoring ``numpy.row_stack`` if it is gone.

    Returns
    -------
    module
        The ``numba.cuda`` module.
    """
    import numpy as np

    if not hasattr(np, "row_stack"):
        np.row_stack = np.vstack  # alias removed in numpy 2.5, still used by numba-cuda 0.30
    from numba import cuda

    return cuda
