"""lithos: an operating-system layer for machine learning on shared NVIDIA GPUs.

``import lithos`` gives the whole user API; nothing here touches a GPU until a kernel
launches or a device opens, so it imports on any machine.

Kernels as atoms (`lithos_atom`)
    atomize, atomize_module_function
        Wrap one CuPy or Numba kernel: it keeps its call syntax, runs as block-range atoms.
    Atomizer, AtomizeOptions, set_atomizer, using_atomizer, get_atomizer
        The opt-in for unchanged code, process-wide or per thread.
    AtomizeError, UnsupportedKernelError, AtomizeWarning
        What a kernel that cannot be split raises or warns.
Tenants sharing one GPU (`lithos_sched`)
    open_device, device_count, gpu_available
        A GPU, or the simulated device where there is none.
    Scheduler, Policy, TenantSpec, Priority, set_scheduler, using_scheduler
        The tenants, their priorities and TPCs, and the scheduler that runs them.
    RequestSignal, RightSizer
        A latency-critical process's requests, published to other processes; running
        latency-critical kernels on fewer TPCs.
    TenantConfigError, SchedulerClosedError, KernelFaultError, PartitionError, LithosCudaError
        The scheduler's and the device's errors.
Processes as tenants (`lithos.membership`)
    join, leave, joined, tenant, Membership
        Make this process a tenant of a GPU other processes share, in one line.
    TPCsUnavailableError, TenantOutOfMemoryError
        No TPCs left to claim; a tenant over its memory limit.

``lithos.ray`` (imported on its own; needs Ray) runs Ray actors as tenants.

Where to read next: the front end, `lithos_atom.api` (``atomize``) and
`lithos_atom.atomizer` (what every intercepted launch goes through); then the scheduler,
`lithos_sched.scheduler`; then the partition, `lithos_sched.device_api`.
"""

from lithos.membership import Membership, join, joined, leave, tenant
from lithos_atom import (
    AtomizeError,
    AtomizeOptions,
    Atomizer,
    AtomizeWarning,
    UnsupportedKernelError,
    atomize,
    atomize_module_function,
    get_atomizer,
    set_atomizer,
    using_atomizer,
)
from lithos_sched import (
    KernelFaultError,
    LithosCudaError,
    PartitionError,
    Policy,
    Priority,
    Scheduler,
    SchedulerClosedError,
    TenantConfigError,
    TenantSpec,
    device_count,
    gpu_available,
    open_device,
    set_scheduler,
    using_scheduler,
)
from lithos_sched.ledger import TPCsUnavailableError
from lithos_sched.memory_limit import TenantOutOfMemoryError
from lithos_sched.request_signal import RequestSignal
from lithos_sched.rightsizing import RightSizer

__all__ = [
    "AtomizeError",
    "AtomizeOptions",
    "AtomizeWarning",
    "Atomizer",
    "KernelFaultError",
    "LithosCudaError",
    "Membership",
    "PartitionError",
    "Policy",
    "Priority",
    "RequestSignal",
    "RightSizer",
    "Scheduler",
    "SchedulerClosedError",
    "TPCsUnavailableError",
    "TenantConfigError",
    "TenantOutOfMemoryError",
    "TenantSpec",
    "UnsupportedKernelError",
    "atomize",
    "atomize_module_function",
    "device_count",
    "get_atomizer",
    "gpu_available",
    "join",
    "joined",
    "leave",
    "open_device",
    "set_atomizer",
    "set_scheduler",
    "tenant",
    "using_atomizer",
    "using_scheduler",
]
