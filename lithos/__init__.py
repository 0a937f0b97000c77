"""lithos: an operating-system layer for machine learning on shared NVIDIA GPUs.

``import lithos`` gives the user-facing names of `lithos_atom` (kernel atomization and
the global opt-in) and of `lithos.membership`: `join` makes the process a tenant of a GPU
shared with other processes in one line, `leave` undoes it (those names load the
scheduler on first use). ``lithos.ray``, imported on its own and needing Ray, runs Ray
actors as tenants.
"""

from typing import Any

from lithos_atom import (
    AtomizeError,
    AtomizeOptions,
    Atomizer,
    AtomizeWarning,
    UnsupportedKernelError,
    atomize,
    atomize_module_function,
    get_atomizer,
    set_atomizer,
    using_atomizer,
)

_LAZY = {
    "Membership": "lithos.membership", "join": "lithos.membership", "joined": "lithos.membership",
    "leave": "lithos.membership", "tenant": "lithos.membership",
    "TPCsUnavailableError": "lithos_sched.ledger", "TenantOutOfMemoryError": "lithos_sched.memory_limit",
}


def __getattr__(name: str) -> Any:
    """The process-membership names, imported on first use (they load the scheduler)."""
    if name not in _LAZY:
        raise AttributeError(f"module 'lithos' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_LAZY[name]), name)


__all__ = [
    "AtomizeError",
    "AtomizeOptions",
    "AtomizeWarning",
    "Atomizer",
    "Membership",
    "TPCsUnavailableError",
    "TenantOutOfMemoryError",
    "UnsupportedKernelError",
    "atomize",
    "atomize_module_function",
    "get_atomizer",
    "join",
    "joined",
    "leave",
    "set_atomizer",
    "tenant",
    "using_atomizer",
]
