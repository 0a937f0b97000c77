"""Scaling profiles: how a kernel's latency changes with the number of TPCs it runs on.

A profile holds measured latencies of one kernel shape at several TPC counts, learned
online (`ScalingProfile.observe`, the predictor's ``observe`` shape) or collected offline
(`lithos_sched.partition_timing`), and a `ScalingModel` fitted to them
(`lithos_sched.scaling_fit`: three model forms, the best kept).

`ProfileStore` keeps profiles by key and caches them as JSON under
``$LITHOS_SCALING_DIR``, else ``$LITHOS_CACHE_DIR/scaling``, else
``~/.cache/lithos/scaling``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import threading
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from lithos_atom.settings import read_variable
from lithos_sched.scaling_fit import ScalingModel, fill_tpcs, fit_scaling


def key_id(key: Hashable) -> str:
    """A stable string for a profile key: a string as is, a `KernelKey` by its fields.

    Raises
    ------
    TypeError
        For keys of other types.
    """
    if isinstance(key, str):
        return key
    fields = ("name", "grid", "block", "shared_mem", "arg_shapes")
    if all(hasattr(key, f) for f in fields):
        return "|".join(f"{f}={getattr(key, f)!r}" for f in fields)
    raise TypeError(f"a profile key must be a str or a KernelKey, got {type(key).__name__}")


@dataclasses.dataclass
class _Sample:
    mean_us: float
    count: int


class ScalingProfile:
    """Latency samples of one kernel shape per TPC count, and the model fitted to them.

    Parameters
    ----------
    key : str
        What the profile is of (see `key_id`).
    grid_blocks : int, optional
        Blocks of the whole grid, when known.
    blocks_per_tpc : float, optional
        Resident blocks per TPC, when known.
    alpha : float
        Weight of a new online sample in the moving mean of its TPC count (0 < alpha <= 1).
    """

    def __init__(self, key: str, grid_blocks: int | None = None, blocks_per_tpc: float | None = None,
                 alpha: float = 0.3):
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {alpha!r}")
        if grid_blocks is not None and blocks_per_tpc is not None:
            fill_tpcs(grid_blocks, blocks_per_tpc)  # validates both
        self.key = key
        self.grid_blocks = grid_blocks
        self.blocks_per_tpc = blocks_per_tpc
        self.alpha = alpha
        self._samples: dict[int, _Sample] = {}
        self._model: ScalingModel | None = None
        # The scheduler's thread that retires atoms and the one asking for a size may differ.
        self._lock = threading.Lock()
        self.version = 0  # bumped by every change: lets callers memoize decisions
        self.sizes_version = 0  # bumped when a TPC count is sampled for the first time

    @property
    def samples(self) -> dict[int, tuple[float, int]]:
        """``{tpcs: (mean_us, count)}``."""
        with self._lock:
            return {t: (s.mean_us, s.count) for t, s in sorted(self._samples.items())}

    def fill_tpcs(self) -> int | None:
        """`fill_tpcs` of the grid, or None when the grid or occupancy is unknown."""
        if self.grid_blocks is None or self.blocks_per_tpc is None:
            return None
        return fill_tpcs(self.grid_blocks, self.blocks_per_tpc)

    def _check(self, tpcs: int, latency_us: float) -> None:
        if isinstance(tpcs, bool) or not isinstance(tpcs, (int, np.integer)) or tpcs < 1:
            raise ValueError(f"tpcs must be an int >= 1, got {tpcs!r}")
        if not (isinstance(latency_us, (int, float, np.number)) and math.isfinite(latency_us) and latency_us > 0):
            raise ValueError(f"latency_us must be a finite number > 0, got {latency_us!r}")

    def add(self, tpcs: int, latency_us: float, count: int = 1) -> None:
        """Set the sample of ``tpcs`` TPCs to an offline measurement (e.g. a median of
        ``count`` timings), replacing what was there."""
        self._check(tpcs, latency_us)
        with self._lock:
            self.sizes_version += int(int(tpcs) not in self._samples)
            self._samples[int(tpcs)] = _Sample(float(latency_us), int(count))
            self._model = None
            self.version += 1

    def observe(self, tpcs: int, latency_us: float) -> None:
        """Learn one online timing of the whole kernel on ``tpcs`` TPCs (moving mean)."""
        self._check(tpcs, latency_us)
        with self._lock:
            s = self._samples.get(int(tpcs))
            if s is None:
                self._samples[int(tpcs)] = _Sample(float(latency_us), 1)
                self.sizes_version += 1
            else:
                s.mean_us += self.alpha * (float(latency_us) - s.mean_us)
                s.count += 1
            self._model = None
            self.version += 1

    def model(self) -> ScalingModel | None:
        """The model fitted to the samples (refitted after a change), or None without samples."""
        with self._lock:
            if self._model is not None or not self._samples:
                return self._model
            ts = sorted(self._samples)
            means = [self._samples[t].mean_us for t in ts]
            counts = [self._samples[t].count for t in ts]
        waves = None
        if self.grid_blocks is not None and self.blocks_per_tpc is not None:
            waves = self.grid_blocks / self.blocks_per_tpc
        model = fit_scaling(ts, means, counts, waves_w=waves)
        with self._lock:
            self._model = model
        return model

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (`from_json` reads it back); includes the fitted model."""
        model = self.model()
        return {"key": self.key, "grid_blocks": self.grid_blocks, "blocks_per_tpc": self.blocks_per_tpc,
                "samples": {str(t): [m, c] for t, (m, c) in self.samples.items()},
                "model": None if model is None else model.to_json()}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ScalingProfile:
        """The profile written by `to_json` (its model is refitted from the samples)."""
        if not isinstance(data.get("key"), str):
            raise ValueError(f"profile 'key' must be a string, got {data.get('key')!r}")
        prof = cls(data["key"], data.get("grid_blocks"), data.get("blocks_per_tpc"))
        samples = data.get("samples", {})
        if not isinstance(samples, Mapping):
            raise ValueError(f"profile 'samples' of {data['key']!r} must be a mapping, got {type(samples).__name__}")
        for t, pair in samples.items():
            prof.add(int(t), float(pair[0]), int(pair[1]))
        return prof


