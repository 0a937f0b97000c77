"""lithos_sched: TPC partitions on green contexts (or a simulated device) and the scheduler.

Public names
------------
open_device
    A `GpuDevice` when a CUDA GPU is present, else a `SimDevice` (with a warning).
GpuDevice, SimDevice, SimKernel, BlockRecord
    Devices that hand out TPC partitions; the simulator's kernel model and block records.
Device, Partition, Stream, Event
    The interface both devices implement (`lithos_sched.device_api`).
LithosCudaError, PartitionError
    A failed driver call (with the driver's error name); a bad partition request.
Scheduler, Policy, Priority, TenantSpec, set_scheduler, using_scheduler
    The multi-tenant scheduler.
LatencyPredictor
    The online latency predictor.

Everything imports on a machine without a GPU; GPU libraries are imported when a
`GpuDevice` is opened.
"""

from __future__ import annotations

import inspect
import logging
import warnings
from typing import Any

from lithos_sched.device_api import Device, Event, Partition, Stream
from lithos_sched.errors import LithosCudaError, PartitionError
from lithos_sched.gpu_device import GpuDevice
from lithos_sched.policy import Policy
from lithos_sched.predictor import LatencyPredictor
from lithos_sched.scheduler import (
    KernelFaultError,
    Scheduler,
    SchedulerClosedError,
    set_scheduler,
    using_scheduler,
)
from lithos_sched.sim_device import BlockRecord, SimDevice, SimKernel
from lithos_sched.tenant import Priority, TenantConfigError, TenantSpec

log = logging.getLogger("lithos_sched")


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


def _keywords(cls: type) -> set[str]:
    return {name for name in inspect.signature(cls).parameters if name != "self"}


def open_device(simulate: bool | None = None, **kwargs: Any) -> GpuDevice | SimDevice:
    """Open the GPU, or the simulated device.

    Parameters
    ----------
    simulate : bool, optional
        True: always the simulated device; False: the GPU (fails without one); None:
        the GPU if there is one, else the simulated device, with a logged warning and a
        ``RuntimeWarning``.
    **kwargs
        Options of the device opened: ``device_id``, ``max_idle_contexts`` for the GPU;
        ``num_tpcs``, ``sms_per_tpc``, ``seed``, ``name``, ``record_blocks`` for the
        simulation. Options of the other kind of device are ignored (so a caller can pass
        ``seed`` either way).

    Returns
    -------
    GpuDevice or SimDevice
        Its ``simulated`` attribute says which.

    Raises
    ------
    TypeError
        For an option neither device knows.
    """
    gpu_keys, sim_keys = _keywords(GpuDevice), _keywords(SimDevice)
    unknown = sorted(set(kwargs) - gpu_keys - sim_keys)
    if unknown:
        raise TypeError(f"open_device() got unknown options {unknown}; the GPU takes {sorted(gpu_keys)}, "
                        f"the simulator {sorted(sim_keys)}")
    if simulate is None:
        simulate = not gpu_available()
        if simulate:
            message = "lithos: no CUDA GPU found; using the SIMULATED device"
            log.warning(message)
            warnings.warn(message, RuntimeWarning, stacklevel=2)
    if simulate:
        return SimDevice(**{k: v for k, v in kwargs.items() if k in sim_keys})
    return GpuDevice(**{k: v for k, v in kwargs.items() if k in gpu_keys})


__all__ = [
    "BlockRecord", "Device", "Event", "GpuDevice", "KernelFaultError", "LatencyPredictor", "LithosCudaError",
    "Partition", "PartitionError", "Policy", "Priority", "Scheduler", "SchedulerClosedError", "SimDevice",
    "SimKernel", "Stream", "TenantConfigError", "TenantSpec", "gpu_available", "open_device", "set_scheduler",
    "using_scheduler",
]
