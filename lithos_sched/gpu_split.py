"""The one split of a GPU's SMs into TPC-sized groups, which every partition is built from.

``cuDevSmResourceSplitByCount`` with ``CU_DEV_SM_RESOURCE_SPLIT_IGNORE_SM_COSCHEDULING``
and groups of 2 SMs gives one group per TPC (66 on an H100); groups of different split
calls may overlap, so `split_for` makes the split once per process and device and keeps
it. Where the driver refuses the flag or gives bigger groups, `discover_units` takes the
finest split it offers and warns. `lithos_sched.gpu_device` builds green contexts from it.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import warnings
from typing import Any

from lithos_sched.errors import LithosCudaError, check

log = logging.getLogger("lithos_sched")

#: SMs of one TPC: the unit of a partition.
TPC_SMS = 2


def cuda_driver() -> Any:
    """The ``cuda.bindings`` driver module (imported late: CPU-only machines import this file)."""
    from cuda.bindings import driver

    return driver


@dataclasses.dataclass(frozen=True)
class _SplitAttempt:
    flags: int
    min_count: int
    label: str


# Finest first: TPCs (flag 1 = CU_DEV_SM_RESOURCE_SPLIT_IGNORE_SM_COSCHEDULING), then the
# driver's default, co-scheduling-aligned groups (8 SMs on the H100).
_ATTEMPTS = (
    _SplitAttempt(1, TPC_SMS, "TPC (ignore SM co-scheduling, 2 SMs)"),
    _SplitAttempt(0, TPC_SMS, "default (co-scheduling aligned)"),
)


@dataclasses.dataclass(frozen=True)
class Split:
    """The device's SM split, made once.

    Attributes
    ----------
    groups : tuple
        The ``CUdevResource`` groups, disjoint; group i is unit (TPC) i.
    sms_per_unit : int
        SMs per group (2: TPC granularity).
    flags : int
        The ``cuDevSmResourceSplitByCount`` flags that gave it.
    label : str
        Human-readable description.
    unused_sms : int
        SMs in no group (the split's remainder); no partition uses them.
    """

    groups: tuple[Any, ...]
    sms_per_unit: int
    flags: int
    label: str
    unused_sms: int


def discover_units(resource: Any, num_sms: int) -> Split:
    """Split the SM resource into the finest disjoint groups the driver offers.

    Parameters
    ----------
    resource : CUdevResource
        The device's SM resource (``cuDeviceGetDevResource``).
    num_sms : int
        SMs of the device.

    Returns
    -------
    Split

    Raises
    ------
    LithosCudaError
        When every attempt fails; names the last driver error.

    Warns
    -----
    RuntimeWarning
        When the finest split is coarser than a TPC.
    """
    driver = cuda_driver()
    best: Split | None = None
    failures: list[str] = []
    last_error: LithosCudaError | None = None
    for attempt in _ATTEMPTS:
        try:
            # n=0 asks only how many groups the split would make. The answer is a hint: if
            # the query fails or says nothing, ask for as many groups as could fit; the
            # driver makes what it can and says how many.
            err, _, asked, _ = driver.cuDevSmResourceSplitByCount(0, resource, attempt.flags, attempt.min_count)
            count = (int(asked) if int(err) == 0 else 0) or num_sms // attempt.min_count
            result, made, _ = check(
                driver.cuDevSmResourceSplitByCount(count, resource, attempt.flags, attempt.min_count),
                "cuDevSmResourceSplitByCount")
            groups = tuple(result)[: int(made)]
        except LithosCudaError as exc:
            last_error = exc
            failures.append(f"{attempt.label}: {exc.name}")
            continue
        sizes = sorted({int(g.sm.smCount) for g in groups})
        if len(sizes) != 1:
            failures.append(f"{attempt.label}: group sizes {sizes or 'none'}")
            continue
        split = Split(groups, sizes[0], attempt.flags, attempt.label, num_sms - sizes[0] * len(groups))
        if best is None or split.sms_per_unit < best.sms_per_unit:
            best = split
        if best.sms_per_unit <= TPC_SMS:
            break
    if best is None:
        detail = "; ".join(failures)
        if last_error is not None:
            raise LithosCudaError("cuDevSmResourceSplitByCount", last_error.code, f"{last_error.name} ({detail})")
        raise LithosCudaError("cuDevSmResourceSplitByCount", 0, f"no usable split ({detail})")
    if best.sms_per_unit != TPC_SMS:
        message = (f"lithos: the driver gives no TPC-granular split ({'; '.join(failures) or 'groups too big'}); "
                   f"partitions are made of {best.sms_per_unit}-SM units ({best.label}), "
                   f"{best.unused_sms} SMs unused")
        log.warning(message)
        warnings.warn(message, RuntimeWarning, stacklevel=3)
    return best


_splits: dict[int, Split] = {}
_splits_lock = threading.Lock()


def split_for(device_id: int, cu_device: Any) -> tuple[Split, int]:
    """The process's one split of ``device_id`` (made on first use) and the SM count."""
    driver = cuda_driver()
    resource = check(driver.cuDeviceGetDevResource(cu_device, driver.CUdevResourceType.CU_DEV_RESOURCE_TYPE_SM),
                     "cuDeviceGetDevResource")
    num_sms = int(resource.sm.smCount)
    with _splits_lock:
        if device_id not in _splits:
            _splits[device_id] = discover_units(resource, num_sms)
        return _splits[device_id], num_sms
