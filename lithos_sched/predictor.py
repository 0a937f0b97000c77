"""Online latency prediction for kernels and atoms.

Blocks run in waves: an atom of ``count`` blocks on a partition that holds ``wave``
blocks at once takes about ``ceil(count / wave)`` wave times, and a wave lasts about one
block's duration. The predictor learns the wave time per kernel shape and partition size
from timed atoms (events the scheduler records anyway; nothing waits for them) with an
exponentially weighted mean, and falls back to the same kernel on another partition size.
"""

from __future__ import annotations

import array
import dataclasses
import math
import threading

import numpy as np

from lithos_atom.plan import KernelKey


@dataclasses.dataclass
class _Estimate:
    wave_us: float
    samples: int


class LatencyPredictor:
    """Learns per-wave (per-block) time of each kernel shape per TPC count.

    Parameters
    ----------
    alpha : float
        Weight of a new sample in the moving average (0 < alpha <= 1).
    """

    def __init__(self, alpha: float = 0.3):
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {alpha!r}")
        self.alpha = alpha
        self._lock = threading.Lock()
        self._by_tpcs: dict[tuple[KernelKey, int], _Estimate] = {}
        self._by_key: dict[KernelKey, _Estimate] = {}
        self._errors_us = array.array("d")  # untracked by the garbage collector, unlike a list of floats

    @staticmethod
    def waves(count: int, wave_blocks: int) -> int:
        """Waves needed for ``count`` blocks when ``wave_blocks`` fit at once."""
        return max(1, math.ceil(count / max(1, wave_blocks)))

    def wave_us(self, key: KernelKey, tpcs: int) -> float | None:
        """Predicted duration of one wave (about one block) of ``key`` on ``tpcs`` TPCs."""
        with self._lock:
            est = self._by_tpcs.get((key, tpcs)) or self._by_key.get(key)
            return None if est is None else est.wave_us

    def predict_us(self, key: KernelKey, tpcs: int, count: int, wave_blocks: int) -> float | None:
        """Predicted duration of ``count`` blocks of ``key`` on ``tpcs`` TPCs, or None if unknown."""
        w = self.wave_us(key, tpcs)
        return None if w is None else w * self.waves(count, wave_blocks)

    def observe(
        self, key: KernelKey, tpcs: int, count: int, wave_blocks: int, measured_us: float,
        predicted_us: float | None = None,
    ) -> None:
        """Learn from one timed atom; record the prediction error if a prediction was made."""
        sample = measured_us / self.waves(count, wave_blocks)
        with self._lock:
            for table, k in ((self._by_tpcs, (key, tpcs)), (self._by_key, key)):
                est = table.get(k)  # type: ignore[call-overload]
                if est is None:
                    table[k] = _Estimate(sample, 1)  # type: ignore[index]
                else:
                    est.wave_us += self.alpha * (sample - est.wave_us)
                    est.samples += 1
            if predicted_us is not None:
                self._errors_us.append(predicted_us - measured_us)

    def error_report(self, threshold_us: float = 50.0) -> dict[str, float | int | None]:
        """Distribution of prediction errors (predicted - measured), in microseconds.

        Returns
        -------
        dict
            ``count``, ``median_abs_us``, ``p90_abs_us``, ``p99_abs_us`` and
            ``share_off_by_more_than_{threshold}us``.
        """
        with self._lock:
            errors = np.abs(np.asarray(self._errors_us, dtype=float))
        label = f"share_off_by_more_than_{threshold_us:g}us"
        if errors.size == 0:
            return {"count": 0, "median_abs_us": None, "p90_abs_us": None, "p99_abs_us": None, label: None}
        return {
            "count": int(errors.size),
            "median_abs_us": float(np.median(errors)),
            "p90_abs_us": float(np.percentile(errors, 90)),
            "p99_abs_us": float(np.percentile(errors, 99)),
            label: float(np.mean(errors > threshold_us)),
        }
