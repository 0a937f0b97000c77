"""One line to make a process a tenant of a GPU shared with other processes.

``lithos.join(gpu=0, priority="best-effort", share=0.5)`` at the top of an unchanged
program registers the process's tenant in the GPU's ledger (`lithos_sched.ledger`),
which gives it TPCs no other process holds, opens the device and a scheduler of that one
tenant, installs the scheduler process-wide and binds the calling thread to the tenant.
A latency-critical tenant publishes its requests in a `RequestSignal` named in the ledger
(its launches close its gate); a best-effort one follows every latency-critical tenant of
the other processes (`lithos_sched.ledger_watch`) and steals their TPCs between requests.
`leave` (or the process's exit) undoes it all; a killed process's TPCs come back through
the other processes' watches.

Threads: the thread that joins is bound to the tenant, so its CuPy ops and cuBLAS calls
run on the tenant's TPCs too, and the GPU joined becomes its CuPy device. Other threads'
intercepted kernel launches (CuPy ``RawKernel``/``RawModule``, Numba) run as the tenant
(`Scheduler.set_default_tenant`); their CuPy ops run where CuPy puts them unless they
enter ``with lithos.tenant():`` (and, for a GPU other than 0, select it, as CuPy asks).

`parse_join_spec` reads the environment form (``LITHOS_JOIN="gpu=0,priority=best-effort,
share=0.5"``) that ``python -m lithos run prog.py`` honours. A forked child does not
inherit the membership (CUDA does not survive a fork): it neither leaves nor reclaims.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import os
import re
import sys
import threading
from pathlib import Path
from typing import Any

from lithos_atom.active import get_atomizer
from lithos_sched import Policy, Priority, Scheduler, TenantSpec, device_count, open_device, set_scheduler
from lithos_sched.fields import is_int, is_number
from lithos_sched.ledger import Ledger, TenantClaim
from lithos_sched.ledger_watch import LedgerWatch
from lithos_sched.memory_limit import TenantMemoryLimit
from lithos_sched.request_signal import RequestSignal
from lithos_sched.tenant_runtime import Tenant

#: The environment variable `parse_join_spec` reads for ``python -m lithos run``.
JOIN_ENV = "LITHOS_JOIN"
_UNITS = {"": 1, "B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}


@dataclasses.dataclass
class Membership:
    """A process's place on a GPU, made by `join`.

    Attributes
    ----------
    gpu : int
        The visible index joined.
    device : GpuDevice or SimDevice
    ledger : Ledger
    scheduler : Scheduler
        Installed process-wide.
    tenant : Tenant
        The process's tenant.
    signal : RequestSignal or None
        A latency-critical tenant's published requests.
    memory : TenantMemoryLimit or None
        The installed memory limit.
    watch : LedgerWatch
    thread : int
        The thread that joined, bound to the tenant until `close`.
    """

    gpu: int
    device: Any
    ledger: Ledger
    scheduler: Scheduler
    tenant: Tenant
    signal: RequestSignal | None
    memory: TenantMemoryLimit | None
    watch: LedgerWatch
    thread: int = dataclasses.field(default_factory=threading.get_ident)

    def close(self) -> None:
        """Undo the join: stop watching, unbind, close the scheduler (its work finishes),
        unregister (the TPCs are free), remove the signal, close the device.

        Every step runs even when one before it fails (a fault lost the context, a wait
        passed its bound): the TPCs and the signal are given back whatever the device's
        state. An error is raised at the end (the earlier ones as its context).
        """
        with contextlib.ExitStack() as steps:  # run last to first, each whatever the others do
            steps.callback(self.device.close)
            if self.signal is not None:
                steps.callback(self.signal.close)
            steps.callback(self.ledger.close)
            steps.callback(self.ledger.unregister, [self.tenant.name])
            if self.memory is not None:
                steps.callback(self.memory.uninstall)
            steps.callback(self.scheduler.close)
            steps.callback(self._uninstall)
            if threading.get_ident() == self.thread:
                steps.callback(self.tenant.__exit__, None, None, None)
            steps.callback(self.watch.stop)


    def _uninstall(self) -> None:
        """Uninstall the scheduler process-wide, if it is still the one installed."""
        if get_atomizer() is self.scheduler:
            set_scheduler(None)


_lock = threading.Lock()
_current: Membership | None = None
_atexit_registered = False


def parse_memory(value: int | str | None, owner: str = "lithos.join") -> int | None:
    """Bytes from an int or a size such as ``"8GiB"`` or ``"512 MiB"``; None stays None.

    Raises
    ------
    ValueError
        Naming ``owner``'s ``memory_limit``.
    """
    if value is None or (is_int(value) and value >= 1):
        return None if value is None else int(value)
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]iB|B)?\s*", value) if isinstance(value, str) else None
    if match is None or float(match[1]) * _UNITS[match[2] or ""] < 1:
        raise ValueError(f"{owner}: memory_limit must be bytes (an int >= 1) or a size such as '8GiB', got {value!r}")
    return int(float(match[1]) * _UNITS[match[2] or ""])


def _claim(gpu: Any, priority: Any, share: Any, tpcs: Any, memory_limit: Any, name: Any) -> TenantClaim:
    """Check `join`'s arguments, each refused by its name; the claim they make."""
    if not is_int(gpu) or gpu < 0:
        raise ValueError(f"lithos.join: gpu must be an int >= 0, got {gpu!r}")
    values = [p.value for p in Priority]
    if isinstance(priority, str) and priority in values:
        priority = Priority(priority)
    if not isinstance(priority, Priority):
        raise ValueError(f"lithos.join: priority must be one of {values}, got {priority!r}")
    if (share is None) == (tpcs is None):
        raise ValueError(f"lithos.join: give exactly one of share= and tpcs=, got share={share!r}, tpcs={tpcs!r}")
    if share is not None and not (is_number(share) and 0 < share <= 1):
        raise ValueError(f"lithos.join: share must be a number in (0, 1], got {share!r}")
    if tpcs is not None and not (is_int(tpcs) and tpcs >= 1):
        raise ValueError(f"lithos.join: tpcs must be an int >= 1, got {tpcs!r}")
    if name is None:
        program = Path(sys.argv[0]).stem if sys.argv and sys.argv[0] not in ("", "-c", "-m") else ""
        name = f"{program or 'python'}-{os.getpid()}"
    if not isinstance(name, str) or not name:
        raise ValueError(f"lithos.join: name must be a non-empty string, got {name!r}")
    return TenantClaim(name, priority, None if share is None else float(share), None if tpcs is None else int(tpcs),
                       parse_memory(memory_limit))


