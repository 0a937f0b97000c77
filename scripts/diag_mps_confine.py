"""Diagnostic: do green contexts of two MPS clients occupy different physical SMs?

Under MPS each client's ``%smid`` is its own numbering (bench/results/h200-2026-12-04-run13-*),
so a probe of SM ids cannot tell. This asks the hardware instead. Client A fills every SM
of a partition with one "hog" block each (dynamic shared memory sized so that no second
block fits on an SM) that spins for HOG_S seconds. While they run, client B launches one
such block per SM on a partition of its own, timed from launch to completion:

- on the *other* TPCs, B's blocks start at once if the two partitions are different SMs;
- on the *same* TPCs (the control), B's blocks wait for A's to finish.

Usage (on the GPU): python scripts/diag_mps_confine.py OUT_JSON
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

from lithos_atom.bench.mps import MPSDaemon

HOG_S = 3.0
SHMEM = 160 * 1024  # above half of an SM's shared memory: one block per SM

CLIENT = textwrap.dedent("""
    import sys, time, json
    import cupy
    from lithos_sched import open_device
    src = r'''
    extern "C" __global__ void hog(unsigned long long ns) {
        extern __shared__ unsigned char smem[];
        unsigned long long t0, t;
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
        do { asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t)); } while (t - t0 < ns);
        smem[threadIdx.x] = 1;
    }'''
    tpcs = json.loads(sys.argv[1]); seconds = float(sys.argv[2]); shmem = int(sys.argv[3])
    part = open_device(simulate=False).partition(tpcs)
    stream = part.normal.cupy
    k = cupy.RawKernel(src, "hog")
    k.max_dynamic_shared_size_bytes = shmem
    k((part.num_sms,), (32,), (cupy.uint64(1000),), shared_mem=shmem, stream=stream)  # compile, load
    stream.synchronize()
    print("ready", flush=True)
    sys.stdin.readline()  # go
    t = time.perf_counter()
    k((part.num_sms,), (32,), (cupy.uint64(int(seconds * 1e9)),), shared_mem=shmem, stream=stream)
    print("launched", flush=True)
    stream.synchronize()
    print(json.dumps({"seconds": time.perf_counter() - t, "sms": part.num_sms}), flush=True)
""")


def client(tpcs: list[int], seconds: float, env: dict) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", CLIENT, json.dumps(tpcs), str(seconds), str(SHMEM)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    line = proc.stdout.readline().strip()
    if line != "ready":
        raise RuntimeError(f"client on TPCs {tpcs[0]}..{tpcs[-1]} did not start: {line!r}")
    return proc


def go(proc: subprocess.Popen) -> None:
    proc.stdin.write("go\n")
    proc.stdin.flush()
    assert proc.stdout.readline().strip() == "launched"


def result(proc: subprocess.Popen) -> dict:
    out = json.loads(proc.stdout.readline())
    proc.wait(timeout=30)
    return out


def main() -> None:
    import os

    out_path = sys.argv[1] if len(sys.argv) > 1 else "diag-mps-confine.json"
    first, second = list(range(0, 33)), list(range(33, 66))
    runs = {}
    with MPSDaemon() as daemon:
        env = {**os.environ, **daemon.client_env()}
        for case, b_tpcs in (("other_tpcs", second), ("same_tpcs", first)):
            a, b = client(first, HOG_S, env), client(b_tpcs, 0.001, env)
            go(a)
            time.sleep(0.5)  # A's blocks are resident by now
            go(b)
            b_res, a_res = result(b), result(a)
            runs[case] = {"a_hog_s": a_res["seconds"], "b_block_s": b_res["seconds"], "b_sms": b_res["sms"]}
            print(case, runs[case], flush=True)
    verdict = ("separate SMs" if runs["other_tpcs"]["b_block_s"] < 0.5 * HOG_S <= runs["same_tpcs"]["b_block_s"]
               else "not shown separate")
    print("green contexts of two MPS clients:", verdict, flush=True)
    with open(out_path, "w") as f:
        json.dump({"hog_s": HOG_S, "shared_mem_per_block": SHMEM, "runs": runs, "verdict": verdict}, f, indent=1)


if __name__ == "__main__":
    main()
