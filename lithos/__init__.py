"""lithos: an operating-system layer for machine learning on shared NVIDIA GPUs.

``import lithos`` gives the user-facing names of `lithos_atom` (kernel atomization and
the global opt-in) and `lithos_sched` (partitions and scheduling).
"""

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

__all__ = [
    "AtomizeError",
    "AtomizeOptions",
    "AtomizeWarning",
    "Atomizer",
    "UnsupportedKernelError",
    "atomize",
    "atomize_module_function",
    "get_atomizer",
    "set_atomizer",
    "using_atomizer",
]
