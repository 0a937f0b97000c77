"""The ML co-location scenarios on the simulated device, in virtual time.

Each ML kernel of a request, training step or batch-inference pass becomes a `SimKernel`
with its real grid and a per-block duration from a cost model (`lithos_atom.bench.sim_kernels`;
the `kernels.models` services and the GPT-2 job from their recorded launches,
`lithos_atom.bench.sim_models`). Host launch costs are not modeled.

The in-process scenarios and lithos run on the simulated device with the same scheduler
code as on the GPU. The two multi-process scenarios are *modeled*, and labeled so:

- ``processes``: time-slicing between two contexts (`lithos_atom.bench.timeslice`): the GPU belongs to
  one context at a time; the best-effort context keeps it until the end of its time slice
  once a request waits; a context switch costs `SimMLConfig.switch_us`.
- ``mps``: spatial sharing of the SMs without priorities between clients, simulated as
  two ordinary streams.
"""

from __future__ import annotations

import collections
import copy
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lithos_atom.bench.ml_colocation import LITHOS_SCENARIOS, MLColocationConfig, order, scheduler_for
from lithos_atom.bench.ml_figures import be_figures, lc_figures, slo_of, summarize_pair
from lithos_atom.bench.gate_metrics import gate_figures
from lithos_atom.bench.occupancy import tenant_occupancy
from lithos_atom.bench.sim_colocation import sim_plan
from lithos_atom.bench.sim_kernels import KernelModel, SimCostModel
from lithos_atom.bench.sim_models import gpt2_kernels, service_kernels
from lithos_atom.bench.tenant_pair import pair_specs, pair_tpcs
from lithos_atom.bench.timeslice import check_timeslice_config, timeslice_model
from lithos_sched.rightsizing import RightSizer
from lithos_sched.sim_device import SimDevice
from lithos_sched.timeline import SimTimeline

PROCESSES_MODEL = "modeled: time-slicing between two contexts (analytic, from simulated service times)"
MPS_MODEL = "modeled: MPS as spatial sharing without client priorities (two ordinary streams)"
#: Why the scenarios of a process per tenant are not simulated
PROCESS_SKIP = ("one process per tenant needs MPS on a GPU; the simulated device has no interpreter for two "
                "threads to share, so it would repeat static_split and lithos")


@dataclasses.dataclass(frozen=True)
class SimMLConfig(MLColocationConfig):
    """`MLColocationConfig` for the simulated device (virtual time).

    Attributes
    ----------
    duration_s : float
        Virtual seconds measured per scenario and round: a few training iterations (about
        50 ms each alone) and enough simulation that three rounds, run in parallel, keep
        the default simulated bench within a minute on two cores.
    warmup_s : float
        Unmeasured virtual seconds first: as long as the window, since a lithos
        scenario's first training iteration ends late (its queues fill and its atoms are
        sized), and a window that holds it reads as no training at all.
    timeslice_us : float
        Time slice of the modeled ``processes`` scenario.
    switch_us : float
        Cost of one context switch there.
    cost : SimCostModel
    """

    duration_s: float = 0.2
    warmup_s: float = 0.2
    timeslice_us: float = 2000.0
    switch_us: float = 25.0
    cost: SimCostModel = SimCostModel()

    def __post_init__(self) -> None:
        if isinstance(self.cost, dict):
            object.__setattr__(self, "cost", SimCostModel(**self.cost))
        super().__post_init__()
        check_timeslice_config(self)


# ---- the workloads' kernels -------------------------------------------------------------------


def workload_kernels(cfg: MLColocationConfig, model: KernelModel) -> dict[int, list[Any]]:
    """The `SimKernel`s of one request of ``cfg``'s inference service, per batch size."""
    if cfg.lc_service == "decoder":
        return {b: model.decoder(cfg.workload_sizes()["decoder"], b) for b in cfg.batch_sizes()}
    return service_kernels(model, cfg.lc_service, cfg.size, cfg.batch_sizes())


def be_job_kernels(cfg: MLColocationConfig, model: KernelModel, job: str) -> list[Any]:
    """The `SimKernel`s of one iteration of best-effort job ``job`` (of `BE_JOBS`)."""
    sizes = cfg.workload_sizes()
    if job == "training":
        return model.training_step(sizes["mlp"])
    if job == "batch_inference":
        return model.decoder(sizes["decoder"], sizes["batch_inference_batch"])
    return gpt2_kernels(model, cfg.size, cfg.training_gemm_max_k)


