"""Energy accounting from NVML's total-energy counter, and a power model for DVFS savings.

Measured
--------
`EnergyMeter` reads ``nvmlDeviceGetTotalEnergyConsumption`` (millijoules since the driver
loaded) and ``nvmlDeviceGetPowerUsage``. NVML reads cost ~1 ms and the counter advances
about every 100 ms (docs/design.md), so the meter is read around runs, never per kernel.
`EnergyMeter.mean_power_w` times a workload from one counter update to another, so a
window of a few hundred milliseconds gives the mean power within a few percent. Energy of
a run is split among tenants by their TPC-time (`attribute_energy`).

Modeled
-------
No clock is ever changed to measure (tests and benchmarks must not), so the energy at a
lower SM clock is MODELED. `PowerModel` is::

    P(f) = P_static + P_mem + P_sm(f0) * (f * V(f)^2) / (f0 * V(f0)^2)

with ``P_static`` the measured idle power, ``P_mem = beta * bandwidth`` the DRAM part
(the memory clock does not change), ``beta`` fitted by least squares over kernels'
measured power at the default clock ``f0``, ``P_sm`` the rest of each kernel's measured
power, and a voltage that falls linearly from ``V(f_max) = 1`` to ``V(f_min) = v_min``
(NVML does not report the H100's voltage; ``v_min`` is a stated assumption). A kernel's
modeled energy at ``f`` is ``P(f) * t(f)`` with ``t(f)`` from `lithos_sched.dvfs`.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

#: Label carried by every modeled figure.
MODELED = "modeled"


@dataclasses.dataclass(frozen=True)
class EnergyRun:
    """Measured energy of one run.

    Attributes
    ----------
    joules : float
    seconds : float
    """

    joules: float
    seconds: float

    @property
    def mean_watts(self) -> float:
        """Mean power over the run."""
        return self.joules / self.seconds if self.seconds > 0 else float("nan")

    def to_json(self) -> dict[str, float | str]:
        """JSON-ready dict, labeled measured."""
        return {"joules": self.joules, "seconds": self.seconds, "mean_watts": self.mean_watts, "source": "measured"}


class EnergyMeter:
    """NVML reads of one GPU's energy counter, power and clocks (never a setter).

    Parameters
    ----------
    device_index : int
        NVML index of the GPU.
    nvml : module, optional
        The NVML binding (``pynvml`` by default).
    """

    def __init__(self, device_index: int = 0, nvml: Any = None):
        if nvml is None:
            import pynvml as nvml
        self.nvml = nvml
        nvml.nvmlInit()
        self.handle = nvml.nvmlDeviceGetHandleByIndex(device_index)

    def energy_mj(self) -> int:
        """Total energy since the driver loaded, millijoules."""
        return int(self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle))

    def power_w(self) -> float:
        """Current power draw, watts."""
        return self.nvml.nvmlDeviceGetPowerUsage(self.handle) / 1000.0

    def sm_clock_mhz(self) -> int:
        """Current SM clock."""
        return int(self.nvml.nvmlDeviceGetClockInfo(self.handle, self.nvml.NVML_CLOCK_SM))

    def max_sm_clock_mhz(self) -> int:
        """Highest SM clock (the default boost the kernels run at)."""
        return int(self.nvml.nvmlDeviceGetMaxClockInfo(self.handle, self.nvml.NVML_CLOCK_SM))

    def supported_sm_clocks_mhz(self) -> list[int]:
        """Supported SM clocks at the highest memory clock (the one kernels run at)."""
        mem = max(self.nvml.nvmlDeviceGetSupportedMemoryClocks(self.handle))
        return sorted(int(c) for c in self.nvml.nvmlDeviceGetSupportedGraphicsClocks(self.handle, mem))

    def measure(self, run: Callable[[], Any]) -> EnergyRun:
        """Energy and wall time of ``run()`` (which must wait for its GPU work).

        The counter advances every ~100 ms: use runs of a second or more, or
        `mean_power_w` for steady power.
        """
        e0, t0 = self.energy_mj(), time.perf_counter()
        run()
        e1, t1 = self.energy_mj(), time.perf_counter()
        return EnergyRun((e1 - e0) / 1000.0, t1 - t0)

    def mean_power_w(self, step: Callable[[], Any], window_s: float = 0.4, max_s: float = 3.0) -> float:
        """Mean power while ``step`` keeps the GPU busy, from one counter update to another.

        Parameters
        ----------
        step : callable
            Queues some work and returns without waiting for much of it (it should wait
            on its own earlier work so a few milliseconds stay queued); ``lambda: time.sleep(0.005)``
            measures idle power.
        window_s : float
            Least time between the first and last counter update used.
        max_s : float
            Give up after this long (raises).

        Returns
        -------
        float
            Watts.
        """
        first: tuple[float, int] | None = None
        last = self.energy_mj()
        start = time.perf_counter()
        while True:
            step()
            now_e = self.energy_mj()
            now_t = time.perf_counter()
            if now_e != last:
                if first is None:
                    first = (now_t, now_e)
                elif now_t - first[0] >= window_s:
                    return (now_e - first[1]) / 1000.0 / (now_t - first[0])
                last = now_e
            if now_t - start > max_s:
                raise RuntimeError(f"the NVML energy counter did not advance twice {window_s} s apart within {max_s} s")


def attribute_energy(joules: float, tpc_ms: Mapping[str, float], capacity_tpc_ms: float | None = None
                     ) -> dict[str, float]:
    """Split a run's energy among tenants by their TPC-time.

    Parameters
    ----------
    joules : float
        Measured energy of the run (>= 0).
    tpc_ms : mapping
        Tenant -> TPC-milliseconds it used (the scheduler's ``stats()["tenants"][t]["tpc_ms"]``).
    capacity_tpc_ms : float, optional
        TPCs of the device times the run's wall time (ms). When given, TPC-time nobody
        used is a tenant of its own, ``"(idle)"``, so tenants are charged only for what
        they held; otherwise the whole energy is split among the tenants.

    Returns
    -------
    dict
        Tenant (and ``"(idle)"``) -> joules; the values sum to ``joules``.

    Raises
    ------
    ValueError
        For negative values, capacity below the TPC-time used, or nothing to split by.
    """
    if not math.isfinite(joules) or joules < 0:
        raise ValueError(f"joules must be a finite number >= 0, got {joules!r}")
    bad = {k: v for k, v in tpc_ms.items() if not math.isfinite(v) or v < 0}
    if bad:
        raise ValueError(f"tpc_ms must be finite and >= 0, got {bad}")
    used = float(sum(tpc_ms.values()))
    shares = dict(tpc_ms)
    if capacity_tpc_ms is not None:
        if capacity_tpc_ms < used * (1 - 1e-9):
            raise ValueError(f"capacity_tpc_ms ({capacity_tpc_ms}) is below the TPC-time used ({used})")
        shares["(idle)"] = max(0.0, capacity_tpc_ms - used)
    total = float(sum(shares.values()))
    if total <= 0:
        raise ValueError("no TPC-time to attribute energy by")
    return {k: joules * (v / total) for k, v in shares.items()}  # share first: no underflow for tiny TPC-times


def open_meter(device_index: int = 0) -> tuple[EnergyMeter | None, str | None]:
    """An `EnergyMeter`, or None and why NVML cannot be read here."""
    try:
        return EnergyMeter(device_index), None
    except Exception as exc:  # no NVML library, no driver, no such GPU: reported by the caller
        return None, f"NVML unavailable: {type(exc).__name__}: {exc}"


def tenant_energy(run: EnergyRun, before: Mapping[str, Mapping[str, Any]], after: Mapping[str, Mapping[str, Any]],
                  num_tpcs: int) -> dict[str, Any]:
    """A scheduler run's measured energy, split among its tenants by the TPC-time each used.

    Parameters
    ----------
    run : EnergyRun
        Energy and wall time measured around the run.
    before, after : mapping
        ``Scheduler.stats()["tenants"]`` taken just before and after the run.
    num_tpcs : int
        TPCs of the device: the TPC-time nobody used is charged to ``"(idle)"``.

    Returns
    -------
    dict
        The measured run, and joules per tenant (measured energy, attributed).
    """
    used = {t: max(0.0, after[t]["tpc_ms_estimated"] - before[t]["tpc_ms_estimated"]) for t in after}
    capacity = max(num_tpcs * run.seconds * 1000.0, sum(used.values()))
    return {"measured": run.to_json(), "by_tenant_j": attribute_energy(run.joules, used, capacity),
            "attribution": "measured energy split by TPC-time used during the run (tpc_ms_estimated)"}


@dataclasses.dataclass(frozen=True)
class PowerModel:
    """``P(f) = P_static + beta * bandwidth + P_sm(f0) * f V(f)^2 / (f0 V(f0)^2)`` (MODELED).

    Attributes
    ----------
    static_w : float
        Idle power, measured.
    beta_w_per_tbs : float
        DRAM power per TB/s of achieved bandwidth, fitted.
    default_mhz, min_mhz, max_mhz : float
        Default (measurement) clock and the supported range.
    v_min : float
        Assumed voltage at ``min_mhz`` relative to that at ``max_mhz``.
    """

    static_w: float
    beta_w_per_tbs: float
    default_mhz: float
    min_mhz: float
    max_mhz: float
    v_min: float = 0.7

    def voltage(self, mhz: float) -> float:
        """Relative voltage at ``mhz`` (the assumed linear curve)."""
        x = (mhz - self.min_mhz) / (self.max_mhz - self.min_mhz) if self.max_mhz > self.min_mhz else 1.0
        return self.v_min + (1.0 - self.v_min) * min(1.0, max(0.0, x))

    def split(self, busy_w: float, bandwidth_tbs: float) -> tuple[float, float]:
        """A kernel's measured power at the default clock as ``(P_mem, P_sm)``."""
        dynamic = max(0.0, busy_w - self.static_w)
        mem = min(dynamic, self.beta_w_per_tbs * bandwidth_tbs)
        return mem, dynamic - mem

    def kernel_energy_j(self, busy_w: float, bandwidth_tbs: float, seconds: float, mhz: float,
                        time_ratio: float, running_mhz: float | None = None) -> float:
        """Modeled energy of a kernel run at ``mhz`` that takes ``time_ratio`` times as long.

        DRAM energy per byte is kept (same bytes, spread over the longer time); static
        power is paid for the longer time; SM power scales with ``f V(f)^2`` from
        ``running_mhz``, the clock its power was measured at (``default_mhz`` if None).
        """
        mem, sm = self.split(busy_w, bandwidth_tbs)
        f0 = running_mhz or self.default_mhz
        scale = (mhz * self.voltage(mhz) ** 2) / (f0 * self.voltage(f0) ** 2)
        t = seconds * time_ratio
        return self.static_w * t + mem * seconds + sm * scale * t

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict with the model stated and labeled modeled."""
        return {**dataclasses.asdict(self), "source": MODELED,
                "form": "P(f) = P_static + beta*BW + P_sm(f0) * f*V(f)^2 / (f0*V(f0)^2), "
                        "V linear from v_min at min_mhz to 1 at max_mhz (assumed); "
                        "P_static = measured idle power; beta fitted to measured power at f0"}


def fit_power_model(static_w: float, busy_w: Sequence[float], bandwidth_tbs: Sequence[float],
                    sm_share: Sequence[float], default_mhz: float, min_mhz: float, max_mhz: float,
                    v_min: float = 0.7) -> PowerModel:
    """Fit ``beta`` of `PowerModel` to kernels' measured power at the default clock.

    Each kernel's dynamic power ``busy_w - static_w`` is regressed on two features,
    ``sm_share`` (its compute share, `lithos_sched.dvfs.compute_share`) and its achieved
    bandwidth, with non-negative coefficients; ``beta`` is the bandwidth coefficient.

    Parameters
    ----------
    static_w : float
        Measured idle power.
    busy_w, bandwidth_tbs, sm_share : sequences
        Per kernel: measured mean power at the default clock, achieved TB/s, compute share.
    default_mhz, min_mhz, max_mhz, v_min
        As `PowerModel`.

    Returns
    -------
    PowerModel

    Raises
    ------
    ValueError
        For mismatched lengths or no kernels.
    """
    p = np.asarray(busy_w, float) - static_w
    bw = np.asarray(bandwidth_tbs, float)
    c = np.asarray(sm_share, float)
    if not (p.shape == bw.shape == c.shape) or p.size == 0:
        raise ValueError(f"busy_w, bandwidth_tbs and sm_share need one value per kernel, got "
                         f"{p.size}, {bw.size}, {c.size}")
    x = np.column_stack([c, bw])
    coef, *_ = np.linalg.lstsq(x, p, rcond=None)
    if coef[1] < 0:
        beta = 0.0  # power does not rise with bandwidth: keep all dynamic power clock-dependent
    elif coef[0] < 0:
        beta = max(0.0, float(bw @ p) / float(bw @ bw)) if float(bw @ bw) > 0 else 0.0  # bandwidth alone
    else:
        beta = float(coef[1])
    return PowerModel(float(static_w), beta, float(default_mhz), float(min_mhz), float(max_mhz), v_min)
