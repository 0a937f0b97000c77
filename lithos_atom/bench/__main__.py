"""``python -m lithos_atom.bench``: the lithos benchmarks, side by side in one run.

Sections (default: every section the machine can run):
  --atoms       atomization overhead (GPU only)
  --partitions  TPC partition costs (GPU; the simulated device's contract otherwise)
  --colocation  a latency-critical tenant beside a best-effort one, lithos vs baselines
  --ml          ML co-location: an inference service beside training and beside batch
                inference, lithos vs NVIDIA's sharing modes (streams, priorities, time-sliced
                processes, MPS) and a static TPC split
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
from lithos_atom.bench.ml_colocation import PAIRS, SCENARIOS, SIZES

SECTIONS = ("atoms", "partitions", "colocation", "ml")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lithos_atom.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    for s in SECTIONS:
        p.add_argument(f"--{s}", action="store_true", help=f"run the {s} section")
    p.add_argument("--sim", action="store_true", help="use the simulated device even if a GPU is present")
    p.add_argument("--json", type=Path, help="write results as JSON here")
    p.add_argument("--plot", type=Path, help="write PNG plots into this folder")
    p.add_argument("--duration", type=float, default=None, help="seconds per co-location scenario")
    p.add_argument("--atom-us", type=float, default=None,
                   help="best-effort atom length of the co-location section's lithos scenarios (default: Policy's)")
    p.add_argument("--seed", type=int, default=0, help="seed for workloads and the simulated device")
    ml = p.add_argument_group("ML co-location (--ml)")
    ml.add_argument("--ml-duration", type=float, help="measured seconds per ML scenario (GPU 3, simulated 0.5)")
    ml.add_argument("--ml-warmup", type=float, help="unmeasured co-located seconds before each ML scenario")
    ml.add_argument("--ml-pairs", help=f"comma-separated best-effort workloads (default: {','.join(PAIRS)})")
    ml.add_argument("--ml-scenarios", help=f"comma-separated scenarios (default: all of {','.join(SCENARIOS)})")
    ml.add_argument("--ml-size", choices=SIZES, help="workload sizes (default: default)")
    ml.add_argument("--lc-service", help="the inference service (decoder, llama-1b, llama-1b-prefill, llama-8b, "
                                         "resnet50, bert-base; default decoder); see lithos_atom.bench.ml_services")
    ml.add_argument("--lc-rate", type=float, help="inference requests per second (Poisson; default 100)")
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
    return (SimMLConfig if simulated else MLColocationConfig)(seed=args.seed, **kw)


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
    if "ml" in chosen:
        try:
            args.ml_config = ml_config(args, simulated)
        except ValueError as exc:
            _parser().error(f"ML options: {exc}")
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
    from lithos_atom.bench.partition_bench import partition_figures
    from lithos_sched import open_device

    with open_device(simulate=simulated, seed=args.seed) as device:
        out = partition_figures(device)
    report.print_mapping(out, console, "partitions")
    return out


def _run_colocation(args: argparse.Namespace, simulated: bool, console: Console) -> dict[str, Any]:
    if simulated:
        from lithos_atom.bench.sim_colocation import run_sim

        out = run_sim(duration_s=args.duration, seed=args.seed, atom_us=args.atom_us)
    else:
        from lithos_atom.bench.colocation_bench import ColocationConfig, run_gpu

        duration = {"duration_s": args.duration} if args.duration else {}
        out = run_gpu(ColocationConfig(seed=args.seed, atom_us=args.atom_us, **duration), console)
    report.print_colocation(out, console)
    return out


def _run_ml(args: argparse.Namespace, simulated: bool, console: Console) -> dict[str, Any]:
    import os

    # The lithos scenario's trace goes where the timeline plot is drawn from.
    trace_dir = args.plot or os.environ.get("LITHOS_TRACE_DIR")
    if simulated:
        from lithos_atom.bench.sim_ml_colocation import run_sim

        out = run_sim(args.ml_config, console=console, trace_dir=trace_dir)
    else:
        from lithos_atom.bench.ml_gpu import run_gpu

        out = run_gpu(args.ml_config, console=console, trace_dir=trace_dir)
    report.print_ml(out, console)
    return out


_RUNNERS = {"atoms": _run_atoms, "partitions": _run_partitions, "colocation": _run_colocation, "ml": _run_ml}

if __name__ == "__main__":
    sys.exit(main())
