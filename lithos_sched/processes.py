"""Processes as the ledger knows them: a pid with its start time, alive or not.

A pid alone names a process only while it runs: once it exits the kernel may give the
number to another. `ProcessId` pairs it with the process's start time (field 22 of
``/proc/<pid>/stat``, clock ticks after boot), so a reused pid is never mistaken for
the process that registered. A process that exited but was not yet reaped (a zombie)
counts as dead: the kernel has already closed its files and its GPU contexts.

`file_locked` tells whether any process holds a POSIX lock on a file, from
``/proc/locks``: that needs no access to the file, so a process can learn whether another
user's ledger is in use without being able to read it.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name, or None without one."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return text.rsplit(")", 1)[1].split()  # the name may hold spaces and parentheses


@dataclasses.dataclass(frozen=True)
class ProcessId:
    """One process, for as long as it lives.

    Attributes
    ----------
    pid : int
    start : int
        When it started, in clock ticks after boot.
    """

    pid: int
    start: int

    @classmethod
    def current(cls) -> ProcessId:
        """This process."""
        me = cls.of(os.getpid())
        assert me is not None, "/proc/self/stat is unreadable"
        return me

    @classmethod
    def of(cls, pid: int) -> ProcessId | None:
        """The process running as ``pid`` now, or None if there is none (or only a zombie)."""
        fields = _stat_fields(pid)
        if fields is None or fields[0] in ("Z", "X"):
            return None
        return cls(pid, int(fields[19]))  # field 22 of the line; the state is field 3

    def alive(self) -> bool:
        """Whether this process still runs (not exited, its pid not reused)."""
        return ProcessId.of(self.pid) == self

    def __str__(self) -> str:
        return f"pid {self.pid}"


def file_locked(path: str | Path) -> bool | None:
    """Whether some process holds a POSIX lock on ``path`` (``/proc/locks``).

    Returns
    -------
    bool or None
        None where it cannot be told: the file or ``/proc/locks`` cannot be read.
    """
    try:
        info = os.stat(path)
        table = Path("/proc/locks").read_text()
    except OSError:
        return None
    want = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
    for line in table.splitlines():
        fields = line.split()
        if "->" in fields:  # a process waiting for the lock, not holding it
            continue
        if len(fields) >= 6 and fields[1] in ("POSIX", "OFDLCK") and fields[5] == want:
            return True
    return False
