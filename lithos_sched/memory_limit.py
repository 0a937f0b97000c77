"""A tenant's limit on device memory, as a CuPy allocator.

`TenantMemoryLimit` wraps an allocator (by default the one installed when it is
installed: CuPy's memory pool, unless the program set another). It counts the bytes of
the tenant's live allocations and refuses the allocation that would take them past the
limit with `TenantOutOfMemoryError`, before the allocator is asked, so one tenant cannot
take the memory another process on the GPU counts on. It is installed process-wide
(`TenantMemoryLimit.install`, like ``cupy.cuda.set_allocator``) or for a block of the
calling thread (`TenantMemoryLimit.using`, like ``cupy.cuda.using_allocator``).

An allocation counts from its ``malloc`` until CuPy frees it (its memory's last
reference goes). The bytes counted are those asked for: a pool underneath rounds them up
(CuPy's to 512 bytes) and keeps freed blocks for reuse, which count for no tenant.
"""

from __future__ import annotations

import collections
import contextlib
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import Any

from lithos_sched.fields import is_int


def format_bytes(n: int) -> str:
    """``1.50 GiB``, ``512 B``: a byte count for a message."""
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"


class TenantOutOfMemoryError(MemoryError):
    """An allocation would take a tenant past its memory limit.

    A `MemoryError`, as CuPy's ``OutOfMemoryError`` is, so code that handles one handles
    the other.

    Attributes
    ----------
    tenant : str
    limit, used, size : int
        The limit, the bytes in use and the bytes asked for.
    """

    def __init__(self, tenant: str, limit: int, used: int, size: int):
        super().__init__(f"tenant {tenant!r} would exceed its memory limit of {format_bytes(limit)}: "
                         f"{format_bytes(used)} in use, {format_bytes(size)} asked")
        self.tenant, self.limit, self.used, self.size = tenant, limit, used, size


class _Allocation:
    """Holds the underlying allocation for as long as CuPy holds the memory handed out."""

    __slots__ = ("pointer", "__weakref__")

    def __init__(self, pointer: Any):
        self.pointer = pointer


class TenantMemoryLimit:
    """Counts a tenant's device memory and refuses what would exceed its limit.

    Parameters
    ----------
    tenant : str
        The tenant's name, for the error.
    limit : int
        Bytes.
    allocator : callable, optional
        ``allocator(size) -> cupy.cuda.MemoryPointer`` that does the allocating; None:
        the one installed when `install` or `using` runs.

    Raises
    ------
    ValueError
        For a limit that is not an int >= 1.
    """

    def __init__(self, tenant: str, limit: int, allocator: Callable[[int], Any] | None = None):
        if not is_int(limit) or limit < 1:
            raise ValueError(f"TenantMemoryLimit.limit must be an int >= 1 (bytes), got {limit!r}")
        self.tenant = tenant
        self.limit = int(limit)
        self.allocator = allocator
        self._used = 0
        self._lock = threading.Lock()
        # sizes of freed allocations: finalizers run in whichever thread drops the last
        # reference, maybe inside `malloc` holding the lock, so they only append here
        self._freed: collections.deque[int] = collections.deque()
        self._previous: Callable[[int], Any] | None = None

    @property
    def used_bytes(self) -> int:
        """Bytes of the tenant's live allocations."""
        with self._lock:
            self._drain_freed()
            return self._used

    def _drain_freed(self) -> None:
        while self._freed:
            self._used -= self._freed.popleft()

    def malloc(self, size: int) -> Any:
        """Allocate ``size`` bytes through the allocator, counted against the limit.

        Returns
        -------
        cupy.cuda.MemoryPointer
            Memory whose release uncounts it.

        Raises
        ------
        TenantOutOfMemoryError
            If the tenant's live allocations and ``size`` exceed the limit.
        """
        from cupy.cuda import memory

        allocator = self.allocator or memory.get_allocator()
        with self._lock:
            self._drain_freed()
            if self._used + size > self.limit:
                raise TenantOutOfMemoryError(self.tenant, self.limit, self._used, size)
            self._used += size
        try:
            inner = allocator(size)
        except BaseException:
            self._freed.append(size)
            raise
        holder = _Allocation(inner)
        weakref.finalize(holder, self._freed.append, size)
        return memory.MemoryPointer(memory.UnownedMemory(inner.ptr, size, holder, device_id=inner.device_id), 0)

    def install(self) -> None:
        """Make `malloc` CuPy's allocator process-wide (`uninstall` restores the one before)."""
        from cupy.cuda import memory

        self._previous = memory.get_allocator()
        if self.allocator is None:
            self.allocator = self._previous
        memory.set_allocator(self.malloc)

    def uninstall(self) -> None:
        """Restore the allocator `install` replaced, unless another was installed since."""
        from cupy.cuda import memory

        if self._previous is not None and memory.get_allocator() == self.malloc:
            memory.set_allocator(self._previous)
        self._previous = None

    @contextlib.contextmanager
    def using(self) -> Iterator[TenantMemoryLimit]:
        """Make `malloc` the calling thread's allocator inside the block."""
        import cupy.cuda
        from cupy.cuda import memory

        if self.allocator is None:
            self.allocator = memory.get_allocator()
        with cupy.cuda.using_allocator(self.malloc):
            yield self

    def __repr__(self) -> str:
        return f"<TenantMemoryLimit {self.tenant!r} {format_bytes(self.used_bytes)} of {format_bytes(self.limit)}>"
