"""The ML co-location scenarios on the GPU (see `lithos_atom.bench.ml_colocation`).

In-process scenarios run the two tenants as threads of this process; ``processes`` and
``mps`` run them as two worker processes (`lithos_atom.bench.ml_colocation_worker`). The
baselines launch CuPy's own kernel objects; the lithos scenarios rebuild them while
lithos' interception is installed, so that a tenant thread's launches go through the
scheduler, and drop them again afterwards.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lithos_atom.optin import using_atomizer
from lithos_atom.bench import ml_tenants
from lithos_atom.bench import rightsize_cases as rc
from lithos_atom.bench.ml_colocation import LITHOS_SCENARIOS, MLColocationConfig, order, run_order, scheduler_for
from lithos_atom.bench.ml_figures import be_figures, lc_figures, slo_of, summarize_pair
from lithos_atom.bench.ml_colocation_worker import WorkerError, run_process_pair
from lithos_atom.bench.mps import MPSDaemon, MPSUnavailable
from lithos_atom.bench.gate_metrics import gate_figures
from lithos_atom.bench.occupancy import tenant_occupancy
from lithos_atom.bench.profile import profile_cases
from lithos_atom.bench.tenant_pair import pair_specs, pair_tpcs
from lithos_sched import open_device
from lithos_sched.partition_timing import TimingOptions, default_sizes
from lithos_sched.rightsizing import RightSizeOptions, RightSizer
from lithos_sched.scaling import ProfileStore


def figures(cfg: MLColocationConfig, raw: dict[str, Any]) -> dict[str, Any]:
    """Scenario figures from the raw records of `ml_tenants.run_threads` or a worker pair."""
    out: dict[str, Any] = {}
    lc = raw.get("lc")
    if lc is not None:
        rec = lc if isinstance(lc, dict) else dataclasses.asdict(lc)
        out["hp"] = lc_figures(rec["arrivals_s"], rec["latencies_ms"], cfg, rec["phases_ms"])
    if raw.get("be") is not None:
        out["be"] = be_figures(raw["be"], cfg)
    return out


def _run_mps(cfg: MLColocationConfig, pair: str, **placed: Any) -> dict[str, Any]:
    """The pair as two worker processes under a private MPS daemon; ``placed`` goes to
    `run_process_pair` (``tpcs``: green-context partitions; ``lithos``: lithos across
    processes, whose scheduler stats and occupancy are added)."""
    daemon = MPSDaemon()
    try:
        with daemon:
            raw = run_process_pair(cfg, pair, env=daemon.client_env(), **placed)
            servers = daemon.server_list()
    except MPSUnavailable as exc:
        return {"skipped": f"MPS unavailable: {exc}"}
    except WorkerError as exc:
        return {"skipped": f"MPS clients failed: {exc}; daemon log: {daemon.log_tail()}",
                "mps": {"stop": daemon.stop_status}}
    out = figures(cfg, raw)
    out["mps"] = {"server_list": servers, "stop": daemon.stop_status, "setup_s": raw["setup_s"]}
    if raw.get("placement"):
        out["placement"] = raw["placement"]
    if "be_scheduler" in raw:
        out["scheduler"] = raw["be_scheduler"]["scheduler"]
        out["be_occupancy"] = raw["be_scheduler"]["be_occupancy"]
    return out


def _run_processes(cfg: MLColocationConfig, pair: str) -> dict[str, Any]:
    try:
        raw = run_process_pair(cfg, pair)
    except WorkerError as exc:
        return {"skipped": f"worker processes failed: {exc}"}
    out = figures(cfg, raw)
    out["setup_s"] = raw["setup_s"]
    return out


def run_gpu(cfg: MLColocationConfig, console: Any = None, trace_dir: Any = None, round_index: int = 0,
            rounds: int = 1) -> dict[str, Any]:
    """Every selected scenario of every selected pair on the GPU, in the order of round
    ``round_index`` of ``rounds`` (`ml_colocation.run_order`).

    Returns
    -------
    dict
        ``simulated`` (False), ``config``, ``device``, ``setup_s``, ``slo_ms``, ``lc_tpcs``,
        ``workloads``, ``order`` (the runs in the order they ran, as [pair, run name]) and
        ``pairs``: per pair the scenarios and the ratios of `summarize_pair` (and
        ``rightsizing_setup`` when a right-sized scenario ran).
    """
    import cupy
    from rich.progress import Progress

    import kernels

    device = open_device(simulate=False)
    def tpcs_by_role(share: float) -> dict[str, list[int]]:
        return dict(zip(("lc", "be"), (sorted(t) for t in pair_tpcs(share, device.num_tpcs))))

    n_lc = len(tpcs_by_role(cfg.lc_share)["lc"])
    splits = {}  # static-split scenario: (LC partition, BE partition)
    for name, share in cfg.static_shares().items():
        lc_tpcs, be_tpcs = pair_tpcs(share, device.num_tpcs)
        splits[name] = (device.partition(lc_tpcs), device.partition(be_tpcs))
    plain, plain2 = cupy.cuda.Stream(non_blocking=True), cupy.cuda.Stream(non_blocking=True)
    hi = cupy.cuda.Stream(non_blocking=True, priority=device.greatest_priority)
    lo = cupy.cuda.Stream(non_blocking=True, priority=0)
    # The baselines launch CuPy's own kernel objects (an earlier section may have left
    # intercepting ones in the kernels' cache).
    kernels.reset_cache()
    t_setup = time.monotonic()
    service = ml_tenants.build_lc(cfg, plain)
    service.warmup(plain)
    jobs = {pair: ml_tenants.build_be(cfg, pair, plain2) for pair in cfg.pairs}
    for job in jobs.values():
        job.step(plain2)
    plain2.synchronize()
    setup_s = time.monotonic() - t_setup
    selected = cfg.pair_scenarios()
    ran = run_order(cfg, round_index, rounds)
    raw: dict[str, dict[str, Any]] = {pair: {} for pair in cfg.pairs}

    def lc_on(stream: Any) -> tuple[Callable[[], Any], Any]:
        return (lambda: stream), service

    def be_on(stream: Any, job: Any) -> tuple[Callable[[], Any], Any]:
        return (lambda: stream), job.step

    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("ML co-location", total=cfg.run_count())

        def measure(label: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
            return ml_tenants.measure_run(progress, task, f"ML {label}", fn)

        request_tpcs, rightsizing_setup = None, {}
        if {"lithos_rightsized", "lithos_mps_rightsized"} & set(selected):
            progress.update(task, description="ML: profiling inference requests for right-sizing")
            t = time.monotonic()
            request_tpcs = inference_request_tpcs(cfg, device, n_lc, service)
            rightsizing_setup = {"request_tpcs": request_tpcs, "lc_tpcs": n_lc, "seconds": time.monotonic() - t}

        def threads(lc: Any, be: Any) -> Callable[[], dict[str, Any]]:
            return lambda: figures(cfg, ml_tenants.run_threads(cfg, lc, be))

        def pair_runs(pair: str, job: Any) -> dict[tuple[str | None, str], Callable[[], dict[str, Any]]]:
            """Every run of ``pair``, by (pair, run name), not yet run."""
            in_process = {
                "be_alone": (None, be_on(plain2, job)),
                "streams": (lc_on(plain), be_on(plain2, job)),
                "priorities": (lc_on(hi), be_on(lo, job)),
                **{name: (lc_on(lc_part.high.cupy), be_on(be_part.normal.cupy, job))
                   for name, (lc_part, be_part) in splits.items()},
            }
            runs = {(pair, name): threads(*ends) for name, ends in in_process.items()}
            runs[(pair, "processes")] = functools.partial(_run_processes, cfg, pair)
            runs[(pair, "mps")] = functools.partial(_run_mps, cfg, pair)
            for run_name, share in cfg.process_static_shares().items():
                runs[(pair, run_name)] = functools.partial(_run_mps, cfg, pair, tpcs=tpcs_by_role(share))
            lc_only = {"lc": tpcs_by_role(cfg.lc_share)["lc"]}
            policy = {} if cfg.mps_steal_max_block_us is None else {"steal_max_block_us": cfg.mps_steal_max_block_us}
            runs[(pair, "lithos_mps")] = functools.partial(_run_mps, cfg, pair, tpcs=lc_only, lithos=True,
                                                           policy=policy)
            runs[(pair, "lithos_mps_rightsized")] = functools.partial(
                _run_mps, cfg, pair, tpcs=lc_only, lithos=True, policy=policy, request_tpcs=request_tpcs)
            for name in LITHOS_SCENARIOS:
                runs[(pair, name)] = functools.partial(_run_lithos, cfg, device, name, service, job, trace_dir, pair,
                                                       request_tpcs)
            return runs

        runs: dict[tuple[str | None, str], Callable[[], dict[str, Any]]] = {(None, "lc_alone"): threads(lc_on(plain),
                                                                                                         None)}
        for pair, job in jobs.items():
            runs.update(pair_runs(pair, job))
        lc_alone: dict[str, Any] = {}
        with _Launches(service, list(jobs.values()), plain, plain2) as launches:
            for pair, name in ran:
                launches.use(intercepted=name in LITHOS_SCENARIOS)
                out = measure(name if pair is None else f"{pair}: {name}", runs[(pair, name)])
                if pair is None:
                    lc_alone = out
                else:
                    raw[pair][name] = out
    for pair in cfg.pairs:
        raw[pair]["lc_alone"] = lc_alone
    slo = slo_of(cfg, lc_alone)
    pairs = {pair: summarize_pair(order(raw[pair]), slo) for pair in cfg.pairs}
    out = {"simulated": False, "config": dataclasses.asdict(cfg), "device": device.describe(),
           "setup_s": setup_s, "slo_ms": slo, "lc_tpcs": n_lc, "order": [list(run) for run in ran],
           "workloads": {k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v
                         for k, v in cfg.workload_sizes().items()},
           "pairs": pairs}
    if request_tpcs is not None:
        out["rightsizing_setup"] = rightsizing_setup
    return out


class _Launches:
    """Which kernel objects the tenants launch: CuPy's own (the baselines) or, while lithos'
    interception is installed, the rebuilt ones that route a tenant thread's launches through
    the scheduler (the lithos scenarios). Each switch drops the kernels' cache and warms the
    service (its graphs captured again) and every job up with the other objects."""

    def __init__(self, service: Any, jobs: list[Any], lc_stream: Any, be_stream: Any):
        self._service, self._jobs = service, jobs
        self._lc_stream, self._be_stream = lc_stream, be_stream
        self._held = contextlib.ExitStack()
        self.intercepted = False

    def use(self, intercepted: bool) -> None:
        """Switch to the intercepting kernel objects, or back to CuPy's own."""
        import kernels

        if intercepted == self.intercepted:
            return
        if intercepted:
            kernels.reset_cache()
            # Holding an atomizer (None: this thread launches as written) keeps lithos'
            # interception installed, so the kernel objects rebuilt below route the
            # launches of tenant threads through the scheduler.
            self._held.enter_context(using_atomizer(None))
        else:
            self._held.close()
            kernels.reset_cache()
        self.intercepted = intercepted
        self._service.warmup(self._lc_stream)
        for job in self._jobs:
            job.step(self._be_stream)
        self._be_stream.synchronize()

    def __enter__(self) -> _Launches:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.intercepted:
            import kernels

            self._held.close()
            kernels.reset_cache()
            self.intercepted = False


