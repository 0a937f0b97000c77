"""The per-GPU ledger: which tenant of which process holds which TPCs of one GPU.

Every lithos process on a GPU registers its tenants here, and there is no daemon: the
ledger is a file in shared memory (/dev/shm; `ledger_path`), one per user and physical
GPU (its UUID, or ``SIM-<n>`` for a simulated one), created by the first process and
removed by the last to leave. Every change is made under an exclusive ``flock`` of it.

The file (`lithos_sched.ledger_file`) holds a generation that every change increments (a
process watching the ledger learns of a change with one 8-byte read, no lock) and a JSON
document: the GPU, its TPC count and the entries. An entry is one tenant: its claim
(`TenantClaim`: name, priority, a share of the GPU or a TPC count, an optional memory
limit, the `RequestSignal` path of a latency-critical tenant), its process (`ProcessId`:
pid and start time) and its TPCs.

Allocation: a claim gets the lowest-numbered TPCs no live entry holds, ``tpcs`` of them
or ``floor(share * TPCs)`` (a floor, so that shares summing to one always fit). A tenant
its process registered already keeps its TPCs; a claim that cannot be met fails, naming
who holds what. Tenant names are unique per GPU.

Faults: an entry whose process is gone (`ProcessId.alive`) is *stale*; whoever next reads
the ledger removes it and its request signal's file, and the TPCs are free again.

Access: the file is mode 0600 and its owner is checked on every open (`PermissionError`
says why). While a process has the ledger open it holds a POSIX read lock on it, which
``/proc/locks`` shows to everyone: a process of another user finding a live ledger of
the same GPU is refused (another user's tenants would take or stall those TPCs), one
finding a stale one is not.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import math
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from lithos_atom.settings import read_variable
from lithos_sched import ledger_file
from lithos_sched.fields import is_int, is_number
from lithos_sched.processes import ProcessId, file_locked
from lithos_sched.tenant import Priority, TenantConfigError

#: Environment variable: the folder of ledgers and request signals (/dev/shm by default).
LEDGER_DIR_ENV = "LITHOS_LEDGER_DIR"

_PREFIX = "lithos-ledger-"
_SIGNAL_PREFIX = "lithos-requests-"  # `RequestSignal.create`'s file names
#: The longest a process waits for another's lock of the ledger: a change holds it for
#: well under a millisecond, and a holder stopped (SIGSTOP, a debugger) must not stall
#: every join, leave and watch of the GPU for ever.
LOCK_TIMEOUT_S = 10.0


class TPCsUnavailableError(RuntimeError):
    """A claim asks for more TPCs than no live entry holds; the message names the holders."""


@dataclasses.dataclass(frozen=True)
class TenantClaim:
    """What a process asks the ledger for, for one tenant.

    Attributes
    ----------
    name : str
        Unique on the GPU.
    priority : Priority
    share : float, optional
        Fraction of the GPU's TPCs, in (0, 1]. Exactly one of ``share`` and ``tpcs``.
    tpcs : int, optional
        A TPC count.
    memory_limit : int, optional
        Bytes of device memory the tenant may hold (`lithos_sched.memory_limit`).
    signal : str, optional
        Path of the latency-critical tenant's `RequestSignal`, which the best-effort
        tenants of other processes follow.
    """

    name: str
    priority: Priority
    share: float | None = None
    tpcs: int | None = None
    memory_limit: int | None = None
    signal: str | None = None

    def __post_init__(self) -> None:
        who = f"tenant {self.name!r}"
        if not isinstance(self.name, str) or not self.name:
            raise TenantConfigError(f"tenant name must be a non-empty string, got {self.name!r}")
        if not isinstance(self.priority, Priority):
            raise TenantConfigError(f"{who}: priority must be a lithos_sched.Priority, got {self.priority!r}")
        if (self.share is None) == (self.tpcs is None):
            raise TenantConfigError(f"{who}: give exactly one of share= and tpcs=")
        if self.share is not None and not (is_number(self.share) and 0 < self.share <= 1):
            raise TenantConfigError(f"{who}: share must be a number in (0, 1], got {self.share!r}")
        if self.tpcs is not None and not (is_int(self.tpcs) and self.tpcs >= 1):
            raise TenantConfigError(f"{who}: tpcs must be an int >= 1, got {self.tpcs!r}")
        if self.memory_limit is not None and not (is_int(self.memory_limit) and self.memory_limit >= 1):
            raise TenantConfigError(f"{who}: memory_limit must be an int >= 1 (bytes) or None, "
                                    f"got {self.memory_limit!r}")
        if self.signal is not None and self.priority is not Priority.LATENCY_CRITICAL:
            raise TenantConfigError(f"{who}: only a latency-critical tenant publishes a request signal")

    def tpc_count(self, num_tpcs: int) -> int:
        """The TPCs this claim asks for on a GPU of ``num_tpcs``.

        Raises
        ------
        TenantConfigError
            For more TPCs than the GPU has, or a share of less than one TPC.
        """
        n = self.tpcs if self.tpcs is not None else math.floor(self.share * num_tpcs + 1e-9)  # type: ignore[operator]
        if n > num_tpcs:
            raise TenantConfigError(f"tenant {self.name!r}: asks for {n} TPCs; the GPU has {num_tpcs}")
        if n < 1:
            raise TenantConfigError(f"tenant {self.name!r}: share {self.share} of {num_tpcs} TPCs is less than one TPC")
        return n


@dataclasses.dataclass(frozen=True)
class LedgerEntry:
    """One registered tenant.

    Attributes
    ----------
    claim : TenantClaim
    process : ProcessId
    tpcs : frozenset of int
    """

    claim: TenantClaim
    process: ProcessId
    tpcs: frozenset[int]

    @property
    def name(self) -> str:
        """The tenant's name."""
        return self.claim.name

    def describe(self) -> str:
        """``'name' (pid 12, latency-critical): 33 TPCs``, for messages."""
        n = len(self.tpcs)
        return f"{self.name!r} ({self.process}, {self.claim.priority.value}): {n} TPC{'s' * (n != 1)}"

    def to_json(self) -> dict[str, Any]:
        """The entry as the ledger stores it."""
        c = self.claim
        return {"name": c.name, "priority": c.priority.value, "share": c.share, "count": c.tpcs,
                "memory_limit": c.memory_limit, "signal": c.signal, "pid": self.process.pid,
                "start": self.process.start, "tpcs": sorted(self.tpcs)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> LedgerEntry:
        """An entry as `to_json` stored it."""
        claim = TenantClaim(d["name"], Priority(d["priority"]), d["share"], d["count"], d["memory_limit"], d["signal"])
        return cls(claim, ProcessId(int(d["pid"]), int(d["start"])), frozenset(int(t) for t in d["tpcs"]))


def ledger_dir(directory: str | Path | None = None) -> Path:
    """Where ledgers and request signals live: ``directory``, else ``LITHOS_LEDGER_DIR``,
    else /dev/shm (memory only), else the temporary folder.

    Raises
    ------
    ValueError
        For a ``LITHOS_LEDGER_DIR`` that is not an existing directory.
    """
    if directory is not None:
        return Path(directory)
    chosen = read_variable(LEDGER_DIR_ENV)
    if chosen is not None:
        return chosen
    return Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())


