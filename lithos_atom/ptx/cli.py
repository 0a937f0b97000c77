"""The command line: ``python -m lithos_atom.ptx IN.ptx -o OUT.ptx [--skip-unsupported]``.

Its options, the paths and the ``LITHOS_*`` environment are checked before any work: a
bad one ends it with one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from lithos_atom.errors import AtomizeError, UnsupportedKernelError
from lithos_atom.ptx.model import ATOM_PARAMS
from lithos_atom.ptx.rewrite import rewrite_module
from lithos_atom.settings import environment_problem

_PROG = "python -m lithos_atom.ptx"


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (no usage block), exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _path_problem(source: str, target: str) -> str | None:
    """Why ``source`` cannot be read or ``target`` written, checked before any work; None if both can."""
    src, out = Path(source), Path(target)
    if not src.exists():
        return f"cannot read {source}: No such file or directory"
    if not src.is_file():
        return f"cannot read {source}: not a file"
    if not os.access(src, os.R_OK):
        return f"cannot read {source}: Permission denied"
    folder = out.parent
    if not target:
        return "cannot write '': the output path is empty"
    if out.is_dir():
        return f"cannot write {target}: it is a directory"
    if not folder.is_dir():
        return f"cannot write {target}: no such directory {str(folder)!r}"
    if not os.access(out if out.exists() else folder, os.W_OK):
        return f"cannot write {target}: Permission denied"
    return None



def main(argv: Sequence[str] | None = None) -> int:
    """Command line: rewrite every entry of a PTX file.

    ``python -m lithos_atom.ptx IN.ptx -o OUT.ptx [--skip-unsupported]``

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        0 on success; 2 when an option or a ``LITHOS_*`` variable is bad, the input cannot
        be read or the output written, the input is malformed, or it holds a kernel that
        cannot be split (without ``--skip-unsupported``).
    """
    prog = _PROG
    p = _Parser(prog=prog, description="Rewrite the kernels of a PTX module into atomizable ones.")
    p.add_argument("input", help="PTX file to read")
    p.add_argument("-o", "--output", required=True, help="PTX file to write")
    p.add_argument("--skip-unsupported", action="store_true",
                   help="leave kernels that cannot be split unchanged (listed on stderr) instead of failing")
    args = p.parse_args(argv)
    problem = environment_problem(_PROG) or _path_problem(args.input, args.output)
    if problem is not None:
        print(f"{prog}: error: {problem}", file=sys.stderr)
        return 2
    try:
        with open(args.input, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        print(f"{prog}: error: cannot read {args.input}: {getattr(exc, 'strerror', None) or exc}", file=sys.stderr)
        return 2
    try:
        result = rewrite_module(text, skip_unsupported=args.skip_unsupported)
    except UnsupportedKernelError as exc:
        print(f"{prog}: error: {args.input}: kernels that cannot be split into atoms "
              "(use --skip-unsupported to leave them unchanged):", file=sys.stderr)
        for name, line, reason in exc.problems:
            print(f"  {name} (line {line}): {reason}", file=sys.stderr)
        return 2
    except AtomizeError as exc:
        print(f"{prog}: error: {args.input}: {exc}", file=sys.stderr)
        return 2
    try:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(result.ptx)
    except OSError as exc:
        print(f"{prog}: error: cannot write {args.output}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    for e in result.entries.values():
        if e.atomized:
            print(f"{e.name}: atomized ({e.num_user_params} user params + {len(ATOM_PARAMS)})", file=sys.stderr)
        else:
            print(f"{e.name}: left unchanged: {e.reason}", file=sys.stderr)
    return 0
