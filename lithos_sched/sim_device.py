"""A simulated GPU with the interface of `GpuDevice`, in virtual time.

Kernels are `SimKernel` latency models: every block runs on one SM for ``block_us``
(optionally with seeded, mean-preserving jitter) and takes ``1 / blocks_per_sm`` of the
SM. Launches are block ranges (atoms: ``start``, ``count``) issued on streams; streams are
FIFO and a launch's blocks start only after the previous operation of its stream has
finished. Streams also carry event records and waits and, as stream memory operations,
writes of gate words and waits for a gate to open (`lithos_sched.gates`), each evaluated
when the stream reaches it. A launch's blocks fill the free SM slots of its partition in
waves. When slots free up, pending blocks of high-priority streams are placed first, then those of earlier
launches; a running block is never preempted (as on the hardware, which is why lithos
splits kernels into atoms and partitions the TPCs). A partition's blocks only ever run on
its SMs, so disjoint partitions run side by side and overlapping ones compete. Given a
seed, a run is deterministic.

Time advances only when asked: `SimDevice.step`, `run_until`, `run_until_idle`, an
event's or a stream's ``synchronize``, or closing a partition (which drains its streams).
The kernel models, block records and events are `lithos_sched.sim_kernel`.
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

from lithos_sched.device_api import StreamPriority, validate_priority, validate_tpcs
from lithos_sched.errors import PartitionError
from lithos_sched.fields import is_int, require
from lithos_sched.sim_kernel import BlockRecord, SimEvent, SimKernel
from lithos_sched.visible_gpus import SIM_GPUS_ENV, sim_uuid, visible_sim_gpus

_CAPACITY = 2520  # slots per SM: divisible by every blocks_per_sm from 1 to 10


@dataclasses.dataclass
class _Launch:
    launch_id: int
    kernel: SimKernel
    start: int
    count: int
    stream: SimStream
    seq: int
    running: int = 0
    # blocks not placed yet (the next to place is ``start + count - pending``): a field,
    # not a property, as the dispatch loop reads it for every placement
    pending: int = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.pending = self.count


class SimStream:
    """A FIFO stream of a simulated partition.

    Attributes
    ----------
    handle : int
        An id, unique on the device and never 0.
    priority : {"high", "normal"}
    partition : SimPartition
    """

    def __init__(self, device: SimDevice, partition: SimPartition, priority: StreamPriority, handle: int):
        self.device = device
        self.partition = partition
        self.priority = priority
        self.handle = handle
        self._ops: deque[tuple[str, Any]] = deque()
        self._active: _Launch | None = None

    def __cuda_stream__(self) -> tuple[int, int]:
        """The CUDA stream protocol shape, ``(0, handle)``, so code that reads handles works."""
        return (0, self.handle)

    def launch(self, kernel: SimKernel, start: int = 0, count: int | None = None) -> int:
        """Enqueue blocks ``[start, start + count)`` of ``kernel`` (default: to the end).

        Returns
        -------
        int
            The launch id, as found in the device's `BlockRecord`s.

        Raises
        ------
        ValueError
            For a block range outside the kernel's grid.
        PartitionError
            On a closed partition or device.
        """
        self.partition.check_open()
        if not is_int(start) or not (count is None or is_int(count)):
            raise ValueError(f"block range start and count must be ints, got {start!r} and {count!r}")
        count = kernel.grid_blocks - start if count is None else count
        if not (0 <= start and count >= 1 and start + count <= kernel.grid_blocks):
            raise ValueError(f"block range start={start!r} count={count!r} is outside {kernel.name!r}'s "
                             f"{kernel.grid_blocks} blocks")
        launch_id = next(self.device._launch_ids)
        self._ops.append(("launch", (launch_id, kernel, start, count)))
        self.device._progress()
        return launch_id

    def record(self) -> SimEvent:
        """Enqueue an event; it completes when every earlier operation of the stream has."""
        self.partition.check_open()
        event = SimEvent(self.device)
        self._ops.append(("record", event))
        self.device._progress()
        return event

    def record_into(self, event: SimEvent) -> None:
        """Enqueue ``event`` again: pending from now on, it completes when every earlier
        operation of the stream has (``cuEventRecord`` of an existing event)."""
        self.partition.check_open()
        mark = SimEvent(self.device)
        event.time_us, event.latest = None, mark
        self._ops.append(("record_into", (event, mark)))
        self.device._progress()

    def wait(self, event: SimEvent) -> None:
        """Later operations of this stream wait until ``event``'s latest record so far has
        completed (a record made later does not move the wait, as on a GPU)."""
        self.partition.check_open()
        target = event.latest if event.latest is not None else event
        if target is event and event.time_us is not None:  # complete: for good, even if recorded again
            target = SimEvent(self.device)
            target.time_us = event.time_us
        self._ops.append(("wait", target))
        self.device._progress()

    def write_value(self, gate: Any, value: int) -> None:
        """Enqueue a write of ``value`` to the open word of a `lithos_sched.gates.Gate`,
        done once every earlier operation of the stream has (``cuStreamWriteValue32``)."""
        self.partition.check_open()
        self._ops.append(("write_value", (gate, value)))
        self.device._progress()

    def wait_gate(self, gate: Any) -> None:
        """Later operations of this stream wait until the gate is open or forced
        (``cuStreamWaitValue64``); the wait is evaluated when the stream reaches it."""
        self.partition.check_open()
        self._ops.append(("wait_gate", gate))
        self.device._progress()

    def synchronize(self) -> None:
        """Advance virtual time until this stream has no work left."""
        self.record().synchronize()

    def query(self) -> bool:
        """Whether every operation queued on the stream has completed (never advances time)."""
        return not self._ops and self._active is None

    @contextlib.contextmanager
    def use(self) -> Iterator[SimStream]:
        """Yield this stream (the simulator has no CuPy current stream to set)."""
        self.partition.check_open()
        yield self

    def idle(self) -> bool:
        """No queued or running work."""
        return not self._ops and self._active is None

    def __repr__(self) -> str:
        return f"<SimStream {self.priority} {self.handle} of {self.partition!r}>"


class SimPartition:
    """A set of simulated TPCs with a high- and two normal-priority streams.

    Attributes
    ----------
    device : SimDevice
    tpcs : frozenset of int
    sm_ids : tuple of int
    sm_set : frozenset of int
        The same SMs, for set operations.
    high, normal, normal_b : SimStream
        As on `GpuPartition`.
    create_ms : float
        Always 0.
    closed : bool
        True once every holder closed it (as `GpuPartition`), or the device closed.
    """

    def __init__(self, device: SimDevice, tpcs: frozenset[int]):
        self.device = device
        self.tpcs = tpcs
        self.sm_ids = tuple(sorted(sm for t in tpcs for sm in device.tpc_sms(t)))
        self.sm_set = frozenset(self.sm_ids)
        self.create_ms = 0.0
        self.closed = False
        self._holders = 1  # `SimDevice.partition` calls not yet matched by a close()
        self._streams: list[SimStream] = []
        self.high = self._new_stream("high")
        self.normal = self._new_stream("normal")
        self.normal_b = self._new_stream("normal")

    @property
    def num_tpcs(self) -> int:
        """Number of TPCs."""
        return len(self.tpcs)

    @property
    def num_sms(self) -> int:
        """Number of SMs."""
        return len(self.sm_ids)

    def stream(self, priority: StreamPriority = "normal", *, new: bool = False) -> SimStream:
        """The partition's stream of ``priority``; ``new=True`` makes another one."""
        self.check_open()
        priority = validate_priority(priority)
        if new:
            return self._new_stream(priority)
        return self.high if priority == "high" else self.normal

    def use(self, priority: StreamPriority = "normal") -> contextlib.AbstractContextManager[SimStream]:
        """Yield the partition's stream of ``priority`` (see `SimStream.use`)."""
        return self.stream(priority).use()

    def _new_stream(self, priority: StreamPriority) -> SimStream:
        s = SimStream(self.device, self, priority, next(self.device._handles))
        self._streams.append(s)
        self.device._streams.append(s)
        return s

    def check_open(self) -> None:
        """Raise `PartitionError` once this partition or its device is closed."""
        if self.closed:
            raise PartitionError(f"partition of TPCs {sorted(self.tpcs)} is closed")
        self.device.check_open()

    def close(self) -> None:
        """Release this holder's claim; the last one runs the partition's streams dry
        (advancing virtual time), then releases it (as `GpuPartition.close`)."""
        self._holders -= 1
        if self._holders <= 0:
            self._close_now()

    def _close_now(self) -> None:
        if self.closed:
            return
        for s in self._streams:
            s.synchronize()
        self.closed = True
        self.device._forget(self)

    def __repr__(self) -> str:
        return f"<SimPartition {self.num_tpcs} TPCs{' closed' if self.closed else ''}>"


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
    device_id : int
        Which of the simulated GPUs this process sees it is (`lithos_sched.visible_gpus`:
        ``LITHOS_SIM_GPUS`` and ``CUDA_VISIBLE_DEVICES`` choose them, as CUDA's ordinals).

    Attributes
    ----------
    uuid : str
        The simulated GPU's identity (``SIM-<physical id>``), what a GPU's UUID is to the ledger.
    now_us : float
        Virtual time.
    records : list of BlockRecord
    num_sms, num_tpcs, sms_per_unit : int
    simulated : bool
        Always True.
    """

    simulated = True

    def __init__(self, num_tpcs: int = 66, sms_per_tpc: int = 2, seed: int = 0, name: str = "simulated H100",
                 record_blocks: bool = True, device_id: int = 0):
        for label, value in (("num_tpcs", num_tpcs), ("sms_per_tpc", sms_per_tpc)):
            require(is_int(value) and value >= 1, f"SimDevice.{label}", "an int >= 1", value)
        require(is_int(seed), "SimDevice.seed", "an int", seed)
        require(isinstance(name, str), "SimDevice.name", "a str", name)
        require(isinstance(record_blocks, bool), "SimDevice.record_blocks", "a bool", record_blocks)
        visible = visible_sim_gpus()
        if not is_int(device_id) or not 0 <= device_id < len(visible):
            raise PartitionError(f"device_id {device_id!r} out of range: {len(visible)} simulated GPU(s) visible "
                                 f"({SIM_GPUS_ENV}, CUDA_VISIBLE_DEVICES)")
        self.device_id = int(device_id)
        self.uuid = sim_uuid(visible[self.device_id])
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
        self._roomy: set[int] = set(range(self.num_sms))  # the SMs with any free capacity
        self._partitions: dict[frozenset[int], SimPartition] = {}
        self._streams: list[SimStream] = []
        self._handles = itertools.count(1)
        self._launch_ids = itertools.count()
        self._seq = itertools.count()
        self._active: list[_Launch] = []
        # (end, seq, launch, [(sm, blocks), ...]): blocks of one launch placed together
        # that end at the same time (a wave, without jitter) are one entry
        self._running: list[tuple[float, int, _Launch, list[tuple[int, int]]]] = []

    # ---- the device interface -----------------------------------------------------

    def tpc_sms(self, tpc: int) -> tuple[int, ...]:
        """SM ids of one TPC."""
        return tuple(range(tpc * self.sms_per_unit, (tpc + 1) * self.sms_per_unit))

    def all_tpcs(self) -> frozenset[int]:
        """Every TPC id."""
        return frozenset(range(self.num_tpcs))

    def partition(self, tpcs: Iterable[int]) -> SimPartition:
        """The partition of exactly these TPCs (an open one of the same set is returned as
        is, held until a matching close, as `GpuDevice.partition`).

        Raises
        ------
        PartitionError
            For an empty set, non-int, duplicate or out-of-range ids, or a closed device.
        """
        self.check_open()
        key = validate_tpcs(tpcs, self.num_tpcs)
        part = self._partitions.get(key)
        if part is None:
            part = self._partitions[key] = SimPartition(self, key)
        else:
            part._holders += 1
        return part

    def live_partitions(self) -> int:
        """Partitions currently open."""
        return len(self._partitions)

    def has_context(self, tpcs: Iterable[int]) -> bool:
        """Whether a partition of exactly this TPC set is open (the simulator's stand-in
        for `GpuDevice.has_context`)."""
        return validate_tpcs(tpcs, self.num_tpcs) in self._partitions

    def describe(self) -> dict[str, Any]:
        """Name, SMs, TPCs, granularity; ``simulated`` True and no driver."""
        return {"name": self.name, "uuid": self.uuid, "simulated": True, "driver_version": None, "sms": self.num_sms,
                "tpcs": self.num_tpcs, "sms_per_unit": self.sms_per_unit,
                "granularity": "TPC" if self.sms_per_unit == 2 else f"{self.sms_per_unit}-SM units",
                "seed": self.seed}

    def close(self) -> None:
        """Run every stream dry and close every partition."""
        if self.closed:
            return
        self.run_until_idle()
        for part in list(self._partitions.values()):
            part._close_now()
        self.closed = True

    def __enter__(self) -> SimDevice:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<SimDevice {self.num_tpcs} TPCs of {self.sms_per_unit} SMs, t={self.now_us:g} us>"

    # ---- virtual time ---------------------------------------------------------------

    def elapsed_us(self, start: SimEvent, end: SimEvent) -> float:
        """Virtual microseconds between two completed events."""
        return start.elapsed_us(end)

    def next_completion_us(self) -> float | None:
        """When the next running block ends, or None if nothing runs."""
        return self._running[0][0] if self._running else None

    def step(self) -> bool:
        """Advance to the next block completion; False (and no change) if nothing runs."""
        if not self._running:
            return False
        self._complete_until(self._running[0][0])
        return True

    def run_until(self, t_us: float) -> None:
        """Advance virtual time to ``t_us``, completing every block that ends by then."""
        if t_us < self.now_us:
            raise ValueError(f"cannot run back in time to {t_us} us (now {self.now_us} us)")
        self._complete_until(t_us)
        self.now_us = t_us

    def poke(self) -> None:
        """Move streams forward after a change made outside them (a host store to a gate
        some stream waits on)."""
        self._progress()

    def run_until_idle(self) -> None:
        """Advance until no block runs (streams blocked on never-completing waits stay blocked)."""
        while self.step():
            pass

    # ---- internals ------------------------------------------------------------------

    def _forget(self, part: SimPartition) -> None:
        if self._partitions.get(part.tpcs) is part:
            del self._partitions[part.tpcs]
        gone = {id(s) for s in part._streams}
        self._streams = [s for s in self._streams if id(s) not in gone]

    def check_open(self) -> None:
        """Raise `PartitionError` once the device is closed."""
        if self.closed:
            raise PartitionError("the simulated device is closed")

    def _complete_until(self, t_us: float) -> None:
        while self._running and self._running[0][0] <= t_us:
            end = self._running[0][0]
            # Blocks ending at the same instant (a whole wave, without jitter) retire together.
            while self._running and self._running[0][0] == end:
                _, _, launch, placed = heapq.heappop(self._running)
                need = _CAPACITY // launch.kernel.blocks_per_sm
                for sm, blocks in placed:
                    self._free[sm] += blocks * need
                    self._roomy.add(sm)
                    launch.running -= blocks
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
            elif kind == "record_into":
                event, mark = payload
                mark.time_us = self.now_us
                if event.latest is mark:  # not recorded again since
                    event.time_us = self.now_us
            elif kind == "wait":
                if payload.time_us is None:
                    return moved
            elif kind == "wait_gate":
                if not payload.is_open():
                    return moved
            elif kind == "write_value":
                gate, value = payload
                gate.store(value)
            else:
                launch_id, kernel, start, count = payload
                s._active = _Launch(launch_id, kernel, start, count, s, seq=next(self._seq))
                self._active.append(s._active)
            s._ops.popleft()
            moved = True

    def _dispatch(self) -> None:
        # High-priority launches pick free slots first, then launches in the order their
        # streams reached them; placed blocks run to completion.
        all_roomy = self._roomy
        if not all_roomy:
            return  # every SM is full: nothing can be placed
        order = sorted((la for la in self._active if la.pending),
                       key=lambda la: (la.stream.priority != "high", la.seq))
        free = self._free
        for la in order:
            if not all_roomy:
                break
            kernel = la.kernel
            need = _CAPACITY // kernel.blocks_per_sm
            sigma = kernel.jitter
            # emptiest SMs of the partition first (lowest id on ties), like the hardware's
            # breadth-first block distribution; only those with room for a block (an SM
            # without room gets none while this launch is placed), which after a few
            # blocks end is a handful of the partition's SMs
            roomy = [i for i in all_roomy.intersection(la.stream.partition.sm_set) if free[i] >= need]
            roomy.sort(key=lambda i: (-free[i], i))
            wave: list[tuple[int, int]] = []  # without jitter, what is placed now ends together
            for sm in roomy:
                while la.pending and free[sm] >= need:
                    # without jitter every block that fits here now ends at the same time
                    n = 1 if sigma else min(la.pending, free[sm] // need)
                    free[sm] -= n * need
                    if not free[sm]:
                        all_roomy.discard(sm)
                    first = la.start + la.count - la.pending
                    la.pending -= n
                    la.running += n
                    if sigma:
                        end = self.now_us + kernel.block_us * float(
                            self._rng.lognormal(-sigma * sigma / 2.0, sigma))  # mean 1
                        heapq.heappush(self._running, (end, next(self._seq), la, [(sm, n)]))
                    else:
                        end = self.now_us + kernel.block_us
                        wave.append((sm, n))
                    if self.record_blocks:
                        self.records.extend(BlockRecord(la.launch_id, la.kernel.name, b, sm, self.now_us, end,
                                                        la.stream.handle) for b in range(first, first + n))
                if not la.pending:
                    break
            if wave:
                heapq.heappush(self._running, (self.now_us + kernel.block_us, next(self._seq), la, wave))
