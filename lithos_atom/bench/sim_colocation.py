"""The co-location scenarios on the simulated device, in virtual time.

Same scenarios and the same scheduler code as on the GPU (`lithos_atom.bench.colocation_bench`);
the kernels are `SimKernel` latency models and time is virtual, so a run is deterministic
for a seed and takes seconds. Every result is marked ``simulated``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

from lithos_atom.bench.colocation_bench import ColocationConfig, run_scenarios, summarize
from lithos_atom.bench.tenant_pair import pair_specs, pair_tpcs
from lithos_atom.plan import KernelKey, LaunchPlan
from lithos_sched.policy import Policy
from lithos_sched.scheduler import Scheduler
from lithos_sched.sim_device import SimDevice
from lithos_sched.sim_kernel import SimKernel
from lithos_sched.timeline import SimTimeline


@dataclasses.dataclass(frozen=True)
class SimColocationConfig(ColocationConfig):
    """`ColocationConfig` for the simulated device; times are virtual.

    Attributes
    ----------
    blocks_per_sm : int
        Blocks of either kernel that fit on one simulated SM at once.
    """

    duration_s: float = 2.0
    blocks_per_sm: int = 4

    def arrivals_us(self) -> np.ndarray:
        """LC arrival times in virtual microseconds."""
        return self.arrivals() * 1e6


def sim_plan(device: Any, kernel: Any) -> LaunchPlan:
    """A `LaunchPlan` that launches block ranges of a `SimKernel` on simulated streams."""
    key = KernelKey(kernel.name, (kernel.grid_blocks, 1, 1), (256, 1, 1), 0)

    def issue_range(start: int, count: int, stream: Any) -> None:
        stream.launch(kernel, start, count)

    return LaunchPlan.build(key, kernel.grid_blocks, kernel.grid_blocks, issue_range,
                            wave_blocks=kernel.blocks_per_sm * device.num_sms)


class _Run:
    """One scenario: LC requests fire as timers while the BE loop waits on events."""

    def __init__(self, cfg: SimColocationConfig, device: Any, timeline: Any):
        self.cfg, self.device, self.timeline = cfg, device, timeline
        wave = cfg.blocks_per_sm * device.num_sms
        self.lc_kernel = SimKernel("lc_kernel", cfg.lc_blocks, cfg.lc_kernel_us, blocks_per_sm=cfg.blocks_per_sm)
        be_blocks = max(1, round(cfg.be_kernel_ms * 1000 / cfg.be_block_us)) * wave
        self.be_kernel = SimKernel("be_kernel", be_blocks, cfg.be_block_us, blocks_per_sm=cfg.blocks_per_sm)
        self.latencies_ms: list[float] = []
        self.be_done: list[float] = []

    def lc_requests(self, submit: Callable[[LaunchPlan], Any], done_event: Callable[[], Any]) -> None:
        """Register every LC arrival; each issues its kernels and waits (as timers) for them."""
        tl = self.timeline

        def arrive(t_arrival: float) -> Callable[[], None]:
            def fire() -> None:
                for _ in range(self.cfg.lc_kernels):
                    submit(sim_plan(self.device, self.lc_kernel))
                end = done_event()
                self._watch(end, t_arrival)
            return fire

        for t in self.cfg.arrivals_us():
            tl.call_at(float(t), arrive(float(t)))

    def _watch(self, event: Any, t_arrival: float) -> None:
        tl = self.timeline

        def check() -> None:
            if event.query():
                self.latencies_ms.append((tl.now_us() - t_arrival) / 1000.0)
            else:
                tl.call_at(self.device.next_completion_us() or tl.now_us(), check)

        check()

    def be_loop(self, submit: Callable[[LaunchPlan], Any], done_event: Callable[[], Any]) -> None:
        tl = self.timeline
        end_us = self.cfg.duration_s * 1e6
        queued: list[Any] = []
        while tl.now_us() < end_us:
            submit(sim_plan(self.device, self.be_kernel))
            queued.append(done_event())
            while len(queued) > 2:
                tl.synchronize(queued.pop(0))
                if tl.now_us() <= end_us:
                    self.be_done.append(tl.now_us())
        for ev in queued:
            tl.synchronize(ev)
            if tl.now_us() <= end_us:
                self.be_done.append(tl.now_us())

    def result(self, lc: bool, be: bool) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if lc:
            lat = np.asarray(self.latencies_ms)
            out["hp"] = {"completed": int(lat.size), "p50_ms": float(np.percentile(lat, 50)),
                         "p99_ms": float(np.percentile(lat, 99)), "p999_ms": float(np.percentile(lat, 99.9)),
                         "mean_ms": float(lat.mean()), "latencies_ms": lat.round(4).tolist()}
        if be:
            out["be"] = {"kernels": len(self.be_done), "kernels_per_s": len(self.be_done) / self.cfg.duration_s}
        return out


def _direct(device: Any, run: _Run, lc_stream: Any | None, be_stream: Any | None) -> dict[str, Any]:
    tl = run.timeline
    if lc_stream is not None:
        run.lc_requests(lambda p: p.issue_all(lc_stream), lambda: tl.record(lc_stream))
    if be_stream is not None:
        run.be_loop(lambda p: p.issue_all(be_stream), lambda: tl.record(be_stream))
    tl.advance_to(run.cfg.duration_s * 1e6 + 1e5)  # let the last requests finish
    return run.result(lc_stream is not None, be_stream is not None)


def _lithos(device: Any, run: _Run, cfg: SimColocationConfig, policy: Policy) -> dict[str, Any]:
    sched = Scheduler(device, pair_specs(cfg.lc_share), policy)
    sched.timeline = run.timeline  # share the scenario's timers
    lc, be = sched.tenant("lc"), sched.tenant("be")
    tl = run.timeline
    run.lc_requests(lambda p: sched.submit_for(lc, p), lambda: tl.record(lc.stream))
    run.be_loop(lambda p: sched.submit_for(be, p), lambda: tl.record(be.stream))
    tl.advance_to(cfg.duration_s * 1e6 + 1e5)
    sched.close()
    out = run.result(True, True)
    out["scheduler"] = sched.stats()
    return out


def run_sim(cfg: SimColocationConfig | None = None, console: Any = None) -> dict[str, Any]:
    """Every co-location scenario of ``cfg`` (default `SimColocationConfig()`) on a fresh
    simulated H100-sized device each; a progress bar goes to ``console``."""
    cfg = cfg or SimColocationConfig()

    def scenario(body: Callable[[Any, _Run], dict[str, Any]]) -> Callable[[], dict[str, Any]]:
        def run() -> dict[str, Any]:
            device = SimDevice(seed=cfg.seed, record_blocks=False)
            try:
                return body(device, _Run(cfg, device, SimTimeline(device)))
            finally:
                device.close()
        return run

    def split(device: Any) -> tuple[Any, Any]:
        lc_tpcs, be_tpcs = pair_tpcs(cfg.lc_share, device.num_tpcs)
        return device.partition(lc_tpcs), device.partition(be_tpcs)

    def full(device: Any) -> Any:
        return device.partition(range(device.num_tpcs))

    scenarios = {
        "lc_alone": scenario(lambda d, r: _direct(d, r, full(d).high, None)),
        "be_alone": scenario(lambda d, r: _direct(d, r, None, full(d).normal)),
        "streams": scenario(lambda d, r: _direct(d, r, full(d).normal, full(d).stream("normal", new=True))),
        "priorities": scenario(lambda d, r: _direct(d, r, full(d).high, full(d).normal)),
        "static_split": scenario(lambda d, r: _direct(d, r, split(d)[0].high, split(d)[1].normal)),
        "lithos": scenario(lambda d, r: _lithos(d, r, cfg, cfg.policy())),
        "lithos_no_steal": scenario(lambda d, r: _lithos(d, r, cfg, cfg.policy(stealing=False))),
        "lithos_no_atoms": scenario(lambda d, r: _lithos(d, r, cfg, cfg.policy(atomize_best_effort=False))),
    }
    results = run_scenarios(scenarios, console, "co-location (simulated)", "co-location {} (simulated)")
    return {"simulated": True, "config": dataclasses.asdict(cfg), **summarize(results)}
