"""Which atomizer is in effect for the calling thread: the opt-in's state, and nothing else.

The front ends read it at every launch (`get_atomizer`); `lithos_atom.optin` changes it and
puts the interception in place or back out. Kept apart from both so that neither imports
the other.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lithos_atom.atomizer import Atomizer

_global: Atomizer | None = None
_local = threading.local()
_UNSET = object()


def get_atomizer() -> Atomizer | None:
    """The atomizer in effect for the calling thread, or None when launches run as written.

    Returns
    -------
    Atomizer or None
    """
    local = getattr(_local, "atomizer", _UNSET)
    if local is not _UNSET:
        return local  # type: ignore[return-value]
    return _global


def swap_global(atomizer: Atomizer | None) -> Atomizer | None:
    """Make ``atomizer`` the process-wide one; returns the previous one."""
    global _global
    previous, _global = _global, atomizer
    return previous


def push_local(atomizer: Atomizer | None) -> Any:
    """Make ``atomizer`` the calling thread's; returns what `pop_local` restores."""
    previous = getattr(_local, "atomizer", _UNSET)
    _local.atomizer = atomizer
    return previous


def pop_local(previous: Any) -> None:
    """Restore the calling thread's state from before the matching `push_local`."""
    if previous is _UNSET:
        del _local.atomizer
    else:
        _local.atomizer = previous


@contextlib.contextmanager
def passthrough() -> Iterator[None]:
    """Launch CuPy's own kernels as CuPy would, from the calling thread, inside the block.

    Lithos's own calls of an original kernel (a launch run whole, kernels launched while a
    launch is dispatched) go through this, so no launch is intercepted twice
    (`lithos_atom.cupy_generated`).
    """
    _local.passthrough = getattr(_local, "passthrough", 0) + 1
    try:
        yield
    finally:
        _local.passthrough -= 1


def intercepting() -> Atomizer | None:
    """The atomizer for a CuPy kernel launched from the calling thread now: None inside `passthrough`.

    Returns
    -------
    Atomizer or None
    """
    if getattr(_local, "passthrough", 0):
        return None
    return get_atomizer()
