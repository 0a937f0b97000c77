"""Pieces of the soak (``scripts/soak.py``) shared by its simulated and GPU modes: what a
process holds (memory, files, threads, shared-memory files) before and after, and the
checks of a run.

Run as ``python scripts/soak.py``, which puts this folder on the import path.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import sys
import threading
import tracemalloc
from pathlib import Path
from typing import Any

#: How much more host memory the end of a soak may hold than its start, after a collection:
#: caches that grow with the kernel shapes seen (the predictor's, the launch durations')
#: are warm at the start, so what is left is allocator slack.
TRACED_TOLERANCE_BYTES = 2 << 20
#: The same in Python's allocated memory blocks (`sys.getallocatedblocks`), the cheap
#: measure when `tracemalloc` is off: a leak of an object per launch is thousands.
BLOCKS_TOLERANCE = 2000
#: The same for the resident set, which also holds the allocator's free pages and
#: libraries loaded late; a leak of one object per launch grows far past it in a soak.
RSS_TOLERANCE_BYTES = 64 << 20


@dataclasses.dataclass(frozen=True)
class Resources:
    """What the process holds at one moment.

    Attributes
    ----------
    allocated_blocks : int
        Python's allocated memory blocks (`sys.getallocatedblocks`), after a full collection.
    traced_bytes : int
        Python allocations (`tracemalloc`; 0 when it is off), after a full collection.
    rss_bytes : int
        Resident set size.
    fds : int
        Open file descriptors.
    threads : int
        Live Python threads.
    shm_files : tuple of str
        The ``lithos-*`` files of the shared-memory folder watched.
    """

    allocated_blocks: int
    traced_bytes: int
    rss_bytes: int
    fds: int
    threads: int
    shm_files: tuple[str, ...]

    @classmethod
    def now(cls, shm: Path) -> Resources:
        """Collect garbage, then read what the process holds (``shm``: the folder of
        ledgers and request signals)."""
        gc.collect()
        traced = tracemalloc.get_traced_memory()[0] if tracemalloc.is_tracing() else 0
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return cls(allocated_blocks=sys.getallocatedblocks(), traced_bytes=traced, rss_bytes=pages * os.sysconf("SC_PAGE_SIZE"),
                   fds=len(os.listdir("/proc/self/fd")), threads=threading.active_count(),
                   shm_files=tuple(sorted(p.name for p in shm.glob("lithos-*"))))


def compare(start: Resources, end: Resources) -> dict[str, Any]:
    """Each resource at the start and the end, its tolerance and whether it came back."""
    rows = {
        "allocated_blocks": (start.allocated_blocks, end.allocated_blocks, BLOCKS_TOLERANCE),
        "traced_bytes": (start.traced_bytes, end.traced_bytes, TRACED_TOLERANCE_BYTES),
        "rss_bytes": (start.rss_bytes, end.rss_bytes, RSS_TOLERANCE_BYTES),
        "fds": (start.fds, end.fds, 0),
        "threads": (start.threads, end.threads, 0),
        "shm_files": (len(start.shm_files), len(end.shm_files), 0),
    }
    out = {name: {"start": a, "end": b, "tolerance": tol, "ok": b - a <= tol} for name, (a, b, tol) in rows.items()}
    out["shm_files"]["left"] = sorted(set(end.shm_files) - set(start.shm_files))
    return out


class BlockCounts:
    """How often each block of each launch ran: every launch must run each block exactly once.

    A launch is registered with its block count (`expect`); blocks are counted as they
    are seen (`saw`); a launch whose count reached its size is checked and forgotten, so
    a long run keeps only the launches in flight.
    """

    def __init__(self) -> None:
        self._counts: dict[int, list[int]] = {}
        self._seen: dict[int, int] = {}
        self.launches = 0
        self.blocks = 0
        self.problems: list[str] = []

    def expect(self, launch: int, blocks: int) -> None:
        """Launch ``launch`` has ``blocks`` blocks."""
        self._counts[launch] = [0] * blocks
        self._seen[launch] = 0
        self.launches += 1

    def saw(self, launch: int, block: int) -> bool:
        """Block ``block`` of ``launch`` ran once more; returns whether that completed the launch."""
        counts = self._counts.get(launch)
        if counts is None:
            self.problems.append(f"launch {launch}: block {block} ran after the launch was complete")
            return False
        counts[block] += 1
        self._seen[launch] += 1
        self.blocks += 1
        if self._seen[launch] == len(counts):
            self.check(launch)
            return True
        return False

    def check(self, launch: int) -> None:
        """Check that every block of ``launch`` ran exactly once, and forget it."""
        counts = self._counts.pop(launch)
        self._seen.pop(launch)
        lost = sum(1 for c in counts if c == 0)
        twice = sum(1 for c in counts if c > 1)
        if lost or twice:
            self.problems.append(f"launch {launch}: {lost} blocks never ran, {twice} ran more than once")

    def pending(self) -> list[int]:
        """Launches not complete: at the end of a run, their missing blocks are lost."""
        return sorted(self._counts)
