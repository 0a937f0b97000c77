"""The global opt-in: which atomizer, if any, handles intercepted kernel launches.

Modeled on ``cupy.cuda.set_allocator`` / ``using_allocator``: `set_atomizer` sets the
process-wide atomizer, `using_atomizer` sets one for the calling thread inside a ``with``
block and restores the previous state on exit. While any atomizer is set, ordinary
CuPy ``RawKernel``/``RawModule`` and Numba ``@cuda.jit`` launches are intercepted
(`lithos_atom.interception`); when none is, the libraries' own classes and methods are
back in place, unchanged.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from lithos_atom import active, interception
from lithos_atom.atomizer import Atomizer

_state_lock = threading.Lock()
_active_users = 0  # the global atomizer plus every open using_atomizer block


def _retain() -> None:
    global _active_users
    with _state_lock:
        _active_users += 1
        if _active_users == 1:
            interception.install()


def _release() -> None:
    global _active_users
    with _state_lock:
        _active_users -= 1
        if _active_users == 0:
            interception.uninstall()


def _check(atomizer: object) -> None:
    if atomizer is not None and not isinstance(atomizer, Atomizer):
        raise TypeError(f"atomizer must be an Atomizer or None, got {type(atomizer).__name__}")


def set_atomizer(atomizer: Atomizer | None) -> None:
    """Set the process-wide atomizer; None turns global interception off.

    Parameters
    ----------
    atomizer : Atomizer or None
        For example ``Atomizer(atom_us=250)``, or a scheduler.
    """
    _check(atomizer)
    previous = active.swap_global(atomizer)
    if previous is None and atomizer is not None:
        _retain()
    elif previous is not None and atomizer is None:
        _release()


@contextlib.contextmanager
def using_atomizer(atomizer: Atomizer | None) -> Iterator[Atomizer | None]:
    """Use ``atomizer`` for launches from the calling thread inside the ``with`` block.

    ``using_atomizer(None)`` runs the block's launches as written even while a global
    atomizer is set. The previous thread state is restored on exit.

    Parameters
    ----------
    atomizer : Atomizer or None
    """
    _check(atomizer)
    previous = active.push_local(atomizer)
    _retain()
    try:
        yield atomizer
    finally:
        active.pop_local(previous)
        _release()

