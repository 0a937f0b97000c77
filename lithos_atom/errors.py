"""Errors of the atomizer."""

from __future__ import annotations


class AtomizeError(Exception):
    """PTX that cannot be read or rewritten, or a compile/link step that failed.

    Parameters
    ----------
    reason : str
        What is wrong.
    entry : str, optional
        The kernel entry (or function) concerned.
    line : int, optional
        1-based line of the PTX input.
    """

    def __init__(self, reason: str, *, entry: str | None = None, line: int | None = None):
        self.reason = reason
        self.entry = entry
        self.line = line
        where = []
        if entry is not None:
            where.append(f"entry {entry!r}")
        if line is not None:
            where.append(f"line {line}")
        super().__init__(f"{' '.join(where)}: {reason}" if where else reason)


class UnsupportedKernelError(AtomizeError):
    """A valid kernel that cannot be split safely (grid-wide sync, clusters, ...)."""
