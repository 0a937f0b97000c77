"""Errors raised while reading, checking, rewriting and launching kernels."""

from __future__ import annotations


class AtomizeError(Exception):
    """A kernel or its PTX cannot be processed (malformed input, compiler failure, ...).

    Parameters
    ----------
    reason : str
        What went wrong, without the location.
    entry : str, optional
        The kernel (PTX ``.entry``) or function concerned, when known; the message shortens
        a name of over 200 characters (the attribute keeps it whole).
    line : int, optional
        1-based line in the input PTX, when known.

    Attributes
    ----------
    reason : str
    entry : str or None
    line : int or None
    """

    def __init__(self, reason: str, *, entry: str | None = None, line: int | None = None):
        self.reason = reason
        self.entry = entry
        self.line = line
        where = []
        if entry is not None:
            where.append(f"entry {entry if len(entry) <= 200 else entry[:197] + '...'!r}")
        if line is not None:
            where.append(f"line {line}")
        super().__init__(f"{' '.join(where)}: {reason}" if where else reason)


class UnsupportedKernelError(AtomizeError):
    """A valid kernel that cannot be split into atoms safely.

    Examples: cooperative-groups grid synchronization, thread-block clusters,
    programmatic dependent launch. When several entries of one module are refused,
    ``problems`` lists each of them and ``reason`` summarizes them all.

    Parameters
    ----------
    reason : str
        Why the kernel cannot be atomized.
    entry : str, optional
        The refused entry (``None`` when several are).
    line : int, optional
        1-based PTX line of the construct that prevents it.
    problems : tuple of (str, int or None, str), optional
        ``(entry, line, reason)`` for every refused entry.

    Attributes
    ----------
    problems : tuple of (str, int or None, str)
    """

    def __init__(
        self,
        reason: str,
        *,
        entry: str | None = None,
        line: int | None = None,
        problems: tuple[tuple[str, int | None, str], ...] = (),
    ):
        self.problems = tuple(problems)
        super().__init__(reason, entry=entry, line=line)


class LithosCudaError(RuntimeError):
    """A CUDA driver call failed.

    Attributes
    ----------
    call : str
        The driver function.
    code : int
        The ``CUresult`` value.
    name : str
        The ``CUresult`` name, for example ``CUDA_ERROR_INVALID_HANDLE``.
    """

    def __init__(self, call: str, code: int, name: str):
        self.call, self.code, self.name = call, code, name
        super().__init__(f"{call} failed: {name} ({code})")
