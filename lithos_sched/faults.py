"""Device faults and the scheduler's bounded waits: how a wait ends when its work cannot.

A kernel that traps or reads out of bounds leaves a *sticky* error: the driver refuses
every later call of the process's CUDA context, whichever tenant makes it, and cannot say
which kernel faulted (docs/faults.md). The first wait or launch of the scheduler to meet
such an error raises `KernelFaultError` naming the tenant whose work it was and records
it as the scheduler's ``fault``; from then on every launch, request and wait of every
tenant of that scheduler raises at once, naming the first fault, instead of calling into
a context that is gone.

Every wait of the scheduler for device work has a bound, `Policy.wait_timeout_s`: past
it the wait raises `SchedulerTimeoutError` naming the tenant. The driver has no timed
wait, so on the GPU a bounded wait polls its event (`lithos_sched.timeline.CupyTimeline`);
a latency-critical tenant's waits stay in the driver: its streams wait on no gate and on
no other tenant's work, so they end, or fail with the driver's error.

`DeviceWaits` is a part of `Scheduler`, in a file of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from lithos_sched.tenant import Priority

if TYPE_CHECKING:
    from lithos_sched.accounting import AtomRecord
    from lithos_sched.tenant_runtime import Tenant

#: CUDA errors after which the context is lost (the driver's and the runtime's codes agree).
STICKY_ERRORS = {
    214: "ECC_UNCORRECTABLE", 700: "ILLEGAL_ADDRESS", 702: "LAUNCH_TIMEOUT", 710: "ASSERT",
    714: "HARDWARE_STACK_ERROR", 715: "ILLEGAL_INSTRUCTION", 716: "MISALIGNED_ADDRESS",
    717: "INVALID_ADDRESS_SPACE", 718: "INVALID_PC", 719: "LAUNCH_FAILED", 810: "MPS_CLIENT_TERMINATED",
}
# The exception types of the CUDA libraries lithos calls: its own, CuPy's and Numba's.
_CUDA_ERRORS = ("CUDARuntimeError", "CUDADriverError", "CUDAError", "LithosCudaError", "CudaAPIError")


class KernelFaultError(RuntimeError):
    """Work of a tenant failed on the device; the message names the tenant and what failed.

    Attributes
    ----------
    tenant : str
        The tenant whose work (or launch, or wait) met the error.
    sticky : bool
        Whether the CUDA context is lost (`STICKY_ERRORS`): every tenant of the process
        has lost its device work, and the scheduler refuses any more.
    """

    def __init__(self, message: str, tenant: str, sticky: bool):
        super().__init__(message)
        self.tenant = tenant
        self.sticky = sticky


class SchedulerTimeoutError(TimeoutError):
    """A wait of the scheduler passed `Policy.wait_timeout_s`; the message names the tenant.

    Attributes
    ----------
    tenant : str
    """

    def __init__(self, message: str, tenant: str):
        super().__init__(message)
        self.tenant = tenant


def cuda_error_code(exc: BaseException) -> int | None:
    """The CUDA error code of an exception of a CUDA library (`LithosCudaError`, CuPy's
    ``CUDARuntimeError``/``CUDADriverError``, Numba's ``CudaAPIError``), else None."""
    if type(exc).__name__ not in _CUDA_ERRORS:
        return None
    for attribute in ("code", "status"):
        value = getattr(exc, attribute, None)
        if isinstance(value, int):
            return value
    return -1  # a CUDA error that does not say its code


def is_sticky(exc: BaseException) -> bool:
    """Whether ``exc`` is a CUDA error after which the context is lost."""
    return cuda_error_code(exc) in STICKY_ERRORS


class DeviceWaits:
    """`Scheduler`'s waits for device work and its record of a fault (a mixin of `Scheduler`)."""

    _fault: KernelFaultError | None

    @property
    def fault(self) -> KernelFaultError | None:
        """The first fault that lost this scheduler's CUDA context, or None."""
        return self._fault

    def _wait_event(self, rec: AtomRecord, stop: Callable[[], bool] | None = None,
                    deadline_us: float | None = None) -> bool:
        return self._wait(rec.tenant, rec.end, f"kernel {rec.key.name!r} (atom blocks {rec.start_block}.."
                                               f"{rec.start_block + rec.count - 1})", stop, deadline_us)

    def _wait_busy(self, tenant: Tenant, event: Any) -> None:
        self._wait(tenant, event, "the work queued on its stream")

    def _wait(self, tenant: Tenant, event: Any, what: str, stop: Callable[[], bool] | None = None,
              deadline_us: float | None = None) -> bool:
        """Wait for ``event`` of ``tenant`` (``what`` it ends, for messages), or until
        ``stop()`` (asked every `Policy.steal_poll_us`) or host time ``deadline_us``;
        returns whether ``event`` completed.

        Without ``stop``, a wait with a deadline is one sleep: polling the event would take
        the GIL again and again, which a latency-critical thread of the same process may be
        waiting for; an atom that ends before the deadline leaves its TPCs idle for at most
        the predictor's error.

        Raises
        ------
        KernelFaultError
            When the driver reports an error (after a fault: sticky, recorded).
        SchedulerTimeoutError
            When the wait passes `Policy.wait_timeout_s`.
        """
        self._refuse_after_fault(tenant)
        bound_us = self._wait_bound_us(tenant)
        poll_us = self.policy.steal_poll_us if stop is not None else 0.0
        try:
            if bound_us is None:
                return self.timeline.wait_until(event, stop, poll_us, deadline_us)
            return self.timeline.wait_until(event, stop, poll_us, deadline_us, timeout_us=bound_us)
        except TimeoutError:
            raise SchedulerTimeoutError(
                f"tenant {tenant.name!r} waited {bound_us / 1e6:g} s for {what} (Policy.wait_timeout_s): "
                "it never finished (a kernel that does not end, or a gate nobody opens)", tenant.name) from None
        except Exception as exc:
            if cuda_error_code(exc) is None:
                raise
            raise self._device_error(tenant, f"{what} failed on the device", exc) from exc

    def _wait_bound_us(self, tenant: Tenant) -> float | None:
        """The bound of a wait for ``tenant``'s work, or None (the driver's wait, unbounded):
        see `Policy.wait_timeout_s`."""
        bound_s = self.policy.wait_timeout_s
        if bound_s is None or (not self.device.simulated and tenant.priority is Priority.LATENCY_CRITICAL):
            return None
        return bound_s * 1e6

    def _device_error(self, tenant: Tenant, what: str, exc: BaseException) -> KernelFaultError:
        """The error ``tenant`` gets for a CUDA error ``exc`` met while ``what``; a sticky
        one becomes the scheduler's fault (the first only)."""
        sticky = is_sticky(exc)
        message = f"tenant {tenant.name!r}: {what}: {exc}"
        if sticky:
            message += ("; the CUDA context is lost for every tenant of this process, and the fault may be any of "
                        "their kernels': restart the process (tenants that must survive a fault of another run in "
                        "processes of their own, docs/faults.md)")
        error = KernelFaultError(message, tenant.name, sticky)
        if sticky and self._fault is None:
            self._fault = error
        return error

    def _refuse_after_fault(self, tenant: Tenant | None) -> None:
        """Raise, naming ``tenant`` and the first fault, once the context is lost."""
        first = self._fault
        if first is not None:
            who = f"tenant {tenant.name!r}" if tenant is not None else "the scheduler"
            raise KernelFaultError(f"{who}: the CUDA context was lost to an earlier fault ({first.args[0]})",
                                   tenant.name if tenant is not None else first.tenant, True)