# ---- one scenario -----------------------------------------------------------------------------


class ScenarioRun:
    """One tenant pair's scenario in virtual time: LC requests fire as timers while the BE
    loop waits on events. Several share one device and timeline in the stacking study
    (`lithos_atom.bench.sim_stacking`), one per tenant.

    Parameters
    ----------
    cfg : MLColocationConfig
        The LC requests (`MLColocationConfig.requests`), the span and the BE queue depth.
    device, timeline
        The simulated device and its `SimTimeline`.
    lc_kernels : dict
        Batch size -> the `SimKernel`s of one request.
    be_kernels : list or None
        The `SimKernel`s of one BE iteration.
    """

    def __init__(self, cfg: MLColocationConfig, device: Any, timeline: Any, lc_kernels: dict[int, list[Any]],
                 be_kernels: list[Any] | None):
        self.cfg, self.device, self.timeline = cfg, device, timeline
        self.lc_kernels, self.be_kernels = lc_kernels, be_kernels
        self.arrivals_s: list[float] = []
        self.latencies_ms: list[float] = []
        self.be_done_s: list[float] = []  # when each BE kernel completed (`be_loop`)
        self._pending: collections.deque[tuple[Any, float]] = collections.deque()

    def lc_requests(self, submit: Callable[[Any], Any], done_event: Callable[[], Any]) -> None:
        """Register every request; each issues its kernels at its arrival (they queue in
        stream order behind earlier requests, as one server's stream would)."""
        tl = self.timeline
        arrivals, batches = self.cfg.requests()

        def arrive(t_s: float, batch: int) -> Callable[[], None]:
            def fire() -> None:
                for k in self.lc_kernels[batch]:
                    submit(sim_plan(self.device, k))
                self._pending.append((done_event(), t_s))
                if len(self._pending) == 1:
                    self._check()
            return fire

        for t_s, b in zip(arrivals.tolist(), batches.tolist()):
            tl.call_at(t_s * 1e6, arrive(t_s, int(b)))

    def _check(self) -> None:
        """Record every completed request at the head of the queue; poll again at the next
        block completion while one is pending (requests complete in stream order, so only
        the oldest is polled)."""
        tl = self.timeline
        while self._pending and self._pending[0][0].query():
            _, t_s = self._pending.popleft()
            self.arrivals_s.append(t_s)
            self.latencies_ms.append((tl.now_us() - t_s * 1e6) / 1000.0)
        if self._pending:
            nxt = self.device.next_completion_us()
            tl.call_at(nxt if nxt is not None else tl.now_us() + 1.0, self._check)

    def be_loop(self, submit: Callable[[Any], Any], done_event: Callable[[], Any]) -> None:
        """BE iterations back to back, ``be_queue_depth`` queued, until the span ends. The
        completion of every kernel is kept (`be_done_s`, `be_steps` to an iteration), so a
        window that holds few iterations still measures the work done in it."""
        tl = self.timeline
        end_us = self.cfg.span_s * 1e6
        queued: list[Any] = []
        marks: list[Any] = []
        assert self.be_kernels is not None
        while tl.now_us() < end_us:
            for k in self.be_kernels:
                submit(sim_plan(self.device, k))
                marks.append(done_event())
            queued.append(marks[-1])
            while len(queued) > self.cfg.be_queue_depth:
                tl.synchronize(queued.pop(0))
        for ev in queued:
            tl.synchronize(ev)
        self.be_done_s = [ev.time_us / 1e6 for ev in marks]

    @property
    def be_steps(self) -> int:
        """Kernels in one BE iteration: entries of `be_done_s` per iteration."""
        return len(self.be_kernels or ()) or 1

    def finish(self) -> None:
        """Let the last requests complete."""
        self.timeline.advance_to(self.cfg.span_s * 1e6 + 2e5)

    def figures(self, lc: bool, be: bool) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if lc:
            out["hp"] = lc_figures(self.arrivals_s, self.latencies_ms, self.cfg)
        if be:
            out["be"] = be_figures(self.be_done_s, self.cfg, self.be_steps)
        return out


