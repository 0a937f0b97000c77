"""Events and cross-stream ordering for the scheduler, on the GPU or the simulated device.

The scheduler records events around atoms, makes streams wait on events, polls them and
reads elapsed times. On the GPU these are driver events of the primary context, which
order work across the primary context and green contexts both ways (docs/design.md), made
through `lithos_atom.driver_calls` (a latency-critical thread keeps the GIL in every call
but the blocking wait). User streams may be CuPy streams, Numba/cuda.core streams or
anything with ``__cuda_stream__``. On the simulated device the device's own streams and
events are used, in virtual time.

The scheduler runs one code path on both; what differs between them is here, in the
`Timeline` of the device (`timeline_for`): virtual time (`Timeline.virtual`), how a stream
becomes a thread's current one, and how a launch on the default stream is ordered.
"""

from __future__ import annotations

import contextlib
import heapq
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, Protocol

from lithos_atom import driver_calls
from lithos_sched.gates import WAIT_MASK, Gate, GateMemory
from lithos_sched.sim_kernel import SimEvent

#: Pauses of a bounded GPU wait asked for no poll: a quarter of the time waited so far, from
#: the first to the second (us), so a long wait takes the GIL back a few times per ms at most.
_BOUNDED_PAUSE_US = (50.0, 1000.0)


class Timeline(Protocol):
    """What the scheduler needs from streams and events.

    Attributes
    ----------
    virtual : bool
        Whether host time is the device's virtual time (the simulated device). Host work
        then costs no time and every tenant is driven from one thread, so the scheduler
        saves no host time (it times and retires every latency-critical launch, not one in
        `Policy.lc_timing_every`), holds or yields no thread for another's GIL, and its
        gate keeper runs on the timeline's timers (`call_at`) instead of a thread.
    """

    virtual: bool

    def record(self, stream: Any, blocking: bool = False) -> Any:
        """Record an event on ``stream`` and return it; with ``blocking``, a thread waiting
        for it (`synchronize`) sleeps until it completes instead of spinning (GPU)."""

    def origin(self) -> Any:
        """An event complete from now on: a clock origin for `elapsed_us` (recorded on no
        stream another scheduler's work could hold back)."""

    def wait(self, stream: Any, event: Any) -> None:
        """Make ``stream`` wait for ``event``."""

    def done(self, event: Any) -> bool:
        """Whether ``event`` has completed (never blocks)."""

    def stream_done(self, stream: Any) -> bool:
        """Whether all work queued on ``stream`` has completed (never blocks)."""

    def synchronize(self, event: Any) -> None:
        """Block until ``event`` completes (the GIL is released on the GPU)."""

    def wait_until(self, event: Any, stop: Callable[[], bool] | None, poll_us: float,
                   deadline_us: float | None = None, timeout_us: float | None = None) -> bool:
        """Block until ``event`` completes, ``stop()`` is true or host time reaches
        ``deadline_us`` (`now_us`), checking about every ``poll_us`` (on the simulated
        device, after each step of virtual time); returns whether ``event`` completed.
        With ``poll_us`` 0 nothing is checked between the start and the deadline: one
        sleep, or, without a deadline, `synchronize`. With ``timeout_us``, raises
        ``TimeoutError`` once that long passed first (the event is then polled even
        without ``poll_us``)."""

    def elapsed_us(self, start: Any, end: Any) -> float:
        """Device time between two completed events, in microseconds."""

    def handle(self, stream: Any) -> int:
        """A number identifying ``stream`` (0 for the legacy default stream)."""

    def now_us(self) -> float:
        """Host time in microseconds (virtual time on the simulated device)."""

    def prepare_gates(self, memory: GateMemory) -> None:
        """Make ``memory``'s gate words usable by this device's streams; raises (with
        the reason) where the device cannot wait on or write them."""

    def write_gate(self, stream: Any, gate: Gate, value: int) -> None:
        """Write ``value`` to ``gate`` once the work queued so far on ``stream`` is done."""

    def wait_gate(self, stream: Any, gate: Gate) -> None:
        """Make later work of ``stream`` wait until ``gate`` is open or forced."""

    def store_gate(self, gate: Gate, value: int) -> None:
        """Store ``value`` to ``gate``'s open word from the host, now (unordered with any stream)."""

    def force_gate(self, gate: Gate, on: bool) -> None:
        """Set or clear ``gate``'s forced word from the host, now."""

    def is_capturing(self, stream: Any) -> bool:
        """Whether ``stream`` is capturing a CUDA graph (never on the simulated device)."""

    def marker(self) -> Any:
        """A reusable event for `record_into`, complete until first recorded."""

    def record_into(self, event: Any, stream: Any) -> None:
        """Record ``event`` (a `marker`) again on ``stream``: it completes when the work
        queued so far does (no event is made, so a hot path allocates nothing)."""

    def use(self, stream: Any) -> AbstractContextManager[Any]:
        """A context manager that makes ``stream`` the calling thread's current stream
        (CuPy's, on the GPU, so CuPy's own ops and cuBLAS run on it; nothing to set on the
        simulated device)."""

    def as_cupy(self, stream: Any) -> Any:
        """``stream`` as a graph's ``launch`` takes it: a ``cupy.cuda.Stream`` on the GPU,
        the simulated stream itself on the simulated device."""

    def thread_stream(self, stream: Any) -> Any:
        """The stream that orders a launch a thread bound to no tenant made on ``stream``:
        on the GPU, for the default stream (handle 0), the legacy default stream by its
        explicit handle (`LEGACY_STREAM`: handle 0 would mean the tenant's own stream,
        unordered with the thread's work); otherwise ``stream``."""

    def call_at(self, t_us: float, fn: Callable[[], None]) -> None:
        """Run ``fn`` when host time reaches ``t_us`` (`virtual` timelines only: a GPU
        timeline raises ``NotImplementedError``, its gate keeper has a thread)."""


