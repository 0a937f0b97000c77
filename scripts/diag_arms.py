"""Diagnostic: lithos under several host settings ("arms"), on the synthetic co-location
pair and the ML bench's pairs (inference + training, inference + batch inference),
interleaved round by round so a drifting host shows
up in every arm. Each round also runs the latency-critical tenant alone (plain streams).

Arms (see ARMS): which threads keep the GIL in lithos' driver calls (``LITHOS_HOLD_GIL``),
the GIL switch interval while the pair runs, and changes to the scheduler's `Policy`.

Each round of the ML pair also runs the static split at the inference shares of
STATIC_SHARES (arms ``static@<share>``, plain streams on two green-context partitions):
the best-effort references that lithos' training must beat at the same inference tail.
An arm's changes may hold ``lc_share``: the inference tenant's share under lithos.

Usage (on the GPU):
    python scripts/diag_arms.py OUT_JSON [seconds per run] [rounds] [arm,arm,...] [pair,pair] [share,share]
    (pairs: synthetic, ml_training, ml_batch; synthetic and ml_training by default; static
    shares: the ML bench's lc_share)
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys

import cupy

import diag_common
import kernels
from lithos_atom.optin import using_atomizer
from lithos_atom.bench import colocation_bench, ml_tenants
from lithos_atom.bench.ml_colocation import MLColocationConfig
from lithos_atom.bench.ml_gpu import figures, run_tenants
from lithos_atom.bench.tenant_pair import pair_specs, pair_tpcs
from lithos_atom.settings import reload_settings
from lithos_sched import Scheduler, open_device
from lithos_sched.policy import Policy

OUT = sys.argv[1] if len(sys.argv) > 1 else "diag-hold-gil.json"
SECONDS = float(sys.argv[2]) if len(sys.argv) > 2 else 4.0
ROUNDS = int(sys.argv[3]) if len(sys.argv) > 3 else 2
#: name -> (LITHOS_HOLD_GIL, GIL switch interval in seconds, Policy changes)
ARMS: dict[str, tuple[str, float, dict]] = {
    "hold_lc": ("latency-critical", 5e-5, {}),
    "hold_all": ("all", 5e-5, {}),
    "hold_none": ("none", 5e-5, {}),
    "switch_1ms": ("latency-critical", 1e-3, {}),
    "switch_5ms": ("latency-critical", 5e-3, {}),
    "yield_0": ("latency-critical", 5e-5, {"yield_queue_us": 0.0}),
    "yield_atom": ("latency-critical", 5e-5, {"yield_queue_us": 1000.0}),
    "yield_250": ("latency-critical", 5e-5, {"yield_queue_us": 250.0}),
    "grace_2ms": ("latency-critical", 5e-5, {"lc_idle_grace_us": 2000.0}),
    # best-effort threads held during marked requests (the default) or not: the pairs mark them
    "hold_requests": ("latency-critical", 5e-5, {}),
    "no_request_hold": ("latency-critical", 5e-5, {"hold_best_effort_in_requests": False}),
    # let kernels whose blocks run up to 1.5 ms steal (the training's backward GEMM, ~1 ms
    # per block on the H200, never stole at 1 ms: bench/results/h200-2026-12-04-run2)
    "steal_block_1500": ("latency-critical", 5e-5, {"steal_max_block_us": 1500.0}),
    # every kernel steals, whatever its blocks' length
    "steal_block_4000": ("latency-critical", 5e-5, {"steal_max_block_us": 4000.0}),
    # and stolen atoms queued four times deeper (fewer wake-ups of the best-effort thread)
    "steal_1500_deep": ("latency-critical", 5e-5, {"steal_max_block_us": 1500.0, "queue_cap_us": 1000.0}),
    # no latency-critical launch timed with events (the predictor and the accounting then
    # have no samples of its kernels): what timing one launch in 32 costs its requests
    "lc_untimed": ("latency-critical", 5e-5, {"lc_timing_every": 10**9}),
    # best-effort threads sleep in the driver while they wait for their atoms (blocking-sync
    # events), as the baselines' best-effort loops do, instead of spinning a core
    "be_blocking_waits": ("latency-critical", 5e-5, {"blocking_waits": "best-effort"}),
    # the inference tenant on fewer TPCs (its requests are host-bound), every kernel stealing
    "steal_4000_lc_0.375": ("latency-critical", 5e-5, {"steal_max_block_us": 4000.0, "lc_share": 0.375}),
    "steal_4000_lc_0.25": ("latency-critical", 5e-5, {"steal_max_block_us": 4000.0, "lc_share": 0.25}),
    "steal_1500_lc_0.25": ("latency-critical", 5e-5, {"steal_max_block_us": 1500.0, "lc_share": 0.25}),
    # every best-effort launch through its rewritten-kernel plan, short ones too (before
    # `Policy.short_best_effort_whole`)
    "all_planned": ("latency-critical", 5e-5, {"short_best_effort_whole": False}),
    "default": ("latency-critical", 5e-5, {}),
}
CHOSEN = sys.argv[4].split(",") if len(sys.argv) > 4 else list(ARMS)
#: ML pairs: the best-effort job beside the inference service
ML_PAIRS = {"ml_training": "training", "ml_batch": "batch_inference"}
PAIRS = sys.argv[5].split(",") if len(sys.argv) > 5 else ["synthetic", "ml_training"]
unknown = [a for a in CHOSEN if a not in ARMS] + [p for p in PAIRS if p != "synthetic" and p not in ML_PAIRS]
if unknown:
    sys.exit(f"unknown arms or pairs: {unknown} (arms: {sorted(ARMS)}; pairs: synthetic, {', '.join(ML_PAIRS)})")
device = open_device(simulate=False)

# the synthetic pair of the co-location section
co_cfg = colocation_bench.ColocationConfig(duration_s=SECONDS)
_, w = colocation_bench.setup_gpu(co_cfg)
plain = cupy.cuda.Stream(non_blocking=True)


def co_alone() -> dict:
    import contextlib

    res = colocation_bench._run_pair(w, (contextlib.nullcontext, lambda: plain), None, SECONDS)
    return brief_co(res)


def brief_co(res: dict) -> dict:
    hp = res["hp"]
    out = {"p50_ms": hp["p50_ms"], "p99_ms": hp["p99_ms"], "phases_p99_ms": hp.get("phases_p99_ms")}
    if "be" in res:
        out["be_kernels_per_s"] = res["be"]["kernels_per_s"]
    if "scheduler" in res:
        t = res["scheduler"]["tenants"]
        out["lc_host_us_per_launch"] = t["lc"]["host_us_per_atom"]
        out["be_host_us_per_atom"] = t["be"]["host_us_per_atom"]
    return out


# the ML section's pairs: the inference service beside training or batch inference
ml_cfg = MLColocationConfig(pairs=("training",), duration_s=SECONDS, lc_rate_hz=100.0)
STATIC_SHARES = [float(x) for x in sys.argv[6].split(",")] if len(sys.argv) > 6 else [ml_cfg.lc_share]
static_splits = {share: tuple(device.partition(t) for t in pair_tpcs(share, device.num_tpcs))
                 for share in STATIC_SHARES}
#: pair -> (plain stream, second plain stream, service, job, the job's iterations per second alone)
ml_pairs: dict[str, tuple] = {}
for pair in PAIRS:
    if pair in ML_PAIRS:
        plain_ml, plain_ml2, service, job = diag_common.ml_pair(ml_cfg, ML_PAIRS[pair])
        alone = figures(ml_cfg, ml_tenants.run_threads(ml_cfg, None, ((lambda s=plain_ml2: s), job.step)))
        ml_pairs[pair] = (plain_ml, plain_ml2, service, job, alone["be"]["iters_per_s"])


def brief_ml(fig: dict, be_alone: float, stats: dict | None = None) -> dict:
    hp = fig["hp"]
    out = {k: hp[k] for k in ("p50_ms", "p99_ms", "p99_ci95_ms")}
    out["phases_p99_ms"] = hp.get("phases_p99_ms")
    if "be" in fig:
        out["be_norm"] = fig["be"]["iters_per_s"] / be_alone
    if stats is not None:
        out["lc_host_us_per_launch"] = stats["lc"]["host_us_per_atom"]
        out["be_host_us_per_atom"] = stats["be"]["host_us_per_atom"]
    return out


def use(arm: str) -> float:
    """Apply the arm's GIL setting; returns its switch interval."""
    mode, interval, _ = ARMS[arm]
    os.environ["LITHOS_HOLD_GIL"] = mode
    reload_settings()
    ml_tenants.SWITCH_INTERVAL_S = interval  # what the ML pair's threads run with
    return interval


