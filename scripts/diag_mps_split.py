"""Diagnostic: the ML bench's pairs with each tenant in its own process under MPS, on
green-context partitions, against the same split in one process (two Python threads).

Under lithos and the in-process static split, the inference service and the best-effort
job are two threads of one interpreter; their p99 stays 1.2-1.7x above the service alone
even on a static split (bench/results/h200-2026-12-04-run12-*), where no lithos code runs.
This measures how much of that is the shared interpreter: the same TPC split, each tenant
in a worker process (`lithos_sched.ml_colocation_worker`) under a private MPS daemon, which
runs both processes' kernels at once. It also checks that a green context confines an MPS
client's kernels (the workers report the SMs a probe kernel ran on).

Each round runs, per pair, interleaved:
- ``alone``: the service alone, in this process;
- ``thread_static``: the static split in this process (the ML bench's static scenario);
- ``mps_static``: the static split, each tenant in its own process under MPS;
- ``mps_be_only``: only the best-effort process on its partition; the service's process
  on an ordinary stream over the whole GPU.

Usage (on the GPU):
    python scripts/diag_mps_split.py OUT_JSON [seconds per run] [rounds] [pair,pair] [lc share]
    (pairs: training, batch_inference)
"""

from __future__ import annotations

import dataclasses
import json
import sys

import cupy

import diag_common
import kernels
from lithos_sched import ml_tenants, open_device
from lithos_sched.ml_colocation import MLColocationConfig
from lithos_sched.ml_colocation_worker import WorkerError, run_process_pair
from lithos_sched.ml_gpu import figures
from lithos_sched.mps import MPSDaemon
from lithos_sched.tenant import pair_tpcs

OUT = sys.argv[1] if len(sys.argv) > 1 else "diag-mps-split.json"
SECONDS = float(sys.argv[2]) if len(sys.argv) > 2 else 6.0
ROUNDS = int(sys.argv[3]) if len(sys.argv) > 3 else 3
PAIRS = sys.argv[4].split(",") if len(sys.argv) > 4 else ["training", "batch_inference"]
SHARE = float(sys.argv[5]) if len(sys.argv) > 5 else 0.5

device = open_device(simulate=False)
cfg = MLColocationConfig(pairs=tuple(PAIRS), duration_s=SECONDS, lc_share=SHARE)
lc_tpcs, be_tpcs = pair_tpcs(SHARE, device.num_tpcs)
lc_part, be_part = device.partition(lc_tpcs), device.partition(be_tpcs)
pairs = {kind: diag_common.ml_pair(cfg, kind) for kind in PAIRS}
be_alone = {kind: figures(cfg, ml_tenants.run_threads(cfg, None, ((lambda s=p[1]: s), p[3].step)))["be"]["iters_per_s"]
            for kind, p in pairs.items()}
runs: list[dict] = []


def note(entry: dict) -> None:
    runs.append(entry)
    print(entry, flush=True)


def brief(kind: str, fig: dict, placement: dict | None = None) -> dict:
    hp = fig["hp"]
    out = {"p50_ms": hp["p50_ms"], "p99_ms": hp["p99_ms"], "phases_p99_ms": hp.get("phases_p99_ms")}
    if "be" in fig:
        out["be_norm"] = fig["be"]["iters_per_s"] / be_alone[kind]
    if placement:
        # whether each worker's probe ran only on its partition's SMs
        out["placement"] = placement
        out["confined"] = {role: None if p["partition_sms"] is None else set(p["sms_seen"]) <= set(p["partition_sms"])
                           for role, p in placement.items()}
    return out


with MPSDaemon() as daemon:
    env = daemon.client_env()
    for rnd in range(ROUNDS):
        for kind, (plain, _, service, job) in pairs.items():
            kernels.reset_cache()
            note({"round": rnd, "pair": kind, "arm": "alone",
                  **brief(kind, figures(cfg, ml_tenants.run_threads(cfg, ((lambda s=plain: s), service), None)))})
            note({"round": rnd, "pair": kind, "arm": "thread_static",
                  **brief(kind, figures(cfg, ml_tenants.run_threads(
                      cfg, ((lambda: lc_part.high.cupy), service), ((lambda: be_part.normal.cupy), job.step))))})
            for arm, tpcs in (("mps_static", {"lc": lc_tpcs, "be": be_tpcs}), ("mps_be_only", {"be": be_tpcs})):
                try:
                    raw = run_process_pair(cfg, kind, env=env, tpcs=tpcs)
                except WorkerError as exc:  # green contexts refused in an MPS client, say: keep the rest
                    note({"round": rnd, "pair": kind, "arm": arm, "error": str(exc), "daemon_log": daemon.log_tail()})
                    continue
                note({"round": rnd, "pair": kind, "arm": arm, **brief(kind, figures(cfg, raw), raw["placement"])})
    servers = daemon.server_list()
cupy.cuda.Device().synchronize()
with open(OUT, "w") as f:
    json.dump({"device": device.describe(), "seconds": SECONDS, "rounds": ROUNDS, "lc_share": SHARE,
               "mps": {"server_list": servers, "stop": daemon.stop_status},
               "config": dataclasses.asdict(cfg), "be_alone_iters_per_s": be_alone, "runs": runs},
              f, indent=1, default=str)