class _LegacyStream:
    """The legacy default stream by its explicit handle, ``CU_STREAM_LEGACY`` (1): the
    scheduler orders a launch with it as with any user stream (events both ways)."""

    def __cuda_stream__(self) -> tuple[int, int]:
        return (0, 1)


#: The stream `Timeline.thread_stream` orders an unbound thread's default-stream launches with.
LEGACY_STREAM = _LegacyStream()


def timeline_for(device: Any) -> Timeline:
    """The `Timeline` of ``device``: virtual time on the simulated device, driver events on
    the GPU."""
    return SimTimeline(device) if device.simulated else CupyTimeline()


class DeviceEvent:
    """A driver event of the primary context, made, queried and destroyed through
    `lithos_atom.driver_calls`.

    Parameters
    ----------
    flags : int
        ``cuEventCreate`` flags.

    Attributes
    ----------
    ptr : int
        The ``CUevent`` handle.
    """

    __slots__ = ("ptr",)

    def __init__(self, flags: int) -> None:
        self.ptr = 0  # `__del__` runs even when the creation below raises
        self.ptr = driver_calls.in_cupy_context(driver_calls.event_create, flags)

    def __del__(self) -> None:
        if self.ptr and not sys.is_finalizing():  # at exit the driver may be gone first
            driver_calls.event_destroy(self.ptr)


