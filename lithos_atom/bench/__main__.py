"""``python -m lithos_atom.bench``: the lithos benchmarks, side by side in one run.

Sections (default: every section the machine can run):
  --atoms       atomization overhead (GPU only)
  --partitions  TPC partition costs (GPU; the simulated device's contract otherwise)
  --colocation  a latency-critical tenant beside a best-effort one, lithos vs baselines
  --ml          ML co-location: an inference service beside training and beside batch
                inference, lithos vs NVIDIA's sharing modes (streams, priorities, time-sliced
                processes, MPS) and static TPC splits, in --rounds interleaved rounds at
                --load of the service's capacity alone
Without a GPU, or with --sim, everything that can runs on the simulated device, and every
output says so. Every option is checked before any section runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

from rich.console import Console

from lithos_atom.bench import report, report_ml
from lithos_atom.bench.environment import environment
from lithos_atom.bench.ml_colocation import PAIRS, SCENARIOS, SIZES
from lithos_atom.bench.ml_rounds import DEFAULT_ROUNDS

SECTIONS = ("atoms", "partitions", "colocation", "ml")


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr (exit status 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _parser() -> _Parser:
    p = _Parser(prog="python -m lithos_atom.bench", description=__doc__,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    for s in SECTIONS:
        p.add_argument(f"--{s}", action="store_true", help=f"run the {s} section")
    p.add_argument("--sim", action="store_true", help="use the simulated device even if a GPU is present")
    p.add_argument("--json", type=Path, help="write results as JSON here")
    p.add_argument("--plot", type=Path, help="write PNG plots into this folder")
    p.add_argument("--duration", type=float, default=None,
                   help="seconds per co-location scenario (> 0; default GPU 8, simulated 2)")
    p.add_argument("--atom-us", type=float, default=None,
                   help="best-effort atom length of the co-location section's lithos scenarios (default: Policy's)")
    p.add_argument("--seed", type=int, default=0, help="seed (>= 0) for workloads and the simulated device")
    ml = p.add_argument_group("ML co-location (--ml)")
    ml.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS,
                    help=f"interleaved rounds of every scenario (default {DEFAULT_ROUNDS}); round r uses seed + r")
    ml.add_argument("--load", metavar="L[,L...]",
                    help="request rate as a fraction of the service's capacity alone (default 0.5); several: "
                         "the study at the first, a load sweep at the others")
    ml.add_argument("--lc-rate", type=float, help="inference requests per second instead of --load (Poisson)")
    ml.add_argument("--ml-duration", type=float, help="measured seconds per ML scenario and round "
                                                      "(GPU 1.5, simulated 0.2)")
    ml.add_argument("--ml-warmup", type=float, help="unmeasured co-located seconds before each ML scenario")
    ml.add_argument("--ml-pairs", help=f"comma-separated best-effort workloads (default: {','.join(PAIRS)})")
    ml.add_argument("--ml-scenarios", help=f"comma-separated scenarios (default: all of {','.join(SCENARIOS)})")
    ml.add_argument("--ml-size", choices=SIZES, help="workload sizes (default: default)")
    ml.add_argument("--lc-service", help="the inference service (decoder, llama-1b, llama-1b-prefill, llama-8b, "
                                         "resnet50, bert-base; default decoder); see lithos_atom.bench.ml_services")
    ml.add_argument("--lc-batch", metavar="LO[,HI]",
                    help="inference batch of each request, uniform in LO..HI (default 1,8; '1': batch 1 only)")
    ml.add_argument("--lc-launch", choices=("graph", "python"),
                    help="inference requests replayed as CUDA graphs (default) or launched kernel by kernel")
    ml.add_argument("--lc-share", type=float, help="fraction of TPCs owned by the inference tenant (default 0.5)")
    ml.add_argument("--static-sweep", help="comma-separated further inference shares of the static split "
                                           "(default 0.25,0.375; '' for none)")
    ml.add_argument("--mps-steal-max-block-us", type=float,
                    help="longest blocks the best-effort process steals under lithos across processes "
                         "(lithos_mps; default: the scheduler Policy's, 1500)")
    ml.add_argument("--training-gemm-max-k",
                    help="the training job's GEMMs reducing over more than this run split-K "
                         "(default 2048; 'none': unsplit)")
    ml.add_argument("--slo-mult", type=float, help="SLO = this multiple of the inference-alone p99 (default 1.5)")
    ml.add_argument("--slo-ms", type=float, help="absolute SLO in ms (instead of --slo-mult)")
    return p


def ml_config(args: argparse.Namespace, simulated: bool) -> Any:
    """The `MLColocationConfig` (or `SimMLConfig`) of the command line.

    Raises
    ------
    ValueError
        For a bad value; the message names the option's field.
    """
    from lithos_atom.bench.ml_colocation import MLColocationConfig
    from lithos_atom.bench.sim_ml_colocation import SimMLConfig

    given = {"duration_s": args.ml_duration, "warmup_s": args.ml_warmup, "size": args.ml_size,
             "lc_rate_hz": args.lc_rate, "lc_share": args.lc_share, "slo_mult": args.slo_mult,
             "slo_ms": args.slo_ms, "mps_steal_max_block_us": args.mps_steal_max_block_us,
             "lc_service": args.lc_service}
    kw: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
    if args.lc_launch is not None:
        kw["lc_graphs"] = args.lc_launch == "graph"
    for name, text in (("pairs", args.ml_pairs), ("scenarios", args.ml_scenarios)):
        if text is not None:
            kw[name] = tuple(x.strip() for x in text.split(",") if x.strip())
    if args.training_gemm_max_k is not None:
        text = args.training_gemm_max_k.strip()
        try:
            kw["training_gemm_max_k"] = None if text.lower() == "none" else int(text)
        except ValueError:
            raise ValueError(f"MLColocationConfig.training_gemm_max_k: not an int or 'none': {text!r}") from None
    if args.lc_batch is not None:
        try:
            bounds = [int(x) for x in args.lc_batch.split(",")]
        except ValueError:
            raise ValueError(f"MLColocationConfig.lc_batch: not one or two ints: {args.lc_batch!r}") from None
        if len(bounds) not in (1, 2):
            raise ValueError(f"MLColocationConfig.lc_batch: not one or two ints: {args.lc_batch!r}")
        kw["lc_batch"] = (bounds[0], bounds[-1])
    if args.static_sweep is not None:
        try:
            kw["static_sweep"] = tuple(float(x) for x in args.static_sweep.split(",") if x.strip())
        except ValueError:
            raise ValueError(f"MLColocationConfig.static_sweep: not a list of numbers: {args.static_sweep!r}") from None
    loads = _loads(args.load)
    if loads is not None:
        if args.lc_rate is not None:
            raise ValueError("give --load or --lc-rate, not both")
        kw["load"] = loads[0]
    cfg = (SimMLConfig if simulated else MLColocationConfig)(seed=args.seed, **kw)
    for value in loads or ():
        MLColocationConfig(load=value)  # every point of a sweep is checked now
    return cfg


def _loads(text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        loads = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"MLColocationConfig.load: --load is not a list of numbers: {text!r}") from None
    if not loads:
        raise ValueError(f"MLColocationConfig.load: --load names no load: {text!r}")
    return loads


def _positive(name: str, value: float | None) -> None:
    if value is not None and not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value:g}")


def _writable_folder(option: str, folder: Path) -> None:
    """Refuse an output path now, not after the run: its nearest existing folder must be
    a writable folder."""
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise ValueError(f"{option}: cannot write under {existing}")


def check(args: argparse.Namespace, simulated: bool, chosen: list[str]) -> None:
    """Check every option of ``args`` for the sections ``chosen`` and prepare their
    settings (``args.colocation_config``, ``args.ml_config``, ``args.loads``).

    Raises
    ------
    ValueError
        One line naming the option or field at fault.
    """
    if args.seed < 0:
        raise ValueError(f"--seed must be an int >= 0, got {args.seed}")
    _positive("--duration", args.duration)
    _positive("--atom-us", args.atom_us)
    if args.json is not None:
        if args.json.is_dir():
            raise ValueError(f"--json: {args.json} is a folder")
        _writable_folder("--json", args.json.parent)
    if args.plot is not None:
        if args.plot.exists() and not args.plot.is_dir():
            raise ValueError(f"--plot: {args.plot} is not a folder")
        _writable_folder("--plot", args.plot)
    if "colocation" in chosen:
        if simulated:
            from lithos_atom.bench.sim_colocation import SimColocationConfig as Config
        else:
            from lithos_atom.bench.colocation_bench import ColocationConfig as Config
        duration = {} if args.duration is None else {"duration_s": args.duration}
        args.colocation_config = Config(seed=args.seed, atom_us=args.atom_us, **duration)
    if "ml" in chosen:
        if args.rounds < 1:
            raise ValueError(f"--rounds must be an int >= 1, got {args.rounds}")
        args.ml_config = ml_config(args, simulated)
        args.loads = _loads(args.load)


def main(argv: list[str] | None = None) -> int:
    """Run the selected sections; returns the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    console = Console(stderr=False)
    env = environment()
    simulated = args.sim or env["simulated"]
    chosen = [s for s in SECTIONS if getattr(args, s)] or list(SECTIONS)
    try:
        check(args, simulated, chosen)
    except ValueError as exc:
        parser.error(" ".join(str(exc).split()))
    if simulated:
        why = "--sim was given" if args.sim else "no CUDA GPU was found"
        console.print(f"[bold yellow]SIMULATED DEVICE[/]: {why}; figures below are virtual-time results of the "
                      "simulated device, not GPU measurements.")
    else:
        console.print(f"GPU: {env['gpu']['name']} ({env['gpu'].get('multiprocessors')} SMs), "
                      f"driver {env['gpu']['driver']}")
    results: dict[str, Any] = {"environment": env, "simulated": simulated, "sections": {}}
    for section in chosen:
        if simulated and section == "atoms":
            results["sections"][section] = {"skipped": "atomization overhead needs a GPU"}
            console.print(f"[dim]{section}: skipped (needs a GPU)[/]")
            continue
        console.rule(f"{section}{' (simulated)' if simulated else ''}")
        out = _RUNNERS[section](args, simulated, console)
        out["simulated"] = simulated
        results["sections"][section] = out
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2, default=report.json_default))
        console.print(f"JSON written to {args.json}")
    if args.plot:
        written = report.plots(results, args.plot)
        if "ml" in results["sections"]:
            tag = " (simulated device)" if simulated else ""
            written += report_ml.ml_plots(results["sections"]["ml"], args.plot, tag)
        for path in written:
            console.print(f"plot: {path}")
    return 0


