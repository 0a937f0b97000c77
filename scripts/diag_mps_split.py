"""Diagnostic: the ML bench's pairs with each tenant in its own process under MPS, on
green-context partitions, against the same split in one process (two Python threads), and
lithos across processes, interleaved round by round.

Under lithos and the in-process static split, the inference service and the best-effort
job are two threads of one interpreter; their p99 stayed 1.2-1.7x above the service alone
even on a static split (bench/results/h200-2026-12-04-run12-*), where no lithos code runs.
With a process per tenant under MPS (`lithos_atom.bench.ml_colocation_worker`), whose green
contexts keep to their own SMs (run14), the static split kept the inference tail near
alone (run13). This compares, per pair and round:

- ``alone``: the service alone, in this process;
- ``thread_static``: the static split at the default share in this process (the ML
  bench's ``static_split``);
- ``mps_static@share``: the static split with a process per tenant, at each share of
  SHARES (the ML bench's ``mps_static_split`` sweep);
- ``mps_be_only`` (arm): only the best-effort process on its partition, the service's
  process on an ordinary stream over the whole GPU;
- ``lithos_mps`` and its variants (arms): lithos across processes (the ML bench's
  ``lithos_mps``), the best-effort scheduler's `Policy` changed as `LITHOS_ARMS` says, or its
  process given the environment `BE_ENV_ARMS` says; ``lithos_mps_rightsized``: the ML
  bench's scenario of that name, each request on the first TPCs its batch needs (profiled
  once, before the first round), the others left to the best-effort process.

MPS_LC_BATCH=lo,hi (environment) sets the inference batches (default the bench's, 1-8).

Usage (on the GPU):
    python scripts/diag_mps_split.py OUT_JSON [seconds per run] [rounds] [pair,pair] [share,share] [arm,arm]
    (pairs: training, batch_inference, each also as ``pair:unsplit``, its job with
    `MLColocationConfig.training_gemm_max_k` None, interleaved with the default; shares: static splits' inference shares, the first
    also the in-process split's and lithos'; arms: mps_be_only and those of LITHOS_ARMS and BE_ENV_ARMS,
    each at the first share or at another as ``arm@share``)
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys

import cupy

import diag_common
import kernels
from lithos_atom.bench import ml_tenants
from lithos_atom.bench.ml_colocation import MLColocationConfig
from lithos_atom.bench.ml_colocation_worker import WorkerError, run_process_pair
from lithos_atom.bench.ml_gpu import figures, inference_request_tpcs
from lithos_atom.bench.mps import MPSDaemon
from lithos_atom.bench.tenant_pair import pair_tpcs
from lithos_sched import open_device

#: lithos across processes: arm -> changes to the best-effort scheduler's Policy
#: (``lithos_mps`` is the ML bench's default, `MLColocationConfig.mps_steal_max_block_us`)
LITHOS_ARMS: dict[str, dict] = {
    "lithos_mps": {},
    # waits for room on its own TPCs blocking, as before Policy.steal_poll_us
    "lithos_mps_no_poll": {"steal_poll_us": 0.0},
    # atoms of 1 ms on its own TPCs too: back on the stolen ones sooner after a request
    "lithos_mps_home_1000": {"home_atom_us": 1000.0},
    # blocks up to 4 ms steal (the weight-gradient SGEMM's ~1.1 ms ones too): more
    # training, and a p99 higher on a quiet host (runs 17, 18 and 20)
    "lithos_mps_steal_4000": {"steal_max_block_us": 4000.0},
    # the inference process's first 8 TPCs never stolen: a request starts on them at once
    "lithos_mps_reserve_8": {"steal_reserve_tpcs": 8},
    "lithos_mps_steal_4000_reserve_8": {"steal_max_block_us": 4000.0, "steal_reserve_tpcs": 8},
    # stolen atoms of 0.5 ms with 0.1 ms queued: across processes the best-effort
    # interpreter's issue cost no longer holds the service's GIL, which is what kept
    # atom_us at 1 ms in one process; an arriving request waits behind less
    "lithos_mps_atom_500": {"atom_us": 500.0, "queue_cap_us": 100.0},
    # the next atom queued behind the running one before it ends (Policy.issue_ahead_of_drain;
    # run28 and run29 name the default "none" lithos_mps_drain_wait): on the tenant's own
    # TPCs, or on stolen ones too
    "lithos_mps_ahead_home": {"issue_ahead_of_drain": "home"},
    "lithos_mps_ahead_all": {"issue_ahead_of_drain": "all"},
}
#: arm -> variables for the best-effort worker only (its Policy is the arm's base one)
BE_ENV_ARMS: dict[str, tuple[str, dict[str, str]]] = {
    # the best-effort process an MPS client of BELOW_NORMAL priority: its queued blocks
    # go after the service's on shared SMs, whatever the streams' priorities
    "lithos_mps_be_below_normal": ("lithos_mps", {"CUDA_MPS_CLIENT_PRIORITY": "1"}),
    "lithos_mps_steal_4000_be_below_normal": ("lithos_mps_steal_4000", {"CUDA_MPS_CLIENT_PRIORITY": "1"}),
}


#: arms right-sized across processes -> the lithos arm they otherwise are
RIGHTSIZED_ARMS: dict[str, str] = {"lithos_mps_rightsized": "lithos_mps"}


def arm_setup(name: str) -> tuple[dict, dict[str, str]]:
    """A lithos arm's Policy changes and its best-effort worker's extra environment."""
    name = RIGHTSIZED_ARMS.get(name, name)
    if name in BE_ENV_ARMS:
        base, be_env = BE_ENV_ARMS[name]
        return LITHOS_ARMS[base], be_env
    return LITHOS_ARMS[name], {}


OUT = sys.argv[1] if len(sys.argv) > 1 else "diag-mps-split.json"
SECONDS = float(sys.argv[2]) if len(sys.argv) > 2 else 6.0
ROUNDS = int(sys.argv[3]) if len(sys.argv) > 3 else 3
PAIRS = sys.argv[4].split(",") if len(sys.argv) > 4 else ["training", "batch_inference"]
SHARES = [float(x) for x in sys.argv[5].split(",")] if len(sys.argv) > 5 else [0.5]
ARMS = sys.argv[6].split(",") if len(sys.argv) > 6 else ["mps_be_only"]
#: MPS_THREAD_STATIC=0 leaves out the in-process static split (a shorter call)
THREAD_STATIC = os.environ.get("MPS_THREAD_STATIC", "1") != "0"


def arm_share(arm: str) -> tuple[str, float]:
    """``"lithos_mps@0.5"`` -> ("lithos_mps", 0.5): a lithos arm at another share of SHARES
    than the first."""
    name, _, share = arm.partition("@")
    return name, float(share) if share else SHARES[0]


KNOWN_ARMS = [*LITHOS_ARMS, *BE_ENV_ARMS, *RIGHTSIZED_ARMS]
unknown = [a for a in ARMS if a != "mps_be_only" and (arm_share(a)[0] not in KNOWN_ARMS or arm_share(a)[1] not in SHARES)]
if unknown:
    sys.exit(f"unknown arms {unknown}; arms: mps_be_only, {', '.join(KNOWN_ARMS)}, each with @share of {SHARES}")

#: pair label -> (best-effort kind, its config): ``kind`` runs the bench's default config,
#: ``kind:unsplit`` the same with every training GEMM unsplit (an A/B of the workload)
LC_BATCH = tuple(int(b) for b in os.environ["MPS_LC_BATCH"].split(",")) if "MPS_LC_BATCH" in os.environ else None
cfg = MLColocationConfig(pairs=tuple(dict.fromkeys(p.partition(":")[0] for p in PAIRS)), duration_s=SECONDS,
                         lc_rate_hz=100.0, lc_share=SHARES[0], **({"lc_batch": LC_BATCH} if LC_BATCH else {}))
variants = {"": cfg, "unsplit": dataclasses.replace(cfg, training_gemm_max_k=None)}
bad_pairs = [p for p in PAIRS if p.partition(":")[2] not in variants]
if bad_pairs:
    sys.exit(f"unknown pair variants {bad_pairs}; a pair is a kind or kind:unsplit")
pair_cfg = {p: (p.partition(":")[0], variants[p.partition(":")[2]]) for p in PAIRS}

device = open_device(simulate=False)
splits = {share: tuple(sorted(t) for t in pair_tpcs(share, device.num_tpcs)) for share in SHARES}
lc_part, be_part = (device.partition(t) for t in splits[SHARES[0]])
pairs = {label: diag_common.ml_pair(c, kind) for label, (kind, c) in pair_cfg.items()}
#: share -> TPCs by batch of the right-sized arms' requests
request_tpcs = {share: inference_request_tpcs(cfg, device, len(splits[share][0]))
                for share in {arm_share(a)[1] for a in ARMS if arm_share(a)[0] in RIGHTSIZED_ARMS}}
print({"request_tpcs": request_tpcs}, flush=True)
be_alone = {label: figures(pair_cfg[label][1], ml_tenants.run_threads(pair_cfg[label][1], None,
                                                                      ((lambda s=p[1]: s), p[3].step)))["be"]["iters_per_s"]
            for label, p in pairs.items()}
runs: list[dict] = []


def note(entry: dict) -> None:
    runs.append(entry)
    print(entry, flush=True)


def brief(kind: str, fig: dict, raw: dict | None = None) -> dict:
    hp = fig["hp"]
    out = {"p50_ms": hp["p50_ms"], "p99_ms": hp["p99_ms"], "phases_p99_ms": hp.get("phases_p99_ms")}
    if "be" in fig:
        out["be_norm"] = fig["be"]["iters_per_s"] / be_alone[kind]
    if raw and raw.get("placement"):
        out["placement"] = raw["placement"]
    if raw and "be_scheduler" in raw:
        out["be_occupancy"] = raw["be_scheduler"]["be_occupancy"]
        out["stolen_atoms"] = raw["be_scheduler"]["scheduler"]["tenants"]["be"]["stolen_atoms"]
    return out


with MPSDaemon() as daemon:
    env = daemon.client_env()

    def processes(rnd: int, label: str, arm: str, **placed: object) -> None:
        kind, c = pair_cfg[label]
        try:
            raw = run_process_pair(c, kind, env=env, **placed)
        except WorkerError as exc:  # one failed arm must not void the others
            note({"round": rnd, "pair": label, "arm": arm, "error": str(exc), "daemon_log": daemon.log_tail()})
            return
        note({"round": rnd, "pair": label, "arm": arm, **brief(label, figures(c, raw), raw)})

    for rnd in range(ROUNDS):
        for kind, (plain, _, service, job) in pairs.items():
            c = pair_cfg[kind][1]
            kernels.reset_cache()
            note({"round": rnd, "pair": kind, "arm": "alone",
                  **brief(kind, figures(c, ml_tenants.run_threads(c, ((lambda s=plain: s), service), None)))})
            if THREAD_STATIC:
                note({"round": rnd, "pair": kind, "arm": "thread_static",
                      **brief(kind, figures(c, ml_tenants.run_threads(
                          c, ((lambda: lc_part.high.cupy), service), ((lambda: be_part.normal.cupy), job.step))))})
            for share, (lc_tpcs, be_tpcs) in splits.items():
                processes(rnd, kind, f"mps_static@{share:g}", tpcs={"lc": lc_tpcs, "be": be_tpcs})
            for arm in ARMS:
                if arm == "mps_be_only":
                    processes(rnd, kind, arm, tpcs={"be": splits[SHARES[0]][1]})
                else:
                    name, share = arm_share(arm)
                    policy, be_env = arm_setup(name)
                    sized = {"request_tpcs": request_tpcs[share]} if name in RIGHTSIZED_ARMS else {}
                    processes(rnd, kind, arm, tpcs={"lc": splits[share][0]}, lithos=True, policy=policy,
                              role_env={"be": be_env}, **sized)
    servers = daemon.server_list()
cupy.cuda.Device().synchronize()
summary = diag_common.round_summary(runs)
for row in summary:
    line = "below every split's p99" if row["x_static_line"] is None else f"{row['x_static_line']:.2f}x the static line"
    print(f"round {row['round']} {row['pair']} {row['arm']}: p99 {row['p99_ms']:.2f} ms "
          f"({row['x_alone']:.2f}x alone), best-effort {row['be_norm']:.3f} of alone, {line}", flush=True)
with open(OUT, "w") as f:
    json.dump({"device": device.describe(), "seconds": SECONDS, "rounds": ROUNDS, "shares": SHARES, "arms": ARMS,
               "lithos_arms": {a: dict(zip(("policy", "be_env"), arm_setup(arm_share(a)[0])))
                               for a in ARMS if a != "mps_be_only"},
               "mps": {"server_list": servers, "stop": daemon.stop_status},
               "config": dataclasses.asdict(cfg), "pairs": {p: {"kind": k, "training_gemm_max_k": c.training_gemm_max_k}
                                                            for p, (k, c) in pair_cfg.items()},
               "be_alone_iters_per_s": be_alone, "request_tpcs": request_tpcs, "runs": runs, "summary": summary},
              f, indent=1, default=str)