def join(gpu: int = 0, *, priority: str | Priority, share: float | None = None, tpcs: int | None = None,
         memory_limit: int | str | None = None, name: str | None = None, simulate: bool | None = None,
         policy: Policy | None = None) -> Membership:
    """Make this process a tenant of GPU ``gpu``, shared with other lithos processes.

    Parameters
    ----------
    gpu : int
        The GPU's index among those the process sees (``CUDA_VISIBLE_DEVICES`` applies);
        its ledger is the physical GPU's, whatever index other processes see it under.
    priority : {"latency-critical", "best-effort"} or Priority
    share : float, optional
        The fraction of the GPU's TPCs the tenant owns, in (0, 1]. Exactly one of
        ``share`` and ``tpcs``.
    tpcs : int, optional
        How many TPCs it owns.
    memory_limit : int or str, optional
        Device memory the process may hold through CuPy, in bytes or as ``"8GiB"``
        (`TenantMemoryLimit`, wrapping the allocator installed now); None: no limit.
    name : str, optional
        The tenant's name, unique on the GPU; default ``<program>-<pid>``.
    simulate : bool, optional
        As `lithos_sched.open_device`: None uses the GPU if there is one, else the
        simulated device (with a warning).
    policy : Policy, optional
        The scheduler's policy.

    Returns
    -------
    Membership

    Raises
    ------
    ValueError
        For a bad argument (the message names it).
    RuntimeError
        If the process has joined already (`leave` first).
    TPCsUnavailableError
        If the GPU has too few free TPCs (the message says who holds them).
    PermissionError
        If another user's lithos processes share the GPU, or the ledger is not this user's.
    """
    global _current, _atexit_registered
    claim = _claim(gpu, priority, share, tpcs, memory_limit, name)
    if simulate is not None and not isinstance(simulate, bool):
        raise ValueError(f"lithos.join: simulate must be True, False or None, got {simulate!r}")
    if policy is not None and not isinstance(policy, Policy):
        raise ValueError(f"lithos.join: policy must be a lithos_sched.Policy, got {type(policy).__name__}")
    with _lock:
        if _current is not None:
            raise RuntimeError(f"lithos.join: this process is tenant {_current.tenant.name!r} of GPU {_current.gpu} "
                               "already; call lithos.leave() first")
        count = device_count(simulate)
        if gpu >= count:
            raise ValueError(f"lithos.join: gpu {gpu} out of range: this process sees {count} GPU(s)")
        with contextlib.ExitStack() as undo:
            device = open_device(gpu, simulate=simulate)
            undo.callback(device.close)
            if not device.simulated:
                import cupy

                cupy.cuda.Device(gpu).use()  # this thread's CuPy work goes to the GPU joined
            ledger = Ledger(device.uuid, device.num_tpcs)
            undo.callback(ledger.close)
            signal = None
            if claim.priority is Priority.LATENCY_CRITICAL:
                signal = RequestSignal.create(ledger.path.parent)
                undo.callback(signal.close)
                claim = dataclasses.replace(claim, signal=str(signal.path))
            owned = ledger.register([claim])[claim.name]
            undo.callback(ledger.unregister, [claim.name])
            scheduler = Scheduler(device, [TenantSpec(claim.name, claim.priority, tpcs=tuple(sorted(owned)))], policy)
            undo.callback(scheduler.close)
            tenant = scheduler.tenant(claim.name)
            if signal is not None:
                tenant.publish_requests(signal)
            scheduler.set_default_tenant(claim.name)
            memory = None
            if claim.memory_limit is not None:
                memory = TenantMemoryLimit(claim.name, claim.memory_limit)
                memory.install()
                undo.callback(memory.uninstall)
            watch = LedgerWatch(ledger, scheduler)
            watch.start()
            undo.callback(watch.stop)
            set_scheduler(scheduler)
            undo.callback(set_scheduler, None)
            tenant.__enter__()
            undo.pop_all()
        _current = Membership(gpu, device, ledger, scheduler, tenant, signal, memory, watch)
        if not _atexit_registered:
            atexit.register(leave)
            os.register_at_fork(after_in_child=_forget)
            _atexit_registered = True
        return _current


