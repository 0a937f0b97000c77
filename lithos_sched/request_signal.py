"""A latency-critical tenant's requests, published to schedulers in other processes.

When tenants are processes (each with its own interpreter, under MPS), the scheduler of a
best-effort process cannot see the latency-critical process's streams. What it needs to
steal safely is whether a request is open, or closed within the idle grace: the
latency-critical process marks each request (`RequestSignal.request`), and the
best-effort process's `Tenant.follow_requests` reads the mark before each atom.

With right-sizing, a request may run on the first ``n`` of the tenant's TPCs only
(`RequestSignal.request` with ``tpcs=n``), and the best-effort process may keep the others
while it is open (`RequestSignal.tpcs_in_use`).

The mark is three int64 words in a small shared file mapped by every process: the number
of open requests, the `time.monotonic_ns` of the last close (CLOCK_MONOTONIC, one clock
for every process on Linux) and the TPC count of the latest request (0: all). One process
writes it; aligned 8-byte stores and loads are single instructions, so a reader sees each
word whole. Writing the close time before the count means a reader that sees no request
open also sees when the last one closed; writing the TPC count before opening means a
reader that sees a request open sees its count.

The same page holds the tenant's device-side gate (`lithos_sched.gates`): closed while a
request is open. A request marked with its stream (``request(stream=s)``) closes and opens
the gate with stream writes ordered with its kernels on ``s``; without one, with host
stores at the block's edges. A best-effort process that follows the signal queues its
atoms on the tenant's TPCs behind that gate, and the GPU stops and resumes them.

The file is created for its owner only (mode 0600), and `RequestSignal.attach` refuses a
file of another user, one open to other users and a symbolic link: a process that could
write it could stall the tenant's followers, or let their atoms through its requests.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from lithos_sched.fields import is_int, require
from lithos_sched.gates import CLOSED, OPEN, PAGE_BYTES, Gate, GateMemory

_WORDS = 3  # open requests, last close (ns), TPCs of the latest request (0: all)
_SIZE = PAGE_BYTES  # the words, then the gate on a cache line of its own
_GATE_WORD = 16  # uint32 index of the gate: byte 64


class RequestSignal:
    """Open requests of one latency-critical tenant, in a file shared between processes.

    Made by `create` (the process that owns the file) or `attach`; ``close()`` unmaps it
    and, for the creator, removes the file.

    Attributes
    ----------
    path : pathlib.Path
        The shared file: what `attach` needs in another process.
    gate : lithos_sched.gates.Gate
        The tenant's device-side gate, closed while a request is open.
    """

    def __init__(self, path: Path, *, owner: bool) -> None:
        self.path = path
        self._owner = owner
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)  # a link is refused, not followed
        try:
            info = os.fstat(fd)
            if info.st_uid != os.getuid():
                raise PermissionError(f"{path} belongs to user id {info.st_uid}, not to this user "
                                      f"({os.getuid()}): a request signal is shared only between one user's processes")
            if not stat.S_ISREG(info.st_mode) or info.st_size != _SIZE:
                raise ValueError(f"{path} is not a request signal ({_SIZE} bytes expected)")
            if info.st_mode & 0o077:
                raise PermissionError(f"request signal {path} is open to other users (mode {info.st_mode & 0o777:o}); "
                                      "a request signal must be mode 600")
            self._memory = GateMemory(mmap.mmap(fd, _SIZE))
        finally:
            os.close(fd)  # the mapping keeps the file
        self._words = np.frombuffer(self._memory.words, dtype=np.int64, count=_WORDS)
        self.gate = Gate(self._memory, _GATE_WORD)

    @classmethod
    def create(cls, directory: str | Path | None = None) -> RequestSignal:
        """A new signal with no request open, in a file of ``directory`` (/dev/shm, where
        it exists: memory only, else the temporary directory).

        Raises
        ------
        TypeError
            For a ``directory`` that is not a path or None.
        """
        if directory is not None:
            _require_path("RequestSignal.create: directory", directory)
        if directory is None and Path("/dev/shm").is_dir():
            directory = "/dev/shm"
        fd, name = tempfile.mkstemp(prefix="lithos-requests-", dir=directory)
        with os.fdopen(fd, "wb") as f:
            f.write(bytes(_SIZE))
        signal = cls(Path(name), owner=True)
        signal.gate.store(OPEN)
        return signal

    @classmethod
    def attach(cls, path: str | Path) -> RequestSignal:
        """The signal in ``path``, made by `create` in this or another process.

        Raises
        ------
        TypeError
            For a ``path`` that is not a path.
        FileNotFoundError
            If there is no such file.
        PermissionError
            If the file belongs to another user or is open to others.
        OSError
            If the path is a symbolic link (``ELOOP``).
        ValueError
            If the file is not a request signal.
        """
        _require_path("RequestSignal.attach: path", path)
        return cls(Path(path), owner=False)

    @property
    def open_requests(self) -> int:
        """Requests open now."""
        return int(self._words[0])

    def tpcs_in_use(self) -> int:
        """The TPC count the latest request ran on, the first of the tenant's TPCs (0: all
        of them); it stands through the idle grace after that request closed."""
        return int(self._words[2])

    @contextlib.contextmanager
    def request(self, tpcs: int | None = None, stream: Any = None, *, gate: bool = True) -> Iterator[None]:
        """Mark one request, from its first launch to its result (one writing thread).

        The gate is closed while a request is open.

        Parameters
        ----------
        tpcs : int, optional
            The request runs on the first ``tpcs`` of the tenant's TPCs only (right-sized);
            None: on all of them.
        stream : optional
            The GPU stream the request's work runs on (a CuPy stream or an object with
            ``__cuda_stream__``): the gate is closed and opened by writes on it, ordered
            with the request's kernels, so it opens when they end even if the block exits
            before. None: host stores at the block's start and end.
        gate : bool
            Whether the block closes and opens the gate; False leaves it to the caller (a
            scheduler whose tenant publishes its requests writes it through its own timeline).

        Raises
        ------
        ValueError
            For a ``tpcs`` that is not an int >= 1 or None, or a ``gate`` that is not a bool.
        TypeError
            For a ``stream`` that is not a stream.
        """
        require(tpcs is None or (is_int(tpcs) and tpcs >= 1), "RequestSignal.request: tpcs", "an int >= 1 or None",
                tpcs)
        require(isinstance(gate, bool), "RequestSignal.request: gate", "a bool", gate)
        handle = None if stream is None else _stream_handle(stream)
        self._words[2] = 0 if tpcs is None else tpcs
        self._words[0] += 1
        if gate:
            self._set_gate(CLOSED, handle)
        try:
            yield
        finally:
            self._words[1] = time.monotonic_ns()
            self._words[0] -= 1
            if gate and not self._words[0]:
                self._set_gate(OPEN, handle)

    def _set_gate(self, value: int, stream: int | None) -> None:
        if stream is None:
            self.gate.store(value)
        else:
            from lithos_atom import driver_calls

            driver_calls.stream_write_value32(stream, self.gate.device_address(), value)

    def busy(self, grace_us: float) -> bool:
        """Whether a request is open or the last one closed less than ``grace_us`` ago."""
        if self._words[0] > 0:
            return True
        last = int(self._words[1])  # 0: no request closed yet
        return last > 0 and (time.monotonic_ns() - last) < grace_us * 1e3

    def close(self) -> None:
        """Unmap the file (unregistering it from the driver, if a gate was used on the
        GPU); the creator also removes it."""
        if self._memory.closed:
            return
        self._words = np.zeros(_WORDS, dtype=np.int64)  # the map's buffer must go first; read after: no request
        self._memory.close()
        if self._owner:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> RequestSignal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<RequestSignal {str(self.path)!r}>"


def _stream_handle(stream: Any) -> int:
    """The ``CUstream`` of a CuPy stream or an object with ``__cuda_stream__``."""
    if hasattr(stream, "__cuda_stream__"):
        return int(stream.__cuda_stream__()[1])
    ptr = getattr(stream, "ptr", None)
    if ptr is None:
        raise TypeError(f"RequestSignal.request: stream must be a CUDA stream (with __cuda_stream__ or ptr), "
                        f"got {type(stream).__name__}")
    return int(ptr)


def _require_path(parameter: str, value: object) -> None:
    """Raise ``TypeError`` naming ``parameter`` unless ``value`` is a str or a path."""
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{parameter} must be a path (str or os.PathLike), got {type(value).__name__}")
