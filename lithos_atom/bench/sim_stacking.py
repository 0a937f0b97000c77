"""The stacking study (`lithos_atom.bench.stacking`) on the simulated device, in virtual time.

Every service's requests and the best-effort job's iterations are the simulated device's
models of their kernels (`lithos_atom.bench.sim_ml_colocation`: the models' recorded
launches); each tenant is a `ScenarioRun` on one shared device and timeline. ``mps`` is
modeled as ordinary streams of one device (no priorities between clients), ``priorities``
with the simulated device's two stream priorities (`PRIORITIES_SIM`), ``processes`` by the
time-slicing model (`lithos_atom.bench.timeslice`); ``static_split`` and lithos run as on
the GPU, with the same scheduler code.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from lithos_atom.bench.gate_metrics import gate_figures
from lithos_atom.bench.ml_figures import be_figures, lc_figures
from lithos_atom.bench.occupancy import tenant_occupancy
from lithos_atom.bench.sim_kernels import KernelModel, SimCostModel
from lithos_atom.bench.sim_ml_colocation import MPS_MODEL, ScenarioRun, be_job_kernels, service_times, \
    workload_kernels
from lithos_atom.bench.stacking_config import PRIORITIES_SIM, StackConfig, summarize_variant
from lithos_atom.bench.timeslice import check_timeslice_config, timeslice_contexts
from lithos_sched.policy import Policy
from lithos_sched.scheduler import Scheduler
from lithos_sched.sim_device import SimDevice
from lithos_sched.tenant import assign_tpcs
from lithos_sched.timeline import SimTimeline

#: What the simulated ``processes`` scenario is.
PROCESSES_MODEL = "modeled: time-slicing between one context per tenant (analytic, from simulated service times)"


@dataclasses.dataclass(frozen=True)
class SimStackConfig(StackConfig):
    """`StackConfig` for the simulated device (virtual time).

    Attributes
    ----------
    timeslice_us, switch_us : float
        Time slice and context-switch cost of the modeled ``processes`` scenario (as
        `SimMLConfig`'s).
    cost : SimCostModel
    """

    duration_s: float = 0.5
    warmup_s: float = 0.05
    timeslice_us: float = 2000.0
    switch_us: float = 25.0
    cost: SimCostModel = SimCostModel()

    def __post_init__(self) -> None:
        if isinstance(self.cost, dict):
            object.__setattr__(self, "cost", SimCostModel(**self.cost))
        super().__post_init__()
        check_timeslice_config(self)


class _Stack:
    """The tenants' kernels and one scenario's device, timeline and players."""

    def __init__(self, cfg: SimStackConfig):
        self.cfg = cfg
        probe = SimDevice(seed=cfg.seed, record_blocks=False)
        self.described, self.num_tpcs = probe.describe(), probe.num_tpcs
        model = KernelModel(cfg.cost, probe.num_sms)
        probe.close()
        self.lc_cfgs = [cfg.service_config(i) for i in range(len(cfg.services))]
        self.names = [s.service for s in cfg.services]
        self.lc_kernels = [workload_kernels(c, model) for c in self.lc_cfgs]
        self.be_cfg = cfg.be_config()
        self.be_kernels = be_job_kernels(self.be_cfg, model, cfg.be_job) if cfg.be_job else None

    def run(self, with_be: bool, place: Callable[[Any, Any, list[ScenarioRun], ScenarioRun | None], dict[str, Any]],
            services: bool = True) -> dict[str, Any]:
        """One scenario: ``place(device, timeline, lc_runs, be_run)`` issues the tenants' work
        and returns extra figures; the services' and the job's figures are added."""
        device = SimDevice(seed=self.cfg.seed, record_blocks=False)
        tl = SimTimeline(device)
        try:
            runs = [ScenarioRun(c, device, tl, k, None) for c, k in zip(self.lc_cfgs, self.lc_kernels)] \
                if services else []
            be = ScenarioRun(self.be_cfg, device, tl, {}, self.be_kernels) if with_be else None
            extra = place(device, tl, runs, be)
            tl.advance_to(self.cfg.span_s * 1e6 + 2e5)  # the last requests complete
        finally:
            device.close()
        out: dict[str, Any] = {}
        if runs:
            out["services"] = {n: lc_figures(r.arrivals_s, r.latencies_ms, r.cfg) for n, r in zip(self.names, runs)}
        if be is not None:
            out["be"] = be_figures(be.be_done_s, self.be_cfg, be.be_steps)
        return {**out, **extra}


def _on_streams(lc_streams: Callable[[Any], list[Any]], be_stream: Callable[[Any], Any]
                ) -> Callable[[Any, Any, list[ScenarioRun], ScenarioRun | None], dict[str, Any]]:
    """Place each service on its stream of ``lc_streams(device)`` and the job on ``be_stream(device)``."""
    def place(device: Any, tl: Any, runs: list[ScenarioRun], be: ScenarioRun | None) -> dict[str, Any]:
        for run, s in zip(runs, lc_streams(device)):
            run.lc_requests(lambda p, s=s: p.issue_all(s), lambda s=s: tl.record(s))
        if be is not None:
            s = be_stream(device)
            be.be_loop(lambda p: p.issue_all(s), lambda: tl.record(s))
        return {}
    return place


def run_sim(config: StackConfig | None = None, console: Any = None) -> dict[str, Any]:
    """Every scenario of every variant of the stacking study on fresh simulated devices.

    Parameters
    ----------
    config : StackConfig, optional
        A plain `StackConfig` becomes a `SimStackConfig` of the same fields.
    console : rich.console.Console, optional
        Where the progress bar goes.

    Returns
    -------
    dict
        ``simulated`` (True), ``config``, ``device``, ``alone`` (each service alone on the
        whole device, and ``be`` the job alone), ``sim_service_ms`` (each service's request
        time alone per batch size) and ``variants``: per variant the figures of
        `summarize_variant`.
    """
    from rich.progress import Progress

    cfg = config if isinstance(config, SimStackConfig) else SimStackConfig(**(
        {} if config is None else {f.name: getattr(config, f.name) for f in dataclasses.fields(StackConfig)}))
    stack = _Stack(cfg)
    full = lambda d: d.partition(range(d.num_tpcs))  # noqa: E731
    variants = cfg.variants()
    runs = len(cfg.services) + (1 if cfg.be_job else 0) + len(variants) * len(cfg.scenarios)
    demands = [service_times(k, cfg.seed) for k in stack.lc_kernels]
    alone: dict[str, Any] = {}
    raw: dict[str, dict[str, Any]] = {v: {} for v in variants}
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("stacking (simulated)", total=runs)

        def measure(label: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
            progress.update(task, description=f"stacking: {label} (simulated)")
            out = fn()
            progress.advance(task)
            return out

        for i, name in enumerate(stack.names):
            def one(device: Any, tl: Any, runs_: list[ScenarioRun], be: ScenarioRun | None, i: int = i
                    ) -> dict[str, Any]:
                s = full(device).high
                runs_[i].lc_requests(lambda p: p.issue_all(s), lambda: tl.record(s))
                return {}
            alone[name] = measure(f"{name} alone", lambda: stack.run(False, one))["services"][name]
        be_alone = measure("best-effort alone", lambda: stack.run(True, _on_streams(
            lambda d: [], lambda d: full(d).normal), services=False))["be"] if cfg.be_job else None
        for variant, with_be in variants.items():
            specs = cfg.tenant_specs(with_be)
            owned = assign_tpcs(specs, stack.num_tpcs)
            top = cfg.top_rank()
            bodies: dict[str, Callable[[], dict[str, Any]]] = {
                "mps": lambda: {**stack.run(with_be, _on_streams(
                    lambda d: [full(d).stream("normal", new=True) for _ in stack.names],
                    lambda d: full(d).stream("normal", new=True))), "model": MPS_MODEL},
                "priorities": lambda: {**stack.run(with_be, _on_streams(
                    lambda d: [full(d).stream("high" if s.rank == top else "normal", new=True) for s in cfg.services],
                    lambda d: full(d).stream("normal", new=True))), "model": PRIORITIES_SIM},
                "processes": lambda: _processes(cfg, stack, demands, be_alone if with_be else None),
                "static_split": lambda: stack.run(with_be, _on_streams(
                    lambda d: [d.partition(owned[n]).high for n in stack.names],
                    lambda d: d.partition(owned["be"]).normal)),
                "lithos": lambda: stack.run(with_be, _lithos(specs, stack.names)),
            }
            for name in cfg.scenarios:
                raw[variant][name] = measure(f"{variant}: {name}", bodies[name])
    return {"simulated": True, "config": dataclasses.asdict(cfg), "device": stack.described,
            "alone": {**alone, **({"be": be_alone} if be_alone else {})},
            "sim_service_ms": {n: {b: us / 1000.0 for b, us in d.items()} for n, d in zip(stack.names, demands)},
            "variants": {v: summarize_variant(cfg, raw[v], alone, be_alone) for v in variants}}


def _lithos(specs: list[Any], names: list[str]) -> Callable[[Any, Any, list[ScenarioRun], ScenarioRun | None],
                                                           dict[str, Any]]:
    """Place the services and the job as tenants of one lithos scheduler (`tenant_specs`)."""
    def place(device: Any, tl: Any, runs: list[ScenarioRun], be: ScenarioRun | None) -> dict[str, Any]:
        sched = Scheduler(device, specs, Policy())
        sched.timeline = tl  # share the scenario's timers
        try:
            for name, run in zip(names, runs):
                tenant = sched.tenant(name)
                run.lc_requests(lambda p, t=tenant: sched.submit_for(t, p), lambda t=tenant: tl.record(t.stream))
            if be is not None:
                tenant = sched.tenant("be")
                be.be_loop(lambda p: sched.submit_for(tenant, p), lambda: tl.record(tenant.stream))
            tl.advance_to(runs[0].cfg.span_s * 1e6 + 2e5)  # the last requests complete
        finally:
            sched.close()
        out: dict[str, Any] = {"scheduler": sched.stats(), "gates": gate_figures(sched)}
        if be is not None:
            out["be_occupancy"] = tenant_occupancy(sched.atoms(), "be", be.cfg.duration_s * 1e6)
        return out
    return place


def _processes(cfg: SimStackConfig, stack: _Stack, demands: list[dict[int, float]],
               be_alone: dict[str, Any] | None) -> dict[str, Any]:
    """The modeled time-sliced processes: one context per tenant."""
    requests = [c.requests() for c in stack.lc_cfgs]
    lat, share = timeslice_contexts([t.tolist() for t, _ in requests],
                                    [[d[int(b)] for b in batches] for d, (_, batches) in zip(demands, requests)],
                                    be_alone is not None, cfg.timeslice_us, cfg.switch_us, (cfg.warmup_s, cfg.span_s))
    out: dict[str, Any] = {"services": {n: lc_figures(t.tolist(), lt, c)
                                        for n, (t, _), lt, c in zip(stack.names, requests, lat, stack.lc_cfgs)},
                           "model": PROCESSES_MODEL}
    if be_alone is not None:
        rate = be_alone["iters_per_s"] * share
        out["be"] = {"iterations": int(round(rate * cfg.duration_s)), "iters_per_s": rate, "coarse": False,
                     "gpu_share": share}
    return out
