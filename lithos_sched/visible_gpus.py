"""Which simulated GPUs a process sees, and which physical GPU each visible index is.

CUDA numbers the GPUs a process may use 0..n-1 after ``CUDA_VISIBLE_DEVICES`` selects
them. lithos keys a GPU's ledger (`lithos_sched.ledger`) by the physical GPU, so that
processes seeing it under different indices (Ray gives every actor its own
``CUDA_VISIBLE_DEVICES``) share one ledger. On a GPU the identity is the device's UUID
(`GpuDevice.uuid`), which the driver reports after the selection.

The simulated device stands for a machine of ``LITHOS_SIM_GPUS`` GPUs (1 by default), and
``CUDA_VISIBLE_DEVICES`` selects among them as CUDA does, so simulated processes pair up
as GPU processes would: its integer entries, up to the first that is not one, are the
visible GPUs (without ``LITHOS_SIM_GPUS`` any integer names a simulated GPU). Where it
names none (unset, empty as on CPU-only CI, or UUIDs), every simulated GPU is visible.
"""

from __future__ import annotations

import os

from lithos_atom.settings import read_variable

#: Environment variable: how many GPUs the simulated machine has.
SIM_GPUS_ENV = "LITHOS_SIM_GPUS"


def visible_sim_gpus() -> list[int]:
    """The physical ids of the simulated GPUs this process sees, in visible order.

    Raises
    ------
    ValueError
        For a ``LITHOS_SIM_GPUS`` that is not an int >= 1.
    """
    count = read_variable(SIM_GPUS_ENV)
    ids: list[int] = []
    for item in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(","):
        item = item.strip()
        if not item.isdigit() or (count is not None and int(item) >= count) or int(item) in ids:
            break  # CUDA ignores an invalid entry and everything after it
        ids.append(int(item))
    return ids or list(range(count or 1))


def sim_uuid(physical: int) -> str:
    """The identity of simulated GPU ``physical``, in the place of a GPU's UUID."""
    return f"SIM-{physical}"
