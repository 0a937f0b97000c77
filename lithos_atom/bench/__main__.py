"""``python -m lithos_atom.bench``: the lithos benchmarks, side by side in one run.

Sections (default: every section the machine can run):
  --atoms       atomization overhead (GPU only)
  --partitions  TPC partition costs (GPU; the simulated device's contract otherwise)
  --colocation  a latency-critical tenant beside a best-effort one, lithos vs baselines
Without a GPU, or with --sim, everything that can runs on the simulated device, and every
output says so.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console

from lithos_atom.bench import report
from lithos_atom.bench.environment import environment

SECTIONS = ("atoms", "partitions", "colocation")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lithos_atom.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    for s in SECTIONS:
        p.add_argument(f"--{s}", action="store_true", help=f"run the {s} section")
    p.add_argument("--sim", action="store_true", help="use the simulated device even if a GPU is present")
    p.add_argument("--json", type=Path, help="write results as JSON here")
    p.add_argument("--plot", type=Path, help="write PNG plots into this folder")
    p.add_argument("--duration", type=float, default=None, help="seconds per co-location scenario")
    p.add_argument("--seed", type=int, default=0, help="seed for workloads and the simulated device")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the selected sections; returns the exit code."""
    args = _parser().parse_args(argv)
    console = Console(stderr=False)
    env = environment()
    simulated = args.sim or env["simulated"]
    if simulated:
        why = "--sim was given" if args.sim else "no CUDA GPU was found"
        console.print(f"[bold yellow]SIMULATED DEVICE[/]: {why}; figures below are virtual-time results of the "
                      "simulated device, not GPU measurements.")
    else:
        console.print(f"GPU: {env['gpu']['name']} ({env['gpu'].get('multiprocessors')} SMs), "
                      f"driver {env['gpu']['driver']}")
    chosen = [s for s in SECTIONS if getattr(args, s)] or list(SECTIONS)
    results: dict[str, Any] = {"environment": env, "simulated": simulated, "sections": {}}
    for section in chosen:
        runner = _RUNNERS[section]
        if simulated and section == "atoms":
            results["sections"][section] = {"skipped": "atomization overhead needs a GPU"}
            console.print(f"[dim]{section}: skipped (needs a GPU)[/]")
            continue
        console.rule(f"{section}{' (simulated)' if simulated else ''}")
        out = runner(args, simulated, console)
        out["simulated"] = simulated
        results["sections"][section] = out
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2, default=report.json_default))
        console.print(f"JSON written to {args.json}")
    if args.plot:
        written = report.plots(results, args.plot)
        for path in written:
            console.print(f"plot: {path}")
    return 0


def _run_atoms(args: argparse.Namespace, simulated: bool, console: Console) -> dict[str, Any]:
    from lithos_atom.bench import atoms

    out = atoms.run()
    report.print_atoms(out, console)
    return out


def _run_partitions(args: argparse.Namespace, simulated: bool, console: Console) -> dict[str, Any]:
    from lithos_sched import open_device
    from lithos_sched.partition_bench import partition_figures

    with open_device(simulate=simulated, seed=args.seed) as device:
        out = partition_figures(device)
    report.print_mapping(out, console, "partitions")
    return out


def _run_colocation(args: argparse.Namespace, simulated: bool, console: Console) -> dict[str, Any]:
    from lithos_sched import colocation_bench

    out = colocation_bench.run(simulated=simulated, duration_s=args.duration, seed=args.seed, console=console)
    report.print_colocation(out, console)
    return out


_RUNNERS = {"atoms": _run_atoms, "partitions": _run_partitions, "colocation": _run_colocation}

if __name__ == "__main__":
    sys.exit(main())