def _safe(gpu: str) -> str:
    """``gpu`` with every character but letters, digits, '.', '_' and '-' made '_'."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", gpu)


def ledger_path(gpu: str, directory: str | Path | None = None) -> Path:
    """The ledger file of GPU ``gpu`` (a UUID) for this user: ``lithos-ledger-<uid>-<gpu>``."""
    return ledger_dir(directory) / f"{_PREFIX}{os.getuid()}-{_safe(gpu)}"


def ledger_paths(directory: str | Path | None = None) -> list[Path]:
    """This user's ledger files in ``directory`` (see `ledger_dir`), sorted."""
    return sorted(ledger_dir(directory).glob(f"{_PREFIX}{os.getuid()}-*"))


def _owner_error(path: Path, uid: int, what: str = "ledger") -> PermissionError:
    return PermissionError(f"{what} {path} belongs to user id {uid}, not to this user ({os.getuid()}): lithos shares "
                           "a GPU between one user's processes only")


class Ledger:
    """The ledger of one GPU, opened (and created, by the first process) for this user.

    Parameters
    ----------
    gpu : str
        The physical GPU's identity (`GpuDevice.uuid`, `SimDevice.uuid`).
    num_tpcs : int
        Its TPCs; every process must see the same count.
    directory : str or Path, optional
        See `ledger_dir`.
    alive : callable, optional
        Whether a `ProcessId` still runs (`ProcessId.alive` by default).

    Raises
    ------
    PermissionError
        If the file belongs to another user, is open to others, or another user's
        processes hold a live ledger of this GPU.
    ValueError
        If the file is not a ledger, or is one of another TPC count.

    Notes
    -----
    The object holds the file open, with a POSIX read lock that tells other users the
    ledger is in use. Such locks are the process's: closing any other descriptor of the
    file in this process drops it, so a process keeps one `Ledger` per file. Its methods
    may be called from several threads.
    """

    def __init__(self, gpu: str, num_tpcs: int, *, directory: str | Path | None = None,
                 alive: Callable[[ProcessId], bool] | None = None):
        if not isinstance(gpu, str) or not gpu:
            raise ValueError(f"Ledger: gpu must be a non-empty string, got {gpu!r}")
        if not is_int(num_tpcs) or num_tpcs < 1:
            raise ValueError(f"Ledger: num_tpcs must be an int >= 1, got {num_tpcs!r}")
        self.gpu = gpu
        self.num_tpcs = int(num_tpcs)
        self.path = ledger_path(gpu, directory)
        self._alive = alive or ProcessId.alive
        self._me = ProcessId.current()
        self._refuse_other_users()
        self._fd = -1
        self._thread_lock = threading.RLock()
        self._open()

    # ---- opening -------------------------------------------------------------------

    def _refuse_other_users(self) -> None:
        """Refuse where another user's live ledger of this GPU exists (`file_locked`)."""
        for path in self.path.parent.glob(f"{_PREFIX}*"):
            parts = path.name[len(_PREFIX):].split("-", 1)
            if path == self.path or len(parts) != 2 or parts[1] != _safe(self.gpu):
                continue
            try:
                owner = path.stat().st_uid
            except FileNotFoundError:
                continue
            if owner != os.getuid() and file_locked(path) is not False:
                raise PermissionError(f"GPU {self.gpu} is shared by lithos processes of user id {owner} ({path}); "
                                      f"this user ({os.getuid()}) cannot join them: their tenants' TPCs are theirs")

    def _open(self) -> None:
        """Open (or create) the file, check it, and hold its liveness lock."""
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            except PermissionError as exc:
                try:
                    owner = self.path.stat().st_uid
                except OSError:
                    raise exc from None  # the folder, not the file, refuses
                raise _owner_error(self.path, owner) from None
            try:
                info = os.fstat(fd)
                if info.st_uid != os.getuid():
                    raise _owner_error(self.path, info.st_uid)
                if info.st_mode & 0o077:
                    raise PermissionError(f"ledger {self.path} is open to other users (mode {info.st_mode & 0o777:o}); "
                                          "a ledger must be mode 600")
                _lock_exclusive(fd, self.path)
                if not self._is_current(fd):
                    os.close(fd)  # the last process removed it meanwhile: open the new one
                    continue
                if os.fstat(fd).st_size == 0:
                    self._write(fd, [])
                else:
                    self._read(fd)  # checks the magic, the GPU and the TPC count
                fcntl.flock(fd, fcntl.LOCK_UN)
                fcntl.lockf(fd, fcntl.LOCK_SH, 1, 0)  # "in use", for other users (`file_locked`)
            except BaseException:
                os.close(fd)
                raise
            self._fd = fd
            return

    def _is_current(self, fd: int) -> bool:
        """Whether ``fd`` is still the file at `path` (the last process to leave removes it)."""
        try:
            now = os.stat(self.path, follow_symlinks=False)
        except FileNotFoundError:
            return False
        held = os.fstat(fd)
        return (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[int]:
        """Hold the exclusive lock of the current file, against other processes (``flock``)
        and this process's other threads (a ``flock`` is the open file's, shared by
        them); yields its descriptor."""
        with self._thread_lock:
            if self._fd < 0:
                raise ValueError(f"ledger {self.path} is closed")
            while True:
                _lock_exclusive(self._fd, self.path)
                if self._is_current(self._fd):
                    break
                os.close(self._fd)  # removed by its last process: this one starts the next
                self._fd = -1
                self._open()
            try:
                yield self._fd
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    # ---- the file --------------------------------------------------------------------

    def _read(self, fd: int) -> list[LedgerEntry]:
        doc = ledger_file.read(fd, self.path)
        if doc is None:
            return []
        try:
            entries = [LedgerEntry.from_json(e) for e in doc["entries"]]
            gpu, num_tpcs = doc["gpu"], doc["num_tpcs"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"ledger {self.path} is corrupt ({type(exc).__name__}: {exc}); remove it once no "
                             f"lithos process uses GPU {self.gpu}") from exc
        if gpu != self.gpu or num_tpcs != self.num_tpcs:
            raise ValueError(f"ledger {self.path} is of GPU {gpu} with {num_tpcs} TPCs; this process "
                             f"sees GPU {self.gpu} with {self.num_tpcs} (another split of the SMs?)")
        return entries

    def _write(self, fd: int, entries: Sequence[LedgerEntry]) -> None:
        ledger_file.write(fd, {"gpu": self.gpu, "num_tpcs": self.num_tpcs, "entries": [e.to_json() for e in entries]})

    def generation(self) -> int:
        """A number every change of the ledger increments (one read, no lock)."""
        return ledger_file.generation(self._fd)

    def _live(self, fd: int) -> list[LedgerEntry]:
        """The live entries; stale ones are removed from the file, with their signals' files."""
        entries = self._read(fd)
        verdict: dict[ProcessId, bool] = {}
        for e in entries:
            if e.process not in verdict:
                verdict[e.process] = self.alive(e.process)
        live = [e for e in entries if verdict[e.process]]
        if len(live) < len(entries):
            for e in entries:
                if not verdict[e.process] and e.claim.signal:
                    _remove_signal_file(Path(e.claim.signal))
            self._write(fd, live)
        return live

    # ---- the API ---------------------------------------------------------------------

    def alive(self, process: ProcessId) -> bool:
        """Whether ``process`` still runs, as this ledger judges entries (``alive=``)."""
        return process == self._me or self._alive(process)

    def entries(self) -> list[LedgerEntry]:
        """Every live entry, in registration order (stale ones are reclaimed first)."""
        with self._locked() as fd:
            return self._live(fd)

    def register(self, claims: Sequence[TenantClaim], process: ProcessId | None = None) -> dict[str, frozenset[int]]:
        """Register tenants of ``process`` (this one by default) and give each its TPCs.

        A tenant the process registered already, with the same claim, keeps its TPCs.
        The claims are met all or none.

        Returns
        -------
        dict
            Tenant name to TPC ids.

        Raises
        ------
        TenantConfigError
            A bad or duplicate claim, a name another process holds, a claim that differs
            from the one its process registered before.
        TPCsUnavailableError
            Too few free TPCs (the message says who holds what).
        """
        process = process or self._me
        names = [c.name for c in claims]
        if len(set(names)) != len(names):
            raise TenantConfigError(f"duplicate tenant names in one registration: {names}")
        with self._locked() as fd:
            live = self._live(fd)
            result: dict[str, frozenset[int]] = {}
            for claim in claims:
                held = next((e for e in live if e.name == claim.name), None)
                if held is not None and held.process != process:
                    raise TenantConfigError(f"tenant name {claim.name!r} is taken on GPU {self.gpu} by "
                                            f"{held.process}; names are unique per GPU")
                if held is not None:
                    if held.claim != claim:
                        raise TenantConfigError(f"tenant {claim.name!r} is registered already as {held.claim}; "
                                                "unregister it first")
                    result[claim.name] = held.tpcs
                    continue
                n = claim.tpc_count(self.num_tpcs)
                taken = frozenset().union(*(e.tpcs for e in live))
                free = [t for t in range(self.num_tpcs) if t not in taken]
                if n > len(free):
                    holders = "; ".join(e.describe() for e in live) or "nobody"
                    raise TPCsUnavailableError(f"tenant {claim.name!r} asks for {n} TPCs of GPU {self.gpu} but "
                                               f"{len(free)} of {self.num_tpcs} are free; held: {holders}")
                entry = LedgerEntry(claim, process, frozenset(free[:n]))
                live.append(entry)
                result[claim.name] = entry.tpcs
            self._write(fd, live)
            return result

    def unregister(self, names: Iterable[str] | None = None, process: ProcessId | None = None) -> None:
        """Remove tenants of ``process`` (this one by default): those named, or all of
        them; their TPCs are free at once. The last entry to go removes the file."""
        process = process or self._me
        wanted = None if names is None else set(names)
        with self._locked() as fd:
            live = self._live(fd)
            keep = [e for e in live if e.process != process or (wanted is not None and e.name not in wanted)]
            if not keep:
                self.path.unlink(missing_ok=True)  # under the lock: an opener waiting for it sees it gone
            elif len(keep) < len(live):
                self._write(fd, keep)

    def close(self) -> None:
        """Close the file (idempotent), removing it where no live entry remains."""
        with self._thread_lock:
            if self._fd < 0:
                return
            try:
                _lock_exclusive(self._fd, self.path)
                if self._is_current(self._fd) and not self._live(self._fd):
                    self.path.unlink(missing_ok=True)
            finally:
                os.close(self._fd)  # drops both locks
                self._fd = -1

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Ledger of GPU {self.gpu} ({self.num_tpcs} TPCs) {str(self.path)!r}>"


def _lock_exclusive(fd: int, path: Path) -> None:
    """``flock(fd, LOCK_EX)``, waiting at most `LOCK_TIMEOUT_S`.

    Raises
    ------
    TimeoutError
        Naming the file, when another process held it all that time.
    """
    deadline = time.monotonic() + LOCK_TIMEOUT_S
    pause = 1e-4
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"ledger {path} stayed locked by another process for {LOCK_TIMEOUT_S:g} s "
                                   "(a lithos process stopped while changing it?)") from None
            time.sleep(pause)
            pause = min(pause * 2, 5e-3)


def _remove_signal_file(path: Path) -> None:
    """Remove a dead process's request signal file, if it is one of this user's."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return
    if path.name.startswith(_SIGNAL_PREFIX) and info.st_uid == os.getuid() and path.is_file():
        path.unlink(missing_ok=True)