def _run_atoms(args: argparse.Namespace, simulated: bool, console: Console) -> dict[str, Any]:
    from lithos_atom.bench import atoms

    with console.status("atomization overhead: launch costs, then one long kernel whole and as atoms"):
        out = atoms.run()
    report.print_atoms(out, console)
    return out


def _run_partitions(args: argparse.Namespace, simulated: bool, console: Console) -> dict[str, Any]:
    from lithos_atom.bench.partition_bench import partition_figures
    from lithos_sched import open_device

    with console.status("partitions: creation, launch cost and scaling"), \
            open_device(simulate=simulated, seed=args.seed) as device:
        out = partition_figures(device)
    report.print_mapping(out, console, "partitions")
    return out


def _run_colocation(args: argparse.Namespace, simulated: bool, console: Console) -> dict[str, Any]:
    if simulated:
        from lithos_atom.bench.sim_colocation import run_sim

        out = run_sim(args.colocation_config, console)
    else:
        from lithos_atom.bench.colocation_bench import run_gpu

        out = run_gpu(args.colocation_config, console)
    report.print_colocation(out, console)
    return out


def _run_ml(args: argparse.Namespace, simulated: bool, console: Console) -> dict[str, Any]:
    from lithos_atom.bench.ml_rounds import run_study

    # The lithos scenario's trace goes where the timeline plot is drawn from.
    trace_dir = args.plot or os.environ.get("LITHOS_TRACE_DIR")
    out = run_study(args.ml_config, simulated, args.rounds, console, trace_dir, args.loads)
    report_ml.print_study(out, console)
    return out


_RUNNERS = {"atoms": _run_atoms, "partitions": _run_partitions, "colocation": _run_colocation, "ml": _run_ml}

if __name__ == "__main__":
    sys.exit(main())
