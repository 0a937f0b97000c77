"""Figures of the ML co-location benchmark from the raw records of a run.

`lc_figures` and `be_figures` turn one scenario's records into its latency and throughput
figures; `summarize_pair` adds SLO attainment, goodput and normalized throughputs to every
scenario of a pair and compares the lithos scenarios with each baseline (`ratios_to`) and
with the static splits at their own tail (`static_at_p99`). The settings and scenario
names are `lithos_atom.bench.ml_colocation`'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from lithos_atom.bench.ml_colocation import MLColocationConfig
from lithos_atom.bench.percentiles import percentile_ci


def lc_figures(arrivals_s: Sequence[float], latencies_ms: Sequence[float], cfg: MLColocationConfig,
               phases_ms: Sequence[Sequence[float]] | None = None) -> dict[str, Any]:
    """LC figures of the measured window from per-request records.

    Parameters
    ----------
    arrivals_s : sequence of float
        Arrival of each *completed* request, seconds from the scenario start.
    latencies_ms : sequence of float
        Its latency, arrival to completion.
    cfg : MLColocationConfig
    phases_ms : sequence of (start_late, issue, gpu_wait), optional
        Where each request's time went (host side).

    Returns
    -------
    dict
        ``arrived`` (requests scheduled to arrive in the window), ``completed`` (those
        that finished: the GPU's server starts no request once the window is over, so one
        still queued then never does; the simulated one runs on 0.2 s), ``unfinished``
        (the difference), ``saturated`` (whether the unfinished reach 1 % of the arrived:
        the p99 of the window's requests then lies beyond every latency measured, and the
        service fell behind its arrivals), ``window_s`` (the measured window, for
        goodput), ``p50_ms``, ``p99_ms`` (and its bootstrap ``p99_ci95_ms``),
        ``p999_ms``, ``mean_ms`` (of the completed requests), ``latencies_ms`` and, with
        phases, ``phases_p99_ms``. Unfinished requests count as SLO misses
        (`summarize_pair`).
    """
    arr = np.asarray(arrivals_s, dtype=np.float64)
    lat = np.asarray(latencies_ms, dtype=np.float64)
    if arr.shape != lat.shape:
        raise ValueError(f"arrivals ({arr.size}) and latencies ({lat.size}) differ in length")
    scheduled, _ = cfg.requests()
    arrived = int(np.count_nonzero(scheduled >= cfg.warmup_s))
    keep = arr >= cfg.warmup_s
    lat = lat[keep]
    unfinished = max(0, arrived - int(lat.size))
    out: dict[str, Any] = {"arrived": arrived, "completed": int(lat.size), "unfinished": unfinished,
                           "saturated": unfinished > 0 and unfinished >= arrived / 100, "window_s": cfg.duration_s}
    if lat.size == 0:
        out.update({"p50_ms": None, "p99_ms": None, "p999_ms": None, "mean_ms": None, "latencies_ms": []})
        return out
    out.update({"p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)),
                "p99_ci95_ms": list(percentile_ci(lat, 99)),
                "p999_ms": float(np.percentile(lat, 99.9)), "mean_ms": float(lat.mean()),
                "latencies_ms": lat.round(4).tolist()})
    if phases_ms is not None and len(phases_ms):
        ph = np.asarray(phases_ms, dtype=np.float64)[keep]
        if ph.size:
            out["phases_p99_ms"] = {name: float(np.percentile(ph[:, i], 99))
                                    for i, name in enumerate(("start_late", "issue", "gpu_wait"))}
    return out


def be_figures(done_s: Sequence[float], cfg: MLColocationConfig, steps: int = 1) -> dict[str, Any]:
    """BE figures of the measured window from completion times.

    ``done_s`` holds ``steps`` completions per iteration (1: whole iterations; the
    simulated device gives one per kernel). Throughput is ``(n - 1) / (last - first)``
    over the ``n`` completions inside the window, divided by ``steps`` (sub-iteration
    precision); with fewer than two it is ``n / steps / duration`` and ``coarse`` is True.
    ``iterations`` is ``n / steps``.
    """
    t = np.sort(np.asarray(done_s, dtype=np.float64))
    t = t[(t >= cfg.warmup_s) & (t <= cfg.span_s)]
    n = int(t.size)
    if n >= 2 and t[-1] > t[0]:
        rate, coarse = (n - 1) / float(t[-1] - t[0]) / steps, False
    else:
        rate, coarse = n / steps / cfg.duration_s, True
    return {"iterations": n / steps if steps > 1 else n, "iters_per_s": rate, "coarse": coarse}


def summarize_pair(scenarios: dict[str, Any], slo_ms: float | None) -> dict[str, Any]:
    """Normalize, add SLO attainment, goodput and sums, and compute lithos-vs-baseline ratios.

    SLO attainment is the share of the window's arrivals that completed within ``slo_ms``
    (an unfinished request is a miss); goodput, ``goodput_rps``, is how many did per
    second of the window.

    Parameters
    ----------
    scenarios : dict
        Scenario name to its raw figures (``hp``/``be`` dicts, or ``skipped``).
    slo_ms : float or None
        The LC SLO (None when LC alone produced no latency).

    Returns
    -------
    dict
        ``{"scenarios": ..., "ratios": ...}``.
    """
    alone_be = scenarios.get("be_alone", {}).get("be", {}).get("iters_per_s")
    for s in scenarios.values():
        hp, be = s.get("hp"), s.get("be")
        if hp is not None:
            hp["throughput_norm"] = hp["completed"] / hp["arrived"] if hp["arrived"] else None
            hp["slo_ms"] = slo_ms
            hp["slo_attainment"] = hp["goodput_rps"] = None
            if slo_ms is not None and hp["arrived"]:
                met = sum(1 for v in hp["latencies_ms"] if v <= slo_ms)
                hp["slo_attainment"] = met / hp["arrived"]
                hp["goodput_rps"] = met / hp["window_s"] if hp.get("window_s") else None
        if be is not None:
            be["throughput_norm"] = be["iters_per_s"] / alone_be if alone_be else None
        if hp is not None and be is not None and None not in (hp["throughput_norm"], be["throughput_norm"]):
            s["sum_norm_throughput"] = hp["throughput_norm"] + be["throughput_norm"]
    out = {"scenarios": scenarios, "ratios": ratios_to(scenarios, "lithos"),
           "static_at_lithos_p99": static_at_p99(scenarios)}
    if scenarios.get("lithos_mps", {}).get("hp"):
        out["ratios_lithos_mps"] = ratios_to(scenarios, "lithos_mps")
        out["static_at_lithos_mps_p99"] = static_at_p99(scenarios, "lithos_mps")
        # its like: the static splits with a process per tenant, which share no interpreter either
        out["process_static_at_lithos_mps_p99"] = static_at_p99(scenarios, "lithos_mps", "mps_static_split")
    if scenarios.get("lithos_mps_rightsized", {}).get("hp"):
        out["ratios_lithos_mps_rightsized"] = ratios_to(scenarios, "lithos_mps_rightsized")
        out["process_static_at_lithos_mps_rightsized_p99"] = static_at_p99(scenarios, "lithos_mps_rightsized",
                                                                           "mps_static_split")
    return out


def tail_known(hp: dict[str, Any] | None) -> bool:
    """Whether ``hp`` (LC figures) has a p99 that stands for its window: one was measured
    and the service did not saturate (`lc_figures`)."""
    return bool(hp and hp.get("p99_ms") and not hp.get("saturated"))


def ratios_to(scenarios: dict[str, Any], lithos_name: str) -> dict[str, dict[str, Any]]:
    """Scenario ``lithos_name`` against every other scenario with an LC p99: p99 and
    p99.9 reductions (baseline over lithos) and BE throughput gain (lithos over baseline).

    A baseline that saturated has no reduction (None, and ``baseline_saturated`` True): its
    tail is as long as the run lets the queue grow. None at all when lithos saturated."""
    lithos = scenarios.get(lithos_name, {})
    ratios: dict[str, dict[str, Any]] = {}
    if not tail_known(lithos.get("hp")):
        return ratios
    for name, s in scenarios.items():
        if name == lithos_name or "hp" not in s or not s["hp"].get("p99_ms"):
            continue
        saturated = bool(s["hp"].get("saturated"))
        r: dict[str, Any] = {
            "p99_reduction": None if saturated else s["hp"]["p99_ms"] / lithos["hp"]["p99_ms"],
            "p999_reduction": None if saturated else _ratio(s["hp"].get("p999_ms"), lithos["hp"].get("p999_ms")),
        }
        if saturated:
            r["baseline_saturated"] = True
        if "be" in s and "be" in lithos:
            r["be_throughput_gain"] = _ratio(lithos["be"]["iters_per_s"], s["be"]["iters_per_s"])
        ratios[name] = r
    return ratios


def static_at_p99(scenarios: dict[str, Any], lithos_name: str = "lithos",
                  statics_prefix: str = "static_split") -> dict[str, Any] | None:
    """lithos (scenario ``lithos_name``) against the static split of the most BE
    throughput among those whose LC p99 is at most lithos' (the static splits trade one
    for the other by their share; those compared are the scenarios named
    ``statics_prefix`` and ``statics_prefix@share``: in one process, or with
    ``"mps_static_split"`` a process per tenant).

    A share between two measured ones would reach a tail between theirs, so lithos is also
    compared with the static splits' line at exactly its p99: the splits that no other
    split beats on both counts, joined by straight lines (an interpolation between measured
    points, labeled as such; flat past the last one, since no share was measured there).

    Returns
    -------
    dict or None
        ``lithos_p99_ms``, ``static`` (the scenario's name, or None when no static split
        reached lithos' p99), its ``static_p99_ms`` and ``be_throughput_gain`` (lithos'
        BE throughput over its), ``static_line_be_norm`` (the line's BE throughput,
        normalized to alone, at lithos' p99; None when no split reached it) and
        ``be_throughput_gain_on_line`` (lithos' normalized BE throughput over that);
        None without a lithos or static-split result, or when lithos saturated (a
        saturated split takes no part: its p99 is unbounded).
    """
    lithos = scenarios.get(lithos_name, {})
    bound = lithos.get("hp", {}).get("p99_ms") if tail_known(lithos.get("hp")) else None
    statics = {n: s for n, s in scenarios.items()
               if (n == statics_prefix or n.startswith(statics_prefix + "@")) and tail_known(s.get("hp"))
               and s.get("be")}
    if not bound or "be" not in lithos or not statics:
        return None
    p99s = {n: s["hp"]["p99_ms"] for n, s in statics.items()}
    meeting = [n for n in statics if p99s[n] <= bound]
    name = max(meeting, key=lambda n: statics[n]["be"]["iters_per_s"]) if meeting else None
    gain = _ratio(lithos["be"]["iters_per_s"], statics[name]["be"]["iters_per_s"]) if name else None
    line = _static_line_at(bound, [(p99s[n], statics[n]["be"].get("throughput_norm")) for n in statics])
    lithos_norm = lithos["be"].get("throughput_norm")
    return {"lithos_p99_ms": bound, "static": name, "static_p99_ms": p99s.get(name), "be_throughput_gain": gain,
            "static_p99s_ms": p99s, "static_line_be_norm": line,
            "be_throughput_gain_on_line": _ratio(lithos_norm, line) if lithos_norm is not None else None}


def _static_line_at(p99_ms: float, points: list[tuple[float, float | None]]) -> float | None:
    """The BE throughput of the static splits' tail-throughput line at ``p99_ms``.

    ``points`` are (LC p99, normalized BE throughput) per split. The line joins the splits
    that no other split beats on both counts, in order of their p99; it is flat past the
    last of them and undefined (None) before the first.
    """
    known = sorted((p, b) for p, b in points if b is not None)
    frontier: list[tuple[float, float]] = []
    for p, b in known:  # by rising p99: keep a split only if it beats every lower-tail one
        if not frontier or b > frontier[-1][1]:
            frontier.append((p, b))
    if not frontier or p99_ms < frontier[0][0]:
        return None
    for (p0, b0), (p1, b1) in zip(frontier, frontier[1:]):
        if p99_ms <= p1:
            return b0 + (b1 - b0) * (p99_ms - p0) / (p1 - p0) if p1 > p0 else b1
    return frontier[-1][1]


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def slo_of(cfg: MLColocationConfig, lc_alone: dict[str, Any]) -> float | None:
    """The LC SLO in ms: `slo_ms`, else `slo_mult` times the LC-alone p99."""
    if cfg.slo_ms is not None:
        return float(cfg.slo_ms)
    p99 = lc_alone.get("hp", {}).get("p99_ms")
    return None if p99 is None else cfg.slo_mult * p99
