"""Each inference service alone on the whole GPU: graph replay against launches from Python.

``python -m lithos_atom.bench.services_alone [--services a,b] [--load F] [--duration S] [--json PATH]``

For every service of `lithos_atom.bench.ml_services.SERVICES` (random weights, its own
batch sizes): its GPU time per batch size (back-to-back graph replays between CUDA
events), then Poisson requests at ``--load`` of its capacity (the rate at which the
GPU would be busy that fraction of the time, from the mean GPU time over its batch
sizes) served alone, once replaying a CUDA graph per batch size and once launching the
kernels from Python. Per variant: p50 and p99 latency, the p99 of each request's
latency over its batch size's GPU time (issue #20's target: within 1.3x when
graph-replayed), and the p99 host issue time. Needs a CUDA GPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lithos_atom.bench import ml_tenants
from lithos_atom.bench.ml_colocation import MLColocationConfig
from lithos_atom.bench.ml_figures import lc_figures
from lithos_atom.bench.ml_services import SERVICES

#: The issue's target for a graph-replayed service alone: p99 within this multiple of its GPU time.
TARGET_P99_OVER_GPU = 1.3


def gpu_ms(service: Any, batch: int, stream: Any, n: int = 20) -> float:
    """Mean GPU time (ms) of one request of ``batch``: ``n`` requests back to back between two events."""
    import cupy

    service.request(batch, stream)
    start, end = cupy.cuda.Event(), cupy.cuda.Event()
    start.record(stream)
    for _ in range(n):
        service.request(batch, stream)
    end.record(stream)
    end.synchronize()
    return cupy.cuda.get_elapsed_time(start, end) / n


def variant_figures(cfg: MLColocationConfig, rec: Any, gpu: dict[int, float]) -> dict[str, Any]:
    """`lc_figures` of one run plus ``p99_over_gpu`` (the p99 of each measured request's
    latency over its batch size's GPU time) and ``issue_p99_ms`` (host time issuing it)."""
    out = lc_figures(rec.arrivals_s, rec.latencies_ms, cfg, rec.phases_ms)
    _, batches = cfg.requests()
    n = len(rec.latencies_ms)
    keep = np.asarray(rec.arrivals_s) >= cfg.warmup_s
    ratio = np.asarray(rec.latencies_ms) / np.asarray([gpu[int(b)] for b in batches[:n]])
    issue = np.asarray([p[1] for p in rec.phases_ms])
    out["p99_over_gpu"] = float(np.percentile(ratio[keep], 99)) if keep.any() else None
    out["issue_p99_ms"] = float(np.percentile(issue[keep], 99)) if keep.any() else None
    out.pop("latencies_ms", None)
    return out


def run_service(name: str, load: float, duration_s: float, warmup_s: float, size: str, seed: int) -> dict[str, Any]:
    """One service: its GPU times, then alone at ``load`` graph-replayed and from Python."""
    import cupy

    base = MLColocationConfig(lc_service=name, size=size, seed=seed, duration_s=duration_s, warmup_s=warmup_s)
    stream = cupy.cuda.Stream(non_blocking=True)
    service = ml_tenants.build_lc(base, stream)
    service.warmup(stream)
    gpu = {b: gpu_ms(service, b, stream) for b in base.batch_sizes()}
    rate = load / (float(np.mean(list(gpu.values()))) / 1e3)
    cfg = dataclasses.replace(base, lc_rate_hz=rate)
    out: dict[str, Any] = {"gpu_ms": {str(b): t for b, t in gpu.items()}, "rate_hz": rate, "load": load}
    for variant, graphs in (("graph", True), ("python", False)):
        service.graphs = graphs
        raw = ml_tenants.run_group(cfg.span_s, [ml_tenants.LCThread(cfg, lambda: stream, service)], None, 1)
        out[variant] = variant_figures(cfg, raw["lc"][0], gpu)
    g = out["graph"]["p99_over_gpu"]
    out["graph_within_target"] = g is not None and g <= TARGET_P99_OVER_GPU
    del service
    cupy.get_default_memory_pool().free_all_blocks()
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Run every chosen service; returns the exit status (1 without a GPU, 2 for bad options)."""
    from rich.console import Console
    from rich.table import Table

    from lithos_atom.bench.environment import environment

    p = argparse.ArgumentParser(prog="python -m lithos_atom.bench.services_alone", description=__doc__.splitlines()[0])
    p.add_argument("--services", default=",".join(SERVICES), help=f"comma-separated, of {','.join(SERVICES)}")
    p.add_argument("--load", type=float, default=0.5, help="offered load as a fraction of capacity (default 0.5)")
    p.add_argument("--duration", type=float, default=3.0, help="measured seconds per variant (default 3)")
    p.add_argument("--warmup", type=float, default=0.5, help="unmeasured seconds before (default 0.5)")
    p.add_argument("--size", choices=("default", "small"), default="default", help="workload sizes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="write the results here")
    args = p.parse_args(argv)
    names = [s.strip() for s in args.services.split(",") if s.strip()]
    bad = [n for n in names if n not in SERVICES]
    if bad or not names:
        p.error(f"--services: choose from {','.join(SERVICES)}, got {args.services!r}")
    if not 0 < args.load < 1 or not args.duration > 0 or not args.warmup >= 0:
        p.error("--load must be in (0, 1), --duration > 0 and --warmup >= 0")
    if environment()["simulated"]:
        print(f"{p.prog}: error: needs a CUDA GPU (host issue time, what it compares, is not simulated)",
              file=sys.stderr)
        return 1
    console = Console()
    results = {}
    for name in names:
        console.print(f"[bold]{name}[/] ...")
        results[name] = run_service(name, args.load, args.duration, args.warmup, args.size, args.seed)
    table = Table(title=f"each service alone at load {args.load} (p99 / GPU time: target <= {TARGET_P99_OVER_GPU})")
    for col in ("service", "GPU ms by batch", "graph p50/p99 ms", "graph p99/GPU", "python p50/p99 ms",
                "python p99/GPU", "python issue p99 ms"):
        table.add_column(col)
    def f(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    for name, r in results.items():
        g, py = r["graph"], r["python"]
        table.add_row(name, " ".join(f"{b}:{t:.2f}" for b, t in r["gpu_ms"].items()),
                      f"{f(g['p50_ms'])}/{f(g['p99_ms'])}", f(g["p99_over_gpu"]),
                      f"{f(py['p50_ms'])}/{f(py['p99_ms'])}", f(py["p99_over_gpu"]), f(py["issue_p99_ms"]))
    console.print(table)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"config": vars(args) | {"json": str(args.json)}, "environment": environment(),
                                         "services": results}, indent=1, default=str))
        console.print(f"JSON written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
