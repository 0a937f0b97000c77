"""Right-sizing: run a kernel on the fewest TPCs that keep it within a slowdown slack.

For a latency-critical kernel the scheduler asks `RightSizer.tpcs_for` how many of the
tenant's home TPCs the kernel needs; the rest can run best-effort work. The decision
comes from the kernel's scaling profile (`lithos_sched.scaling`):

1. occupancy filter: a grid that cannot fill the home partition needs at most
   `fill_tpcs` TPCs, with no profile at all;
2. with a fitted model: the fewest TPCs ``T`` (not below the smallest count sampled, so
   the model never extrapolates downwards) whose predicted latency is within
   ``1 + slack`` of the latency on the home partition; predictions are never below the
   measured latency of the next smaller sampled count (`predicted_latency_us`);
3. while a kernel has too few sampled sizes, and exploration is on: the next size of a
   descending ladder (home, 3/4, 1/2, 1/4 of it), stopping the descent as soon as a probe
   was more than ``explore_max_slowdown`` slower than home, so learning costs a bounded
   number of slow launches;
4. otherwise the home partition.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from collections.abc import Hashable, Mapping

import numpy as np

from lithos_sched.fields import is_int, is_number, require
from lithos_sched.scaling import ProfileStore, ScalingProfile
from lithos_sched.scaling_fit import ScalingModel, fill_tpcs

#: Fractions of the home partition probed, in order, while a profile is being learned.
EXPLORE_LADDER = (1.0, 0.75, 0.5, 0.25)


@dataclasses.dataclass(frozen=True)
class RightSizeOptions:
    """Options of the right-sizing policy.

    Attributes
    ----------
    slack : float
        Largest predicted slowdown accepted (0.05: at most 5% slower than home).
    min_tpcs : int
        Never fewer TPCs than this.
    min_sizes : int
        Distinct sampled TPC counts a profile needs before its model is used.
    explore : bool
        Probe smaller partitions for kernels whose profile is still too thin.
    explore_max_slowdown : float
        Stop probing smaller sizes once a probe was this much slower than home.
    min_saving : float
        Keep the home partition unless the choice is predicted to save more than this
        share of the kernel's TPC-time: a kernel that scales perfectly would otherwise run
        up to ``slack`` slower for no capacity at all.
    refit_every : int
        A decision is kept for this many new timings of already sampled sizes (a new size
        always refits): every latency-critical launch is timed, and refitting on each
        would put a fit (~0.1-1 ms) on the launch path.
    """

    slack: float = 0.05
    min_tpcs: int = 1
    min_sizes: int = 3
    explore: bool = True
    explore_max_slowdown: float = 0.25
    min_saving: float = 0.02
    refit_every: int = 64

    def __post_init__(self) -> None:
        require(is_number(self.min_saving) and 0 <= self.min_saving < 1, "RightSizeOptions.min_saving",
                "a number in [0, 1)", self.min_saving)
        for name in ("slack", "explore_max_slowdown"):
            value = getattr(self, name)
            require(is_number(value) and 0 <= value < 10, f"RightSizeOptions.{name}", "a number in [0, 10)", value)
        for name in ("min_tpcs", "min_sizes", "refit_every"):
            value = getattr(self, name)
            require(is_int(value) and value >= 1, f"RightSizeOptions.{name}", "an int >= 1", value)


def predicted_latency_us(model: ScalingModel, tpcs: np.ndarray,
                         samples: Mapping[int, tuple[float, int]] | None = None) -> np.ndarray:
    """The model's latency on each of ``tpcs``, raised to a pessimistic measured bound.

    More TPCs never make a kernel slower (to first order), so on ``T`` TPCs a kernel is
    no slower than on the largest sampled count ``s <= T``; taking ``latency(s)`` as the
    prediction when the model says less assumes the worst between samples. It keeps a
    smooth measured knee (memory-bound kernels saturate gradually, not at the sharp
    corner of the ``saturating`` form) from being predicted too fast, at the price of
    choices on or near sampled counts.
    """
    predicted = np.asarray(model.predict_us(tpcs), dtype=float)
    if not samples:
        return predicted
    sampled = np.array(sorted(samples), dtype=float)
    measured = np.array([samples[int(t)][0] for t in sampled])
    idx = np.searchsorted(sampled, np.asarray(tpcs, dtype=float), side="right") - 1
    floor = np.where(idx >= 0, measured[np.clip(idx, 0, None)], 0.0)
    return np.maximum(predicted, floor)


def choose_tpcs(model: ScalingModel, home_tpcs: int, slack: float = 0.05, min_tpcs: int = 1,
                cap_tpcs: int | None = None, min_saving: float = 0.02,
                samples: Mapping[int, tuple[float, int]] | None = None) -> int:
    """The fewest TPCs whose predicted latency stays within ``1 + slack`` of home's.

    Parameters
    ----------
    model : ScalingModel
        The kernel's fitted scaling model.
    home_tpcs : int
        TPCs of the partition the kernel would otherwise run on (the reference).
    slack : float
        Accepted predicted slowdown.
    min_tpcs : int
        Lower bound of the answer (raised to the smallest count the model was fitted on).
    cap_tpcs : int, optional
        Upper bound below home from the occupancy filter: the kernel cannot use more.
    min_saving : float
        The model's choice must save more than this share of home's TPC-time
        (``1 - T * latency(T) / (home * latency(home))``), else the answer is home (or
        ``cap_tpcs``, which costs no time).
    samples : mapping, optional
        The profile's measured ``{tpcs: (mean_us, count)}``: predictions are raised to
        the measured envelope (`predicted_latency_us`) and the reference is the measured
        latency on home when it was sampled.

    Returns
    -------
    int
        In ``[max(min_tpcs, model.t_min), home_tpcs]`` (or ``cap_tpcs`` when smaller).

    Raises
    ------
    ValueError
        For ``home_tpcs < 1`` or a negative slack.
    """
    if isinstance(home_tpcs, bool) or not isinstance(home_tpcs, (int, np.integer)) or home_tpcs < 1:
        raise ValueError(f"home_tpcs must be an int >= 1, got {home_tpcs!r}")
    if slack < 0:
        raise ValueError(f"slack must be >= 0, got {slack!r}")
    top = int(home_tpcs) if cap_tpcs is None else max(1, min(int(home_tpcs), int(cap_tpcs)))
    low = min(top, max(int(min_tpcs), model.t_min))
    home_sample = samples.get(int(home_tpcs)) if samples else None
    reference = home_sample[0] if home_sample is not None else model.predict_us(home_tpcs)
    candidates = np.arange(low, top + 1)
    predicted = predicted_latency_us(model, candidates, samples)
    ok = predicted <= reference * (1.0 + slack) * (1 + 1e-12)
    if not ok.any():
        return top
    i = int(np.argmax(ok))
    saving = 1.0 - candidates[i] * predicted[i] / (home_tpcs * reference)
    top_saving = 1.0 - top * predicted[-1] / (home_tpcs * reference)
    return int(candidates[i]) if saving > max(min_saving, top_saving) else top


class RightSizer:
    """The right-sizing policy over a `ProfileStore`, for the scheduler's hot path.

    Parameters
    ----------
    store : ProfileStore, optional
        Profiles (loaded from the disk cache by the caller, or learned online); a fresh
        in-memory store by default.
    options : RightSizeOptions, optional

    Notes
    -----
    `tpcs_for` memoizes its answer per (key, home, grid) until the key's profile gains a
    TPC count or ``refit_every`` new timings, so a repeated launch costs a dictionary
    lookup; `observe` is the predictor's call.
    """

    def __init__(self, store: ProfileStore | None = None, options: RightSizeOptions | None = None):
        self.store = store if store is not None else ProfileStore()
        self.options = options or RightSizeOptions()
        self._lock = threading.Lock()
        # (key, home, grid, occupancy) -> (profile version, sizes version, answer)
        self._memo: dict[tuple[Hashable, int, int | None, float | None], tuple[int, int, int]] = {}

    def observe(self, key: Hashable, tpcs: int, count: int, wave_blocks: int, measured_us: float,
                predicted_us: float | None = None) -> None:
        """Learn from one timed atom (same arguments as `LatencyPredictor.observe`)."""
        self.store.observe(key, tpcs, count, wave_blocks, measured_us, predicted_us)

    def tpcs_for(self, key: Hashable, home_tpcs: int, grid_blocks: int | None = None,
                 blocks_per_tpc: float | None = None) -> int:
        """How many of the ``home_tpcs`` TPCs the kernel ``key`` should run on.

        Parameters
        ----------
        key : str or KernelKey
            The kernel shape (a `KernelKey` brings its grid).
        home_tpcs : int
            TPCs of the tenant's home partition.
        grid_blocks : int, optional
            Blocks of the grid (taken from a `KernelKey` when not given).
        blocks_per_tpc : float, optional
            Resident blocks per TPC (the scheduler's ``plan.wave_blocks / device.num_tpcs``).

        Returns
        -------
        int
            In ``1 .. home_tpcs``; the scheduler runs the kernel on that many of its home TPCs.
        """
        if isinstance(home_tpcs, bool) or not isinstance(home_tpcs, (int, np.integer)) or home_tpcs < 1:
            raise ValueError(f"home_tpcs must be an int >= 1, got {home_tpcs!r}")
        home = int(home_tpcs)
        if grid_blocks is None and getattr(key, "grid", None) is not None:
            grid_blocks = math.prod(key.grid)  # type: ignore[attr-defined]
        cap = fill_tpcs(grid_blocks, blocks_per_tpc) if grid_blocks is not None and blocks_per_tpc else None
        prof = self.store.get(key)
        if prof is None:
            return self._decide(None, home, cap)
        memo_key = (key, home, grid_blocks, blocks_per_tpc)
        version, sizes_version = prof.version, prof.sizes_version
        with self._lock:
            hit = self._memo.get(memo_key)
        if hit is not None and hit[1] == sizes_version and version - hit[0] < self.options.refit_every:
            return hit[2]
        answer = self._decide(prof, home, cap)
        with self._lock:
            self._memo[memo_key] = (version, sizes_version, answer)
        return answer

    def _decide(self, prof: ScalingProfile | None, home: int, cap: int | None) -> int:
        opts = self.options
        capped = home if cap is None else max(opts.min_tpcs, min(home, cap))
        capped = min(capped, home)
        samples = prof.samples if prof is not None else {}
        if len(samples) >= opts.min_sizes:
            model = prof.model()  # type: ignore[union-attr]
            assert model is not None
            return choose_tpcs(model, home, opts.slack, opts.min_tpcs, capped, opts.min_saving, samples)
        if not opts.explore or prof is None:
            return capped
        return self._next_probe(samples, capped, home)

    def _next_probe(self, samples: dict[int, tuple[float, int]], top: int, home: int) -> int:
        opts = self.options
        ladder = sorted({max(opts.min_tpcs, min(top, math.ceil(f * home))) for f in EXPLORE_LADDER}, reverse=True)
        reference = samples.get(ladder[0])
        for size in ladder:
            if size not in samples:
                return size
            if reference is not None and samples[size][0] > reference[0] * (1 + opts.explore_max_slowdown):
                break  # this probe already hurt: go no smaller, run on the largest size
        return top

    def describe(self, key: Hashable, home_tpcs: int) -> dict[str, object]:
        """The decision for ``key`` with its model and predicted slowdown (for reports)."""
        prof = self.store.get(key)
        model = prof.model() if prof is not None else None
        chosen = self.tpcs_for(key, home_tpcs)
        out: dict[str, object] = {"key": prof.key if prof else str(key), "home_tpcs": home_tpcs, "tpcs": chosen,
                                  "model": None if model is None else model.to_json()}
        if model is not None:
            samples = prof.samples  # type: ignore[union-attr]
            ref = samples[home_tpcs][0] if home_tpcs in samples else model.predict_us(home_tpcs)
            out["predicted_slowdown"] = float(predicted_latency_us(model, np.array([chosen]), samples)[0]) / ref - 1
        return out
