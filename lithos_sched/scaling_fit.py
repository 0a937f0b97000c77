"""The models of a kernel's latency against the number of TPCs it runs on, and their fit.

Three model forms are fitted to a profile's samples (`lithos_sched.scaling`), each by
weighted least squares on relative error, and the one with the best small-sample Akaike
score is kept (`fit_scaling`):

``amdahl``
    ``latency = m / T + b``: a parallel part that divides among the T TPCs and a fixed
    part (launch, tail, serial work).
``saturating``
    ``latency = m / min(T, T_sat) + b``: as ``amdahl`` up to ``T_sat`` TPCs, flat beyond,
    where the kernel stops gaining (memory bandwidth saturated, grid too small to fill).
``wave``
    ``latency = m * ceil(W / T) + b``: whole waves of blocks; ``W = blocks / blocks_per_tpc``
    is the work in TPC-waves, exact when the grid and the per-TPC occupancy are known,
    otherwise fitted.

The occupancy filter (`fill_tpcs`) needs no samples: a grid of G blocks with B resident
blocks per TPC cannot use more than ``ceil(G / B)`` TPCs.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

MODEL_KINDS = ("amdahl", "saturating", "wave")

#: The model form kept must beat a simpler one by this much Akaike score: with 5-10
#: noisy samples, a form with more freedom otherwise wins on noise.
_AIC_MARGIN = 2.0
#: Relative noise floor added to residuals so an exact fit does not score -infinity.
_REL_NOISE_FLOOR = 1e-4
#: Largest number of waves (at the smallest TPC count sampled) scanned when W is unknown.
_MAX_SCANNED_WAVES = 64


def fill_tpcs(grid_blocks: int, blocks_per_tpc: float) -> int:
    """TPCs a grid can occupy at once: ``ceil(grid_blocks / blocks_per_tpc)``.

    Parameters
    ----------
    grid_blocks : int
        Blocks in the kernel's grid (>= 1).
    blocks_per_tpc : float
        Blocks of the kernel resident on one TPC at once (> 0).

    Returns
    -------
    int
        More TPCs than this cannot make the kernel faster: the extra ones get no block.

    Raises
    ------
    ValueError
        Naming the bad argument.
    """
    if isinstance(grid_blocks, bool) or not isinstance(grid_blocks, (int, np.integer)) or grid_blocks < 1:
        raise ValueError(f"grid_blocks must be an int >= 1, got {grid_blocks!r}")
    if isinstance(blocks_per_tpc, bool) or not isinstance(blocks_per_tpc, (int, float, np.number)) \
            or not math.isfinite(blocks_per_tpc) or blocks_per_tpc <= 0:
        raise ValueError(f"blocks_per_tpc must be a finite number > 0, got {blocks_per_tpc!r}")
    return max(1, math.ceil(int(grid_blocks) / float(blocks_per_tpc) - 1e-9))


@dataclasses.dataclass(frozen=True)
class ScalingModel:
    """A fitted latency-vs-TPCs model (see the module docstring for the forms).

    Attributes
    ----------
    kind : {"amdahl", "saturating", "wave"}
    m_us, b_us : float
        Scaled and fixed parts, microseconds (both >= 0).
    t_sat : float or None
        TPC count beyond which a ``saturating`` model is flat.
    waves_w : float or None
        Work in TPC-waves of a ``wave`` model.
    rel_rms : float
        Root-mean-square relative error on the samples it was fitted to.
    samples : int
        Distinct TPC counts it was fitted to.
    t_min, t_max : int
        Smallest and largest TPC count sampled: the model is trusted between them.
    """

    kind: str
    m_us: float
    b_us: float
    t_sat: float | None = None
    waves_w: float | None = None
    rel_rms: float = 0.0
    samples: int = 0
    t_min: int = 1
    t_max: int = 1

    def predict_us(self, tpcs: float | np.ndarray) -> Any:
        """Predicted latency on ``tpcs`` TPCs (scalar or array), microseconds."""
        t = np.asarray(tpcs, dtype=float)
        if np.any(t <= 0):
            raise ValueError(f"tpcs must be > 0, got {tpcs!r}")
        if self.kind == "wave":
            out = self.m_us * np.ceil(self.waves_w / t - 1e-9) + self.b_us
        elif self.kind == "saturating":
            out = self.m_us / np.minimum(t, self.t_sat) + self.b_us
        else:
            out = self.m_us / t + self.b_us
        return float(out) if np.ndim(out) == 0 else out

    def slowdown(self, tpcs: float, reference_tpcs: float) -> float:
        """Predicted latency on ``tpcs`` over that on ``reference_tpcs``, minus one."""
        return self.predict_us(tpcs) / self.predict_us(reference_tpcs) - 1.0

    def elasticity(self, tpcs: float) -> float:
        """How much of the latency at ``tpcs`` TPCs scales with the TPC count, in [0, 1].

        The log-log slope ``-d ln(latency) / d ln(T)`` measured between ``0.8 * tpcs`` and
        ``tpcs``: 1 for a kernel that is all throughput-bound on SMs, 0 for one that no
        more SMs would speed up (memory-bound at saturation, or a grid too small).
        """
        lo = max(0.8 * tpcs, 1e-6)
        slope = math.log(self.predict_us(lo) / self.predict_us(tpcs)) / math.log(tpcs / lo)
        return min(1.0, max(0.0, slope))

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (`from_json` reads it back)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ScalingModel:
        """The model written by `to_json`."""
        if data.get("kind") not in MODEL_KINDS:
            raise ValueError(f"model kind must be one of {MODEL_KINDS}, got {data.get('kind')!r}")
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})


def _ls_nonneg(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weighted least squares of ``y ~ m * x + b`` with ``m, b >= 0``, for many ``x`` at once.

    Parameters
    ----------
    x : (C, n) array
        One candidate regressor per row (a scan over a model's shape parameter).
    y, w : (n,) arrays
        Samples and their weights.

    Returns
    -------
    m, b, rss : (C,) arrays
        The constrained optimum per candidate: where the unconstrained solution has a
        negative coefficient, the better of the two one-coefficient fits.
    """
    a, o, yw = x * w, w, y * w
    aa, ao, oo = np.sum(a * a, axis=1), a @ o, float(o @ o)
    ay, oy = a @ yw, float(o @ yw)
    det = aa * oo - ao * ao
    with np.errstate(divide="ignore", invalid="ignore"):
        m = np.where(det > 0, (ay * oo - ao * oy) / det, -1.0)
        b = np.where(det > 0, (aa * oy - ao * ay) / det, -1.0)
        m_only = np.where(aa > 0, np.maximum(ay / aa, 0.0), 0.0)
    b_only = max(oy / oo, 0.0)
    yy = float(yw @ yw)

    def rss(mm: np.ndarray, bb: np.ndarray | float) -> np.ndarray:
        return yy - 2 * (mm * ay + bb * oy) + mm * mm * aa + 2 * mm * bb * ao + bb * bb * oo

    ok = (m >= 0) & (b >= 0)
    r_both = np.where(ok, rss(np.where(ok, m, 0.0), np.where(ok, b, 0.0)), np.inf)
    r_m, r_b = rss(m_only, 0.0), rss(np.zeros_like(m), b_only)
    pick = np.argmin(np.stack([r_both, r_m, r_b]), axis=0)
    m_out = np.choose(pick, [np.where(ok, m, 0.0), m_only, np.zeros_like(m)])
    b_out = np.choose(pick, [np.where(ok, b, 0.0), np.zeros_like(m), np.full_like(m, b_only)])
    return m_out, b_out, np.maximum(np.choose(pick, [r_both, r_m, r_b]), 0.0)


