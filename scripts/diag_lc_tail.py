"""Diagnostic: where does the latency-critical host tail under the scheduler come from?

Runs the co-location workload of `lithos_atom.bench.colocation_bench` in variants that put
only one tenant, or neither, through the scheduler, and variants of the scheduler's
knobs; prints each variant's LC p99 and its phases. In the ``stalls`` variant a C-level
watchdog (``faulthandler.dump_traceback_later``, which needs no GIL) dumps every
thread's Python stack whenever a request runs 3 ms past its arrival, which shows what
the other thread was doing while the LC thread stalled.

Usage (on the GPU): python scripts/diag_lc_tail.py OUTDIR
"""

from __future__ import annotations

import contextlib
import faulthandler
import gc
import json
import os
import sys
import time
from pathlib import Path

import cupy
import numpy as np

import diag_common
from lithos_atom.bench import colocation_bench as cb
from lithos_sched import open_device
from lithos_sched.policy import Policy
from lithos_sched.scheduler import Scheduler
from lithos_sched.tenant import Priority, TenantSpec

OUTDIR = Path(sys.argv[1] if len(sys.argv) > 1 else "diag-out")
OUTDIR.mkdir(parents=True, exist_ok=True)
DURATION = float(os.environ.get("DIAG_DURATION", "2.5"))
REQUESTS: list[tuple[float, float]] = []
GC_PAUSES: list[tuple[int, float]] = []
_gc_start = [0.0]


def _on_gc(phase: str, info: dict) -> None:
    if phase == "start":
        _gc_start[0] = time.perf_counter()
    else:
        GC_PAUSES.append((info["generation"], (time.perf_counter() - _gc_start[0]) * 1e3))
        EVENTS.append((f"gc{info['generation']}", _gc_start[0], (time.perf_counter() - _gc_start[0]) * 1e3))


gc.callbacks.append(_on_gc)

TIMES: dict[str, list[float]] = {}
EVENTS: list[tuple[str, float, float]] = []  # (name, start s, duration ms) of calls over 1 ms


def timed(name, fn):  # noqa: ANN001, ANN201
    def record(t: float, d: float) -> None:
        TIMES.setdefault(name, []).append(d * 1e6)
        if d > 1e-3:
            EVENTS.append((name, t, d * 1e3))
    return diag_common.timed(fn, record)


if os.environ.get("DIAG_TIMERS"):
    from lithos_sched import timeline
    from lithos_sched.scheduler import Scheduler as _S

    for _op in ("record", "record_into", "wait", "done", "synchronize", "elapsed_us", "handle"):
        setattr(timeline.CupyTimeline, _op, timed(f"timeline.{_op}", getattr(timeline.CupyTimeline, _op)))
    _orig_lc = _S.launch_latency_critical

    def _lc(self, tenant, launch, user, describe):  # noqa: ANN001, ANN202
        return timed("scheduler.launch_latency_critical", _orig_lc)(
            self, tenant, timed("  cupy launch", launch), user, timed("  describe", describe))

    _S.launch_latency_critical = _lc
    for _m in ("_issue", "retire", "_best_effort_target", "_emptier_stream", "_atom_blocks", "check_open"):
        setattr(_S, _m, timed(f"scheduler.{_m}", getattr(_S, _m)))
STALL_FILE = open(OUTDIR / "stall_dumps.txt", "w")  # noqa: SIM115 - faulthandler needs a real fd
WATCH = {"on": False}


class _WatchedWorkloads(cb._Workloads):
    """The bench's LC loop, arming a GIL-free watchdog per request when WATCH is on."""

    def lc_loop(self, enter, stream_of, t0, stop, latencies, phases, bracket=None):  # noqa: ANN001
        # `bracket` (the bench's request marking) is left out: this measures the unmarked path
        cfg, cal = self.cfg, self.cal
        with enter():
            k = cb._burn_kernel()
            stream = stream_of()
            for arrival in cfg.arrivals():
                if stop.is_set():
                    break
                delay = t0 + arrival - time.perf_counter()
                if WATCH["on"]:
                    faulthandler.dump_traceback_later(max(delay, 0) + 0.003, file=STALL_FILE)
                if delay > 0:
                    time.sleep(delay)
                woke = time.perf_counter()
                for _ in range(cfg.lc_kernels):
                    timed("kernel call (total)", k)((cfg.lc_blocks,), (cb.THREADS,), (self.lc_out, np.int32(cal.lc_iters)), stream=stream)
                issued = time.perf_counter()
                cb._sync(stream)
                done = time.perf_counter()
                if WATCH["on"]:
                    faulthandler.cancel_dump_traceback_later()
                latencies.append((done - (t0 + arrival)) * 1000.0)
                REQUESTS.append((t0 + arrival, (done - (t0 + arrival)) * 1000.0))
                phases.append(((woke - (t0 + arrival)) * 1e3, (issued - woke) * 1e3, (done - issued) * 1e3))


def cgroup_stat() -> dict[str, str]:
    out = {}
    for name in ("cpu.max", "cpu.stat", "cpuset.cpus.effective"):
        p = Path("/sys/fs/cgroup") / name
        if p.exists():
            out[name] = p.read_text().strip()
    out["affinity"] = str(sorted(os.sched_getaffinity(0)))
    out["loadavg"] = Path("/proc/loadavg").read_text().strip()
    return out


