"""lithos_atom: relaunch CuPy and Numba kernels as block-range atoms.

Public names
------------
atomize, atomize_module_function
    Wrap one kernel; it keeps its call syntax.
Atomizer, set_atomizer, using_atomizer, get_atomizer
    The global (or per-thread) opt-in for unchanged user code.
AtomizeOptions, LaunchPlan, Atom, KernelKey
    What a scheduler works with.
AtomizeError, UnsupportedKernelError, AtomizeWarning
    Errors and the run-whole warning.
"""

from lithos_atom.api import atomize, atomize_module_function
from lithos_atom.active import get_atomizer
from lithos_atom.atomizer import AtomizeOptions, Atomizer, AtomizeWarning
from lithos_atom.errors import AtomizeError, UnsupportedKernelError
from lithos_atom.optin import set_atomizer, using_atomizer
from lithos_atom.plan import Atom, KernelKey, LaunchPlan

__all__ = [
    "Atom",
    "AtomizeError",
    "AtomizeOptions",
    "AtomizeWarning",
    "Atomizer",
    "KernelKey",
    "LaunchPlan",
    "UnsupportedKernelError",
    "atomize",
    "atomize_module_function",
    "get_atomizer",
    "set_atomizer",
    "using_atomizer",
]