def _direct(run: ScenarioRun, lc_stream: Any | None, be_stream: Any | None) -> dict[str, Any]:
    tl = run.timeline
    if lc_stream is not None:
        run.lc_requests(lambda p: p.issue_all(lc_stream), lambda: tl.record(lc_stream))
    if be_stream is not None:
        run.be_loop(lambda p: p.issue_all(be_stream), lambda: tl.record(be_stream))
    run.finish()
    return run.figures(lc_stream is not None, be_stream is not None)


def _lithos(run: ScenarioRun, name: str, trace: Path | None) -> dict[str, Any]:
    cfg = run.cfg
    sched = scheduler_for(name, run.device, pair_specs(cfg.lc_share), right_sizer=RightSizer())
    sched.timeline = run.timeline  # share the scenario's timers
    lc, be = sched.tenant("lc"), sched.tenant("be")
    tl = run.timeline
    run.lc_requests(lambda p: sched.submit_for(lc, p), lambda: tl.record(lc.stream))
    run.be_loop(lambda p: sched.submit_for(be, p), lambda: tl.record(be.stream))
    run.finish()
    sched.close()
    out = run.figures(True, True)
    if trace is not None:
        out["trace_file"] = str(sched.export_trace(trace))
    out["scheduler"] = sched.stats()
    out["be_occupancy"] = tenant_occupancy(sched.atoms(), "be", cfg.duration_s * 1e6)
    out["gates"] = gate_figures(sched)
    return out


# ---- the modeled time-sliced processes ---------------------------------------------------------


def service_times(lc_kernels: dict[int, list[Any]], seed: int) -> dict[int, float]:
    """Each batch size's request time alone on the whole simulated device."""
    out = {}
    for batch, ks in lc_kernels.items():
        with SimDevice(seed=seed, record_blocks=False) as dev:
            stream = dev.partition(range(dev.num_tpcs)).high
            for k in ks:
                sim_plan(dev, k).issue_all(stream)
            stream.synchronize()
            out[batch] = float(dev.now_us)
    return out


def request_service_ms(config: MLColocationConfig) -> dict[int, float]:
    """Each batch size's request time alone on the whole simulated device, in ms (the
    service times of `lithos_atom.bench.load`; with no host modeled, alone is back to
    back); a plain `MLColocationConfig` is read as `run_sim` reads it."""
    cfg = config if isinstance(config, SimMLConfig) else SimMLConfig(**dataclasses.asdict(config))
    with SimDevice(seed=cfg.seed, record_blocks=False) as probe:
        model = KernelModel(cfg.cost, probe.num_sms)
    return {b: us / 1000.0 for b, us in service_times(workload_kernels(cfg, model), cfg.seed).items()}


def _processes(cfg: SimMLConfig, demands: dict[int, float], be_alone: dict[str, Any]) -> dict[str, Any]:
    arrivals, batches = cfg.requests()
    lat, share = timeslice_model(arrivals.tolist(), [demands[int(b)] for b in batches], cfg.timeslice_us,
                                 cfg.switch_us, (cfg.warmup_s, cfg.span_s))
    rate = be_alone["be"]["iters_per_s"] * share
    return {"hp": lc_figures(arrivals.tolist(), lat, cfg),
            "be": {"iterations": int(round(rate * cfg.duration_s)), "iters_per_s": rate, "coarse": False,
                   "gpu_share": share},
            "model": PROCESSES_MODEL}


# ---- all scenarios ------------------------------------------------------------------------------


