"""The ML co-location study: the scenarios in interleaved rounds, at a stated load.

`run_study` measures the inference service's capacity alone once (`lithos_atom.bench.load`),
sets the request rate from the load, then runs every selected scenario of every pair in
each of ``rounds`` rounds: on the GPU in the rotating order of `ml_colocation.run_order`
(a round starts a ``rounds``-th further into the list than the one before), on the
simulated device in any order (each scenario on a fresh device, in virtual time), the
rounds in parallel processes, one per CPU. Round
``r`` draws its requests with seed ``config.seed + r``; within a round every scenario sees
the same requests. The SLO is set once for the study: `MLColocationConfig.slo_ms`, else
`MLColocationConfig.slo_mult` times the median over the rounds of the inference-alone p99;
every round's attainment and goodput are figured against it. `lithos_atom.bench.ml_summary`
sums the rounds up: medians and bootstrap intervals across rounds, of each scenario's
figures and of each round's ratios and static-split comparisons.

The study's JSON (the ``ml`` section of ``python -m lithos_atom.bench``): ``simulated``,
``config`` (the rated config, round 0's seed), ``load`` (`load.with_rate`'s record),
``slo_ms`` and ``slo`` (how it was set), ``rounds`` (each round as its runner returned it,
`ml_gpu.run_gpu` or `sim_ml_colocation.run_sim`, plus ``round`` and ``seed``, and ``order``
on the GPU), ``summary`` (`ml_summary.summarize_rounds`) and, for a load sweep,
``load_sweep``: a study like this one (without a sweep of its own) per further load.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import statistics
from concurrent.futures import ProcessPoolExecutor, as_completed
from collections.abc import Sequence
from typing import Any

from lithos_atom.bench import load as load_mod
from lithos_atom.bench.ml_colocation import MLColocationConfig, order
from lithos_atom.bench.ml_figures import summarize_pair
from lithos_atom.bench.ml_summary import summarize_rounds

#: Rounds of a study: the fewest whose median is not a mean of two, and whose rotation puts
#: every run once in each third of a round.
DEFAULT_ROUNDS = 3

#: The simulated device's note in place of an order: scenarios there do not share a machine.
SIM_ORDER = "any: each scenario runs on a fresh simulated device in virtual time, so order changes nothing"


def sim_round(cfg: MLColocationConfig, trace_dir: Any = None, console: Any = None) -> dict[str, Any]:
    """One round on the simulated device (`sim_ml_colocation.run_sim`), its order noted."""
    from lithos_atom.bench.sim_ml_colocation import run_sim

    return {**run_sim(cfg, console=console, trace_dir=trace_dir), "order": SIM_ORDER}


def _quiet_round(cfg: MLColocationConfig, trace_dir: Any) -> dict[str, Any]:
    """`sim_round` in a worker process, without its progress bar (those of several workers
    would fight over one terminal)."""
    from rich.console import Console

    return sim_round(cfg, trace_dir, Console(quiet=True))


def _sim_rounds(cfgs: Sequence[MLColocationConfig], console: Any, trace_dir: Any,
                load: dict[str, Any]) -> list[dict[str, Any]]:
    """The simulated rounds of ``cfgs``, each pair of each round a process of its own, up
    to one per CPU (they share nothing, and each is deterministic wherever it runs: a
    pair's figures are those of the whole round's run); round 0 writes the traces."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    jobs = [(r, dataclasses.replace(c, pairs=(pair,))) for r, c in enumerate(cfgs) for pair in c.pairs]
    workers = min(len(jobs), os.cpu_count() or 1)
    if workers == 1:
        return [{"round": r, "seed": c.seed, **sim_round(c, trace_dir if r == 0 else None, console)}
                for r, c in enumerate(cfgs)]
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
        futures = [pool.submit(_quiet_round, c, trace_dir if r == 0 else None) for r, c in jobs]
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console, transient=True) as progress:
            task = progress.add_task(f"ML rounds (simulated, {load['rate_hz']:.4g} requests/s, {workers} processes)",
                                     total=len(jobs))
            for _ in as_completed(futures):
                progress.advance(task)
        parts = [f.result() for f in futures]
    out = []
    for r, c in enumerate(cfgs):
        mine = [part for (job_round, _), part in zip(jobs, parts) if job_round == r]
        merged = {**mine[0], "config": {**mine[0]["config"], "pairs": tuple(c.pairs)},
                  "pairs": {pair: res for part in mine for pair, res in part["pairs"].items()}}
        out.append({"round": r, "seed": c.seed, **merged})
    return out


