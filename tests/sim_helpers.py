"""Test helpers for driving tenants on the simulated device from one thread, in virtual time."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest

from lithos_atom.errors import LithosCudaError
from lithos_atom.plan import KernelKey, LaunchPlan
from lithos_sched import tenant_runtime
from lithos_sched.timeline import CupyTimeline, SimTimeline


def sim_plan(device: Any, kernel: Any) -> LaunchPlan:
    """A `LaunchPlan` that launches block ranges of a `SimKernel` on simulated streams."""
    key = KernelKey(kernel.name, (kernel.grid_blocks, 1, 1), (256, 1, 1), 0)
    return LaunchPlan.build(key, kernel.grid_blocks, kernel.grid_blocks,
                            lambda start, count, stream: stream.launch(kernel, start, count),
                            wave_blocks=kernel.blocks_per_sm * device.num_sms)


@contextlib.contextmanager
def bound(tenant: Any) -> Iterator[Any]:
    """Bind the calling thread to ``tenant`` as ``with tenant:`` does, without CuPy or
    Numba, and restore its previous binding after (a virtual-time callback plays a
    tenant's thread inside another tenant's wait)."""
    saved = getattr(tenant_runtime._current, "tenant", None)
    tenant_runtime._current.tenant = tenant
    try:
        yield tenant
    finally:
        tenant_runtime._current.tenant = saved


class FaultyTimeline(SimTimeline):
    """A simulated timeline whose context is lost once `fault` is called: every later
    call raises the driver's sticky error, as on a GPU after a kernel trapped."""

    def __init__(self, device: Any, code: int = 700, name: str = "CUDA_ERROR_ILLEGAL_ADDRESS") -> None:
        super().__init__(device)
        self.code, self.name = code, name
        self.lost = False

    def fault(self) -> None:
        """Lose the context from now on."""
        self.lost = True

    def _check(self, call: str) -> None:
        if self.lost:
            raise LithosCudaError(call, self.code, self.name)

    def record(self, stream: Any, blocking: bool = False) -> Any:
        self._check("cuEventRecord")
        return super().record(stream, blocking)

    def wait(self, stream: Any, event: Any) -> None:
        self._check("cuStreamWaitEvent")
        super().wait(stream, event)

    def done(self, event: Any) -> bool:
        self._check("cuEventQuery")
        return super().done(event)

    def stream_done(self, stream: Any) -> bool:
        self._check("cuStreamQuery")
        return super().stream_done(stream)

    def wait_until(self, event: Any, stop: Any, poll_us: float, deadline_us: float | None = None,
                   timeout_us: float | None = None) -> bool:
        def lost_or_stop() -> bool:  # asked after every step: a fault mid-wait ends it
            self._check("cuEventQuery")
            return stop is not None and stop()

        self._check("cuEventQuery")
        return super().wait_until(event, lost_or_stop, poll_us, deadline_us, timeout_us)

    def write_gate(self, stream: Any, gate: Any, value: int) -> None:
        self._check("cuStreamWriteValue32")
        super().write_gate(stream, gate, value)

    def wait_gate(self, stream: Any, gate: Any) -> None:
        self._check("cuStreamWaitValue64")
        super().wait_gate(stream, gate)


class ClockTimeline(CupyTimeline):
    """`CupyTimeline`'s polling loop on a fake clock, without CuPy: sleeping advances the
    clock (each pause is kept in ``sleeps_us``), and the event completes at ``done_at_us``."""

    def __init__(self, done_at_us: float, monkeypatch: pytest.MonkeyPatch) -> None:
        self.clock_us, self.done_at_us = 0.0, done_at_us
        self.sleeps_us: list[float] = []

        def sleep(seconds: float) -> None:
            self.sleeps_us.append(seconds * 1e6)
            self.clock_us += seconds * 1e6

        monkeypatch.setattr("lithos_sched.timeline.time.sleep", sleep)

    def now_us(self) -> float:
        return self.clock_us

    def done(self, event: object) -> bool:
        return self.clock_us >= self.done_at_us

    def synchronize(self, event: object) -> None:
        raise AssertionError("a bounded wait never blocks in the driver")
