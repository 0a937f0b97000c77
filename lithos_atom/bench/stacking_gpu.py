"""The stacking study (`lithos_atom.bench.stacking`) on the GPU.

In-process scenarios (``priorities``, ``static_split``, lithos) run each service and the
best-effort job as threads of this process (`ml_tenants.run_group`); ``mps`` and
``processes`` run one worker process per tenant (`ml_colocation_worker.run_workers`),
under a private MPS daemon or time-sliced by the driver. The services and the job are
built once here (random weights) and again in each worker. As in `lithos_atom.bench.ml_gpu`,
the baselines launch CuPy's own kernel objects and lithos rebuilds them while its
interception is installed.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

from lithos_atom.bench import ml_tenants
from lithos_atom.bench.gate_metrics import gate_figures
from lithos_atom.bench.ml_figures import be_figures, lc_figures
from lithos_atom.bench.ml_colocation_worker import WorkerError, run_workers
from lithos_atom.bench.mps import MPSDaemon, MPSUnavailable
from lithos_atom.bench.occupancy import tenant_occupancy
from lithos_atom.bench.stacking_config import StackConfig, cuda_priority, summarize_variant
from lithos_atom.optin import using_atomizer
from lithos_sched import open_device
from lithos_sched.policy import Policy
from lithos_sched.scheduler import Scheduler
from lithos_sched.tenant import assign_tpcs


class _Stack:
    """The built services and job, and how to run one in-process scenario."""

    def __init__(self, cfg: StackConfig, device: Any):
        import cupy

        self.cfg, self.device = cfg, device
        self.names = [s.service for s in cfg.services]
        self.lc_cfgs = [cfg.service_config(i) for i in range(len(cfg.services))]
        self.be_cfg = cfg.be_config()
        setup = cupy.cuda.Stream(non_blocking=True)
        self.services = [ml_tenants.build_lc(c, setup) for c in self.lc_cfgs]
        for s in self.services:
            s.warmup(setup)
        self.job = ml_tenants.build_be(self.be_cfg, cfg.be_job, setup) if cfg.be_job else None
        self.warm_job(setup)

    def warm_job(self, stream: Any) -> None:
        """One iteration of the job (if any) on ``stream``, waited for."""
        if self.job is not None:
            self.job.step(stream)
            stream.synchronize()

    def threads(self, lc_enters: dict[int, Callable[[], Any]], be_enter: Callable[[], Any] | None,
                brackets: dict[int, Any] | None = None) -> dict[str, Any]:
        """Run services ``i`` of ``lc_enters`` (``lc_enters[i]()``: service i's thread context,
        ``brackets[i]`` what each of its requests runs in) and the job (``be_enter``; None:
        not) for the span; their figures."""
        order = sorted(lc_enters)
        lcs = [ml_tenants.LCThread(self.lc_cfgs[i], lc_enters[i], self.services[i],
                                   *([brackets[i]] if brackets else [])) for i in order]
        be = None if be_enter is None else (be_enter, self.job.step)
        raw = ml_tenants.run_group(self.cfg.span_s, lcs, be, self.cfg.be_queue_depth)
        return self.figures(dict(zip(order, raw.get("lc", []))), raw.get("be"))

    def figures(self, records: dict[int, Any], be_done: Any) -> dict[str, Any]:
        """``services`` (name -> `lc_figures`, from service index -> its `LCRecord` or its
        dict) and ``be`` (`be_figures` of the job's completion times ``be_done``, if any)."""
        out: dict[str, Any] = {}
        if records:
            out["services"] = {}
            for i, r in records.items():
                rec = r if isinstance(r, dict) else dataclasses.asdict(r)
                out["services"][self.names[i]] = lc_figures(rec["arrivals_s"], rec["latencies_ms"], self.lc_cfgs[i],
                                                            rec.get("phases_ms"))
        if be_done is not None:
            out["be"] = be_figures(be_done, self.be_cfg)
        return out


def _workers(stack: _Stack, with_be: bool, env: dict[str, str] | None) -> dict[str, Any]:
    """One worker process per tenant (`run_workers`); their figures."""
    cfg = stack.cfg
    specs: dict[str, dict[str, Any]] = {n: {"config": dataclasses.asdict(c), "role": "lc"}
                                        for n, c in zip(stack.names, stack.lc_cfgs)}
    if with_be:
        specs["be"] = {"config": dataclasses.asdict(stack.be_cfg), "role": "be", "be_kind": cfg.be_job}
    results, setup_s = run_workers(specs, cfg.span_s, env=env)
    records = {i: results[n] for i, n in enumerate(stack.names)}
    return {**stack.figures(records, results["be"]["done_s"] if with_be else None), "setup_s": setup_s}


def _mps(stack: _Stack, with_be: bool) -> dict[str, Any]:
    daemon = MPSDaemon()
    try:
        with daemon:
            out = _workers(stack, with_be, daemon.client_env())
            servers = daemon.server_list()
    except MPSUnavailable as exc:
        return {"skipped": f"MPS unavailable: {exc}"}
    except WorkerError as exc:
        return {"skipped": f"MPS clients failed: {exc}; daemon log: {daemon.log_tail()}"}
    return {**out, "mps": {"server_list": servers, "stop": daemon.stop_status}}


def _processes(stack: _Stack, with_be: bool) -> dict[str, Any]:
    try:
        return _workers(stack, with_be, None)
    except WorkerError as exc:
        return {"skipped": f"worker processes failed: {exc}"}


def _lithos(stack: _Stack, with_be: bool) -> dict[str, Any]:
    """The services as latency-critical tenants and the job as the best-effort one of one
    scheduler; each tenant warmed up inside itself (atomized kernels rewritten, linked)."""
    import cupy

    specs = stack.cfg.tenant_specs(with_be)
    sched = Scheduler(stack.device, specs, Policy())
    try:
        tenants = [sched.tenant(n) for n in stack.names]
        for t, svc in zip(tenants, stack.services):
            with t:
                svc.warmup(cupy.cuda.get_current_stream(), n=1)
        be = sched.tenant("be") if with_be else None
        if be is not None:
            with be:
                stack.warm_job(cupy.cuda.get_current_stream())
        out = stack.threads({i: (lambda t=t: t) for i, t in enumerate(tenants)}, None if be is None else (lambda: be),
                            {i: ml_tenants.request_bracket(t) for i, t in enumerate(tenants)})
    finally:
        sched.close()
    out["scheduler"] = sched.stats()
    out["gates"] = gate_figures(sched)
    if with_be:
        out["be_occupancy"] = tenant_occupancy(sched.atoms(), "be", stack.cfg.duration_s * 1e6)
    return out


def run_gpu(cfg: StackConfig, console: Any = None) -> dict[str, Any]:
    """Every scenario of every variant of the stacking study on the GPU.

    Returns
    -------
    dict
        As `sim_stacking.run_sim` (``simulated`` False, no ``sim_service_ms``), with
        ``setup_s``.
    """
    import cupy
    from rich.progress import Progress

    import kernels

    device = open_device(simulate=False)
    kernels.reset_cache()  # the baselines launch CuPy's own kernel objects
    t_setup = time.monotonic()
    stack = _Stack(cfg, device)
    setup_s = time.monotonic() - t_setup
    plain = [cupy.cuda.Stream(non_blocking=True) for _ in stack.names]
    be_plain = cupy.cuda.Stream(non_blocking=True)
    ranked = [cupy.cuda.Stream(non_blocking=True, priority=cuda_priority(s.rank, device.greatest_priority))
              for s in cfg.services]
    be_low = cupy.cuda.Stream(non_blocking=True, priority=0)
    variants = cfg.variants()
    alone: dict[str, Any] = {}
    raw: dict[str, dict[str, Any]] = {v: {} for v in variants}
    runs = len(stack.names) + (1 if cfg.be_job else 0) + len(variants) * len(cfg.scenarios)

    def on(stream: Any) -> Callable[[], Any]:
        return lambda: stream

    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("stacking", total=runs)

        def measure(label: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
            return ml_tenants.measure_run(progress, task, f"stacking: {label}", fn)

        for i, name in enumerate(stack.names):
            run = measure(f"{name} alone", lambda i=i: stack.threads({i: on(plain[i])}, None))
            alone[name] = run.get("services", {}).get(name, run)  # an error stays visible (and sets no SLO)
        be_alone = None
        if cfg.be_job:
            run = measure("best-effort alone", lambda: stack.threads({}, on(be_plain)))
            be_alone = run.get("be", run)
        for variant, with_be in variants.items():
            owned = assign_tpcs(cfg.tenant_specs(with_be), device.num_tpcs)
            parts = {n: device.partition(sorted(t)) for n, t in owned.items()}
            bodies: dict[str, Callable[[], dict[str, Any]]] = {
                "mps": lambda: _mps(stack, with_be),
                "priorities": lambda: stack.threads({i: on(s) for i, s in enumerate(ranked)},
                                                    on(be_low) if with_be else None),
                "processes": lambda: _processes(stack, with_be),
                "static_split": lambda: stack.threads({i: on(parts[n].high.cupy) for i, n in enumerate(stack.names)},
                                                      on(parts["be"].normal.cupy) if with_be else None),
            }
            for name in cfg.scenarios:
                if name in bodies:
                    raw[variant][name] = measure(f"{variant}: {name}", bodies[name])
        if "lithos" in cfg.scenarios:
            kernels.reset_cache()
            # Holding an atomizer (None: this thread launches as written) keeps lithos'
            # interception installed, so the kernel objects rebuilt inside the tenants
            # route the launches of tenant threads through the scheduler.
            with using_atomizer(None):
                for variant, with_be in variants.items():
                    raw[variant]["lithos"] = measure(f"{variant}: lithos", lambda: _lithos(stack, with_be))
            kernels.reset_cache()
    order = {v: {n: raw[v][n] for n in cfg.scenarios if n in raw[v]} for v in variants}
    return {"simulated": False, "config": dataclasses.asdict(cfg), "device": device.describe(), "setup_s": setup_s,
            "alone": {**alone, **({"be": be_alone} if be_alone else {})},
            "variants": {v: summarize_variant(cfg, order[v], alone, be_alone) for v in variants}}
