"""Device-side gates: 32-bit words that GPU streams wait on and write.

A gate is two 32-bit words, side by side. A latency-critical tenant closes its gate
(writes 0 to the first) when its work starts and opens it (writes 1) when it ends, with
stream memory operations on its own stream (``cuStreamWriteValue32``), so the writes stay
ordered with its kernels. A best-effort tenant queues each atom on stolen TPCs behind a
wait for the gate (``cuStreamWaitValue64`` with ``CU_STREAM_WAIT_VALUE_AND``: until either
word is non-zero). The GPU evaluates a wait when its stream reaches it, after the atom
before it has finished (docs/design.md), so atoms queued milliseconds ahead stop at the
next atom boundary when a request starts and resume when it ends, with no host thread
involved either way. The second word, *forced*, is the best-effort side's: set, it lets
queued atoms pass a closed gate, so a latency-critical tenant busy without a break cannot
hold them for ever (`lithos_sched.gate_keeper`), and the tenant's own writes never touch it.
A process sets it to its pid shifted left by one, plus one (bit 0 is what a wait tests),
so a process that finds a gate forced by one that died can clear it
(`lithos_sched.ledger_watch`): a best-effort process killed while it forced a gate would
otherwise leave the latency-critical tenant unprotected for good.

The words live in host memory that the driver maps into the device's address space
(``cuMemHostAlloc`` for a process's own gates, ``cuMemHostRegister`` for a shared file's): the host reads a gate with a plain load and may store it, and the
memory can be a file in ``/dev/shm`` mapped by several processes, so a gate is shared
between a latency-critical process and the best-effort processes that follow it
(`lithos_sched.request_signal.RequestSignal` carries one).
"""

from __future__ import annotations

import ctypes
import mmap
import os
import threading
import numpy as np

#: Bytes of one gate page: the unit the driver registers.
PAGE_BYTES = mmap.PAGESIZE
#: The first word's value while the gate is open (queued atoms may start) and closed.
OPEN, CLOSED = 1, 0
#: The 64-bit mask a wait tests (``CU_STREAM_WAIT_VALUE_AND``): the open word or the forced word.
WAIT_MASK = (1 << 32) | 1


