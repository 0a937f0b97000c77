"""Diagnostic: per-operation host time of latency-critical launches through the scheduler.

A latency-critical tenant alone (no best-effort thread) sends requests of two kernels at
Poisson arrivals, as in the co-location bench; every timeline operation, the kernel
launch itself and every garbage collection are timed. Prints each operation's count,
p50, p99 and max in microseconds, so a multi-millisecond stall names its operation.

Usage (on the GPU): python scripts/diag_lc_ops.py [seconds]
"""

from __future__ import annotations

import collections
import gc
import sys
import time

import cupy
import numpy as np

import diag_common
from lithos_atom.bench import colocation_bench as cb
from lithos_sched import Priority, Scheduler, TenantSpec, open_device
from lithos_sched import timeline

SECONDS = float(sys.argv[1]) if len(sys.argv) > 1 else 3.0
TIMES: dict[str, list[float]] = collections.defaultdict(list)


def timed(name, fn):  # noqa: ANN001, ANN201
    return diag_common.timed(fn, lambda t, d: TIMES[name].append(d * 1e6))


for op in ("record", "wait", "done", "synchronize", "elapsed_us", "handle"):
    setattr(timeline.CupyTimeline, op, timed(f"timeline.{op}", getattr(timeline.CupyTimeline, op)))

_gc_t = {}


def on_gc(phase: str, info: dict) -> None:
    if phase == "start":
        _gc_t["t"] = time.perf_counter()
    else:
        TIMES[f"gc.gen{info['generation']}"].append((time.perf_counter() - _gc_t["t"]) * 1e6)


gc.callbacks.append(on_gc)

from lithos_sched.scheduler import Scheduler as _S  # noqa: E402

_orig_lc = _S.launch_latency_critical


def _lc(self, tenant, launch, user, describe):  # noqa: ANN001, ANN202
    return timed("scheduler.launch_latency_critical", _orig_lc)(
        self, tenant, timed("  cupy launch", launch), user, timed("  describe", describe))


_S.launch_latency_critical = _lc


def main() -> None:
    cfg = cb.ColocationConfig(duration_s=SECONDS)
    cal = cb.calibrate(cfg)
    dev = open_device(simulate=False)
    for variant, policy_kw in (("default", {}), ("again", {}), ("untimed", {"lc_timing_every": 10**9}),
                               ("spin_wait", {})):
        TIMES.clear()
        from lithos_sched.policy import Policy

        s = Scheduler(dev, [TenantSpec("lc", Priority.LATENCY_CRITICAL, share=0.5),
                            TenantSpec("be", Priority.BEST_EFFORT, share=0.5)], Policy(**policy_kw))
        out = cupy.empty(cfg.lc_blocks * cb.THREADS, np.float32)
        req = []
        with s.tenant("lc"):
            k = cupy.RawKernel(cb.BURN, "burn")
            k((cfg.lc_blocks,), (cb.THREADS,), (out, np.int32(cal.lc_iters)))  # builds the atomized kernel
            atomized = k.__dict__["_lithos_atomized"]
            orig_plan = atomized.plan

            def plan(*a, **kw):  # noqa: ANN002, ANN003, ANN202
                p = orig_plan(*a, **kw)
                p.issue_range = timed("launch(issue_range)", p.issue_range)
                return p
            atomized.plan = timed("plan()", plan)
            stream = cupy.cuda.get_current_stream()
            rng = np.random.default_rng(1)
            t_end = time.perf_counter() + SECONDS
            nxt = time.perf_counter()
            while time.perf_counter() < t_end:
                nxt += rng.exponential(1 / cfg.lc_rate_hz)
                d = nxt - time.perf_counter()
                if variant == "spin_wait":
                    while time.perf_counter() < nxt:
                        pass
                elif d > 0:
                    time.sleep(d)
                t0 = time.perf_counter()
                for _ in range(cfg.lc_kernels):
                    timed("kernel call (total)", k)((cfg.lc_blocks,), (cb.THREADS,), (out, np.int32(cal.lc_iters)))
                t1 = time.perf_counter()
                if variant == "spin_wait":
                    while not stream.done:
                        pass
                else:
                    stream.synchronize()
                req.append(((t1 - t0) * 1e6, (time.perf_counter() - t1) * 1e6))
            counts = [len(gc.get_objects(g)) for g in range(3)]
            types = collections.Counter(type(o).__name__ for o in gc.get_objects(2)).most_common(12)
            mods = collections.Counter(getattr(o, "__module__", None) for o in gc.get_objects(2)
                                       if callable(o)).most_common(8)
        s.close()
        print(f"== variant {variant}: {len(req)} requests")
        print(f"  objects per generation {counts}, frozen {gc.get_freeze_count()}, gc counts {gc.get_count()}")
        print(f"  gen2 types {types}")
        print(f"  gen2 callables by module {mods}")
        r = np.asarray(req)
        print(f"  request issue us p50 {np.percentile(r[:, 0], 50):.1f} p99 {np.percentile(r[:, 0], 99):.1f} "
              f"max {r[:, 0].max():.1f}; gpu wait p99 {np.percentile(r[:, 1], 99):.1f}")
        for name, v in sorted(TIMES.items()):
            a = np.asarray(v)
            print(f"  {name:28s} n {a.size:6d} p50 {np.percentile(a, 50):8.1f} p99 {np.percentile(a, 99):8.1f} "
                  f"max {a.max():9.1f} n>500us {(a > 500).sum()}")


def plain_baseline() -> None:
    cfg = cb.ColocationConfig()
    cal = cb.calibrate(cfg)
    dev = open_device(simulate=False)
    part = dev.partition(range(dev.num_tpcs // 2))
    out = cupy.empty(cfg.lc_blocks * cb.THREADS, np.float32)
    k = cupy.RawKernel(cb.BURN, "burn")
    stream = part.high.cupy
    for spin in (False, True):
        rng = np.random.default_rng(1)
        req = []
        t_end = time.perf_counter() + SECONDS
        nxt = time.perf_counter()
        while time.perf_counter() < t_end:
            nxt += rng.exponential(1 / cfg.lc_rate_hz)
            while spin and time.perf_counter() < nxt:
                pass
            d = nxt - time.perf_counter()
            if d > 0:
                time.sleep(d)
            t0 = time.perf_counter()
            for _ in range(cfg.lc_kernels):
                k((cfg.lc_blocks,), (cb.THREADS,), (out, np.int32(cal.lc_iters)), stream=stream)
            t1 = time.perf_counter()
            stream.synchronize()
            req.append(((t1 - t0) * 1e6, (time.perf_counter() - t1) * 1e6))
        r = np.asarray(req)
        print(f"== plain cupy on the partition (spin={spin}): issue us p50 {np.percentile(r[:, 0], 50):.1f} "
              f"p99 {np.percentile(r[:, 0], 99):.1f} max {r[:, 0].max():.1f}")


if __name__ == "__main__":
    plain_baseline()
    main()
