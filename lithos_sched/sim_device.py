"""A simulated GPU with the interface of `GpuDevice`, in virtual time.

Kernels are `SimKernel` latency models: every block runs on one SM for ``block_us``
(optionally with seeded jitter) and takes ``1 / blocks_per_sm`` of the SM. Launches are
block ranges issued on streams; streams are FIFO and a launch's blocks start only after
the previous operation of its stream has finished. When SM slots free up, pending blocks
of high-priority streams are placed first, then those of earlier launches; a running
block is never preempted (as on the hardware, which is why atoms matter). A partition's
blocks only ever run on its SMs. Given a seed, a run is deterministic.

Time advances only when asked: `SimDevice.step`, `run_until`, `run_until_idle`, or an
event's `synchronize`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import heapq
import itertools
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from lithos_sched.errors import PartitionError
from lithos_sched.gpu_device import validate_tpcs

_CAPACITY = 2520  # slots per SM: divisible by every blocks_per_sm from 1 to 10


@dataclasses.dataclass(frozen=True)
class SimKernel:
    """A kernel's latency model.

    Attributes
    ----------
    name : str
    grid_blocks : int
        Blocks in the whole grid.
    block_us : float
        Duration of one block.
    blocks_per_sm : int
        Blocks of this kernel that fit on one SM at once (1..10).
    jitter : float
        Relative standard deviation of block durations (lognormal), 0 for none.
    """

    name: str
    grid_blocks: int
    block_us: float
    blocks_per_sm: int = 1
    jitter: float = 0.0

    def __post_init__(self) -> None:
        if self.grid_blocks < 1:
            raise ValueError(f"SimKernel.grid_blocks must be >= 1, got {self.grid_blocks}")
        if not self.block_us > 0:
            raise ValueError(f"SimKernel.block_us must be > 0, got {self.block_us}")
        if not 1 <= self.blocks_per_sm <= 10:
            raise ValueError(f"SimKernel.blocks_per_sm must be in 1..10, got {self.blocks_per_sm}")
        if self.jitter < 0:
            raise ValueError(f"SimKernel.jitter must be >= 0, got {self.jitter}")


@dataclasses.dataclass(frozen=True)
class BlockRecord:
    """One block that ran: which launch, which linear block, which SM, when."""

    launch_id: int
    kernel: str
    block: int
    sm: int
    start_us: float
    end_us: float
    stream: int


class SimEvent:
    """An event on a simulated stream; its time is set when the stream reaches it."""

    def __init__(self, device: SimDevice):
        self._device = device
        self.time_us: float | None = None
        self.recorded = False

    def query(self) -> bool:
        """Whether the event has completed (never advances time)."""
        return self.time_us is not None

    def synchronize(self) -> None:
        """Advance virtual time until the event completes."""
        while self.time_us is None:
            if not self._device.step():
                raise RuntimeError("simulated device is idle but the event never completes "
                                   "(a stream waits on work that was never issued)")

    def elapsed_ms(self, end: SimEvent) -> float:
        """Virtual milliseconds from this event to ``end`` (both must have completed)."""
        if self.time_us is None or end.time_us is None:
            raise RuntimeError("elapsed_ms needs two completed events")
        return (end.time_us - self.time_us) / 1000.0


@dataclasses.dataclass
class _Launch:
    launch_id: int
    kernel: SimKernel
    start: int
    count: int
    stream: SimStream
    next_block: int = 0
    running: int = 0
    activated_us: float = 0.0
    seq: int = 0

    @property
    def pending(self) -> int:
        return self.count - self.next_block


class SimStream:
    """A FIFO stream of a simulated partition."""

    def __init__(self, device: SimDevice, partition: SimPartition, priority: str, handle: int):
        self.device = device
        self.partition = partition
        self.priority = priority
        self.handle = handle
        self._ops: deque[tuple[str, Any]] = deque()
        self._active: _Launch | None = None

    def __cuda_stream__(self) -> tuple[int, int]:
        return (0, self.handle)

    def launch(self, kernel: SimKernel, start: int = 0, count: int | None = None) -> None:
        """Enqueue blocks ``[start, start + count)`` of ``kernel``."""
        self.partition._check_open()
        count = kernel.grid_blocks - start if count is None else count
        if not (0 <= start and count >= 1 and start + count <= kernel.grid_blocks):
            raise ValueError(f"block range [{start}, {start + count}) is outside {kernel.name!r}'s "
                             f"{kernel.grid_blocks} blocks")
        self._ops.append(("launch", (kernel, start, count)))
        self.device._progress()

    def record(self) -> SimEvent:
        """Enqueue an event; it completes when every earlier operation has."""
        event = SimEvent(self.device)
        event.recorded = True
        self._ops.append(("record", event))
        self.device._progress()
        return event

    def wait(self, event: SimEvent) -> None:
        """Later operations of this stream wait for ``event`` (no-op if it was never recorded)."""
        self._ops.append(("wait", event))
        self.device._progress()

    def synchronize(self) -> None:
        """Advance virtual time until this stream has no work left."""
        self.record().synchronize()

    def idle(self) -> bool:
        """No queued or running work."""
        return not self._ops and self._active is None

    def __repr__(self) -> str:
        return f"<SimStream {self.priority} {self.handle} of {self.partition!r}>"


class SimPartition:
    """A set of simulated TPCs with a high- and two normal-priority streams."""

    def __init__(self, device: SimDevice, tpcs: frozenset[int]):
        self.device = device
        self.tpcs = tpcs
        self.sm_ids = tuple(sorted(sm for t in tpcs for sm in device.tpc_sms(t)))
        self.create_ms = 0.0
        self.closed = False
        self.high = device._new_stream(self, "high")
        self.normal = device._new_stream(self, "normal")
        self.normal_b = device._new_stream(self, "normal")
        self._extra: list[SimStream] = []

    @property
    def num_tpcs(self) -> int:
        """Number of TPCs."""
        return len(self.tpcs)

    @property
    def num_sms(self) -> int:
        """Number of SMs."""
        return len(self.sm_ids)

    def stream(self, priority: str = "normal", *, new: bool = False) -> SimStream:
        """The partition's stream of ``priority``; ``new=True`` makes another one."""
        self._check_open()
        if priority not in ("high", "normal"):
            raise PartitionError(f"priority must be 'high' or 'normal', got {priority!r}")
        if new:
            s = self.device._new_stream(self, priority)
            self._extra.append(s)
            return s
        return self.high if priority == "high" else self.normal

    @contextlib.contextmanager
    def use(self, priority: str = "normal") -> Iterator[SimStream]:
        """Yield the partition's stream (the simulated device has no CuPy current stream)."""
        yield self.stream(priority)

    def _check_open(self) -> None:
        if self.closed:
            raise PartitionError(f"partition {sorted(self.tpcs)} is closed")
        self.device._check_open()

    def close(self) -> None:
        """Run this partition's streams dry, then release it."""
        if self.closed:
            return
        for s in (self.high, self.normal, self.normal_b, *self._extra):
            s.synchronize()
        self.closed = True
        self.device._forget(self)

    def __repr__(self) -> str:
        return f"<SimPartition {self.num_tpcs} TPCs>"