def inference_request_tpcs(cfg: MLColocationConfig, device: Any, n_lc: int, service: Any = None) -> dict[int, int]:
    """TPCs a request of each batch size of ``cfg`` needs, from profiles taken now.

    A whole request of every batch size (the decoder stack's forward pass, or a request
    of the model ``service`` as it is served: its graph's replay by default) is timed on
    partitions of 10 sizes up to the inference tenant's ``n_lc`` TPCs, then on every count
    where a choice within the `RightSizer`'s slack (5%) could lie; each batch size gets
    the fewest TPCs whose predicted slowdown stays within it.

    Returns
    -------
    dict
        Batch size to TPC count, each in ``1 .. n_lc``.
    """
    store = ProfileStore(path=Path("unsaved-ml-profiles.json"), device_name=device.name)  # never saved
    sizes = cfg.batch_sizes()

    def request_case(batch: int) -> list[Any]:
        if cfg.lc_service != "decoder":
            return [rc.served_request_case(cfg.lc_service, service, batch)]
        return [c for c in rc.inference_cases(batch, seed=cfg.seed) if c.key.endswith(":request")]

    options = RightSizeOptions(explore=False)
    profile_cases(device, [lambda b=b: request_case(b) for b in sizes], default_sizes(n_lc),
                  TimingOptions(rounds=2, launches_per_round=2), store, refine_slack=options.slack)
    sizer = RightSizer(store, options)
    return {b: sizer.tpcs_for(rc.request_key(cfg.lc_service, b), n_lc) for b in sizes}


