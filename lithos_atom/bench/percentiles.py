"""Bootstrap confidence intervals for tail latencies, their ratios, and medians across rounds.

A p99 from a few hundred or thousand requests moves from run to run, so a ratio such as
"lithos p99 / alone p99 <= 1.5" is reported with the interval the sample supports; a figure
measured once per round of a study is reported as its median across the rounds, with the
interval of that median (`median_ci`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _check(values: Sequence[float], q: float, confidence: float, resamples: int, name: str = "values") -> np.ndarray:
    a = np.asarray(values, dtype=np.float64)
    if a.ndim != 1 or a.size == 0 or not np.all(np.isfinite(a)):
        raise ValueError(f"{name} must be a non-empty 1-D sequence of finite numbers")
    if not 0 < q < 100:
        raise ValueError(f"q must be in (0, 100), got {q!r}")
    _check_options(confidence, resamples)
    return a


def _check_options(confidence: float, resamples: int) -> None:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 1:
        raise ValueError(f"resamples must be an int >= 1, got {resamples!r}")


def _boot(a: np.ndarray, q: float, resamples: int, rng: np.random.Generator) -> np.ndarray:
    idx = rng.integers(0, a.size, size=(resamples, a.size))
    return np.percentile(a[idx], q, axis=1)


def percentile_ci(values: Sequence[float], q: float, *, confidence: float = 0.95, resamples: int = 1000,
                  seed: int = 0) -> tuple[float, float]:
    """Bootstrap interval of the ``q``-th percentile of ``values``.

    Parameters
    ----------
    values : sequence of float
    q : float
        Percentile, in (0, 100).
    confidence : float
        Two-sided coverage of the interval.
    resamples : int
    seed : int
        The interval is deterministic for one seed.

    Returns
    -------
    (float, float)
        Lower and upper bound.
    """
    a = _check(values, q, confidence, resamples)
    boot = _boot(a, q, resamples, np.random.default_rng(seed))
    tail = (1 - confidence) / 2 * 100
    lo, hi = np.percentile(boot, [tail, 100 - tail])
    return float(lo), float(hi)


def ratio_ci(numerator: Sequence[float], denominator: Sequence[float], q: float, *, confidence: float = 0.95,
             resamples: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Bootstrap interval of ``percentile(numerator, q) / percentile(denominator, q)``,
    the two samples resampled independently (two runs of the same request stream)."""
    a = _check(numerator, q, confidence, resamples, "numerator")
    b = _check(denominator, q, confidence, resamples, "denominator")
    rng = np.random.default_rng(seed)
    den = _boot(b, q, resamples, rng)
    if np.any(den <= 0):
        raise ValueError("the denominator's percentile must be positive")
    boot = _boot(a, q, resamples, rng) / den
    tail = (1 - confidence) / 2 * 100
    lo, hi = np.percentile(boot, [tail, 100 - tail])
    return float(lo), float(hi)


def median_ci(values: Sequence[float], *, confidence: float = 0.95, resamples: int = 1000,
              seed: int = 0) -> tuple[float, float]:
    """Bootstrap interval of the median of ``values`` (one figure per round of a study).

    ``values`` may hold ``inf`` (a tail that grew without bound in that round); the bounds
    are then order statistics of the resampled medians (no interpolation, which would mix
    a finite value with ``inf``), and a bound may be ``inf``. With three rounds the
    resampled medians are the three values themselves, so the interval is their range.

    Returns
    -------
    (float, float)
        Lower and upper bound.
    """
    a = np.asarray(values, dtype=np.float64)
    if a.ndim != 1 or a.size == 0 or np.any(np.isnan(a)) or np.any(a == -np.inf):
        raise ValueError("values must be a non-empty 1-D sequence of numbers or +inf")
    _check_options(confidence, resamples)
    rng = np.random.default_rng(seed)
    boot = np.sort(a[rng.integers(0, a.size, size=(resamples, a.size))], axis=1)
    mid = a.size // 2
    medians = boot[:, mid] if a.size % 2 else (boot[:, mid - 1] + boot[:, mid]) / 2
    tail = (1 - confidence) / 2 * 100
    lo, hi = np.percentile(medians, [tail, 100 - tail], method="inverted_cdf")
    return float(lo), float(hi)