def _last_best(rss: np.ndarray) -> int:
    """Index of the last candidate (the largest T_sat or W) whose fit ties the best.

    Between two sampled TPC counts, several values of the shape parameter fit the
    samples equally; the largest predicts the most slowdown at unsampled counts, so
    right-sizing errs towards more TPCs.
    """
    best = float(np.min(rss))
    tied = np.nonzero(rss <= best * (1 + 1e-6) + 1e-12)[0]
    return int(tied[-1])


def _aicc(rss_rel: float, n: int, k: int) -> float:
    rss = max(rss_rel, n * _REL_NOISE_FLOOR**2)
    penalty = 2 * k + (2 * k * (k + 1) / (n - k - 1) if n - k - 1 > 0 else 2 * k * (k + 1))  # AICc
    return n * math.log(rss / n) + penalty


def fit_scaling(tpcs: Iterable[float], latency_us: Iterable[float], weights: Iterable[float] | None = None,
                waves_w: float | None = None) -> ScalingModel:
    """Fit the three model forms to samples and keep the best.

    Parameters
    ----------
    tpcs : iterable of number
        TPC counts (> 0), one per sample; repeated counts are allowed.
    latency_us : iterable of number
        Measured latencies (> 0), microseconds.
    weights : iterable of number, optional
        Sample weights (e.g. how many timings each mean holds); 1 each by default.
    waves_w : float, optional
        ``grid_blocks / blocks_per_tpc`` when known: the ``wave`` form then has no free
        ``W`` (it is scanned otherwise).

    Returns
    -------
    ScalingModel

    Raises
    ------
    ValueError
        For mismatched lengths, no samples, or non-positive values (naming the field).
    """
    t = np.asarray(list(tpcs), dtype=float)
    y = np.asarray(list(latency_us), dtype=float)
    w = np.ones_like(y) if weights is None else np.asarray(list(weights), dtype=float)
    if not (t.shape == y.shape == w.shape):
        raise ValueError(f"tpcs, latency_us and weights must have one value per sample, got "
                         f"{t.size}, {y.size}, {w.size}")
    if t.size == 0:
        raise ValueError("fit_scaling needs at least one sample")
    for name, arr in (("tpcs", t), ("latency_us", y), ("weights", w)):
        if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
            raise ValueError(f"{name} must all be finite and > 0, got {arr.tolist()}")
    if waves_w is not None and not (math.isfinite(waves_w) and waves_w > 0):
        raise ValueError(f"waves_w must be a finite number > 0, got {waves_w!r}")
    n_distinct = len(np.unique(t))
    t_min, t_max = int(t.min()), int(t.max())
    # Relative-error weights: latencies span orders of magnitude across TPC counts.
    rw = np.sqrt(w) / y
    n = int(t.size)
    common = {"samples": n_distinct, "t_min": t_min, "t_max": t_max}

    def finish(kind: str, coef: tuple[float, float], rss: float, **extra: Any) -> tuple[float, ScalingModel]:
        k = 2 + (1 if extra.get("t_sat") is not None or (kind == "wave" and waves_w is None) else 0)
        rel_rms = math.sqrt(rss / float(np.sum(w)))
        # A form needs two samples more than its parameters to be judged at all (fewer fit
        # exactly, noise included); amdahl, the first, is the fallback.
        score = _aicc(rss, n, k) if n >= k + 2 or kind == "amdahl" else math.inf
        return score, ScalingModel(kind, float(coef[0]), float(coef[1]), rel_rms=rel_rms, **extra, **common)

    if n_distinct == 1:  # nothing to say about scaling: flat at the measured mean
        mean = float(np.average(y, weights=w))
        return ScalingModel("amdahl", 0.0, mean, rel_rms=float(np.sqrt(np.average(((y - mean) / y) ** 2, weights=w))),
                            **common)

    fits: list[tuple[float, ScalingModel]] = []
    m, b, r = _ls_nonneg((1.0 / t)[None, :], y, rw)
    fits.append(finish("amdahl", (m[0], b[0]), r[0]))

    t_sats = np.arange(max(1.0, t_min), t_max, 0.5)
    if t_sats.size:
        m, b, r = _ls_nonneg(1.0 / np.minimum(t[None, :], t_sats[:, None]), y, rw)
        i = _last_best(r)
        fits.append(finish("saturating", (m[i], b[i]), r[i], t_sat=float(t_sats[i])))

    if waves_w is not None:
        candidates = np.array([waves_w])
    else:
        # W is at most _MAX_SCANNED_WAVES waves on the smallest partition; scan integer TPC-waves.
        candidates = np.arange(1.0, _MAX_SCANNED_WAVES * t_min + 1.0)
    m, b, r = _ls_nonneg(np.ceil(candidates[:, None] / t[None, :] - 1e-9), y, rw)
    i = _last_best(r)
    fits.append(finish("wave", (m[i], b[i]), r[i], waves_w=float(candidates[i])))

    # Simplest form first; a later one must beat the best so far by the margin.
    chosen_score, chosen = fits[0]
    for score, model in fits[1:]:
        if score < chosen_score - _AIC_MARGIN:
            chosen_score, chosen = score, model
    return chosen