class SimDevice:
    """A simulated GPU (H100-sized by default) with TPC partitions and virtual time.

    Parameters
    ----------
    num_tpcs : int
    sms_per_tpc : int
    seed : int
        Seed of block-duration jitter.
    name : str
    record_blocks : bool
        Keep a `BlockRecord` of every block in ``records`` (for checks; off for long runs).
    """

    simulated = True

    def __init__(self, num_tpcs: int = 66, sms_per_tpc: int = 2, seed: int = 0, name: str = "simulated H100",
                 record_blocks: bool = True):
        if num_tpcs < 1 or sms_per_tpc < 1:
            raise ValueError(f"num_tpcs and sms_per_tpc must be >= 1, got {num_tpcs}, {sms_per_tpc}")
        self.name = name
        self.num_tpcs = num_tpcs
        self.sms_per_unit = sms_per_tpc
        self.num_sms = num_tpcs * sms_per_tpc
        self.seed = seed
        self.record_blocks = record_blocks
        self.now_us = 0.0
        self.records: list[BlockRecord] = []
        self.closed = False
        self._rng = np.random.default_rng(seed)
        self._free = [_CAPACITY] * self.num_sms
        self._partitions: dict[frozenset[int], SimPartition] = {}
        self._streams: list[SimStream] = []
        self._handles = itertools.count(1)
        self._launch_ids = itertools.count()
        self._seq = itertools.count()
        self._active: list[_Launch] = []
        self._running: list[tuple[float, int, int, _Launch, int]] = []  # (end, seq, sm, launch, block)

    # ---- the device interface -----------------------------------------------------

    def tpc_sms(self, tpc: int) -> tuple[int, ...]:
        """SM ids of one TPC."""
        return tuple(range(tpc * self.sms_per_unit, (tpc + 1) * self.sms_per_unit))

    def all_tpcs(self) -> frozenset[int]:
        """Every TPC id."""
        return frozenset(range(self.num_tpcs))

    def partition(self, tpcs: Iterable[int]) -> SimPartition:
        """The partition of exactly these TPCs (cached).

        Raises
        ------
        PartitionError
            For an empty set, bad or duplicate ids, ids out of range, or a closed device.
        """
        self._check_open()
        key = validate_tpcs(tpcs, self.num_tpcs)
        part = self._partitions.get(key)
        if part is None:
            part = self._partitions[key] = SimPartition(self, key)
        return part

    def live_partitions(self) -> int:
        """Partitions currently alive."""
        return len(self._partitions)

    def describe(self) -> dict[str, Any]:
        """Name, SMs, TPCs; ``simulated`` is True."""
        return {"name": self.name, "simulated": True, "sms": self.num_sms, "tpcs": self.num_tpcs,
                "sms_per_unit": self.sms_per_unit, "seed": self.seed}

    def close(self) -> None:
        """Run every stream dry and release every partition."""
        if self.closed:
            return
        self.run_until_idle()
        self._partitions.clear()
        self.closed = True

    def __enter__(self) -> SimDevice:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- virtual time ---------------------------------------------------------------

    def next_completion_us(self) -> float | None:
        """When the next running block ends, or None if nothing runs."""
        return self._running[0][0] if self._running else None

    def step(self) -> bool:
        """Advance to the next block completion; False if nothing is running."""
        if not self._running:
            return False
        self._complete_until(self._running[0][0])
        return True

    def run_until(self, t_us: float) -> None:
        """Advance virtual time to ``t_us``, completing every block that ends by then."""
        if t_us < self.now_us:
            raise ValueError(f"cannot run back in time to {t_us} (now {self.now_us})")
        self._complete_until(t_us)
        self.now_us = t_us

    def run_until_idle(self) -> None:
        """Advance until no block runs and no stream can make progress."""
        while self.step():
            pass

    # ---- internals ------------------------------------------------------------------

    def _new_stream(self, partition: SimPartition, priority: str) -> SimStream:
        s = SimStream(self, partition, priority, next(self._handles))
        self._streams.append(s)
        return s

    def _forget(self, part: SimPartition) -> None:
        self._partitions.pop(part.tpcs, None)

    def _check_open(self) -> None:
        if self.closed:
            raise PartitionError("the simulated device is closed")

    def _complete_until(self, t_us: float) -> None:
        while self._running and self._running[0][0] <= t_us:
            end = self._running[0][0]
            # Blocks ending at the same instant (a whole wave, without jitter) retire together.
            while self._running and self._running[0][0] == end:
                _, _, sm, launch, _ = heapq.heappop(self._running)
                self._free[sm] += _CAPACITY // launch.kernel.blocks_per_sm
                launch.running -= 1
            self.now_us = end
            self._progress()

    def _progress(self) -> None:
        """Retire finished launches, move streams forward, and place pending blocks."""
        changed = True
        while changed:
            changed = False
            for s in self._streams:
                changed |= self._advance_stream(s)
        self._dispatch()

    def _advance_stream(self, s: SimStream) -> bool:
        moved = False
        while True:
            if s._active is not None:
                if s._active.pending or s._active.running:
                    return moved
                self._active.remove(s._active)
                s._active = None
                moved = True
            if not s._ops:
                return moved
            kind, payload = s._ops[0]
            if kind == "record":
                payload.time_us = self.now_us
            elif kind == "wait":
                if payload.recorded and payload.time_us is None:
                    return moved
            else:
                kernel, start, count = payload
                s._active = _Launch(next(self._launch_ids), kernel, start, count, s,
                                    activated_us=self.now_us, seq=next(self._seq))
                self._active.append(s._active)
            s._ops.popleft()
            moved = True

    def _dispatch(self) -> None:
        order = sorted((la for la in self._active if la.pending),
                       key=lambda la: (la.stream.priority != "high", la.seq))
        free = self._free
        for la in order:
            need = _CAPACITY // la.kernel.blocks_per_sm
            # emptiest SMs of the partition first (lowest id on ties)
            for sm in sorted(la.stream.partition.sm_ids, key=lambda i: (-free[i], i)):
                while la.pending and free[sm] >= need:
                    free[sm] -= need
                    block = la.start + la.next_block
                    la.next_block += 1
                    la.running += 1
                    dur = la.kernel.block_us
                    if la.kernel.jitter:
                        dur *= float(self._rng.lognormal(0.0, la.kernel.jitter))
                    end = self.now_us + dur
                    heapq.heappush(self._running, (end, next(self._seq), sm, la, block))
                    if self.record_blocks:
                        self.records.append(BlockRecord(la.launch_id, la.kernel.name, block, sm, self.now_us, end,
                                                        la.stream.handle))
                if not la.pending:
                    break
