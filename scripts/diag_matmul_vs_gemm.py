"""cupy.matmul (cuBLAS, which lithos cannot split) against kernels.gemm (atomizable) in a best-effort job.

What a user gains by swapping one for the other (README, "Library calls"), measured on the GPU:

- ``alone``: fp32 ``--size``-cubed GEMMs alone on the whole GPU, device time per call
  (median of ``--reps``, events): ``cupy.matmul``, ``kernels.gemm`` plain, and
  ``kernels.gemm`` atomized by a plain `lithos.Atomizer` (``--atom-us``); whether the
  atomized result is bitwise the plain one, and how far ``kernels.gemm`` is from cuBLAS.
- co-located, ``--seconds`` each: a `lithos.Scheduler` with an inference tenant
  (latency-critical, half the TPCs) whose thread issues one request every ``--gap-ms``
  (a ``--probe-size`` GEMM on its stream inside ``tenant.request()``, waited for; its
  host-measured latency is recorded) and a training tenant whose thread runs steps back to
  back: a GEMM then a ReLU (``cupy.maximum``, intercepted). Arms: ``lc_alone`` (no
  training); ``matmul_lithos`` (the step's GEMM is ``cupy.matmul`` inside the tenant:
  confined to its own TPCs, it never steals); ``gemm_lithos`` (``kernels.gemm``, atomized,
  stealing the idle inference TPCs); ``matmul_on_lc_tpcs`` (what stealing a call that
  cannot be split would do: the training thread, outside lithos, runs ``cupy.matmul``
  on a stream of a partition of every TPC, the inference TPCs included).
  Per arm: request latency p50/p99, training steps per second, and from
  ``Scheduler.stats()`` the training tenant's atoms, stolen atoms, unsplit kernels and
  opaque stream time (cuBLAS, timed between its launches; with ``cupy.matmul``, the share
  of its gaps that were timed and their mean, against ``matmul_ms`` alone on every TPC).

Usage: python scripts/diag_matmul_vs_gemm.py [--size 4096] [--probe-size 1024] [--seconds 4]
       [--gap-ms 5] [--atom-us 1000] [--reps 10] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from pathlib import Path
from typing import Any


def _device_ms(fn: Any, reps: int) -> float:
    """Median device time of ``fn()`` on the current stream, after one warm-up call."""
    import cupy

    fn()
    cupy.cuda.get_current_stream().synchronize()
    times = []
    for _ in range(reps):
        start, end = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, end))
    return statistics.median(times)


def alone(size: int, atom_us: float, reps: int) -> dict[str, Any]:
    """Each GEMM alone on the whole GPU (the ``alone`` arm)."""
    import cupy

    import kernels
    import lithos

    rng = cupy.random.default_rng(0)
    a, b = rng.standard_normal((size, size), dtype=cupy.float32), rng.standard_normal((size, size), dtype=cupy.float32)
    out = {"matmul_ms": _device_ms(lambda: cupy.matmul(a, b), reps),
           "gemm_ms": _device_ms(lambda: kernels.gemm(a, b), reps)}
    plain = kernels.gemm(a, b)
    kernels.reset_cache()  # the GEMM's kernel objects again, made under the opt-in
    with lithos.using_atomizer(lithos.Atomizer(atom_us=atom_us)):
        out["gemm_atomized_ms"] = _device_ms(lambda: kernels.gemm(a, b), reps)
        atomized = kernels.gemm(a, b)
    kernels.reset_cache()
    ref = cupy.matmul(a, b)
    out["gemm_atomized_bitwise_equal"] = bool(cupy.array_equal(plain, atomized))
    out["gemm_vs_matmul_max_rel_diff"] = float(cupy.abs(plain - ref).max() / cupy.abs(ref).max())
    return out


def colocated(arm: str, size: int, probe: int, seconds: float, gap_ms: float, atom_us: float) -> dict[str, Any]:
    """One co-located arm: request latencies, training steps and the scheduler's stats."""
    import cupy

    import kernels
    import lithos
    from lithos_atom.atomizer import as_cupy_stream

    kernels.reset_cache()
    device = lithos.open_device()
    sched = lithos.Scheduler(device, [lithos.TenantSpec("inference", lithos.Priority.LATENCY_CRITICAL, share=0.5),
                                      lithos.TenantSpec("training", lithos.Priority.BEST_EFFORT, share=0.5)],
                             lithos.Policy(atom_us=atom_us))
    rng = cupy.random.default_rng(1)
    a, b = rng.standard_normal((size, size), dtype=cupy.float32), rng.standard_normal((size, size), dtype=cupy.float32)
    pa, pb = rng.standard_normal((probe, probe), dtype=cupy.float32), rng.standard_normal((probe, probe),
                                                                                          dtype=cupy.float32)
    cupy.cuda.Device().synchronize()
    stop, steps, errors = threading.Event(), [0], []
    rogue = device.partition(device.all_tpcs()) if arm == "matmul_on_lc_tpcs" else None

    def step(gemm: Any) -> None:
        c = gemm(a, b)
        cupy.maximum(c, 0, out=c)

    def train() -> None:
        try:
            if rogue is not None:
                with as_cupy_stream(rogue.normal) as s:
                    while not stop.is_set():
                        step(cupy.matmul)
                        steps[0] += 1
                    s.synchronize()
                return
            with sched.tenant("training") as be:
                gemm = cupy.matmul if arm == "matmul_lithos" else kernels.gemm
                step(gemm)  # compile, and time the first atoms
                be.synchronize()
                while not stop.is_set():
                    step(gemm)
                    steps[0] += 1
                be.synchronize()
        except Exception as exc:  # reported in the record, not lost with the thread
            errors.append(f"{type(exc).__name__}: {exc}")

    thread = None if arm == "lc_alone" else threading.Thread(target=train, name="training")
    latencies = []
    with sched.tenant("inference") as lc:
        for _ in range(5):  # warm the request path
            with lc.request():
                kernels.gemm(pa, pb)
                lc.synchronize()
        if thread is not None:
            thread.start()
            time.sleep(0.3)  # the training job is running before the first request
        t_start, n0 = time.perf_counter(), steps[0]
        while time.perf_counter() - t_start < seconds:
            t0 = time.perf_counter()
            with lc.request():
                kernels.gemm(pa, pb)
                lc.synchronize()
            latencies.append((time.perf_counter() - t0) * 1e3)
            time.sleep(gap_ms / 1e3)
        elapsed, n1 = time.perf_counter() - t_start, steps[0]
    stop.set()
    if thread is not None:
        thread.join()
    stats = sched.stats()["tenants"]["training"]
    sched.close()
    if rogue is not None:
        rogue.close()
    lat = sorted(latencies)
    keep = ("kernels", "atoms", "stolen_atoms", "unsplit_kernels", "unsplit_p50_us", "unsplit_max_us",
            "opaque_ms", "opaque_gaps", "opaque_untimed_gaps", "opaque_max_us")
    return {"arm": arm, "requests": len(lat), "p50_ms": lat[len(lat) // 2],
            "p99_ms": lat[min(len(lat) - 1, int(0.99 * len(lat)))],
            "train_steps_per_s": (n1 - n0) / elapsed if thread is not None else None,
            "train_steps_total": steps[0], "training_stats": {k: stats[k] for k in keep} if rogue is None else None,
            "errors": errors}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--probe-size", type=int, default=1024)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--gap-ms", type=float, default=5.0)
    ap.add_argument("--atom-us", type=float, default=1000.0)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--arms", default="lc_alone,matmul_lithos,gemm_lithos,matmul_on_lc_tpcs")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    arms = args.arms.split(",")
    known = {"lc_alone", "matmul_lithos", "gemm_lithos", "matmul_on_lc_tpcs"}
    if min(args.size, args.probe_size, args.reps) < 1 or args.seconds <= 0 or args.gap_ms < 0 or args.atom_us <= 0:
        ap.error("--size, --probe-size, --reps must be >= 1; --seconds, --atom-us > 0; --gap-ms >= 0")
    if not set(arms) <= known:
        ap.error(f"--arms: unknown {sorted(set(arms) - known)}; known {sorted(known)}")
    import lithos

    if not lithos.gpu_available():
        print("diag_matmul_vs_gemm: no GPU: nothing to measure")
        return 1
    result: dict[str, Any] = {"size": args.size, "probe_size": args.probe_size, "atom_us": args.atom_us,
                              "alone": alone(args.size, args.atom_us, args.reps)}
    print("alone:", json.dumps(result["alone"]))
    result["colocated"] = []
    for arm in arms:
        rec = colocated(arm, args.size, args.probe_size, args.seconds, args.gap_ms, args.atom_us)
        stats = rec["training_stats"]
        if arm == "matmul_lithos" and stats["opaque_gaps"]:
            # each step's cuBLAS call is one gap between its ReLUs: how many were timed, and how long
            # each took on the training tenant's TPCs (against matmul_ms alone, on every TPC)
            rec["opaque_timed_share"] = stats["opaque_gaps"] / (stats["opaque_gaps"] + stats["opaque_untimed_gaps"])
            rec["opaque_ms_per_timed_gap"] = stats["opaque_ms"] / stats["opaque_gaps"]
        result["colocated"].append(rec)
        print(json.dumps(rec))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=1))
    return 0 if not any(r["errors"] for r in result["colocated"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