def default_cache_dir() -> Path:
    """``$LITHOS_SCALING_DIR``, else ``$LITHOS_CACHE_DIR/scaling``, else ``~/.cache/lithos/scaling``."""
    explicit = read_variable("LITHOS_SCALING_DIR")
    return explicit if explicit is not None else read_variable("LITHOS_CACHE_DIR") / "scaling"


class ProfileStore:
    """Scaling profiles by key, learned online and cached on disk as JSON.

    Parameters
    ----------
    path : str or Path, optional
        JSON file; ``default_cache_dir() / "profiles.json"`` by default.
    device_name : str, optional
        Profiles belong to one GPU model: a cache written for another device name is
        ignored on `load`.
    alpha : float
        Moving-mean weight of online samples.
    """

    def __init__(self, path: str | Path | None = None, device_name: str | None = None, alpha: float = 0.3):
        self.path = Path(path) if path is not None else default_cache_dir() / "profiles.json"
        self.device_name = device_name
        self.alpha = alpha
        self._lock = threading.Lock()
        self._profiles: dict[str, ScalingProfile] = {}
        # The same profiles by the caller's key object, None for a key without one (a
        # right-sizer asks on every latency-critical launch, profiled or not): `key_id` of
        # a KernelKey formats its fields, too slow for that. Entries for a key are dropped
        # whenever a profile may appear under it.
        self._by_key: dict[Hashable, ScalingProfile | None] = {}

    def __len__(self) -> int:
        return len(self._profiles)

    def __contains__(self, key: Hashable) -> bool:
        return key_id(key) in self._profiles

    def keys(self) -> list[str]:
        """Profile keys, sorted."""
        return sorted(self._profiles)

    def get(self, key: Hashable) -> ScalingProfile | None:
        """The profile of ``key``, or None."""
        try:
            return self._by_key[key]
        except KeyError:
            prof = self._by_key[key] = self._profiles.get(key_id(key))
            return prof

    def _forget_misses(self) -> None:
        """Drop the cached "no profile" answers (a profile was just added; rare)."""
        self._by_key = {k: v for k, v in self._by_key.items() if v is not None}

    def profile(self, key: Hashable, grid_blocks: int | None = None, blocks_per_tpc: float | None = None
                ) -> ScalingProfile:
        """The profile of ``key``, created if missing; fills in a grid or occupancy it lacked."""
        kid = key_id(key)
        with self._lock:
            prof = self._profiles.get(kid)
            if prof is None:
                prof = self._profiles[kid] = ScalingProfile(kid, grid_blocks, blocks_per_tpc, self.alpha)
                self._forget_misses()
            elif prof.grid_blocks is None and grid_blocks is not None and blocks_per_tpc is not None:
                fill_tpcs(grid_blocks, blocks_per_tpc)
                prof.grid_blocks, prof.blocks_per_tpc = grid_blocks, blocks_per_tpc
                prof.version += 1
            return prof

    def alias(self, key: Hashable, profiled: Hashable) -> ScalingProfile:
        """Keep a copy of the profile of ``profiled`` (a case name, say) under ``key`` (the
        `KernelKey` its launch has inside the scheduler), so an offline profile reaches the
        right-sizer. Returns the copy.

        Raises
        ------
        KeyError
            When ``profiled`` has no profile.
        """
        source = self.get(profiled)
        if source is None:
            raise KeyError(f"no profile for {key_id(profiled)!r}")
        copy = ScalingProfile.from_json({**source.to_json(), "key": key_id(key)})
        copy.alpha = self.alpha
        with self._lock:
            self._profiles[copy.key] = copy
            self._forget_misses()
        return copy

    def observe(self, key: Hashable, tpcs: int, count: int, wave_blocks: int, measured_us: float,
                predicted_us: float | None = None) -> None:
        """Learn from one timed atom (the arguments of `LatencyPredictor.observe`).

        An atom of ``count`` blocks on a partition holding ``wave_blocks`` at once is a
        whole kernel when ``count`` is the key's grid (a `KernelKey`'s ``grid``); a partial
        atom is scaled to the whole grid by its share of the waves. ``predicted_us`` is
        accepted for the predictor's call shape and not used.
        """
        if isinstance(count, bool) or count < 1 or isinstance(wave_blocks, bool) or wave_blocks < 1:
            raise ValueError(f"count and wave_blocks must be ints >= 1, got {count!r}, {wave_blocks!r}")
        grid = getattr(key, "grid", None)
        total = int(np.prod(grid)) if grid is not None else count
        per_tpc = wave_blocks / tpcs
        prof = self.profile(key, total, per_tpc)
        waves_atom = math.ceil(count / wave_blocks)
        waves_total = math.ceil(total / wave_blocks)
        prof.observe(tpcs, measured_us * waves_total / waves_atom)

    def load(self) -> int:
        """Read the cache file if it exists (and was written for this device name).

        Returns
        -------
        int
            Profiles read.

        Raises
        ------
        ValueError
            For a file that is not a profile cache (naming the file).
        """
        if not self.path.exists():
            return 0
        try:
            data = json.loads(self.path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{self.path}: not a JSON profile cache ({exc})") from exc
        if not isinstance(data, dict) or not isinstance(data.get("profiles"), list):
            raise ValueError(f"{self.path}: a profile cache needs a 'profiles' list")
        if self.device_name is not None and data.get("device") not in (None, self.device_name):
            return 0
        with self._lock:
            for entry in data["profiles"]:
                prof = ScalingProfile.from_json(entry)
                prof.alpha = self.alpha
                self._profiles[prof.key] = prof
            self._forget_misses()
        return len(data["profiles"])

    def save(self) -> Path:
        """Write every profile to the cache file (atomically); returns its path."""
        with self._lock:
            entries = [self._profiles[k].to_json() for k in sorted(self._profiles)]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        tmp.write_text(json.dumps({"device": self.device_name, "profiles": entries}, indent=1))
        tmp.replace(self.path)
        return self.path
