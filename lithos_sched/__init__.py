"""lithos_sched: TPC partitions on green contexts (or a simulated device) and the scheduler.

Public names
------------
open_device
    A `GpuDevice` when a CUDA GPU is present, else a `SimDevice` (and a warning).
GpuDevice, SimDevice, SimKernel
    Devices that hand out TPC partitions.
Scheduler, Policy, Priority, TenantSpec, set_scheduler, using_scheduler
    The multi-tenant scheduler.
LatencyPredictor
    The online latency predictor.
"""

from __future__ import annotations

import warnings
from typing import Any

from lithos_sched.errors import LithosCudaError, PartitionError
from lithos_sched.predictor import LatencyPredictor
from lithos_sched.scheduler import (
    KernelFaultError,
    Policy,
    Scheduler,
    SchedulerClosedError,
    set_scheduler,
    using_scheduler,
)
from lithos_sched.sim_device import SimDevice, SimKernel
from lithos_sched.tenant import Priority, TenantConfigError, TenantSpec


def gpu_available() -> bool:
    """Whether a CUDA device can be opened (False on machines without a driver or GPU)."""
    try:
        from cuda.bindings import driver

        (err,) = driver.cuInit(0)
        if int(err) != 0:
            return False
        err, count = driver.cuDeviceGetCount()
        return int(err) == 0 and count > 0
    except Exception:  # no libcuda: a CPU-only machine
        return False


def open_device(simulate: bool | None = None, **kwargs: Any) -> Any:
    """Open the GPU, or the simulated device.

    Parameters
    ----------
    simulate : bool, optional
        True: always the simulated device; False: the GPU (fails without one); None:
        the GPU if there is one, else the simulated device with a warning.
    **kwargs
        ``device_id`` for the GPU; ``num_tpcs``, ``sms_per_tpc``, ``seed`` for the simulation.
    """
    if simulate is None:
        simulate = not gpu_available()
        if simulate:
            warnings.warn("lithos: no CUDA GPU found; using the SIMULATED device", RuntimeWarning, stacklevel=2)
    if simulate:
        return SimDevice(**{k: v for k, v in kwargs.items() if k in ("num_tpcs", "sms_per_tpc", "seed", "record_blocks")})
    from lithos_sched.gpu_device import GpuDevice

    return GpuDevice(**{k: v for k, v in kwargs.items() if k == "device_id"})


__all__ = [
    "KernelFaultError", "LatencyPredictor", "LithosCudaError", "PartitionError", "Policy", "Priority",
    "Scheduler", "SchedulerClosedError", "SimDevice", "SimKernel", "TenantConfigError", "TenantSpec",
    "gpu_available", "open_device", "set_scheduler", "using_scheduler",
]
