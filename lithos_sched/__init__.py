"""lithos_sched: TPC partitions on green contexts (or a simulated device) and the scheduler.

Public names
------------
open_device, device_count
    GPU ``i`` as a `GpuDevice` when a CUDA GPU is present, else a `SimDevice` (with a
    warning); how many GPUs the process sees.
GpuDevice, SimDevice, SimKernel, BlockRecord
    Devices that hand out TPC partitions; the simulator's kernel model and block records.
Device, Partition, Stream, Event
    The interface both devices implement (`lithos_sched.device_api`).
LithosCudaError, PartitionError
    A failed driver call (with the driver's error name); a bad partition request.
Scheduler, Policy, Priority, TenantSpec, set_scheduler, using_scheduler
    The multi-tenant scheduler.
KernelFaultError, SchedulerTimeoutError, SchedulerClosedError
    Work of a tenant failed on the device; a wait passed its bound; the scheduler is closed.
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
from lithos_sched.errors import LithosCudaError, PartitionError, check
from lithos_sched.faults import KernelFaultError, SchedulerTimeoutError
from lithos_sched.fields import is_int, require
from lithos_sched.gpu_device import GpuDevice
from lithos_sched.policy import Policy
from lithos_sched.predictor import LatencyPredictor
from lithos_sched.scheduler import (
    Scheduler,
    SchedulerClosedError,
    set_scheduler,
    using_scheduler,
)
from lithos_sched.sim_device import SimDevice
from lithos_sched.sim_kernel import BlockRecord, SimKernel
from lithos_sched.tenant import Priority, TenantConfigError, TenantSpec
from lithos_sched.visible_gpus import visible_sim_gpus

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
    return {name for name in inspect.signature(cls).parameters if name not in ("self", "device_id")}


def device_count(simulate: bool | None = None) -> int:
    """How many GPUs this process sees, as `open_device` numbers them.

    Parameters
    ----------
    simulate : bool, optional
        True: the simulated GPUs (`lithos_sched.visible_gpus`: ``LITHOS_SIM_GPUS``, 1 by
        default, selected by ``CUDA_VISIBLE_DEVICES``); False: the CUDA devices (0 without
        a driver); None: the CUDA devices if there are any, else the simulated ones.
    """
    if simulate is None:
        simulate = not gpu_available()
    if simulate:
        return len(visible_sim_gpus())
    if not gpu_available():
        return 0
    from cuda.bindings import driver

    return int(check(driver.cuDeviceGetCount(), "cuDeviceGetCount"))


def open_device(device_id: int = 0, *, simulate: bool | None = None, **kwargs: Any) -> GpuDevice | SimDevice:
    """Open GPU ``device_id``, or simulated GPU ``device_id``.

    Parameters
    ----------
    device_id : int
        The GPU's ordinal among those this process sees (``CUDA_VISIBLE_DEVICES`` applies;
        `device_count` says how many); every ordinal is a device of its own.
    simulate : bool, optional
        True: always the simulated device; False: the GPU (fails without one); None:
        the GPU if there is one, else the simulated device, with a logged warning and a
        ``RuntimeWarning``.
    **kwargs
        Options of the device opened: ``max_idle_contexts`` for the GPU; ``num_tpcs``,
        ``sms_per_tpc``, ``seed``, ``name``, ``record_blocks`` for the simulation. Options
        of the other kind of device are ignored (so a caller can pass ``seed`` either way).

    Returns
    -------
    GpuDevice or SimDevice
        Its ``simulated`` attribute says which; its ``uuid`` names the physical GPU.

    Raises
    ------
    TypeError
        For an option neither device knows.
    ValueError
        For a ``device_id`` that is not an int >= 0, a ``simulate`` that is not a bool or
        None, or an option of the wrong type (naming it).
    PartitionError
        For a ``device_id`` that is not one of the visible GPUs.
    """
    require(is_int(device_id) and device_id >= 0, "open_device: device_id", "an int >= 0", device_id)
    require(simulate is None or isinstance(simulate, bool), "open_device: simulate", "True, False or None", simulate)
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
        return SimDevice(device_id=int(device_id), **{k: v for k, v in kwargs.items() if k in sim_keys})
    return GpuDevice(int(device_id), **{k: v for k, v in kwargs.items() if k in gpu_keys})


__all__ = [
    "BlockRecord", "Device", "Event", "GpuDevice", "KernelFaultError", "LatencyPredictor", "LithosCudaError",
    "Partition", "PartitionError", "Policy", "Priority", "Scheduler", "SchedulerClosedError",
    "SchedulerTimeoutError", "SimDevice",
    "SimKernel", "Stream", "TenantConfigError", "TenantSpec", "device_count", "gpu_available", "open_device",
    "set_scheduler", "using_scheduler",
]
