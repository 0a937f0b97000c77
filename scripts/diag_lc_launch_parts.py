"""Diagnostic: where a latency-critical launch's host time goes under co-location.

Runs the latency-critical tenant of the synthetic co-location pair alone on a plain
stream, alone under the scheduler, and beside the best-effort tenant under lithos, with
timers on each part of a launch, per thread: the intercepted ``RawKernel.__call__``,
``Scheduler.launch_latency_critical``, the launch closure it calls (CuPy's own call), and
for best-effort atoms the argument packing and ``cuLaunchKernel`` of
`lithos_atom.driver_launch`. (An earlier version also packed latency-critical launches
there: bench/results/h100-2026-11-25-session4-diagnostics.) Prints and writes the request
p99 and phases, and per part and thread the count, mean, p50, p99 in microseconds.

Usage (on the GPU): python scripts/diag_lc_launch_parts.py OUT_JSON [seconds]
"""

from __future__ import annotations

import collections
import contextlib
import json
import sys
import threading

import cupy
import numpy as np

import diag_common
from lithos_atom import driver_calls, driver_launch, interception
from lithos_atom.bench import colocation_bench as cb
from lithos_sched import Priority, Scheduler, TenantSpec, open_device
from lithos_sched.policy import Policy

OUT = sys.argv[1] if len(sys.argv) > 1 else "diag-lc-launch-parts.json"
SECONDS = float(sys.argv[2]) if len(sys.argv) > 2 else 4.0
TIMES: dict[tuple[str, str], list[float]] = collections.defaultdict(list)


def timed(name, fn):  # noqa: ANN001, ANN201
    return diag_common.timed(fn, lambda t, d: TIMES[(threading.current_thread().name, name)].append(d * 1e6))


driver_calls.launch_kernel = timed("4 cuLaunchKernel", driver_calls.launch_kernel)
driver_launch.pack = timed("3 pack", driver_launch.pack)
_orig_lc = Scheduler.launch_latency_critical


def _lc(self, tenant, launch, user, describe):  # noqa: ANN001, ANN202
    return _orig_lc(self, tenant, timed("2 launch closure", launch), user, describe)


Scheduler.launch_latency_critical = timed("1 launch_latency_critical", _lc)
_orig_make = interception._make_classes


def _make(*a):  # noqa: ANN002, ANN202
    raw_kernel, raw_module = _orig_make(*a)
    raw_kernel.__call__ = timed("0 RawKernel.__call__", raw_kernel.__call__)
    return raw_kernel, raw_module


interception._make_classes = _make


def summary() -> dict:
    out = {}
    for (thread, name), xs in sorted(TIMES.items()):
        a = np.asarray(xs)
        out[f"{thread} {name}"] = {"n": int(a.size), "mean": float(a.mean()), "p50": float(np.percentile(a, 50)),
                                   "p99": float(np.percentile(a, 99))}
    return out


cfg = cb.ColocationConfig(duration_s=SECONDS)
_, w = cb.setup_gpu(cfg)
device = open_device(simulate=False)
results = {}


def report(arm: str, res: dict) -> None:
    results[arm] = {"p99_ms": res["hp"]["p99_ms"], "phases_p99_ms": res["hp"]["phases_p99_ms"], "parts_us": summary()}
    print(arm, round(res["hp"]["p99_ms"], 3), {k: round(v, 3) for k, v in res["hp"]["phases_p99_ms"].items()})
    for k, v in results[arm]["parts_us"].items():
        print(f"   {k:40s} n={v['n']:6d} mean={v['mean']:8.1f} p50={v['p50']:8.1f} p99={v['p99']:8.1f}")


plain = cupy.cuda.Stream(non_blocking=True)
for rnd in range(2):
    cb._run_pair(w, (contextlib.nullcontext, lambda: plain), None, 1.0)
    TIMES.clear()
    report(f"plain_alone_{rnd}", cb._run_pair(w, (contextlib.nullcontext, lambda: plain), None, SECONDS))
    for arm, policy, with_be in (("lc_only", Policy(), False), ("lithos", Policy(), True)):
        specs = [TenantSpec("lc", Priority.LATENCY_CRITICAL, share=0.5),
                 TenantSpec("be", Priority.BEST_EFFORT, share=0.5)]
        sched = Scheduler(device, specs, policy)
        lc_t, be_t = sched.tenant("lc"), sched.tenant("be")
        cur = cupy.cuda.get_current_stream
        be = (lambda: be_t, cur) if with_be else None
        cb._run_pair(w, (lambda: lc_t, cur), be, 1.0)
        TIMES.clear()
        res = cb._run_pair(w, (lambda: lc_t, cur), be, SECONDS)
        sched.close()
        report(f"{arm}_{rnd}", res)
with open(OUT, "w") as f:
    json.dump({"device": device.describe(), "seconds": SECONDS, "results": results}, f, indent=1)
