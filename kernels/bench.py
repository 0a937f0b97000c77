"""Time the registry cases: ``python -m kernels.bench [--size bench] [--case NAME ...]``.

Each case is made once at the chosen size (fresh random inputs), run twice to warm up,
then ``--reps`` times on a non-blocking stream, each run bracketed by CUDA events. The
table gives the median time, TFLOP/s, GB/s and the fraction of the H100 peak the case is
measured against (`kernels.registry.PEAKS`). ``--check`` also compares the last run with
the float64 reference (slow at 'bench' size). ``--list`` prints the cases and needs no GPU.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from kernels import registry


def time_case(case: registry.KernelCase, size: str, reps: int, seed: int, check: bool) -> dict[str, Any]:
    """Median time of ``reps`` runs of ``case`` at ``size``, with its throughput and peak fraction."""
    import cupy

    stream = cupy.cuda.Stream(non_blocking=True)
    prep = case.make(np.random.default_rng(seed), size)
    for _ in range(2):
        prep.run(stream)
    stream.synchronize()
    times = []
    for _ in range(reps):
        start, stop = cupy.cuda.Event(), cupy.cuda.Event()
        start.record(stream)
        prep.run(stream)
        stop.record(stream)
        stop.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, stop) / 1e3)
    seconds = float(np.median(times))
    row: dict[str, Any] = {"case": case.name, "frontend": case.frontend, "size": size, "bound": case.bound,
                           "params": prep.params, "flops": prep.flops, "bytes": prep.bytes,
                           "ms_min": min(times) * 1e3, **case.achieved(prep, seconds)}
    row["ms"] = seconds * 1e3
    if check:
        try:
            registry.check(prep)
            row["check"] = "ok"
        except AssertionError as exc:
            row["check"] = f"FAILED: {exc}"
    del prep
    cupy.get_default_memory_pool().free_all_blocks()
    return row


def _int_at_least(minimum: int) -> Callable[[str], int]:
    """The converter of an option's value to an int >= ``minimum``."""

    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an int >= {minimum}, got {text!r}")
        return value

    return convert


def _parser() -> argparse.ArgumentParser:
    """The command's argument parser."""
    parser = argparse.ArgumentParser(prog="python -m kernels.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=registry.SIZES, default="bench")
    parser.add_argument("--case", action="append", choices=registry.case_names(), metavar="NAME",
                        help="case name (repeatable); all cases by default (see --list)")
    parser.add_argument("--frontend", choices=registry.FRONTENDS)
    parser.add_argument("--reps", type=_int_at_least(1), default=10, help="timed runs per case (default 10)")
    parser.add_argument("--seed", type=_int_at_least(0), default=0, help="seed of the inputs (default 0)")
    parser.add_argument("--check", action="store_true", help="compare with the float64 reference")
    parser.add_argument("--json", type=Path, help="write the rows to this file")
    parser.add_argument("--list", action="store_true", help="list the cases and exit (needs no GPU)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command; returns the exit status: 1 when a ``--check`` fails or there is no
    GPU to time the cases on (``--list`` needs none), 2 for a bad option."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.json is not None and (args.json.is_dir() or not args.json.parent.is_dir()):
        parser.error(f"--json must be a file in an existing folder, got {str(args.json)!r}")

    names = args.case or registry.case_names(args.frontend)
    cases = [registry.get_case(n) for n in names]
    if args.list:
        for c in cases:
            flops, nbytes = c.cost(c.sizes[args.size])
            print(f"{c.name:28s} {c.frontend:6s} {c.bound:7s} {flops / 1e9:12.3f} GFLOP {nbytes / 1e9:10.3f} GB  "
                  f"{dict(c.sizes[args.size])}")
        return 0
    from lithos_sched import gpu_available

    if not gpu_available():
        print(f"{parser.prog}: error: timing kernels needs a CUDA GPU, and none was found (the simulated device "
              "runs no real kernels); --list shows the cases without one", file=sys.stderr)
        return 1
    rows = []
    print(f"{'case':28s} {'ms':>9s} {'TFLOP/s':>9s} {'GB/s':>9s} {'peak':>6s}  check")
    for c in cases:
        row = time_case(c, args.size, args.reps, args.seed, args.check)
        rows.append(row)
        print(f"{c.name:28s} {row['ms']:9.3f} {row['tflops']:9.2f} {row['gbytes_per_s']:9.1f} "
              f"{100 * row['fraction_of_peak']:5.1f}%  {row.get('check', '')}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1, default=str)
    return 0 if all(r.get("check", "ok") == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
