"""Per-kernel SM clock policy (DVFS) and a locked-clock actuator that is off by default.

Time model
----------
A kernel's time at SM clock ``f`` is ``t(f) = t0 * (c * f0 / f + 1 - c)``: the share ``c``
of its time at the default clock ``f0`` that is bound by the SMs stretches with the
clock, the rest (waiting on DRAM, whose clock does not change) does not. ``c`` is
estimated from two measurements of the kernel, taking the larger (the more cautious):

- its scaling profile's elasticity at the full device (`ScalingModel.elasticity`): the
  share of its time that more SMs would shorten, i.e. bound by SM throughput;
- ``1 - achieved_bandwidth / peak_bandwidth``: a kernel running at 95% of peak DRAM
  bandwidth can be at most ~5% anything else; one far from the peak is assumed SM-bound
  (small, latency-bound kernels stretch with the clock too).

The policy picks the lowest supported clock with ``t(f) / t0 - 1 <= slack``, and not
below ``min_fraction`` of the default clock: the model is a first-order one, and at low
clocks even memory-bound kernels stop issuing enough loads to keep DRAM busy.

Actuator
--------
`DvfsActuator` applies a decision with ``nvmlDeviceSetGpuLockedClocks`` (and undoes it
with ``nvmlDeviceResetGpuLockedClocks``). Locking clocks needs root (or a driver setting
allowing it), changes the GPU for every process on it, and is therefore OFF unless BOTH
``DvfsActuator(enable=True)`` is passed AND the environment has ``LITHOS_DVFS_ACTUATE=1``.
Otherwise it only logs each decision (and keeps them in ``decisions``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from typing import Any

from lithos_atom.settings import read_variable

log = logging.getLogger("lithos_sched.dvfs")

#: Environment variable that must be "1" (with ``enable=True``) for the actuator to act.
ACTUATE_ENV = "LITHOS_DVFS_ACTUATE"


def h100_sm_clocks_mhz() -> list[int]:
    """The H100's 110 supported SM clocks, 345-1980 MHz in 15 MHz steps (docs/design.md);
    used where NVML cannot be asked (CPU machines, tests)."""
    return list(range(345, 1981, 15))


def compute_share(elasticity: float | None, bandwidth_fraction: float | None) -> float:
    """Share of a kernel's time bound by the SMs (``c`` of the time model), in [0, 1].

    Parameters
    ----------
    elasticity : float or None
        The scaling profile's elasticity at the full device (None: unknown).
    bandwidth_fraction : float or None
        Achieved DRAM bandwidth over the peak (None: unknown).

    Returns
    -------
    float
        The larger of ``elasticity`` and ``1 - bandwidth_fraction``; 1 when the bandwidth
        is unknown: only a kernel seen near peak DRAM bandwidth is evidence of time spent
        waiting on memory (a small grid that no more SMs speed up still stretches with
        the clock).
    """
    if elasticity is not None and not math.isfinite(elasticity):
        raise ValueError(f"elasticity must be finite, got {elasticity!r}")
    if bandwidth_fraction is None:
        return 1.0
    if not math.isfinite(bandwidth_fraction) or bandwidth_fraction < 0:
        raise ValueError(f"bandwidth_fraction must be a finite number >= 0, got {bandwidth_fraction!r}")
    share = 1.0 - min(1.0, bandwidth_fraction)
    if elasticity is not None:
        share = max(share, min(1.0, max(0.0, elasticity)))
    return share


def time_ratio(share: float, clock_mhz: float, default_mhz: float) -> float:
    """``t(f) / t0`` of the time model for compute share ``share`` at ``clock_mhz``."""
    if clock_mhz <= 0 or default_mhz <= 0:
        raise ValueError(f"clocks must be > 0, got {clock_mhz!r} and {default_mhz!r}")
    return share * default_mhz / clock_mhz + 1.0 - share


@dataclasses.dataclass(frozen=True)
class DvfsOptions:
    """Options of the clock policy.

    Attributes
    ----------
    slack : float
        Largest predicted slowdown accepted per kernel (0.05 = 5%).
    min_fraction : float
        Never below this fraction of the default clock (0 < min_fraction <= 1).
    """

    slack: float = 0.05
    min_fraction: float = 0.5

    def __post_init__(self) -> None:
        if isinstance(self.slack, bool) or not isinstance(self.slack, (int, float)) or not 0 <= self.slack < 10:
            raise ValueError(f"DvfsOptions.slack must be a number in [0, 10), got {self.slack!r}")
        if not isinstance(self.min_fraction, (int, float)) or not 0 < self.min_fraction <= 1:
            raise ValueError(f"DvfsOptions.min_fraction must be in (0, 1], got {self.min_fraction!r}")


@dataclasses.dataclass(frozen=True)
class ClockDecision:
    """The clock chosen for one kernel.

    Attributes
    ----------
    kernel : str
    clock_mhz : int
        Chosen SM clock.
    default_mhz : int
        The clock the kernel was measured running at (the time model's ``f0``).
    compute_share : float
        ``c`` of the time model.
    predicted_slowdown : float
        ``t(f) / t0 - 1`` at the chosen clock (modeled).
    """

    kernel: str
    clock_mhz: int
    default_mhz: int
    compute_share: float
    predicted_slowdown: float

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict; the slowdown is labeled modeled."""
        return {"kernel": self.kernel, "clock_mhz": self.clock_mhz, "default_mhz": self.default_mhz,
                "compute_share": self.compute_share, "predicted_slowdown_modeled": self.predicted_slowdown}


class DvfsPolicy:
    """Chooses each kernel's SM clock: the lowest supported whose modeled slowdown fits the slack.

    Parameters
    ----------
    clocks_mhz : sequence of int
        Supported SM clocks (NVML's ``nvmlDeviceGetSupportedGraphicsClocks``, read-only;
        `h100_sm_clocks_mhz` without a GPU).
    default_mhz : int
        The clock kernels run at unless told otherwise (and were measured at).
    options : DvfsOptions, optional
    """

    def __init__(self, clocks_mhz: Sequence[int], default_mhz: int, options: DvfsOptions | None = None):
        clocks = sorted({int(c) for c in clocks_mhz})
        if not clocks or clocks[0] <= 0:
            raise ValueError(f"clocks_mhz must hold positive clocks, got {list(clocks_mhz)!r}")
        if default_mhz <= 0:
            raise ValueError(f"default_mhz must be > 0, got {default_mhz!r}")
        self.clocks = clocks
        self.default_mhz = int(default_mhz)
        self.options = options or DvfsOptions()

    def decide(self, kernel: str, share: float, running_mhz: int | None = None) -> ClockDecision:
        """The clock for a kernel whose compute share (`compute_share`) is ``share``.

        Parameters
        ----------
        kernel : str
        share : float
            In [0, 1].
        running_mhz : int, optional
            The SM clock the kernel was seen running at (NVML, under load): below the
            default when the GPU holds its power limit (measured: 1740 MHz for fp16 GEMMs
            on the H100). The time model is relative to it; the default clock otherwise.
        """
        if not 0 <= share <= 1:
            raise ValueError(f"share must be in [0, 1], got {share!r}")
        f0 = int(running_mhz) if running_mhz else self.default_mhz
        if f0 <= 0:
            raise ValueError(f"running_mhz must be > 0, got {running_mhz!r}")
        floor = self.options.min_fraction * f0
        allowed = [c for c in self.clocks if floor <= c <= f0] or [f0]
        chosen = next((c for c in allowed if time_ratio(share, c, f0) - 1 <= self.options.slack + 1e-12), f0)
        return ClockDecision(kernel, chosen, f0, share, time_ratio(share, chosen, f0) - 1)


class DvfsActuator:
    """Applies clock decisions through NVML locked clocks; logs only unless enabled twice over.

    Parameters
    ----------
    enable : bool
        Must be True to act, AND ``LITHOS_DVFS_ACTUATE=1`` must be set. Locking clocks
        needs root (``nvmlDeviceSetGpuLockedClocks`` fails with NVML_ERROR_NO_PERMISSION
        otherwise) and affects every process on the GPU.
    device_index : int
        NVML index of the GPU.
    nvml : module, optional
        The NVML binding (``pynvml``); imported only when the actuator acts.

    Attributes
    ----------
    decisions : list of (ClockDecision, bool)
        Every decision given to `apply` and whether it was applied.
    """

    def __init__(self, enable: bool = False, device_index: int = 0, nvml: Any = None):
        self.requested = bool(enable)
        self.device_index = device_index
        self._nvml = nvml
        self._handle: Any = None
        self.decisions: list[tuple[ClockDecision, bool]] = []
        self._locked = False

    @property
    def active(self) -> bool:
        """Whether `apply` changes clocks: enabled in code AND by ``LITHOS_DVFS_ACTUATE=1``.

        Raises
        ------
        ValueError
            For a ``LITHOS_DVFS_ACTUATE`` other than 1, 0 or empty.
        """
        return self.requested and read_variable(ACTUATE_ENV)

    def _device(self) -> tuple[Any, Any]:
        if self._nvml is None:
            import pynvml

            self._nvml = pynvml
        if self._handle is None:
            self._nvml.nvmlInit()
            self._handle = self._nvml.nvmlDeviceGetHandleByIndex(self.device_index)
        return self._nvml, self._handle

    def apply(self, decision: ClockDecision) -> bool:
        """Lock the SM clock to the decision's, or only log it when not active.

        Returns
        -------
        bool
            True if clocks were changed.
        """
        if not self.active:
            log.info("DVFS (log only): %s -> %d MHz (modeled slowdown %.1f%%)", decision.kernel,
                     decision.clock_mhz, 100 * decision.predicted_slowdown)
            self.decisions.append((decision, False))
            return False
        nvml, handle = self._device()
        nvml.nvmlDeviceSetGpuLockedClocks(handle, decision.clock_mhz, decision.clock_mhz)
        self._locked = True
        self.decisions.append((decision, True))
        log.info("DVFS: locked SM clock at %d MHz for %s", decision.clock_mhz, decision.kernel)
        return True

    def reset(self) -> bool:
        """Undo a lock this actuator made (nothing otherwise). Returns True if it reset."""
        if not (self._locked and self.active):
            return False
        nvml, handle = self._device()
        nvml.nvmlDeviceResetGpuLockedClocks(handle)
        self._locked = False
        return True
