"""Pieces of the soak (``scripts/soak.py``) shared by its simulated and GPU modes: what a
process holds (memory, files, threads, shared-memory files) before and after, the checks
of a run, and how a member (one scheduler, as one process would hold) joins, follows the
others' latency-critical tenants and leaves.

Run as ``python scripts/soak.py``, which puts this folder on the import path.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import sys
import threading
import tracemalloc
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from lithos_sched import Policy, Priority, Scheduler, TenantSpec
from lithos_sched.ledger import Ledger, TenantClaim
from lithos_sched.processes import ProcessId
from lithos_sched.request_signal import RequestSignal

LC, BE = Priority.LATENCY_CRITICAL, Priority.BEST_EFFORT

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


def join_member(key: int, makeup: Sequence[Priority], ledger: Ledger, folder: Path, tpcs: int, device: Any,
                policy: Policy, timeline: Any = None, **options: Any
                ) -> tuple[ProcessId, Scheduler, dict[str, RequestSignal]]:
    """Register member ``key``'s tenants (one of ``makeup`` each, ``tpcs`` TPCs) in the
    ledger as a process of its own, and start its scheduler (``options``: the
    `Scheduler`'s; ``timeline``: one shared by every member instead of its own) with a
    published request signal per latency-critical tenant.

    Returns
    -------
    (ProcessId, Scheduler, dict of str to RequestSignal)
        The process the ledger sees, the scheduler, and the signals by tenant name.
    """
    names = [f"m{key}-{'lc' if p is LC else 'be'}{i}" for i, p in enumerate(makeup)]
    signals = {n: RequestSignal.create(folder) for n, p in zip(names, makeup) if p is LC}
    claims = [TenantClaim(n, p, tpcs=tpcs, signal=str(signals[n].path) if n in signals else None)
              for n, p in zip(names, makeup)]
    process = ProcessId(os.getpid(), -1 - key)  # a process of its own, as the ledger sees it
    owned = ledger.register(claims, process)
    sched = Scheduler(device, [TenantSpec(n, p, tpcs=tuple(sorted(owned[n]))) for n, p in zip(names, makeup)],
                      policy, **options)
    if timeline is not None:
        sched.timeline = timeline  # one virtual clock and one timer queue for every member
    for name, signal in signals.items():
        sched.tenant(name).publish_requests(signal)
    return process, sched, signals


def follow_member(follower: Scheduler, leader: Scheduler, signals: dict[str, RequestSignal]) -> int:
    """Let ``follower``'s best-effort tenants steal the TPCs of ``leader``'s latency-critical
    tenants (``signals``: theirs); returns how many tenants it follows now (0 without
    best-effort tenants of its own)."""
    if not any(t.priority is BE for t in follower.tenants.values() if not t.remote):
        return 0
    for name, signal in signals.items():
        tpcs = tuple(sorted(leader.tenant(name).tpcs))
        follower.follow(TenantSpec(name, LC, tpcs=tpcs), RequestSignal.attach(signal.path))
    return len(signals)


def request_left_open(sched: Scheduler, signals: dict[str, RequestSignal]) -> bool:
    """Whether a leaving member still has a request open, in its scheduler or a signal."""
    return bool(sched.requests_open) or any(s.open_requests for s in signals.values())


def unfollow_member(others: Iterable[Scheduler], names: Iterable[str]) -> None:
    """Stop following the tenants ``names`` (of a member that leaves) in every other scheduler."""
    names = list(names)
    for other in others:
        for name in names:
            if name in other.followed():
                other.unfollow(name)
