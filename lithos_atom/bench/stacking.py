"""Inference-inference stacking: several latency-critical services of different priorities on one GPU.

``python -m lithos_atom.bench.stacking [--sim] [--json PATH] [--plot DIR]``

Two or three inference services (`StackConfig.services`: by default a Llama-3.2-1B decode
service at the highest priority, ResNet-50 and BERT-base below it), each with its own
Poisson arrivals, batch sizes and SLO (a multiple of its p99 alone on the whole GPU), share
one GPU, first by themselves (variant ``lc_only``), then beside a best-effort job (variant
``with_<job>``, `StackConfig.be_job`). Scenarios, each of both variants:

- ``mps``: every tenant on an ordinary stream of its own, no priorities (on the GPU: a
  process per tenant under an MPS daemon; simulated as ordinary streams of one device);
- ``priorities``: CUDA stream priorities by rank, the best-effort job lowest (on the GPU
  in one process; the simulated device has two levels: see `PRIORITIES_SIM`);
- ``processes``: a process per tenant, time-sliced by the driver (modeled on the
  simulated device, `lithos_atom.bench.timeslice`);
- ``static_split``: each tenant on its own TPCs (`StackService.share`), nothing shared;
- ``lithos``: the lithos scheduler, each service a latency-critical tenant on its TPCs,
  the job a best-effort tenant that also runs on the services' idle TPCs.

How priorities are expressed. lithos has two classes, latency-critical and best-effort,
and a latency-critical tenant's kernels run unsplit on its own partition: no other
latency-critical tenant runs there, so a stream priority between them would order
nothing. A service's priority is its TPCs: a higher-priority service owns a larger share
(`StackService.share`, sized for its load and SLO), so its requests never queue behind a
lower one's, and the best-effort job borrows only TPCs that no service is using. The
baselines get the priority order they can express: stream priorities by
`StackService.rank`, and the same TPC shares for the static split.

Figures per scenario: each service's p50/p99, SLO and SLO attainment (requests arrived in
the window but unfinished count as misses), the goodput (requests within their SLO per
second, all services together), the best-effort throughput normalized to alone; per
variant, lithos against each baseline (each service's p99 reduction, the goodput gain)
and against the baseline of the most goodput.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lithos_atom.bench.ml_services import BE_JOBS
from lithos_atom.bench.stacking_config import STACK_SCENARIOS, StackConfig


def print_study(out: dict[str, Any], console: Any) -> None:
    """Each variant's table: per scenario, each service's p99 and SLO attainment, the
    goodput and the job's normalized throughput; then lithos against the best baseline."""
    from rich.table import Table

    sim = " (SIMULATED)" if out["simulated"] else ""
    for variant, v in out["variants"].items():
        names = list(v["slo_ms"])
        table = Table(title=f"stacking, {variant}{sim}: p99 ms (SLO attainment)")
        table.add_column("scenario")
        for n in names:
            slo = v["slo_ms"][n]
            table.add_column(f"{n}\nSLO {slo:.2f}" if slo else n, justify="right")
        table.add_column("goodput/s", justify="right")
        table.add_column("BE", justify="right")
        for name, sc in v["scenarios"].items():
            if "services" not in sc:
                table.add_row(name, *["-"] * len(names), "-", sc.get("skipped", sc.get("error", ""))[:40])
                continue
            cells = []
            for n in names:
                hp = sc["services"][n]
                p99, att = hp.get("p99_ms"), hp.get("slo_attainment")
                cells.append("-" if p99 is None else f"{p99:.2f} ({100 * att:.0f}%)" if att is not None else f"{p99:.2f}")
            be = (sc.get("be") or {}).get("throughput_norm")
            table.add_row(name, *cells, f"{sc['goodput_rps']:.0f}", "-" if be is None else f"{be:.2f}")
        console.print(table)
        best = v.get("best_baseline")
        if best:
            console.print(f"  lithos goodput {best['lithos_goodput_gain']:.2f}x the best baseline's "
                          f"({best['scenario']}, {best['goodput_rps']:.0f}/s)")


def plot(out: dict[str, Any], folder: Path) -> list[Path]:
    """One PNG per variant: each service's p99 per scenario (log scale) and the goodput."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for variant, v in out["variants"].items():
        run = {n: sc for n, sc in v["scenarios"].items() if "services" in sc}
        names = list(v["slo_ms"])
        fig, (ax, gx) = plt.subplots(1, 2, figsize=(12, 4))
        width = 0.8 / max(1, len(names))
        for i, n in enumerate(names):
            ax.bar([x + i * width for x in range(len(run))],
                   [sc["services"][n].get("p99_ms") or 0.0 for sc in run.values()], width, label=n)
        ax.set_yscale("log")
        ax.set_xticks([x + 0.4 - width / 2 for x in range(len(run))], list(run), rotation=30)
        ax.set_ylabel("p99 latency (ms)")
        ax.legend(fontsize=7)
        gx.bar(list(run), [sc["goodput_rps"] for sc in run.values()], color="tab:green")
        gx.set_ylabel("goodput (requests within SLO / s)")
        gx.tick_params(axis="x", rotation=30)
        fig.suptitle(f"stacking, {variant}{' (SIMULATED)' if out['simulated'] else ''}")
        fig.tight_layout()
        path = folder / f"stacking_{variant}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """Run the study (simulated without a GPU or with ``--sim``); returns the exit status."""
    from rich.console import Console

    from lithos_atom.bench.environment import environment

    p = argparse.ArgumentParser(prog="python -m lithos_atom.bench.stacking", description=__doc__.splitlines()[0])
    p.add_argument("--sim", action="store_true", help="the simulated device even if a GPU is present")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--plot", type=Path, help="write PNG plots into this folder")
    p.add_argument("--duration", type=float, help="measured seconds per scenario (GPU 3, simulated 0.5)")
    p.add_argument("--warmup", type=float, help="unmeasured seconds before each scenario")
    p.add_argument("--size", choices=("default", "small"), help="workload sizes (small: 2 layers, a smoke run)")
    p.add_argument("--scenarios", help=f"comma-separated, of {','.join(STACK_SCENARIOS)} (default all)")
    p.add_argument("--be-job", choices=(*BE_JOBS, "none"), help="the best-effort job (default gpt2_training; "
                                                                "none: the services by themselves only)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    console = Console()
    simulated = args.sim or environment()["simulated"]
    given = {"duration_s": args.duration, "warmup_s": args.warmup, "size": args.size}
    kw: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
    if args.scenarios is not None:
        kw["scenarios"] = tuple(x.strip() for x in args.scenarios.split(",") if x.strip())
    if args.be_job is not None:
        kw["be_job"] = None if args.be_job == "none" else args.be_job
    try:
        if simulated:
            from lithos_atom.bench.sim_stacking import SimStackConfig, run_sim

            cfg: StackConfig = SimStackConfig(seed=args.seed, **kw)
        else:
            cfg = StackConfig(seed=args.seed, **kw)
    except ValueError as exc:
        p.error(str(exc))
    if simulated:
        console.print("[bold yellow]SIMULATED DEVICE[/]: virtual-time results of the simulated device, not GPU "
                      "measurements.")
        out = run_sim(cfg, console)
    else:
        from lithos_atom.bench.stacking_gpu import run_gpu

        out = run_gpu(cfg, console)
    print_study(out, console)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1, default=str))
        console.print(f"JSON written to {args.json}")
    if args.plot:
        for path in plot(out, args.plot):
            console.print(f"plot: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
