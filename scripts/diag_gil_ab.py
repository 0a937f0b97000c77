"""Diagnostic: lithos' driver calls with the GIL held (as shipped: kernel launches, event
records, stream waits, event and stream queries, event timing) against the same calls through
CuPy, which releases it, on the inference + training pair; interleaved A/B/A/B so a drifting
host shows up in both arms.

Usage (on the GPU): python scripts/diag_gil_ab.py OUT_JSON [seconds per run]
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys

import cupy

import kernels
from lithos_atom.atomizer import using_atomizer
from lithos_atom import gil_held_driver
from lithos_atom.settings import reload_settings
from lithos_sched import Scheduler, ml_tenants, open_device
from lithos_sched.ml_colocation import MLColocationConfig
from lithos_sched.ml_gpu import figures, inference_right_sizer, run_tenants, tenant_specs
from lithos_sched.scheduler import Policy

OUT = sys.argv[1] if len(sys.argv) > 1 else "diag-gil-ab.json"
cfg = MLColocationConfig(pairs=("training",), duration_s=float(sys.argv[2]) if len(sys.argv) > 2 else 4.0)
device = open_device(simulate=False)
n_lc = round(cfg.lc_share * device.num_tpcs)
plain, plain2 = cupy.cuda.Stream(non_blocking=True), cupy.cuda.Stream(non_blocking=True)
kernels.reset_cache()
service = ml_tenants.build_lc(cfg, plain)
service.warmup(plain)
job = ml_tenants.build_be(cfg, "training", plain2)
job.step(plain2)
plain2.synchronize()
_NAMES = ("event_record", "stream_wait_event", "event_query", "stream_query", "event_elapsed_ms")
held = {name: getattr(gil_held_driver, name) for name in _NAMES}
released = {
    "event_record": lambda event, stream: cupy.cuda.runtime.eventRecord(event, stream),
    "stream_wait_event": lambda stream, event: cupy.cuda.runtime.streamWaitEvent(stream, event, 0),
    "event_query": lambda event: cupy.cuda.runtime.eventQuery(event) == 0,
    "stream_query": lambda stream: cupy.cuda.runtime.streamQuery(stream) == 0,
    "event_elapsed_ms": lambda start, end: cupy.cuda.runtime.eventElapsedTime(start, end),
}


def use(calls: dict, launch_held: bool) -> None:
    for name, fn in calls.items():
        setattr(gil_held_driver, name, fn)
    os.environ["LITHOS_GIL_HELD_LAUNCH"] = "1" if launch_held else "0"
    reload_settings()


specs = tenant_specs(cfg)
be_alone = figures(cfg, ml_tenants.run_threads(cfg, None, ((lambda: plain2), job.step)))["be"]["iters_per_s"]
sizer, _ = inference_right_sizer(cfg, device, n_lc)


def brief(fig: dict) -> dict:
    hp = fig["hp"]
    out = {k: hp[k] for k in ("p50_ms", "p99_ms", "p99_ci95_ms")}
    out["phases_p99_ms"] = hp.get("phases_p99_ms")
    if "be" in fig:
        out["be_norm"] = fig["be"]["iters_per_s"] / be_alone
    return out


runs: list[dict] = []
runs.append({"arm": "alone", **brief(figures(cfg, ml_tenants.run_threads(cfg, ((lambda: plain), service), None)))})
print(runs[-1], flush=True)
kernels.reset_cache()
with using_atomizer(None):
    service.warmup(plain)
    job.step(plain2)
    plain2.synchronize()
    for rnd in range(2):
        for arm, calls in (("held", held), ("released", released)):
            for scenario, right_sizer in (("lithos", None), ("lithos_rightsized", sizer)):
                use(calls, arm == "held")
                sched = Scheduler(device, specs, Policy(), right_sizer=right_sizer)
                try:
                    fig = figures(cfg, run_tenants(cfg, sched, service, job))
                    st = sched.stats()["tenants"]
                finally:
                    sched.close()
                    use(held, True)
                runs.append({"round": rnd, "arm": arm, "scenario": scenario, **brief(fig),
                             "lc_host_us_per_launch": st["lc"]["host_us_per_atom"],
                             "be_host_us_per_atom": st["be"]["host_us_per_atom"]})
                print({k: v for k, v in runs[-1].items() if k != "p99_ci95_ms"}, flush=True)
kernels.reset_cache()
runs.append({"arm": "alone_end", **brief(figures(cfg, ml_tenants.run_threads(cfg, ((lambda: plain), service), None)))})
print(runs[-1], flush=True)
with open(OUT, "w") as f:
    json.dump({"device": device.describe(), "config": dataclasses.asdict(cfg), "runs": runs}, f, indent=1, default=str)