class GateMemory:
    """A page of host memory holding gate words, device-mapped on first GPU use.

    Parameters
    ----------
    mapping : mmap.mmap
        An anonymous mapping (gates of one process) or a shared file's (gates shared
        between processes); at least `PAGE_BYTES` long. The object keeps it open until
        `close`.
    """

    def __init__(self, mapping: mmap.mmap, *, shared: bool = True) -> None:
        if len(mapping) < PAGE_BYTES:
            raise ValueError(f"gate memory needs at least {PAGE_BYTES} bytes, got {len(mapping)}")
        self._map = mapping
        self._anchor = ctypes.c_char.from_buffer(mapping)  # pins the buffer: its address must not move
        self.host_address = ctypes.addressof(self._anchor)
        self.words = np.frombuffer(mapping, dtype=np.uint32, count=PAGE_BYTES // 4)
        self._shared = shared  # else its words move to a page the driver allocates (`device_address`)
        self._device_address: int | None = None
        self._lock = threading.Lock()

    @classmethod
    def anonymous(cls) -> GateMemory:
        """Gate memory private to this process."""
        return cls(mmap.mmap(-1, PAGE_BYTES), shared=False)

    def device_address(self) -> int:
        """The page's address in the device's space, mapped on first use (needs a GPU; the
        simulated device never asks). Memory private to this process moves to a page the
        driver allocates mapped (``cuMemHostAlloc``: what host-mapped memory is made for;
        gates read it through `words` as before); a shared file's page is registered
        (``cuMemHostRegister``), since other processes map the same file.

        Raises
        ------
        lithos_atom.errors.LithosCudaError
            When the driver refuses to allocate, register or map the page.
        """
        with self._lock:
            if self._device_address is None:
                from lithos_atom import driver_calls

                if self._shared:
                    self._device_address = driver_calls.in_cupy_context(driver_calls.host_register,
                                                                         self.host_address, PAGE_BYTES)
                else:
                    host, device = driver_calls.in_cupy_context(driver_calls.host_alloc_mapped, PAGE_BYTES)
                    words = np.ctypeslib.as_array((ctypes.c_uint32 * (PAGE_BYTES // 4)).from_address(host))
                    words[:] = self.words
                    self.words, self.host_address = words, host
                    self._device_address = device
            return self._device_address

    def close(self) -> None:
        """Give the page back to the driver (unregister it, or free the page it allocated)
        and unmap it (idempotent); its gates then read open and not forced."""
        with self._lock:
            if self._map.closed:
                return
            # readers from now on (a thread that still holds a gate) find it open and not
            # forced, as a released tenant's should be; the buffer's exports go before it closes
            self.words = np.tile(np.array([OPEN, 0], dtype=np.uint32), PAGE_BYTES // 8)
            if self._device_address is not None:
                from lithos_atom import driver_calls
                from lithos_sched.faults import is_sticky

                release = driver_calls.host_unregister if self._shared else driver_calls.host_free
                try:
                    driver_calls.in_cupy_context(release, self.host_address)
                except Exception as exc:
                    if not is_sticky(exc):  # a context lost to a fault took the registration with it
                        raise
                self._device_address = None
            del self._anchor
            self._map.close()

    @property
    def closed(self) -> bool:
        """Whether `close` was called."""
        return self._map.closed


class Gate:
    """One gate of a `GateMemory`: its open word and, after it, its forced word.

    Parameters
    ----------
    memory : GateMemory
    index : int
        Index of the open word in the page, even (the pair is one aligned 64-bit word);
        each gate should have a cache line of its own (users space them 16 words apart).
    """

    __slots__ = ("memory", "index")

    def __init__(self, memory: GateMemory, index: int) -> None:
        if index % 2 or not 0 <= index < PAGE_BYTES // 4 - 1:
            raise ValueError(f"gate index {index} must be even and inside the page's {PAGE_BYTES // 4} words")
        self.memory = memory
        self.index = index

    def is_open(self) -> bool:
        """Whether queued atoms may pass now: open, or forced (host loads, nanoseconds)."""
        words = self.memory.words
        return bool(words[self.index]) or bool(words[self.index + 1])

    def is_closed_by_owner(self) -> bool:
        """Whether the latency-critical side has the gate closed (forced or not)."""
        return int(self.memory.words[self.index]) == CLOSED

    def store(self, value: int) -> None:
        """Store ``value`` (`OPEN` or `CLOSED`) to the open word from the host (visible
        to GPU waits at once, unordered with any stream: use a stream write where order
        with kernels matters)."""
        self.memory.words[self.index] = value

    def force(self, on: bool) -> None:
        """Set the forced word for this process, or clear it: while set, waits pass
        whatever the open word says."""
        self.memory.words[self.index + 1] = (os.getpid() << 1) | 1 if on else 0

    @property
    def forced(self) -> bool:
        """Whether the forced word is set."""
        return bool(self.memory.words[self.index + 1])

    def forced_by(self) -> int | None:
        """The pid of the process that set the forced word, or None while it is clear."""
        word = int(self.memory.words[self.index + 1])
        return word >> 1 if word else None

    def device_address(self) -> int:
        """The open word's device address, 8-byte aligned (registers the page on first use)."""
        return self.memory.device_address() + 4 * self.index

    def __repr__(self) -> str:
        state = "open" if not self.is_closed_by_owner() else "closed"
        return f"<Gate {self.index} {state}{' forced' if self.forced else ''}>"


class GateBoard:
    """The gates of one scheduler's latency-critical tenants, in one private page.

    Attributes
    ----------
    memory : GateMemory
    """

    _STRIDE = 16  # 64 bytes: one cache line per gate

    def __init__(self) -> None:
        self.memory = GateMemory.anonymous()
        self._next = 0

    def new_gate(self) -> Gate:
        """A new gate, open.

        Raises
        ------
        RuntimeError
            When the page has no room left (256 gates of 4 KiB pages).
        """
        index = self._next * self._STRIDE
        if index >= PAGE_BYTES // 4:
            raise RuntimeError("no room for another gate on the scheduler's gate page")
        self._next += 1
        gate = Gate(self.memory, index)
        gate.store(OPEN)
        gate.force(False)
        return gate

    def close(self) -> None:
        """Release the page."""
        self.memory.close()