def run_sim(config: MLColocationConfig | None = None, console: Any = None, trace_dir: Any = None) -> dict[str, Any]:
    """Every selected scenario of every selected pair on fresh simulated H100-sized devices.

    Parameters
    ----------
    config : MLColocationConfig, optional
        A plain `MLColocationConfig` is turned into a `SimMLConfig` with the same fields.
    console : rich.console.Console, optional
        Where the progress bar goes.
    trace_dir : path, optional
        Where the lithos scenario's scheduler trace goes, per pair.

    Returns
    -------
    dict
        As `lithos_atom.bench.ml_gpu.run_gpu` (without ``setup_s`` and
        ``rightsizing_setup``), with ``simulated`` True and ``sim_service_ms``: each
        batch's request time alone on the simulated device (when ``processes`` ran).
    """
    from rich.progress import Progress

    if config is None:
        cfg = SimMLConfig()
    elif isinstance(config, SimMLConfig):
        cfg = config
    else:
        cfg = SimMLConfig(**dataclasses.asdict(config))
    sizes = cfg.workload_sizes()
    probe = SimDevice(seed=cfg.seed, record_blocks=False)
    model = KernelModel(cfg.cost, probe.num_sms)
    described, lc_tpcs = probe.describe(), len(pair_tpcs(cfg.lc_share, probe.num_tpcs)[0])
    probe.close()
    lc_kernels = workload_kernels(cfg, model)
    be_kernels = {pair: be_job_kernels(cfg, model, pair) for pair in cfg.pairs}
    selected = cfg.pair_scenarios()

    def scenario(be: str | None, body: Callable[[Any, ScenarioRun], dict[str, Any]]) -> dict[str, Any]:
        device = SimDevice(seed=cfg.seed, record_blocks=False)
        run = ScenarioRun(cfg, device, SimTimeline(device), lc_kernels, be_kernels[be] if be else None)
        try:
            return body(device, run)
        finally:
            device.close()

    def full(d: Any) -> Any:
        return d.partition(range(d.num_tpcs))

    def split(d: Any, share: float) -> tuple[Any, Any]:
        """The LC tenant's high-priority and the BE tenant's normal stream of a static split."""
        lc_tpcs, be_tpcs = pair_tpcs(share, d.num_tpcs)
        return d.partition(lc_tpcs).high, d.partition(be_tpcs).normal

    shares = cfg.static_shares()
    raw: dict[str, dict[str, Any]] = {}
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("ML co-location (simulated)", total=cfg.run_count())

        def measure(label: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
            progress.update(task, description=f"ML {label} (simulated)")
            out = fn()
            progress.advance(task)
            return out

        lc_alone = measure("lc_alone", lambda: scenario(None, lambda d, r: _direct(r, full(d).high, None)))
        demands = service_times(lc_kernels, cfg.seed) if "processes" in selected else {}
        for pair in cfg.pairs:
            r: dict[str, Any] = {"lc_alone": lc_alone}
            r["be_alone"] = measure(f"{pair}: be_alone", lambda: scenario(pair, lambda d, x: _direct(x, None, full(d).normal)))
            bodies: dict[str, Callable[[], dict[str, Any]]] = {
                "streams": lambda: scenario(pair, lambda d, x: _direct(x, full(d).normal,
                                                                       full(d).stream("normal", new=True))),
                "priorities": lambda: scenario(pair, lambda d, x: _direct(x, full(d).high, full(d).normal)),
                "processes": lambda: _processes(cfg, demands, r["be_alone"]),
                # the model is the streams scenario itself: its run when there is one
                "mps": lambda: {**(copy.deepcopy(r["streams"]) if "streams" in r else bodies["streams"]()),
                                "model": MPS_MODEL},
                "lithos_mps": lambda: {"skipped": PROCESS_SKIP},
                "lithos_mps_rightsized": lambda: {"skipped": PROCESS_SKIP},
            }
            for name in selected:
                if name == "static_split":  # and the static sweep after it
                    for run_name, share in shares.items():
                        r[run_name] = measure(f"{pair}: {run_name}", lambda: scenario(
                            pair, lambda d, x: _direct(x, *split(d, share))))
                elif name == "mps_static_split":  # and its sweep, each reported skipped
                    for run_name in cfg.process_static_shares():
                        r[run_name] = measure(f"{pair}: {run_name}", lambda: {"skipped": PROCESS_SKIP})
                elif name in LITHOS_SCENARIOS:
                    trace = Path(trace_dir) / f"trace_ml_{pair}_lithos.json" if trace_dir and name == "lithos" else None
                    r[name] = measure(f"{pair}: {name}",
                                      lambda: scenario(pair, lambda d, x: _lithos(x, name, trace)))
                else:
                    r[name] = measure(f"{pair}: {name}", bodies[name])
            raw[pair] = r
    slo = slo_of(cfg, lc_alone)
    return {"simulated": True, "config": dataclasses.asdict(cfg), "device": described, "slo_ms": slo, "lc_tpcs": lc_tpcs,
            "workloads": {k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for k, v in sizes.items()},
            "sim_service_ms": {b: v / 1000.0 for b, v in demands.items()},
            "pairs": {pair: summarize_pair(order(raw[pair]), slo) for pair in cfg.pairs}}
