"""The ledger's file format: a fixed header, then a JSON document, safe against crashes.

The header (32 bytes, little-endian) holds the magic ``LITHOSL2``; the *generation*, a
uint64 that every change increments, so a process watching the ledger learns of a change
by reading these 8 bytes, without the lock; and the offset and length of the current
document. A change writes the new document where it overlaps the current one nowhere,
then the header in one write: a process killed in between (its ``flock`` goes with it)
leaves the previous document whole, never a torn one, to the next process that locks it.
"""

from __future__ import annotations

import fcntl
import json
import os
import struct
from pathlib import Path
from typing import Any

MAGIC = b"LITHOSL2"
_HEADER = struct.Struct("<8sQQQ")  # magic, generation, document offset, document length
_FIRST = 64  # where documents start: the header has a cache line of its own


def generation(fd: int) -> int:
    """The file's generation (0 for an empty file); one read, no lock."""
    return _header(fd)[1]


def _header(fd: int) -> tuple[bytes, int, int, int]:
    return _HEADER.unpack(os.pread(fd, _HEADER.size, 0).ljust(_HEADER.size, b"\0"))


def read(fd: int, path: Path) -> dict[str, Any] | None:
    """The current document, or None for an empty (new) file; the caller holds a lock.

    Raises
    ------
    ValueError
        If the file is not a ledger or its document cannot be read (``path`` named).
    """
    if os.fstat(fd).st_size == 0:
        return None
    magic, _, offset, length = _header(fd)
    if magic != MAGIC:
        raise ValueError(f"{path} is not a lithos ledger")
    try:
        doc = json.loads(os.pread(fd, length, offset))
        if not isinstance(doc, dict):
            raise ValueError(f"a {type(doc).__name__}, not an object")
        return doc
    except ValueError as exc:
        raise ValueError(f"ledger {path} is corrupt ({exc}); remove it once no lithos process uses it") from exc


def write(fd: int, doc: dict[str, Any]) -> None:
    """Make ``doc`` the current document and increment the generation; the caller holds
    the exclusive lock."""
    _, gen, offset, length = _header(fd) if os.fstat(fd).st_size else (MAGIC, 0, 0, 0)
    body = json.dumps(doc).encode()
    at = _FIRST if _FIRST + len(body) <= offset else max(_FIRST, offset + length)
    os.pwrite(fd, body, at)
    os.pwrite(fd, _HEADER.pack(MAGIC, gen + 1, at, len(body)), 0)
    if at == _FIRST:
        os.ftruncate(fd, at + len(body))  # the previous document, after it, is not needed any more


def snapshot(path: str | Path) -> dict[str, Any] | None:
    """What the ledger file at ``path`` says now, read under a shared lock, reclaiming
    nothing (for inspection and tests; a `Ledger` reclaims stale entries as it reads).
    Not in a process that holds a `Ledger` of the file: closing this descriptor would
    drop that ledger's POSIX lock."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        return read(fd, Path(path))
    finally:
        os.close(fd)