runs: list[dict] = []


def note(entry: dict) -> None:
    runs.append(entry)
    print({k: v for k, v in entry.items() if k != "p99_ci95_ms"}, flush=True)


for rnd in range(ROUNDS):
    use("hold_lc")  # the alone runs and the static split: the shipped settings
    if "synthetic" in PAIRS:
        note({"round": rnd, "pair": "synthetic", "arm": "alone", **co_alone()})
    for pair, (plain_ml, _, service, job, be_alone) in ml_pairs.items():
        kernels.reset_cache()
        note({"round": rnd, "pair": pair, "arm": "alone",
              **brief_ml(figures(ml_cfg, ml_tenants.run_threads(ml_cfg, ((lambda s=plain_ml: s), service), None)),
                         be_alone)})
        for share, (static_lc, static_be) in static_splits.items():
            note({"round": rnd, "pair": pair, "arm": f"static@{share:g}",
                  **brief_ml(figures(ml_cfg, ml_tenants.run_threads(
                      ml_cfg, ((lambda p=static_lc: p.high.cupy), service),
                      ((lambda p=static_be: p.normal.cupy), job.step))), be_alone)})
    for arm in CHOSEN:
        interval = use(arm)
        changes = dict(ARMS[arm][2])
        lc_share = changes.pop("lc_share", ml_cfg.lc_share)
        if "synthetic" in PAIRS:
            res, _, _, _ = colocation_bench.run_lithos(co_cfg, w, device,
                                                    co_cfg.policy(gil_switch_interval_s=interval, **changes))
            note({"round": rnd, "pair": "synthetic", "arm": arm, **brief_co(res)})
        for pair, (plain_ml, _, service, job, be_alone) in ml_pairs.items():
            kernels.reset_cache()
            with using_atomizer(None):
                service.warmup(plain_ml)
                sched = Scheduler(device, pair_specs(lc_share), Policy(gil_switch_interval_s=interval, **changes))
                try:
                    fig = figures(ml_cfg, run_tenants(ml_cfg, sched, service, job))
                    stats = sched.stats()["tenants"]
                finally:
                    sched.close()
            note({"round": rnd, "pair": pair, "arm": arm, **brief_ml(fig, be_alone, stats)})
use("hold_lc")
with open(OUT, "w") as f:
    json.dump({"device": device.describe(), "seconds": SECONDS, "rounds": ROUNDS, "arms": {a: ARMS[a] for a in CHOSEN},
               "co_config": dataclasses.asdict(co_cfg), "ml_config": dataclasses.asdict(ml_cfg), "runs": runs},
              f, indent=1, default=str)