def main() -> None:
    cfg = cb.ColocationConfig(duration_s=DURATION)
    cal = cb.calibrate(cfg)
    w = _WatchedWorkloads(cfg, cal)
    from lithos_atom import atomize

    atomize(cb._burn_kernel()).prepared()
    device = open_device(simulate=False)
    n_lc = device.num_tpcs // 2
    lc_part = device.partition(range(n_lc))
    be_part = device.partition(range(n_lc, device.num_tpcs))
    nothing = contextlib.nullcontext
    cur = cupy.cuda.get_current_stream
    specs = [TenantSpec("lc", Priority.LATENCY_CRITICAL, share=0.5), TenantSpec("be", Priority.BEST_EFFORT, share=0.5)]

    def sched_pair(policy: Policy, lc_sched: bool = True, be_sched: bool = True, be_on: bool = True):
        def run():
            s = Scheduler(device, specs, policy)
            lc = (lambda: s.tenant("lc"), cur) if lc_sched else (nothing, lambda: lc_part.high.cupy)
            be = (lambda: s.tenant("be"), cur) if be_sched else (nothing, lambda: be_part.normal.cupy)
            be = be if be_on else None
            cb._run_pair(w, lc, be, cb.WARMUP_S)
            res = cb._run_pair(w, lc, be, cfg.duration_s)
            res["scheduler"] = s.stats()
            s.close()
            return res
        return run

    def plain(lc, be):
        def run():
            cb._run_pair(w, lc, be, cb.WARMUP_S)
            return cb._run_pair(w, lc, be, cfg.duration_s)
        return run

    def gc_off(fn):
        def run():
            gc.disable()
            try:
                return fn()
            finally:
                gc.enable()
        return run

    def watched(fn):
        def run():
            WATCH["on"] = True
            try:
                return fn()
            finally:
                WATCH["on"] = False
        return run

    def spin_events(fn):
        from lithos_sched import timeline

        def run():
            orig = timeline.CupyTimeline.record

            def record(self, stream):
                ev = cupy.cuda.Event()
                ev.record(self.as_cupy(stream))
                return ev
            timeline.CupyTimeline.record = record
            try:
                return fn()
            finally:
                timeline.CupyTimeline.record = orig
        return run

    variants = {
        "lc_alone": plain((nothing, lambda: lc_part.high.cupy), None),
        "static_split": plain((nothing, lambda: lc_part.high.cupy), (nothing, lambda: be_part.normal.cupy)),
        "lithos": sched_pair(Policy()),
        "lithos_lc_only": sched_pair(Policy(), be_on=False),
        "lc_sched_be_plain": sched_pair(Policy(stealing=False), be_sched=False),
        "lc_plain_be_sched": sched_pair(Policy(stealing=False), lc_sched=False),
        "lithos_no_steal": sched_pair(Policy(stealing=False)),
        "lithos_spin_events": spin_events(sched_pair(Policy())),
        "lithos_switch_default": sched_pair(Policy(gil_switch_interval_s=None)),
        "lithos_gc_off": gc_off(sched_pair(Policy())),
        "lithos_lc_only_gc_off": gc_off(sched_pair(Policy(), be_on=False)),
        "lithos_lc_only_untimed": sched_pair(Policy(lc_timing_every=10**9), be_on=False),
        "lithos_stalls": watched(sched_pair(Policy())),
    }
    only = os.environ.get("DIAG_ONLY")
    results = {"cgroup_before": cgroup_stat()}
    for name, fn in variants.items():
        if only and name not in only.split(","):
            continue
        t = time.perf_counter()
        GC_PAUSES.clear()
        TIMES.clear()
        EVENTS.clear()
        REQUESTS.clear()
        res = fn()
        pauses = np.asarray(GC_PAUSES).reshape(-1, 2)
        res["gc"] = {f"gen{g}": [int((pauses[:, 0] == g).sum()), float(pauses[pauses[:, 0] == g, 1].max(initial=0))]
                     for g in range(3)}
        cupy.cuda.Device().synchronize()
        hp = res["hp"]
        ph = hp.get("phases_p99_ms", {})
        be = res.get("be", {})
        print(f"{name:24s} p50 {hp['p50_ms']:7.3f} p99 {hp['p99_ms']:7.3f} p99.9 {hp['p999_ms']:7.3f} | "
              + " ".join(f"{k} {v:6.3f}" for k, v in ph.items())
              + f" | be {be.get('kernels_per_s', 0):6.1f}/s ({time.perf_counter() - t:.1f}s) gc [n, max ms] {res['gc']}",
              flush=True)
        for op, v in sorted(TIMES.items()):
            a = np.asarray(v)
            print(f"    {op:36s} n {a.size:6d} p50 {np.percentile(a, 50):8.1f} p99 {np.percentile(a, 99):8.1f} "
                  f"max {a.max():9.1f} n>500us {(a > 500).sum()}")
        res["hp"].pop("latencies_ms", None)
        res["events"] = EVENTS[:]
        res["requests"] = REQUESTS[:]
        results[name] = res
    results["cgroup_after"] = cgroup_stat()
    (OUTDIR / "diag.json").write_text(json.dumps(results, indent=1, default=str))
    print(json.dumps({k: results[k] for k in ("cgroup_before", "cgroup_after")}, indent=1))
    device.close()


if __name__ == "__main__":
    main()
