"""What runs on the simulated GPU (`lithos_sched.sim_device`): kernels, blocks, events.

A `SimKernel` is a kernel's latency model (blocks of ``block_us``, ``blocks_per_sm`` of
them per SM, optional jitter); a `BlockRecord` is one block that ran, kept for checks; a
`SimEvent` completes in virtual time when its stream reaches it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

from lithos_atom.plan import KernelKey, LaunchPlan
from lithos_sched.fields import is_int, is_number, require

if TYPE_CHECKING:
    from lithos_sched.sim_device import SimDevice


@dataclasses.dataclass(frozen=True)
class SimKernel:
    """A kernel's latency model.

    Attributes
    ----------
    name : str
    grid_blocks : int
        Blocks in the whole grid.
    block_us : float
        Duration of one block, in microseconds.
    blocks_per_sm : int
        Blocks of this kernel that fit on one SM at once (1..10).
    jitter : float
        Spread of block durations: each is ``block_us`` times a lognormal factor of mean 1
        and this standard deviation of its logarithm; 0 for none.
    """

    name: str
    grid_blocks: int
    block_us: float
    blocks_per_sm: int = 1
    jitter: float = 0.0

    def __post_init__(self) -> None:
        require(is_int(self.grid_blocks) and self.grid_blocks >= 1, "SimKernel.grid_blocks", "an int >= 1",
                self.grid_blocks)
        require(is_number(self.block_us) and math.isfinite(self.block_us) and self.block_us > 0, "SimKernel.block_us",
                "a finite number > 0", self.block_us)
        require(is_int(self.blocks_per_sm) and 1 <= self.blocks_per_sm <= 10, "SimKernel.blocks_per_sm",
                "an int in 1..10", self.blocks_per_sm)
        require(is_number(self.jitter) and math.isfinite(self.jitter) and self.jitter >= 0, "SimKernel.jitter",
                "a finite number >= 0", self.jitter)

    def launch_plan(self, device: SimDevice) -> LaunchPlan:
        """One launch of the whole grid on ``device``, as a front end hands a launch to
        `Scheduler.submit_for` (the scheduler splits it into atoms)."""
        key = KernelKey(self.name, (self.grid_blocks, 1, 1), (256, 1, 1), 0)
        return LaunchPlan.build(key, self.grid_blocks, self.grid_blocks,
                                lambda start, count, stream: stream.launch(self, start, count),
                                wave_blocks=self.blocks_per_sm * device.num_sms)


@dataclasses.dataclass(frozen=True)
class BlockRecord:
    """One block that ran: which launch, which linear block, which SM, when.

    Attributes
    ----------
    launch_id : int
        What `SimStream.launch` returned.
    kernel : str
    block : int
        Linear block index in the kernel's grid.
    sm : int
    start_us, end_us : float
    stream : int
        The stream's handle.
    """

    launch_id: int
    kernel: str
    block: int
    sm: int
    start_us: float
    end_us: float
    stream: int


class SimEvent:
    """An event on a simulated stream; it completes when the stream reaches it.

    Attributes
    ----------
    time_us : float or None
        Virtual time at which its latest record completed; None while that is pending.
    latest : SimEvent or None
        Its latest record by `SimStream.record_into`, an event of its own: a wait queued
        before a later record waits for this one, as ``cuStreamWaitEvent`` waits for the
        record it was given.
    """

    def __init__(self, device: SimDevice):
        self._device = device
        self.time_us: float | None = None
        self.latest: SimEvent | None = None

    def query(self) -> bool:
        """Whether the event has completed (never advances time)."""
        return self.time_us is not None

    def synchronize(self) -> None:
        """Advance virtual time until the event completes.

        Raises
        ------
        RuntimeError
            If nothing runs but the event is still pending (a stream waits forever).
        """
        while self.time_us is None:
            if not self._device.step():
                raise RuntimeError("simulated device is idle but the event never completes "
                                   "(a stream waits on work that was never issued)")

    def elapsed_ms(self, end: SimEvent) -> float:
        """Virtual milliseconds from this event to ``end`` (both must have completed)."""
        return self.elapsed_us(end) / 1000.0

    def elapsed_us(self, end: SimEvent) -> float:
        """Virtual microseconds from this event to ``end`` (both must have completed)."""
        if self.time_us is None or end.time_us is None:
            raise RuntimeError("elapsed time needs two completed events")
        return end.time_us - self.time_us
