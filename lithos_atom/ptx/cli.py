"""The command line: ``python -m lithos_atom.ptx IN.ptx -o OUT.ptx [--skip-unsupported]``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from lithos_atom.errors import AtomizeError, UnsupportedKernelError
from lithos_atom.ptx.model import ATOM_PARAMS
from lithos_atom.ptx.rewrite import rewrite_module


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
        0 on success; 2 when the input cannot be read or written, is malformed, or holds a
        kernel that cannot be split (without ``--skip-unsupported``).
    """
    prog = "python -m lithos_atom.ptx"
    p = argparse.ArgumentParser(prog=prog, description="Rewrite the kernels of a PTX module into atomizable ones.")
    p.add_argument("input", help="PTX file to read")
    p.add_argument("-o", "--output", required=True, help="PTX file to write")
    p.add_argument("--skip-unsupported", action="store_true",
                   help="leave kernels that cannot be split unchanged (listed on stderr) instead of failing")
    args = p.parse_args(argv)
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