class CupyTimeline:
    """`Timeline` on the GPU: driver events (`DeviceEvent`) and CuPy stream wrappers.

    Making, recording, querying and timing events and making a stream wait on one go
    through `lithos_atom.driver_calls`: they are on the launch paths and never block, so
    a latency-critical thread keeps the GIL in them. `synchronize` always releases it.

    Events are blocking-sync only where `record` is asked for it: each one makes the
    driver take an interrupt when the GPU reaches it.
    """

    virtual = False

    def __init__(self) -> None:
        import cupy

        self._cupy = cupy
        self._origin_stream: Any = None

    def now_us(self) -> float:
        return time.perf_counter() * 1e6

    def as_cupy(self, stream: Any) -> Any:
        from lithos_atom.atomizer import as_cupy_stream

        return as_cupy_stream(stream)

    def use(self, stream: Any) -> AbstractContextManager[Any]:
        return self.as_cupy(stream)  # a CuPy stream is current inside its ``with`` block

    def thread_stream(self, stream: Any) -> Any:
        return LEGACY_STREAM if self.handle(stream) == 0 else stream

    def call_at(self, t_us: float, fn: Callable[[], None]) -> None:
        raise NotImplementedError("the GPU's host time is real: its gate keeper runs a thread")

    def record(self, stream: Any, blocking: bool = False) -> Any:
        event = DeviceEvent(driver_calls.EVENT_BLOCKING_SYNC if blocking else driver_calls.EVENT_DEFAULT)
        driver_calls.event_record(event.ptr, self.as_cupy(stream).ptr)
        return event

    def origin(self) -> Any:
        event = DeviceEvent(driver_calls.EVENT_DEFAULT)
        if self._origin_stream is None:
            self._origin_stream = self._cupy.cuda.Stream(non_blocking=True)  # never given work
        driver_calls.event_record(event.ptr, self._origin_stream.ptr)
        return event

    def marker(self) -> Any:
        """A reusable event without timing. It is polled, not waited on in the hot path,
        so it is not a blocking-sync event (those make the driver take an interrupt at
        completion)."""
        return DeviceEvent(driver_calls.EVENT_DISABLE_TIMING)

    def record_into(self, event: Any, stream: Any) -> None:
        driver_calls.event_record(event.ptr, self.as_cupy(stream).ptr)

    def wait(self, stream: Any, event: Any) -> None:
        driver_calls.stream_wait_event(self.as_cupy(stream).ptr, event.ptr)

    def done(self, event: Any) -> bool:
        return driver_calls.event_query(event.ptr)

    def stream_done(self, stream: Any) -> bool:
        return driver_calls.stream_query(self.as_cupy(stream).ptr)

    def synchronize(self, event: Any) -> None:
        self._cupy.cuda.runtime.eventSynchronize(event.ptr)  # releases the GIL while it waits

    def wait_until(self, event: Any, stop: Callable[[], bool] | None, poll_us: float,
                   deadline_us: float | None = None, timeout_us: float | None = None) -> bool:
        if deadline_us is None and timeout_us is None and (stop is None or not poll_us):
            self.synchronize(event)
            return True
        start_us = self.now_us()
        while not self.done(event):
            if stop is not None and stop():
                return False
            now_us = self.now_us()
            pause_us = poll_us
            if deadline_us is not None:
                left_us = deadline_us - now_us
                if left_us <= 0:
                    return False
                pause_us = min(pause_us, left_us) if pause_us else left_us
            if timeout_us is not None:
                left_us = start_us + timeout_us - now_us
                if left_us <= 0:
                    raise TimeoutError(f"the event did not complete within {timeout_us / 1e6:g} s")
                if not pause_us:  # no poll asked for: gaps growing with the time waited
                    low_us, high_us = _BOUNDED_PAUSE_US
                    pause_us = min(high_us, max(low_us, (now_us - start_us) / 4))
                pause_us = min(pause_us, left_us)
            time.sleep(pause_us / 1e6)  # releases the GIL
        return True

    def elapsed_us(self, start: Any, end: Any) -> float:
        return driver_calls.event_elapsed_ms(start.ptr, end.ptr) * 1000.0

    def handle(self, stream: Any) -> int:
        if stream is None:
            return int(self._cupy.cuda.get_current_stream().ptr)
        if hasattr(stream, "__cuda_stream__"):
            return int(stream.__cuda_stream__()[1])
        if isinstance(stream, int):
            return stream
        handle = getattr(stream, "handle", None)
        if handle is not None:
            return int(getattr(handle, "value", handle) or 0)
        raise TypeError(f"cannot use {type(stream).__name__} as a CUDA stream")


    def prepare_gates(self, memory: GateMemory) -> None:
        address = memory.device_address()  # raises where the driver cannot map the page
        probe = Gate(memory, len(memory.words) - 2)  # the page's last pair, which no gate uses
        stream = self._cupy.cuda.Stream(non_blocking=True)
        driver_calls.stream_write_value32(stream.ptr, probe.device_address(), 0x5A5A)
        stream.synchronize()
        if int(memory.words[probe.index]) != 0x5A5A:
            raise RuntimeError(f"a stream write to mapped host memory (device address {address:#x}) "
                               "did not reach the host")
        probe.store(0)

    def write_gate(self, stream: Any, gate: Gate, value: int) -> None:
        driver_calls.stream_write_value32(self.as_cupy(stream).ptr, gate.device_address(), value)

    def wait_gate(self, stream: Any, gate: Gate) -> None:
        driver_calls.stream_wait_value64_and(self.as_cupy(stream).ptr, gate.device_address(), WAIT_MASK)

    def store_gate(self, gate: Gate, value: int) -> None:
        gate.store(value)

    def force_gate(self, gate: Gate, on: bool) -> None:
        gate.force(on)

    def is_capturing(self, stream: Any) -> bool:
        return driver_calls.stream_is_capturing(self.as_cupy(stream).ptr)


