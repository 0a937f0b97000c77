"""A record of every retired atom, kept in typed arrays.

The scheduler appends one row per atom for the whole life of a scheduler. Python tuples
would be objects the garbage collector tracks: thousands a second, each one counting
towards the next collection, and collections pause every thread, the latency-critical
one included. Here a row is numbers in ``array.array`` columns, and the few strings
(kernel and tenant names, partitions) are kept once each in small tables.
"""

from __future__ import annotations

import array
import threading
from collections.abc import Hashable, Iterator
from typing import Any, NamedTuple


class TraceRow(NamedTuple):
    """One retired atom."""

    kernel: str
    tenant: str
    tpcs: frozenset[int]
    stream: int
    start_block: int
    blocks: int
    predicted_us: float | None
    stolen: bool
    start_us: float
    duration_us: float


class _Interned:
    """Values stored once, referred to by index."""

    def __init__(self) -> None:
        self.values: list[Any] = []
        self._index: dict[Hashable, int] = {}

    def index(self, value: Hashable) -> int:
        i = self._index.get(value)
        if i is None:
            i = self._index[value] = len(self.values)
            self.values.append(value)
        return i


class TraceBuffer:
    """Append-only columns of retired atoms; safe to append from several threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._kernels, self._tenants, self._tpcs = _Interned(), _Interned(), _Interned()
        self._ints = array.array("q")  # kernel, tenant, tpcs, stream, start_block, blocks, stolen per row
        self._floats = array.array("d")  # predicted_us (NaN: none), start_us, duration_us per row

    def append(self, kernel: str, tenant: str, tpcs: frozenset[int], stream: int, start_block: int, blocks: int,
               predicted_us: float | None, stolen: bool, start_us: float, duration_us: float) -> None:
        """Add one retired atom."""
        with self._lock:
            self._ints.extend((self._kernels.index(kernel), self._tenants.index(tenant), self._tpcs.index(tpcs),
                               stream, start_block, blocks, int(stolen)))
            self._floats.extend((float("nan") if predicted_us is None else predicted_us, start_us, duration_us))

    def __len__(self) -> int:
        return len(self._floats) // 3

    def rows(self) -> Iterator[TraceRow]:
        """Every row, in the order appended (a snapshot)."""
        with self._lock:
            ints, floats = self._ints.tolist(), self._floats.tolist()
            kernels, tenants, tpcs = list(self._kernels.values), list(self._tenants.values), list(self._tpcs.values)
        for r in range(len(floats) // 3):
            k, t, p, stream, start, blocks, stolen = ints[7 * r:7 * r + 7]
            predicted, ts, dur = floats[3 * r:3 * r + 3]
            yield TraceRow(kernels[k], tenants[t], tpcs[p], stream, start, blocks,
                           None if predicted != predicted else predicted, bool(stolen), ts, dur)
