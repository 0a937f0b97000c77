"""Diagnostic: where the best-effort thread's host time goes, for the ML bench's batch
inference (many short kernels; under lithos its GPU idled 59-65 % of the time between
issues, bench/results/h200-2026-12-04-run8 and -run10).

1. Steps on a plain stream, queued back to back: host time per step (the issue alone).
2. The same inside a lithos best-effort tenant, with no latency-critical thread, under the
   default policy and with every launch through its plan (``short_best_effort_whole``
   off): host and wall time per step, launches and atoms per launch, the scheduler's time
   issuing and waiting for queue room, and its atoms' device time over the wall time (the
   GPU's busy share).
3. A cProfile of the default policy's steps (top functions by own time).

Usage (on the GPU): python scripts/diag_be_host.py OUT_JSON [steps]
"""

from __future__ import annotations

import cProfile
import io
import json
import pstats
import sys
import time

import cupy

import kernels
from lithos_atom.optin import using_atomizer
from lithos_atom.bench import ml_tenants
from lithos_atom.bench.ml_colocation import MLColocationConfig
from lithos_atom.bench.tenant_pair import pair_specs
from lithos_sched import Scheduler, open_device
from lithos_sched.policy import Policy

OUT = sys.argv[1] if len(sys.argv) > 1 else "diag-be-host.json"
STEPS = int(sys.argv[2]) if len(sys.argv) > 2 else 200
cfg = MLColocationConfig(pairs=("batch_inference",), lc_rate_hz=100.0)
device = open_device(simulate=False)
plain = cupy.cuda.Stream(non_blocking=True)
kernels.reset_cache()
job = ml_tenants.build_be(cfg, "batch_inference", plain)
job.step(plain)
plain.synchronize()
result: dict = {"device": device.describe(), "steps": STEPS}


def steps(stream, n: int) -> dict:  # noqa: ANN001
    """``n`` steps queued back to back: host time per step, and wall time per step once
    the GPU has finished them."""
    t0 = time.perf_counter()
    for _ in range(n):
        job.step(stream)
    t1 = time.perf_counter()
    stream.synchronize()
    t2 = time.perf_counter()
    return {"host_us_per_step": (t1 - t0) / n * 1e6, "wall_us_per_step": (t2 - t0) / n * 1e6}


result["plain"] = steps(plain, STEPS)
print("plain", result["plain"], flush=True)

#: Scheduler policies measured side by side: the default, and every launch through its plan
VARIANTS = {"lithos_be_alone": Policy(), "lithos_be_alone_all_planned": Policy(short_best_effort_whole=False)}
kernels.reset_cache()
with using_atomizer(None):  # rebuilds the kernel objects as intercepting ones
    job.step(plain)
    plain.synchronize()
    for variant, policy in VARIANTS.items():
        sched = Scheduler(device, pair_specs(cfg.lc_share), policy)
        try:
            be = sched.tenant("be")
            with be:
                s = cupy.cuda.get_current_stream()
                steps(s, 5)  # first launches: the rewrite, and the predictor's first samples
                stats = be.stats
                k0, issue0, wait0, busy0 = stats.kernels, stats.host_issue_us, stats.queue_wait_ms, stats.busy_ms
                res = steps(s, STEPS)
                be.synchronize()
                launches = (stats.kernels - k0) / STEPS
                res.update({
                    "launches_per_step": launches,
                    "atoms_per_launch": stats.atoms / stats.kernels,
                    "issue_us_per_launch": (stats.host_issue_us - issue0) / (stats.kernels - k0),
                    "queue_wait_us_per_step": (stats.queue_wait_ms - wait0) * 1e3 / STEPS,
                    "atom_device_time_share": (stats.busy_ms - busy0) * 1e3 / (res["wall_us_per_step"] * STEPS),
                })
                result[variant] = res
                print(variant, res, flush=True)
                if variant == "lithos_be_alone":
                    prof = cProfile.Profile()
                    prof.enable()
                    steps(s, STEPS)
                    prof.disable()
                    text = io.StringIO()
                    pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(30)
                    result["profile"] = text.getvalue()
                    print(result["profile"][:4000], flush=True)
        finally:
            sched.close()
kernels.reset_cache()
with open(OUT, "w") as f:
    json.dump(result, f, indent=1, default=str)
