"""Read PTX modules and rewrite their kernels into atomizable ones.

`parse_module` reads a module (`model` holds what it gives back, `lexer` and `parser` do
the reading), `entry_hazards` says what prevents splitting a kernel (`hazards`), and
`rewrite_module` adds the atom ABI to every kernel that can be split (`rewrite`, where the
ABI is described). ``python -m lithos_atom.ptx IN.ptx -o OUT.ptx [--skip-unsupported]``
runs the rewriter on a file (`cli`).
"""

from lithos_atom.ptx.cli import main
from lithos_atom.ptx.hazards import entry_hazards, reachable_functions
from lithos_atom.ptx.model import (
    ATOM_PARAMS,
    BLOCKINFO,
    EntryRewrite,
    Hazard,
    PtxDirective,
    PtxFunction,
    PtxModule,
    PtxParam,
    RewriteResult,
)
from lithos_atom.ptx.parser import parse_module
from lithos_atom.ptx.rewrite import rewrite_module, set_ptx_version

__all__ = [
    "ATOM_PARAMS",
    "BLOCKINFO",
    "EntryRewrite",
    "Hazard",
    "PtxDirective",
    "PtxFunction",
    "PtxModule",
    "PtxParam",
    "RewriteResult",
    "entry_hazards",
    "main",
    "parse_module",
    "reachable_functions",
    "rewrite_module",
    "set_ptx_version",
]