class SimTimeline:
    """`Timeline` on the simulated device: its streams record and wait on its events.

    Host time is the device's virtual time. Waiting advances virtual time, and host
    callbacks registered with `call_at` (a latency-critical tenant's request arrivals,
    say) run at their virtual times while another tenant waits, so several tenants are
    driven deterministically from one thread.
    """

    virtual = True

    def __init__(self, device: Any) -> None:
        self._device = device
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = 0

    def now_us(self) -> float:
        return float(self._device.now_us)

    def call_at(self, t_us: float, fn: Callable[[], None]) -> None:
        """Run ``fn`` when virtual time reaches ``t_us`` (during a wait or `advance_to`)."""
        heapq.heappush(self._timers, (t_us, self._seq, fn))
        self._seq += 1

    def _fire_due(self) -> None:
        fired = False
        while self._timers and self._timers[0][0] <= self.now_us():
            _, _, fn = heapq.heappop(self._timers)
            fn()
            fired = True
        if fired:
            self._device.poke()  # a callback may have stored a gate some stream waits on

    def advance_to(self, t_us: float) -> None:
        """Advance virtual time to ``t_us``, running due callbacks in order."""
        while self._timers and self._timers[0][0] <= t_us:
            self._device.run_until(max(self.now_us(), self._timers[0][0]))
            self._fire_due()
        self._device.run_until(max(self.now_us(), t_us))

    def record(self, stream: Any, blocking: bool = False) -> Any:
        return stream.record()  # virtual time: nothing spins, so blocking changes nothing

    def origin(self) -> Any:
        return self.marker()

    def marker(self) -> Any:
        event = SimEvent(self._device)
        event.time_us = self.now_us()  # complete (now) until first recorded
        return event

    def record_into(self, event: Any, stream: Any) -> None:
        stream.record_into(event)

    def use(self, stream: Any) -> AbstractContextManager[Any]:
        return contextlib.nullcontext(stream)  # the simulator has no current stream to set

    def thread_stream(self, stream: Any) -> Any:
        return stream  # no thread has a default stream of its own here

    def wait(self, stream: Any, event: Any) -> None:
        stream.wait(event)

    def done(self, event: Any) -> bool:
        return bool(event.query())

    def stream_done(self, stream: Any) -> bool:
        return bool(stream.query())

    def synchronize(self, event: Any) -> None:
        self.wait_until(event, None, 0.0)

    def wait_until(self, event: Any, stop: Callable[[], bool] | None, poll_us: float,
                   deadline_us: float | None = None, timeout_us: float | None = None) -> bool:
        # state that ``stop`` reads changes only in callbacks and completions: asking after
        # each of them is asking continuously, so ``poll_us`` is not needed here
        limit_us = None if timeout_us is None else self.now_us() + timeout_us
        self._fire_due()
        while not event.query():
            if stop is not None and stop():
                return False
            if deadline_us is not None and self.now_us() >= deadline_us:
                return False
            if limit_us is not None and self.now_us() >= limit_us:
                raise TimeoutError(f"the event did not complete within {timeout_us / 1e6:g} s of virtual time")
            next_timer = self._timers[0][0] if self._timers else None
            steps = [t for t in (next_timer, self._device.next_completion_us(), deadline_us, limit_us)
                     if t is not None]
            if not steps:
                raise RuntimeError("simulated device: waiting for an event that can never complete")
            step_to = min(steps)
            self._device.run_until(max(self.now_us(), step_to))
            if step_to == next_timer:
                self._fire_due()
        return True

    def elapsed_us(self, start: Any, end: Any) -> float:
        return start.elapsed_ms(end) * 1000.0

    def handle(self, stream: Any) -> int:
        return 0 if stream is None else int(stream.handle)

    def prepare_gates(self, memory: GateMemory) -> None:
        return None  # the simulated streams read the host words directly

    def write_gate(self, stream: Any, gate: Gate, value: int) -> None:
        stream.write_value(gate, value)

    def wait_gate(self, stream: Any, gate: Gate) -> None:
        stream.wait_gate(gate)

    def store_gate(self, gate: Gate, value: int) -> None:
        gate.store(value)
        self._device.poke()  # streams waiting on the gate may move now

    def force_gate(self, gate: Gate, on: bool) -> None:
        gate.force(on)
        self._device.poke()

    def is_capturing(self, stream: Any) -> bool:
        return False

    def as_cupy(self, stream: Any) -> Any:
        return stream  # a simulated graph launches on the simulated stream
