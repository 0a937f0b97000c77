"""``python -m lithos run [options] prog.py [args ...]``: an unchanged program as a tenant.

The program runs as ``python prog.py args`` would (``-m module`` as ``python -m``), after
`lithos.join` made the process a tenant of its GPU. The options come from the
``LITHOS_JOIN`` environment variable (``gpu=0,priority=best-effort,share=0.5``) and the
command line, which wins. An environment variable alone cannot reach into an unchanged
program; this launcher is the one line the program's command gains.

``python -m lithos ledger`` prints this user's ledgers: who holds which TPCs of each GPU.

Options, the ``LITHOS_*`` environment and the program to run are checked before the
process joins: a bad one ends it with one line on stderr and exit status 2, never a
traceback.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import runpy
import sys
from collections.abc import Sequence
from typing import NoReturn

from lithos.membership import JOIN_ENV, join, parse_join_spec
from lithos_atom.settings import environment_problem
from lithos_sched.ledger import ledger_dir, ledger_paths
from lithos_sched.ledger_file import snapshot
from lithos_sched.memory_limit import format_bytes
from lithos_sched.processes import ProcessId


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (no usage block), exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m lithos", description="Run programs as tenants of a shared GPU.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run a program as a tenant (lithos.join first)",
                              description=f"Options default to ${JOIN_ENV} (key=value,...).")
    run.add_argument("--gpu", type=int, help="the GPU's index among the visible ones")
    run.add_argument("--priority", choices=["latency-critical", "best-effort"])
    run.add_argument("--share", type=float, help="fraction of the GPU's TPCs, in (0, 1]")
    run.add_argument("--tpcs", type=int, help="a TPC count (instead of --share)")
    run.add_argument("--memory-limit", dest="memory_limit", help="device memory, e.g. 8GiB")
    run.add_argument("--name", help="the tenant's name (default <program>-<pid>)")
    run.add_argument("-m", dest="module", nargs=argparse.REMAINDER, metavar="MODULE ...",
                     help="run a module and its arguments, as python -m")
    run.add_argument("target", nargs=argparse.REMAINDER, help="the program and its arguments")
    commands.add_parser("ledger", help="print this user's ledgers: who holds which TPCs of each GPU",
                        description="Ledgers of $LITHOS_LEDGER_DIR (default /dev/shm); nothing is changed.")
    return parser


def print_ledgers() -> int:
    """Print every ledger of this user, its entries as the file has them (a dead
    process's entry is marked stale; the next lithos process reclaims it); one that
    cannot be read gets a line on stderr. Returns 1 if any could not be read, else 0."""
    paths = ledger_paths()
    if not paths:
        print(f"no ledger in {ledger_dir()}")
    status = 0
    for path in paths:
        try:
            doc = snapshot(path) or {"gpu": path.name, "num_tpcs": "?", "entries": []}
        except (OSError, ValueError) as exc:
            print(f"python -m lithos: cannot read {path}: {exc}", file=sys.stderr)
            status = 1
            continue
        print(f"{doc['gpu']} ({doc['num_tpcs']} TPCs, {path}):")
        for e in doc["entries"]:
            tpcs = sorted(e["tpcs"])
            stale = "" if ProcessId(e["pid"], e["start"]).alive() else "  (stale: its process is gone)"
            memory = f"  memory limit {format_bytes(e['memory_limit'])}" if e["memory_limit"] else ""
            print(f"  {e['name']:<24} pid {e['pid']:<8} {e['priority']:<16} {len(tpcs):>3} TPCs "
                  f"{tpcs[0]}-{tpcs[-1]}{memory}{stale}")
    return status



def _target_problem(module: list[str] | None, target: list[str]) -> str | None:
    """Why the program or module to run cannot be, checked before joining; None if it can."""
    if module:
        try:
            found = importlib.util.find_spec(module[0])
        except (ImportError, ValueError) as exc:
            return f"cannot run module {module[0]!r}: {exc}"
        return None if found is not None else f"no module named {module[0]!r}"
    program = target[0]
    if not os.path.isfile(program):
        return f"cannot run {program!r}: no such file"
    if not os.access(program, os.R_OK):
        return f"cannot run {program!r}: Permission denied"
    return None


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the command; ``run``: join, and run the program in this interpreter."""
    parser = _parser()
    args = parser.parse_args(argv)
    problem = environment_problem("python -m lithos")
    if problem is not None:
        parser.exit(2, f"python -m lithos: error: {problem}\n")
    if args.command == "ledger":
        parser.exit(print_ledgers())
    if (not args.module) == (not args.target):
        parser.error("give a program (prog.py [args]) or -m module [args]")
    try:
        options = parse_join_spec(os.environ.get(JOIN_ENV, ""))
    except ValueError as exc:
        parser.error(str(exc))
    problem = _target_problem(args.module, args.target)
    if problem is not None:
        parser.exit(2, f"python -m lithos: error: {problem}\n")
    given = {k: getattr(args, k) for k in ("gpu", "priority", "share", "tpcs", "memory_limit", "name")}
    if given["share"] is not None or given["tpcs"] is not None:  # the command line's size replaces the variable's
        options.pop("share", None)
        options.pop("tpcs", None)
    options.update({k: v for k, v in given.items() if v is not None})
    if "priority" not in options:
        parser.error(f"the priority is missing: --priority or {JOIN_ENV}=priority=...")
    command = args.module or args.target
    if args.module:
        options.setdefault("name", f"{command[0].rsplit('.', 1)[-1]}-{os.getpid()}")
    sys.argv = list(command)
    try:
        join(**options)
    except (ValueError, OSError, RuntimeError) as exc:  # refused options or TPCs, a ledger that cannot be used
        parser.exit(2, f"python -m lithos: error: {exc}\n")
    if args.module:
        runpy.run_module(command[0], run_name="__main__", alter_sys=True)
    else:
        sys.path[0] = os.path.dirname(os.path.abspath(command[0]))
        runpy.run_path(command[0], run_name="__main__")


if __name__ == "__main__":
    main()
