"""Diagnostic: where the inference tenant's host time goes in the ML co-location bench.

1. Per request (batch 8, back to back, synchronized): host issue time and total time on
   a plain stream, then inside a lithos latency-critical tenant with no best-effort
   thread; the count of intercepted launches per request.
2. A cProfile of 100 such requests inside the tenant (top functions by own time).
3. The inference + training pair co-located under lithos and variants (idle grace, no
   host yielding, no atoms, right-sizing), plus the stream-priorities baseline: p50/p99, phases at p99 and training
   throughput against training alone.

Usage (on the GPU): python scripts/diag_ml_host.py OUT_JSON [--lc-only]
"""

from __future__ import annotations

import cProfile
import dataclasses
import io
import json
import pstats
import sys
import time

import cupy
import numpy as np

import diag_common
import kernels
from lithos_atom.optin import using_atomizer
from lithos_atom.bench import ml_tenants
from lithos_atom.bench.ml_colocation import MLColocationConfig
from lithos_atom.bench.ml_gpu import figures, run_tenants
from lithos_atom.bench.tenant_pair import pair_specs
from lithos_sched import Scheduler, open_device
from lithos_sched.policy import Policy
from lithos_sched.rightsizing import RightSizer

OUT = sys.argv[1] if len(sys.argv) > 1 else "diag-ml-host.json"
LC_ONLY = "--lc-only" in sys.argv
cfg = MLColocationConfig(pairs=("training",), lc_rate_hz=100.0)
device = open_device(simulate=False)
plain, plain2, service, job = diag_common.ml_pair(cfg)
result: dict = {"device": device.describe()}


def per_request(stream, n: int = 200, batch: int = 8) -> dict:
    issue, total = [], []
    for i in range(n):
        t0 = time.perf_counter()
        service.request(batch, stream, i)
        t1 = time.perf_counter()
        stream.synchronize()
        t2 = time.perf_counter()
        issue.append((t1 - t0) * 1e3)
        total.append((t2 - t0) * 1e3)
    return {"issue_ms_p50": float(np.median(issue)), "total_ms_p50": float(np.median(total)),
            "issue_ms_p99": float(np.percentile(issue, 99)), "total_ms_p99": float(np.percentile(total, 99))}


result["plain"] = per_request(plain)
print("plain", result["plain"], flush=True)
half = device.partition(range(device.num_tpcs // 2))
result["plain_on_partition"] = per_request(half.high.cupy)
print("plain on a partition's high stream", result["plain_on_partition"], flush=True)
specs = pair_specs(cfg.lc_share)

kernels.reset_cache()
with using_atomizer(None):
    service.warmup(plain)
    job.step(plain2)
    plain2.synchronize()
    result["intercepted_no_tenant"] = per_request(plain)
    print("intercepted, no tenant", result["intercepted_no_tenant"], flush=True)

    def lc_only(label: str, policy: Policy, sizer: RightSizer | None = None, warm: int = 5,
                profile: bool = False) -> None:
        """The inference tenant alone in a scheduler: per-request times, scheduler time per
        launch, intercepted launches per request and, with ``profile``, a cProfile."""
        sched = Scheduler(device, specs, policy, right_sizer=sizer)
        try:
            with sched.tenant("lc"):
                s = cupy.cuda.get_current_stream()
                per_request(s, warm)
                st = sched.tenant("lc").stats
                k0, h0 = st.kernels, st.host_issue_us
                out = result[label] = per_request(s)
                out["intercepted_per_request"] = (st.kernels - k0) / 200
                out["sched_us_per_launch"] = (st.host_issue_us - h0) / (st.kernels - k0)
                print(label, out, flush=True)
                if profile:
                    prof = cProfile.Profile()
                    prof.enable()
                    per_request(s, 100)
                    prof.disable()
                    buf = io.StringIO()
                    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(30)
                    result["profile_" + label.removeprefix("lithos_")] = buf.getvalue()
                    print(buf.getvalue()[:6000], flush=True)
        finally:
            sched.close()

    lc_only("lithos_lc_only_untimed", Policy(lc_timing_every=10**9))
    lc_only("lithos_lc_only", Policy(), profile=True)
    lc_only("lithos_lc_only_rightsized", Policy(), RightSizer(), warm=20)

    if LC_ONLY:
        with open(OUT, "w") as f:
            json.dump(result, f, indent=1, default=str)
        sys.exit(0)

    def colocated(policy: Policy, sizer: RightSizer | None = None) -> dict:
        ml_tenants.SWITCH_INTERVAL_S = policy.gil_switch_interval_s  # run_threads applies it too
        sched = Scheduler(device, specs, policy, right_sizer=sizer)
        try:
            raw = run_tenants(cfg, sched, service, job)
        finally:
            sched.close()
        return figures(cfg, raw)

    def brief(fig: dict, be_alone: float | None) -> dict:
        hp = fig["hp"]
        out = {k: hp[k] for k in ("p50_ms", "p99_ms", "completed") if k in hp}
        out["phases_p99_ms"] = hp.get("phases_p99_ms")
        if "be" in fig and be_alone:
            out["be_norm"] = fig["be"]["iters_per_s"] / be_alone
        return out

    be_alone = figures(cfg, ml_tenants.run_threads(cfg, None, ((lambda: plain2), job.step)))["be"]["iters_per_s"]
    result["be_alone_per_s"] = be_alone
    runs = {}
    for label, policy, sizer in (("lithos", Policy(), None),
                                 ("lithos_grace500", Policy(lc_idle_grace_us=500), None),
                                 ("lithos_noyield", Policy(yield_host_to_latency_critical=False), None),
                                 ("lithos_no_atoms", Policy(atomize_best_effort=False), None),
                                 ("lithos_rightsized", Policy(), RightSizer())):
        runs[label] = brief(colocated(policy, sizer), be_alone)
        print(label, runs[label], flush=True)
    ml_tenants.SWITCH_INTERVAL_S = Policy().gil_switch_interval_s
kernels.reset_cache()
hi = cupy.cuda.Stream(non_blocking=True, priority=device.greatest_priority)
lo = cupy.cuda.Stream(non_blocking=True, priority=0)
for label, interval in (("priorities", 5e-5),):
    ml_tenants.SWITCH_INTERVAL_S = interval
    runs[label] = brief(figures(cfg, ml_tenants.run_threads(cfg, ((lambda: hi), service), ((lambda: lo), job.step))),
                        be_alone)
    print(label, runs[label], flush=True)
runs["alone"] = brief(figures(cfg, ml_tenants.run_threads(cfg, ((lambda: plain), service), None)), None)
print("alone", runs["alone"], flush=True)
result["colocated"] = runs
result["config"] = dataclasses.asdict(cfg)
with open(OUT, "w") as f:
    json.dump(result, f, indent=1, default=str)