def leave() -> None:
    """Undo `join` (`Membership.close`); nothing if the process has not joined. Runs at exit."""
    global _current
    with _lock:
        membership, _current = _current, None
    if membership is not None:
        membership.close()


def joined() -> Membership | None:
    """This process's `Membership`, or None."""
    return _current


def tenant() -> Tenant:
    """The joined tenant: ``with lithos.tenant():`` binds another thread to it.

    Raises
    ------
    RuntimeError
        If the process has not joined.
    """
    if _current is None:
        raise RuntimeError("lithos.tenant(): this process has not joined a GPU (lithos.join)")
    return _current.tenant


def _forget() -> None:
    """In a forked child: the parent's membership is not the child's."""
    global _current
    _current = None


def parse_join_spec(text: str, source: str = JOIN_ENV) -> dict[str, Any]:
    """`join`'s keyword arguments from ``"gpu=0,priority=best-effort,share=0.5"``.

    Keys: ``gpu``, ``priority``, ``share``, ``tpcs``, ``memory_limit`` (``8GiB``),
    ``name``, ``simulate`` (``1``/``0``/``true``/``false``). Values are checked by `join`.

    Raises
    ------
    ValueError
        Naming ``source`` and the item it cannot read.
    """
    convert: dict[str, Any] = {"gpu": int, "priority": str, "share": float, "tpcs": int, "memory_limit": str,
                               "name": str, "simulate": _flag}
    out: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in convert:
            raise ValueError(f"{source}: cannot read {item!r}; items are key=value with keys {sorted(convert)}")
        try:
            out[key] = convert[key](value.strip())
        except ValueError:
            raise ValueError(f"{source}: {key} cannot be {value.strip()!r}") from None
    return out


def _flag(text: str) -> bool:
    if text.lower() in ("1", "true", "yes"):
        return True
    if text.lower() in ("0", "false", "no"):
        return False
    raise ValueError(text)
