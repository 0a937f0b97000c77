"""The ML study's rounds summed up: medians and bootstrap intervals across rounds.

Every figure is taken per round and summed up by `across`: its ``median`` over the rounds,
the bootstrap 95 % interval of that median (``ci95``, `percentiles.median_ci`),
``by_round`` (each round's value, None where the round has none) and, for an odd number
of values, ``median_round`` (the round the median came from). A tail figure of a round
whose service saturated is unbounded (`ml_figures.lc_figures`): it counts as +inf, a median
or bound it sets is None, and ``unbounded_rounds`` names those rounds. The ratios to each
baseline and the comparisons with the static splits are computed within each round
(`ml_figures.summarize_pair`) and summed up the same way.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

from lithos_atom.bench.percentiles import median_ci

#: The inference figures summed up per scenario.
HP_FIGURES: tuple[str, ...] = ("p50_ms", "p99_ms", "p999_ms", "slo_attainment", "goodput_rps")
#: Those unbounded in a round whose service saturated.
TAIL_FIGURES: tuple[str, ...] = ("p99_ms", "p999_ms")
#: Each lithos scenario's ratios to the baselines (`ml_figures.summarize_pair`).
RATIO_KEYS: tuple[str, ...] = ("ratios", "ratios_lithos_mps", "ratios_lithos_mps_rightsized")
#: Its comparisons with the static splits at its p99.
STATIC_KEYS: tuple[str, ...] = ("static_at_lithos_p99", "static_at_lithos_mps_p99", "process_static_at_lithos_mps_p99",
                                "process_static_at_lithos_mps_rightsized_p99")


def across(values: Sequence[float | None], unbounded: Sequence[bool] | None = None) -> dict[str, Any] | None:
    """One figure summed up across rounds (see the module's docstring).

    Parameters
    ----------
    values : sequence of float or None
        Round ``r``'s value at ``values[r]``; None where it has none.
    unbounded : sequence of bool, optional
        Whether round ``r``'s value is unbounded (+inf), whatever ``values[r]`` says.

    Returns
    -------
    dict or None
        None when no round has a value.
    """
    flags = list(unbounded) if unbounded is not None else [False] * len(values)
    nums = [math.inf if flag else v for v, flag in zip(values, flags)]
    present = [(r, float(x)) for r, x in enumerate(nums) if x is not None]
    if not present:
        return None
    xs = [x for _, x in present]
    median = statistics.median(xs)
    lo, hi = median_ci(xs)
    out: dict[str, Any] = {"median": _finite(median), "ci95": [_finite(lo), _finite(hi)],
                           "by_round": [None if flag else v for v, flag in zip(values, flags)]}
    if len(xs) % 2:
        out["median_round"] = next(r for r, x in present if x == median)
    if any(flags):
        out["unbounded_rounds"] = [r for r, flag in enumerate(flags) if flag]
    return out


def _finite(x: float) -> float | None:
    return None if math.isinf(x) else x


def _get(d: dict[str, Any] | None, key: str) -> Any:
    return None if not d else d.get(key)


def scenario_across(runs: Sequence[dict[str, Any]], alone: Sequence[dict[str, Any] | None]) -> dict[str, Any]:
    """One scenario's figures across rounds.

    Parameters
    ----------
    runs : sequence of dict
        The scenario's figures in each round (``{}`` where it did not run).
    alone : sequence of dict or None
        The inference-alone ``hp`` figures of each round (for ``p99_x_alone``).

    Returns
    -------
    dict
        ``{"skipped": why}`` when every round skipped it; else ``hp`` (each of
        `HP_FIGURES` and ``p99_x_alone``: its p99 over the same round's alone p99, each
        `across`; ``saturated_rounds``, ``arrived_by_round``, ``unfinished_by_round``),
        ``be`` (``throughput_norm``) and ``sum_norm_throughput``, each where measured;
        ``errors`` (round to message) and ``model`` where the runs say so.
    """
    reasons = [r.get("skipped") for r in runs]
    if all(reasons):
        return {"skipped": reasons[0]}
    out: dict[str, Any] = {}
    errors = {i: r["error"] for i, r in enumerate(runs) if "error" in r}
    if errors:
        out["errors"] = errors
    models = [r["model"] for r in runs if "model" in r]
    if models:
        out["model"] = models[0]
    hps = [r.get("hp") for r in runs]
    if any(hps):
        saturated = [bool(_get(h, "saturated")) for h in hps]
        hp: dict[str, Any] = {k: across([_get(h, k) for h in hps], saturated if k in TAIL_FIGURES else None)
                              for k in HP_FIGURES}
        hp["p99_x_alone"] = across([_over(_get(h, "p99_ms"), _get(a, "p99_ms")) for h, a in zip(hps, alone)],
                                   saturated)
        hp["saturated_rounds"] = [i for i, s in enumerate(saturated) if s]
        hp["arrived_by_round"] = [_get(h, "arrived") for h in hps]
        hp["unfinished_by_round"] = [_get(h, "unfinished") for h in hps]
        out["hp"] = hp
    bes = [r.get("be") for r in runs]
    if any(bes):
        out["be"] = {"throughput_norm": across([_get(b, "throughput_norm") for b in bes])}
    sums = [r.get("sum_norm_throughput") for r in runs]
    if any(v is not None for v in sums):
        out["sum_norm_throughput"] = across(sums)
    return out


def _over(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def ratios_across(rounds: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """One lithos scenario's ratios to each baseline (``ratios_to`` of each round) across
    rounds; a baseline that saturated in a round has an unbounded tail reduction there."""
    baselines = list(dict.fromkeys(b for r in rounds for b in r))
    out: dict[str, dict[str, Any]] = {}
    for b in baselines:
        per = [r.get(b, {}) for r in rounds]
        sat = [bool(p.get("baseline_saturated")) for p in per]
        out[b] = {"p99_reduction": across([p.get("p99_reduction") for p in per], sat),
                  "p999_reduction": across([p.get("p999_reduction") for p in per], sat),
                  "be_throughput_gain": across([p.get("be_throughput_gain") for p in per])}
    return out


def static_across(ats: Sequence[dict[str, Any] | None]) -> dict[str, Any]:
    """One comparison with the static splits (``static_at_p99`` of each round) across
    rounds: the split chosen in each round (None: none reached the lithos scenario's p99,
    or no comparison), and the gains over it and over the splits' line, each `across`."""
    return {"static_by_round": [_get(a, "static") for a in ats],
            "lithos_p99_ms": across([_get(a, "lithos_p99_ms") for a in ats]),
            "be_throughput_gain": across([_get(a, "be_throughput_gain") for a in ats]),
            "be_throughput_gain_on_line": across([_get(a, "be_throughput_gain_on_line") for a in ats])}


def summarize_rounds(rounds: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The study's summary: per pair, each scenario's figures, each lithos scenario's
    ratios (`RATIO_KEYS`) and static comparisons (`STATIC_KEYS`), across ``rounds``
    (each a runner's result, its pairs summed up by `ml_figures.summarize_pair`).

    Returns
    -------
    dict
        ``rounds`` (how many) and ``pairs``: pair to ``scenarios`` (`scenario_across`) and
        each key of `RATIO_KEYS` (`ratios_across`) and `STATIC_KEYS` (`static_across`)
        that some round has.
    """
    pairs: dict[str, Any] = {}
    for pair in dict.fromkeys(p for r in rounds for p in r.get("pairs", {})):
        per = [r.get("pairs", {}).get(pair, {}) for r in rounds]
        names = list(dict.fromkeys(n for p in per for n in p.get("scenarios", {})))
        alone = [p.get("scenarios", {}).get("lc_alone", {}).get("hp") for p in per]
        res: dict[str, Any] = {"scenarios": {n: scenario_across([p.get("scenarios", {}).get(n, {}) for p in per], alone)
                                             for n in names}}
        for key in RATIO_KEYS:
            if any(p.get(key) for p in per):
                res[key] = ratios_across([p.get(key) or {} for p in per])
        for key in STATIC_KEYS:
            if any(p.get(key) for p in per):
                res[key] = static_across([p.get(key) for p in per])
        pairs[pair] = res
    return {"rounds": len(rounds), "pairs": pairs}
