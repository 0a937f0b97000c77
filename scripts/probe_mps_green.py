"""Probe: do green-context partitions of two processes run side by side under MPS?

Two child processes each make a partition of half the TPCs (disjoint halves) and launch a
kernel whose blocks each record their SM id and the GPU's global timer at start and end,
spinning a few milliseconds. The parent reports, for a run under a private MPS daemon and
a run without one: the SM sets (disjoint? within the half?) and whether the two kernels
overlapped in time. A third child pair checks stream priorities across MPS clients: a
high-priority single-block kernel's latency while the other client floods every SM.

Usage (on the GPU): python scripts/probe_mps_green.py OUT_JSON
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

CHILD = r'''
import json, sys, time
import cupy, numpy as np
from lithos_sched import open_device
mode, lo, hi, start_at = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
src = r"""
extern "C" __global__ void spin(unsigned long long* out, unsigned long long ns) {
    unsigned long long t0, t1; unsigned int id;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
    asm volatile("mov.u32 %0, %%smid;" : "=r"(id));
    do { asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t1)); } while (t1 - t0 < ns);
    if (threadIdx.x == 0) { out[3*blockIdx.x] = id; out[3*blockIdx.x+1] = t0; out[3*blockIdx.x+2] = t1; }
}"""
k = cupy.RawKernel(src, "spin")
dev = open_device(simulate=False)
res = {"mode": mode}
if mode == "part":
    part = dev.partition(range(lo, hi))
    s = part.normal.cupy
    blocks = 4 * 132
    out = cupy.zeros(3 * blocks, dtype=cupy.uint64)
    k((1,), (32,), (out, cupy.uint64(1000)), stream=s); s.synchronize()
    while time.time() < start_at:
        pass
    k((blocks,), (32,), (out, cupy.uint64(3_000_000)), stream=s); s.synchronize()
    a = out.get().reshape(-1, 3)
    res.update(sms=sorted(set(int(x) for x in a[:, 0])), start=int(a[:, 1].min()), end=int(a[:, 2].max()))
else:
    prio = dev.greatest_priority if mode == "high" else 0
    s = cupy.cuda.Stream(non_blocking=True, priority=prio)
    out = cupy.zeros(3 * 132 * 64, dtype=cupy.uint64)
    k((1,), (32,), (out, cupy.uint64(1000)), stream=s); s.synchronize()
    while time.time() < start_at:
        pass
    if mode == "flood":
        k((132 * 64,), (1024,), (out, cupy.uint64(2_000_000)), stream=s); s.synchronize()
        res["flood_s"] = time.time() - start_at
    else:
        lat = []
        for _ in range(20):
            t = time.perf_counter()
            k((1,), (32,), (out, cupy.uint64(10_000)), stream=s); s.synchronize()
            lat.append((time.perf_counter() - t) * 1e3)
            time.sleep(0.002)
        res["latency_ms"] = sorted(lat)
print("RESULT" + json.dumps(res))
'''


def pair(env: dict[str, str], args_a: list[str], args_b: list[str]) -> list[dict]:
    start_at = str(time.time() + 8.0)
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, *a, start_at], env={**os.environ, **env},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for a in (args_a, args_b)]
    out = []
    for p in procs:
        so, se = p.communicate(timeout=120)
        line = [x for x in so.splitlines() if x.startswith("RESULT")]
        out.append(json.loads(line[0][6:]) if line else {"error": se[-2000:]})
    return out


def main() -> None:
    from lithos_atom.bench.mps import MPSDaemon

    result: dict = {}
    result["no_mps"] = pair({}, ["part", "0", "33"], ["part", "33", "66"])
    print("no_mps", json.dumps(result["no_mps"])[:600], flush=True)
    with MPSDaemon() as d:
        result["mps"] = pair(d.client_env(), ["part", "0", "33"], ["part", "33", "66"])
        print("mps", json.dumps(result["mps"])[:600], flush=True)
        result["mps_priority"] = pair(d.client_env(), ["flood", "0", "0"], ["high", "0", "0"])
        print("mps_priority", json.dumps(result["mps_priority"])[:600], flush=True)
    result["no_mps_priority"] = pair({}, ["flood", "0", "0"], ["high", "0", "0"])
    print("no_mps_priority", json.dumps(result["no_mps_priority"])[:600], flush=True)
    for key in ("no_mps", "mps"):
        a, b = result[key]
        if "sms" in a and "sms" in b:
            print(key, "disjoint SMs:", not set(a["sms"]) & set(b["sms"]), "SM counts:", len(a["sms"]), len(b["sms"]),
                  "overlap in time:", a["start"] < b["end"] and b["start"] < a["end"],
                  "spans ms:", (a["end"] - a["start"]) / 1e6, (b["end"] - b["start"]) / 1e6, flush=True)
    with open(sys.argv[1] if len(sys.argv) > 1 else "probe-mps-green.json", "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