def study_slo(cfg: MLColocationConfig, rounds: Sequence[dict[str, Any]]) -> tuple[float | None, dict[str, Any]]:
    """The study's SLO (ms) and how it was set: `MLColocationConfig.slo_ms`, else
    `MLColocationConfig.slo_mult` times the median over ``rounds`` of the inference-alone p99
    (None when no round measured one)."""
    alone = [_alone_p99(r) for r in rounds]
    how: dict[str, Any] = {"alone_p99_ms_by_round": alone}
    if cfg.slo_ms is not None:
        return float(cfg.slo_ms), {**how, "from": "slo_ms"}
    known = [p for p in alone if p is not None]
    if not known:
        return None, {**how, "from": "none: no round measured the inference alone"}
    return cfg.slo_mult * statistics.median(known), {**how, "from": f"{cfg.slo_mult:g} x the median alone p99"}


def _alone_p99(round_result: dict[str, Any]) -> float | None:
    for res in round_result.get("pairs", {}).values():
        return res.get("scenarios", {}).get("lc_alone", {}).get("hp", {}).get("p99_ms")
    return None


def resummarize(rounds: Sequence[dict[str, Any]], slo_ms: float | None) -> None:
    """Figure every round's pairs again against the study's SLO (in place)."""
    for r in rounds:
        r["slo_ms"] = slo_ms
        r["pairs"] = {pair: summarize_pair(order(res["scenarios"]), slo_ms) for pair, res in r["pairs"].items()}


def run_study(cfg: MLColocationConfig, simulated: bool, rounds: int = DEFAULT_ROUNDS, console: Any = None,
              trace_dir: Any = None, loads: Sequence[float] | None = None) -> dict[str, Any]:
    """Run the study of ``cfg`` (see the module's docstring).

    Parameters
    ----------
    cfg : MLColocationConfig
        The settings (a `SimMLConfig` on the simulated device); with `lc_rate_hz` set, the
        rate is that and ``loads`` must be None.
    simulated : bool
        Run on the simulated device, else on the GPU.
    rounds : int
        Rounds of every scenario (>= 1).
    console : rich.console.Console, optional
        Where the rounds and the runners' progress go.
    trace_dir : path, optional
        Where round 0 writes the lithos scenario's scheduler trace, per pair.
    loads : sequence of float, optional
        Fractions of the capacity to run the study at: the first is the study's, each
        other a study of ``load_sweep``; default: ``[cfg.load]``.

    Returns
    -------
    dict
        The study's JSON.

    Raises
    ------
    ValueError
        For a bad ``rounds`` or ``loads``, or ``loads`` with an explicit rate.
    """
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds must be an int >= 1, got {rounds!r}")
    if loads is not None and cfg.lc_rate_hz is not None:
        raise ValueError("give a load or an explicit request rate (lc_rate_hz), not both")
    chosen = list(loads) if loads is not None else [cfg.load]
    if not chosen:
        raise ValueError("loads must name at least one load")
    for value in chosen:
        dataclasses.replace(cfg, load=value)  # each load is checked before any run
    service_ms = load_mod.sim_service_ms(cfg) if simulated else load_mod.gpu_service_ms(cfg)
    studies = []
    for i, value in enumerate(chosen):
        rated, record = load_mod.with_rate(cfg, service_ms, None if cfg.lc_rate_hz is not None else value)
        if console is not None and len(chosen) > 1:
            console.print(f"[bold]load {record['load']:g}[/] ({i + 1} of {len(chosen)} loads)")
        studies.append(_study(rated, record, simulated, rounds, console, trace_dir if i == 0 else None))
    if len(studies) > 1:
        studies[0]["load_sweep"] = studies[1:]
    return studies[0]


def _study(cfg: MLColocationConfig, load: dict[str, Any], simulated: bool, rounds: int, console: Any,
           trace_dir: Any) -> dict[str, Any]:
    """The rounds of one rated config, summed up."""
    cfgs = [dataclasses.replace(cfg, seed=cfg.seed + r) for r in range(rounds)]
    if simulated:
        done = _sim_rounds(cfgs, console, trace_dir, load)
    else:
        from lithos_atom.bench.ml_gpu import run_gpu

        done = []
        for r, cfg_r in enumerate(cfgs):
            if console is not None:
                console.print(f"ML round {r + 1} of {rounds} (seed {cfg_r.seed}, {load['rate_hz']:.4g} requests/s)")
            out = run_gpu(cfg_r, console=console, trace_dir=trace_dir if r == 0 else None, round_index=r,
                          rounds=rounds)
            done.append({"round": r, "seed": cfg_r.seed, **out})
    slo, how = study_slo(cfg, done)
    resummarize(done, slo)
    first = done[0]
    return {"simulated": simulated, "config": first["config"], "load": load, "slo_ms": slo,
            "slo": how, "device": first.get("device"), "lc_tpcs": first.get("lc_tpcs"),
            "workloads": first.get("workloads"), "rounds": done, "summary": summarize_rounds(done)}
