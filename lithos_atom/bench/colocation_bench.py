"""Co-location benchmark: a latency-critical tenant beside a best-effort one.

The latency-critical (LC) tenant serves requests that arrive as a Poisson process; each
request is a few short kernels, and its latency runs from arrival to completion. The
best-effort (BE) tenant launches long kernels back to back; its throughput is kernels per
second, normalized to running alone. Every scenario runs in the same process, one after
the other, with the same kernels and the same arrival times:

- ``lc_alone`` / ``be_alone``: each tenant alone on the whole device
- ``streams``: both on ordinary streams (NVIDIA's default sharing within a process)
- ``priorities``: the LC tenant on a high-priority stream
- ``static_split``: each on its own TPC partition, no stealing, no atoms (MIG-like)
- ``lithos``: the scheduler: atoms, partitions, stealing, prediction
- ``lithos_no_steal`` / ``lithos_no_atoms``: ablations

`run_gpu` runs them on the GPU. On a machine without a GPU the same scenarios run on the
simulated device (`lithos_atom.bench.sim_colocation`, which shares `ColocationConfig` and
`summarize`), and the results say so; ``python -m lithos_atom.bench --colocation`` picks one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ContextManager

import numpy as np

from lithos_atom import atomize
from lithos_atom.atomizer import as_cupy_stream
from lithos_atom.bench.burn import BURN, THREADS, median_device_us
from lithos_atom.bench.percentiles import percentile_ci, ratio_ci
from lithos_atom.bench.tenant_pair import pair_specs, pair_tpcs
from lithos_sched import open_device
from lithos_sched.energy import open_meter, tenant_energy
from lithos_sched.policy import Policy
from lithos_sched.scheduler import Scheduler

WARMUP_S = 0.5  # every scenario first runs this long unmeasured: compiles, caches, predictor


@dataclasses.dataclass(frozen=True)
class ColocationConfig:
    """Workload and scenario settings.

    Attributes
    ----------
    duration_s : float
        Length of each co-located scenario.
    lc_rate_hz : float
        Mean LC request rate (Poisson arrivals).
    lc_kernels : int
        Kernels per LC request.
    lc_blocks : int
        Blocks per LC kernel: few and long, like a batch-1 decoding kernel that is
        latency-bound and does not need the whole GPU (default: half the SMs of an H100).
    lc_kernel_us : float
        Target duration of one LC kernel alone.
    be_block_us : float
        Target duration of one BE block (it bounds how fast stolen TPCs come back).
    be_kernel_ms : float
        Target duration of one BE kernel alone.
    lc_share : float
        Fraction of TPCs owned by the LC tenant in the partitioned scenarios.
    seed : int
        Seed of the arrival process.
    atom_us : float or None
        `Policy.atom_us` of the lithos scenarios (None: the policy's default).
    """

    duration_s: float = 8.0
    lc_rate_hz: float = 150.0
    lc_kernels: int = 2
    lc_blocks: int = 66
    lc_kernel_us: float = 300.0
    be_block_us: float = 150.0
    be_kernel_ms: float = 20.0
    lc_share: float = 0.5
    seed: int = 0
    atom_us: float | None = None

    def __post_init__(self) -> None:
        self.policy()  # a bad atom_us is refused now, naming the field, not after calibration

    def policy(self, **changes: Any) -> Policy:
        """The lithos scenarios' `Policy`, with ``changes``."""
        return Policy(**({} if self.atom_us is None else {"atom_us": self.atom_us}), **changes)

    def arrivals(self) -> np.ndarray:
        """LC arrival times in seconds from the scenario start."""
        rng = np.random.default_rng(self.seed)
        n = int(self.duration_s * self.lc_rate_hz * 2) + 10
        t = np.cumsum(rng.exponential(1.0 / self.lc_rate_hz, size=n))
        return t[t < self.duration_s]


@dataclasses.dataclass
class _Calibration:
    lc_iters: int
    be_iters: int
    be_blocks: int
    lc_kernel_us: float
    be_kernel_us: float
    wave_blocks: int


def _burn_kernel() -> Any:
    import cupy

    return cupy.RawKernel(BURN, "burn")  # looked up now, so an installed opt-in sees it


def calibrate(cfg: ColocationConfig) -> _Calibration:
    """Pick loop counts so blocks and kernels last about as long as configured."""
    import cupy

    k = _burn_kernel()
    stream = cupy.cuda.Stream(non_blocking=True)
    sms = cupy.cuda.Device().attributes["MultiProcessorCount"]
    per_sm = cupy.cuda.driver.occupancyMaxActiveBlocksPerMultiprocessor(k.kernel.ptr, THREADS, 0)
    wave = per_sm * sms
    out = cupy.empty(wave * THREADS, np.float32)
    probe_iters = 2000
    wave_us = median_device_us(lambda: k((wave,), (THREADS,), (out, np.int32(probe_iters)), stream=stream), stream)
    us_per_iter = wave_us / probe_iters
    be_iters = max(1, int(cfg.be_block_us / us_per_iter))
    lc_probe = cupy.empty(cfg.lc_blocks * THREADS, np.float32)
    lc_probe_us = median_device_us(lambda: k((cfg.lc_blocks,), (THREADS,), (lc_probe, np.int32(probe_iters)),
                                         stream=stream), stream)
    lc_iters = max(1, int(probe_iters * cfg.lc_kernel_us / lc_probe_us))
    be_waves = max(1, round(cfg.be_kernel_ms * 1000 / cfg.be_block_us))
    be_blocks = be_waves * wave
    lc_out = cupy.empty(cfg.lc_blocks * THREADS, np.float32)
    be_out = cupy.empty(be_blocks * THREADS, np.float32)
    lc_us = median_device_us(lambda: k((cfg.lc_blocks,), (THREADS,), (lc_out, np.int32(lc_iters)), stream=stream), stream)
    be_us = median_device_us(lambda: k((be_blocks,), (THREADS,), (be_out, np.int32(be_iters)), stream=stream), stream, 3)
    return _Calibration(lc_iters, be_iters, be_blocks, lc_us, be_us, wave)


class _Workloads:
    """The two tenants' loops, parameterized by how they launch and on which stream."""

    def __init__(self, cfg: ColocationConfig, cal: _Calibration):
        import cupy

        self.cfg, self.cal = cfg, cal
        self.lc_out = cupy.empty(cfg.lc_blocks * THREADS, np.float32)
        self.be_out = cupy.empty(cal.be_blocks * THREADS, np.float32)

    def lc_loop(self, enter: Callable[[], Any], stream_of: Callable[[], Any], t0: float,
                stop: threading.Event, latencies: list[float], phases: list[tuple[float, float, float]],
                bracket: Callable[[], ContextManager[Any]] = contextlib.nullcontext) -> None:
        """Serve the arrivals: each request, its launches and the wait for them, in
        ``bracket()`` (a lithos tenant's `Tenant.request`)."""
        cfg, cal = self.cfg, self.cal
        with enter():
            k = _burn_kernel()
            stream = stream_of()
            for arrival in cfg.arrivals():
                if stop.is_set():
                    break
                delay = t0 + arrival - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                woke = time.perf_counter()
                with bracket():
                    for _ in range(cfg.lc_kernels):
                        k((cfg.lc_blocks,), (THREADS,), (self.lc_out, np.int32(cal.lc_iters)), stream=stream)
                    issued = time.perf_counter()
                    _sync(stream)
                done = time.perf_counter()
                latencies.append((done - (t0 + arrival)) * 1000.0)
                # where the time went: late wake-up, issuing (host), waiting for the GPU
                phases.append(((woke - (t0 + arrival)) * 1e3, (issued - woke) * 1e3, (done - issued) * 1e3))

    def be_loop(self, enter: Callable[[], Any], stream_of: Callable[[], Any], stop: threading.Event,
                done: list[float]) -> None:
        import cupy

        cal = self.cal
        with enter():
            k = _burn_kernel()
            stream = stream_of()
            events = []
            while not stop.is_set():
                k((cal.be_blocks,), (THREADS,), (self.be_out, np.int32(cal.be_iters)), stream=stream)
                ev = cupy.cuda.Event(disable_timing=True)
                ev.record(_cupy(stream))
                events.append(ev)
                while len(events) > 2:  # keep two kernels queued, as a training loop would
                    events.pop(0).synchronize()
                    done.append(time.perf_counter())
            for ev in events:
                ev.synchronize()
                done.append(time.perf_counter())


def _cupy(stream: Any) -> Any:
    return as_cupy_stream(stream)


def _sync(stream: Any) -> None:
    _cupy(stream).synchronize()


def _run_pair(w: _Workloads, lc: tuple | None, be: tuple | None, duration_s: float,
              lc_bracket: Callable[[], ContextManager[Any]] = contextlib.nullcontext) -> dict[str, Any]:
    """Run the LC and/or BE loop in threads for ``duration_s``; return their figures.
    Each LC request runs in ``lc_bracket()``."""
    stop = threading.Event()
    latencies: list[float] = []
    phases: list[tuple[float, float, float]] = []
    done: list[float] = []
    threads = []
    t0 = time.perf_counter() + 0.05
    if lc is not None:
        threads.append(threading.Thread(target=w.lc_loop, args=(*lc, t0, stop, latencies, phases, lc_bracket),
                                        name="lc"))
    if be is not None:
        threads.append(threading.Thread(target=w.be_loop, args=(*be, stop, done), name="be"))
    errors: list[BaseException] = []

    def guarded(t: threading.Thread) -> Callable[[], None]:
        target = t.run

        def run() -> None:
            try:
                target()
            except BaseException as exc:  # reported below: a failed tenant must fail the scenario
                errors.append(exc)
                stop.set()

        return run

    for t in threads:
        t.run = guarded(t)  # type: ignore[method-assign]
        t.start()
    time.sleep(max(0.0, t0 - time.perf_counter() + duration_s))
    stop.set()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    result: dict[str, Any] = {}
    if lc is not None and not latencies:
        result["hp"] = {"completed": 0, "p50_ms": None, "p99_ms": None, "p999_ms": None, "mean_ms": None,
                        "latencies_ms": []}
    elif lc is not None:
        lat = np.asarray(latencies)
        result["hp"] = {
            "completed": int(lat.size),
            "p50_ms": float(np.percentile(lat, 50)),
            "p99_ms": float(np.percentile(lat, 99)),
            "p999_ms": float(np.percentile(lat, 99.9)),
            "mean_ms": float(lat.mean()),
            "latencies_ms": lat.round(4).tolist(),
        }
        ph = np.asarray(phases)
        result["hp"]["phases_p99_ms"] = {name: float(np.percentile(ph[:, i], 99))
                                         for i, name in enumerate(("wake_late", "issue", "gpu_wait"))}
    if be is not None:
        window = [d for d in done if t0 <= d <= t0 + duration_s]
        result["be"] = {"kernels": len(window), "kernels_per_s": len(window) / duration_s}
    return result


def policy_name(policy: Any) -> str:
    """A short name for a scheduling policy (for file names)."""
    if not policy.stealing:
        return "lithos_no_steal"
    if not policy.atomize_best_effort:
        return "lithos_no_atoms"
    return "lithos"


def run_lithos(cfg: ColocationConfig, w: _Workloads, device: Any, policy: Any,
               measure: Callable[[Callable[[], dict[str, Any]]], tuple[dict[str, Any], Any]] | None = None,
               ) -> tuple[dict[str, Any], Any, dict[str, Any], dict[str, Any]]:
    """The pair under a lithos scheduler with ``policy``: a warm-up, then the measured run,
    through ``measure`` if given (``measure(run)`` returns ``run()`` and what it measured
    over it). Returns the figures (with the scheduler's stats and, under
    ``LITHOS_TRACE_DIR``, the trace file), what ``measure`` measured (None without), and the
    tenants' stats before and after the measured run."""
    import cupy

    sched = Scheduler(device, pair_specs(cfg.lc_share), policy)
    lc_t, be_t = sched.tenant("lc"), sched.tenant("be")
    cur = cupy.cuda.get_current_stream
    # compile, learn block times
    _run_pair(w, (lambda: lc_t, cur), (lambda: be_t, cur), WARMUP_S, lc_t.request)
    before = sched.stats()["tenants"]

    def pair() -> dict[str, Any]:
        return _run_pair(w, (lambda: lc_t, cur), (lambda: be_t, cur), cfg.duration_s, lc_t.request)

    res, measured = measure(pair) if measure is not None else (pair(), None)
    after = sched.stats()["tenants"]
    sched.close()
    trace_dir = os.environ.get("LITHOS_TRACE_DIR")
    if trace_dir:
        res["trace_file"] = str(sched.export_trace(Path(trace_dir) / f"trace_{policy_name(policy)}.json"))
    res["scheduler"] = sched.stats()
    return res, measured, before, after


def setup_gpu(cfg: ColocationConfig) -> tuple[_Calibration, _Workloads]:
    """Calibrate the workloads and rewrite the burn kernel once, outside every measurement."""
    cal = calibrate(cfg)
    w = _Workloads(cfg, cal)
    atomize(_burn_kernel()).prepared()
    return cal, w


def run_gpu(cfg: ColocationConfig, console: Any = None) -> dict[str, Any]:
    """Every scenario on the GPU, side by side."""
    import cupy

    cal, w = setup_gpu(cfg)
    device = open_device(simulate=False)
    lc_tpcs, be_tpcs = pair_tpcs(cfg.lc_share, device.num_tpcs)
    lc_part, be_part = device.partition(lc_tpcs), device.partition(be_tpcs)
    nothing = contextlib.nullcontext
    plain = cupy.cuda.Stream(non_blocking=True)
    plain2 = cupy.cuda.Stream(non_blocking=True)
    hi_stream = cupy.cuda.Stream(non_blocking=True, priority=device.greatest_priority)
    lo_stream = cupy.cuda.Stream(non_blocking=True, priority=0)
    meter, no_meter = open_meter()

    def measured(run: Callable[[], dict[str, Any]]) -> tuple[dict[str, Any], Any]:
        """``run()`` with the GPU's energy over it (`EnergyMeter.measure`), or None without NVML."""
        if meter is None:
            return run(), None
        out: list[dict[str, Any]] = []
        energy = meter.measure(lambda: out.append(run()))
        return out[0], energy

    def lithos(policy: Policy) -> Callable[[], dict[str, Any]]:
        def run() -> dict[str, Any]:
            res, energy, before, after = run_lithos(cfg, w, device, policy, measured)
            res["energy"] = ({"skipped": no_meter} if energy is None
                             else tenant_energy(energy, before, after, device.num_tpcs))
            return res
        return run

    def plain_pair(lc: tuple | None, be: tuple | None) -> Callable[[], dict[str, Any]]:
        def run() -> dict[str, Any]:
            _run_pair(w, lc, be, WARMUP_S)
            res, energy = measured(lambda: _run_pair(w, lc, be, cfg.duration_s))
            res["energy"] = {"skipped": no_meter} if energy is None else {"measured": energy.to_json()}
            return res
        return run

    scenarios: dict[str, Callable[[], dict[str, Any]]] = {
        "lc_alone": plain_pair((nothing, lambda: plain), None),
        "be_alone": plain_pair(None, (nothing, lambda: plain2)),
        "streams": plain_pair((nothing, lambda: plain), (nothing, lambda: plain2)),
        "priorities": plain_pair((nothing, lambda: hi_stream), (nothing, lambda: lo_stream)),
        "static_split": plain_pair((nothing, lambda: lc_part.high.cupy), (nothing, lambda: be_part.normal.cupy)),
        "lithos": lithos(cfg.policy()),
        "lithos_no_steal": lithos(cfg.policy(stealing=False)),
        "lithos_no_atoms": lithos(cfg.policy(atomize_best_effort=False)),
    }
    results = run_scenarios(scenarios, console, "co-location scenarios", "scenario {}",
                            after=cupy.cuda.Device().synchronize)
    return {"config": dataclasses.asdict(cfg), "calibration": dataclasses.asdict(cal),
            "device": device.describe(), **summarize(results)}


def run_scenarios(scenarios: dict[str, Callable[[], dict[str, Any]]], console: Any, title: str, label: str,
                  after: Callable[[], Any] | None = None) -> dict[str, Any]:
    """Run each scenario in turn under a progress bar.

    Parameters
    ----------
    scenarios : dict of str to callable
        Each scenario's run, by name; returns its figures.
    console : rich.console.Console or None
    title : str
        The bar's first description.
    label : str
        Its description while a scenario runs, ``{}`` standing for the scenario's name.
    after : callable, optional
        Called after each scenario (on the GPU: synchronize the device).

    Returns
    -------
    dict
        Each scenario's figures, by name.
    """
    from rich.progress import Progress

    results: dict[str, Any] = {}
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task(title, total=len(scenarios))
        for name, fn in scenarios.items():
            progress.update(task, description=label.format(name))
            results[name] = fn()
            if after is not None:
                after()
            progress.advance(task)
    return results


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    """Normalize BE throughput to ``be_alone`` and compute lithos-vs-baseline ratios."""
    alone = results.get("be_alone", {}).get("be", {}).get("kernels_per_s")
    for s in results.values():
        be = s.get("be")
        if be is not None and alone:
            be["throughput_norm"] = be["kernels_per_s"] / alone
    ratios = {}
    lithos = results.get("lithos", {})
    for s in results.values():
        lat = s.get("hp", {}).get("latencies_ms")
        if lat:
            s["hp"]["p99_ci95_ms"] = list(percentile_ci(lat, 99))
    for name, s in results.items():
        if name == "lithos" or "hp" not in s or "hp" not in lithos:
            continue
        r: dict[str, Any] = {"p99_reduction": s["hp"]["p99_ms"] / lithos["hp"]["p99_ms"]}
        if s["hp"].get("latencies_ms") and lithos["hp"].get("latencies_ms"):
            # baseline p99 / lithos p99, both samples resampled: where it straddles a target,
            # the run cannot tell
            r["p99_reduction_ci95"] = list(ratio_ci(s["hp"]["latencies_ms"], lithos["hp"]["latencies_ms"], 99))
        if "be" in s and "be" in lithos and s["be"].get("kernels_per_s"):
            r["be_throughput_gain"] = lithos["be"]["kernels_per_s"] / s["be"]["kernels_per_s"]
        ratios[name] = r
    return {"scenarios": results, "ratios": ratios}