def run_tenants(cfg: MLColocationConfig, sched: Any, service: Any, job: Any,
                request_tpcs: dict[int, int] | None = None) -> dict[str, Any]:
    """Warm both tenants of ``sched`` (``"lc"``, ``"be"``) up, then run the pair's threads,
    each request in `Tenant.request` or, with ``request_tpcs`` (TPCs by batch), in
    `Tenant.on_tpcs`.

    A request of each batch and one iteration inside each tenant, untimed, rewrite and
    link the atomized kernels and give the predictor its first samples.

    Returns
    -------
    dict
        As `ml_tenants.run_threads`.
    """
    import cupy

    lc_t, be_t = sched.tenant("lc"), sched.tenant("be")
    with lc_t:
        service.warmup(cupy.cuda.get_current_stream(), n=1)
    with be_t:
        job.step(cupy.cuda.get_current_stream())
        cupy.cuda.get_current_stream().synchronize()
    return ml_tenants.run_threads(cfg, ((lambda: lc_t), service), ((lambda: be_t), job.step),
                                  ml_tenants.request_bracket(lc_t, request_tpcs))


def _run_lithos(cfg: MLColocationConfig, device: Any, name: str, service: Any, job: Any,
                trace_dir: Any, pair: str, request_tpcs: dict[int, int] | None) -> dict[str, Any]:
    sched = scheduler_for(name, device, pair_specs(cfg.lc_share))
    try:
        raw = run_tenants(cfg, sched, service, job, request_tpcs if name == "lithos_rightsized" else None)
    finally:
        sched.close()
    out = figures(cfg, raw)
    if trace_dir is not None and name == "lithos":
        out["trace_file"] = str(sched.export_trace(Path(trace_dir) / f"trace_ml_{pair}_lithos.json"))
    out["scheduler"] = sched.stats()
    out["be_occupancy"] = tenant_occupancy(sched.atoms(), "be", cfg.duration_s * 1e6)
    out["gates"] = gate_figures(sched)
    return out
