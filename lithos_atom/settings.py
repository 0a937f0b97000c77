"""Typed lithos settings, and every ``LITHOS_*`` environment variable lithos reads.

`VARIABLES` lists each variable with its reader, which refuses a bad value with a one-line
``ValueError`` naming the variable. The kernel settings (`Settings`) are read once, by
`get_settings`, which `atomize`, every `Atomizer` (and so every scheduler) and the command
lines call when they start, before any kernel is launched: that first read checks every
variable of the list (`check_environment`) and warns once about any ``LITHOS_*`` variable
that is not in it, since a misspelt one would otherwise silently do nothing. Modules that
read a variable when they use it (the ledger's folder, the simulated GPUs, ...) go through
`read_variable`, the same check.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any


@dataclasses.dataclass(frozen=True)
class Settings:
    """lithos settings.

    Attributes
    ----------
    cache_dir : Path
        Where rewritten and linked kernels are cached on disk (``LITHOS_CACHE_DIR``,
        default ``~/.cache/lithos``); must not be an existing file.
    disk_cache : bool
        Whether the on-disk kernel cache is used (``LITHOS_DISK_CACHE``, default on).
    atom_us : float
        Target duration of one atom in microseconds, finite and > 0 (``LITHOS_ATOM_US``,
        default `DEFAULT_ATOM_US`): the one setting atoms are sized from, by the scheduler
        when one is active (``Policy.atom_us``) and by the atomizer otherwise.
    strict : bool
        Default for ``strict``: raise instead of running a kernel whole when it cannot be
        atomized (``LITHOS_STRICT``, default off).
    hold_gil : str
        Which launches keep the GIL through the driver call: ``latency-critical``,
        ``all`` or ``none`` (``LITHOS_HOLD_GIL``, default ``latency-critical``).
    """

    cache_dir: Path
    disk_cache: bool
    atom_us: float
    strict: bool
    hold_gil: str


#: ``LITHOS_ATOM_US`` where it is unset: every atom costs a Python host tens of microseconds
#: and a GIL hand-off to issue, so much shorter atoms cost more host time than the latency
#: they save (LithOS's 250-500 us come from a C++ host).
DEFAULT_ATOM_US = 1000.0

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
HOLD_GIL_CHOICES = ("latency-critical", "all", "none")


def _read_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{name}={raw!r} is not a boolean (use 1/0, true/false, on/off)")


def _read_positive_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number") from None
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name}={raw!r} must be a finite number > 0")
    return value


def _read_positive_int(name: str) -> int | None:
    raw = os.environ.get(name)
    if raw is None:
        return None
    if not raw.strip().isascii() or not raw.strip().isdigit() or int(raw) < 1:
        raise ValueError(f"{name}={raw!r} must be an int >= 1")
    return int(raw)


def _read_directory(name: str, default: Path | None, *, existing: bool = False) -> Path | None:
    raw = os.environ.get(name)
    if not raw:
        return default
    path = Path(raw)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{name}={raw!r} is not a directory")
    if existing and not path.is_dir():
        raise ValueError(f"{name}={raw!r} does not exist (it must be an existing directory)")
    return path


def _read_choice(name: str, choices: tuple[str, ...], default: str) -> str:
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value not in choices:
        raise ValueError(f"{name}={raw!r} is not one of {', '.join(choices)}")
    return value


def _read_switch(name: str) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw.strip() in ("", "0"):
        return False
    if raw.strip() == "1":
        return True
    raise ValueError(f"{name}={raw!r} must be 1 (on) or 0 (off)")


def _read_text(name: str) -> str | None:
    return os.environ.get(name)


@dataclasses.dataclass(frozen=True)
class Variable:
    """One ``LITHOS_*`` environment variable lithos reads.

    Attributes
    ----------
    name : str
    read : callable
        Returns its value (its default where it is unset); raises ``ValueError`` naming
        the variable for a value it cannot take.
    meaning : str
        What it sets, and who reads it.
    """

    name: str
    read: Callable[[], Any]
    meaning: str


def _variables(*items: tuple[str, Callable[[str], Any], str]) -> dict[str, Variable]:
    return {name: Variable(name, functools.partial(reader, name), meaning) for name, reader, meaning in items}


#: Every ``LITHOS_*`` environment variable lithos reads.
VARIABLES: dict[str, Variable] = _variables(
    ("LITHOS_CACHE_DIR", lambda n: _read_directory(n, Path.home() / ".cache" / "lithos"),
     "the kernel cache's folder (`Settings.cache_dir`)"),
    ("LITHOS_DISK_CACHE", lambda n: _read_bool(n, True), "whether kernels are cached on disk"),
    ("LITHOS_ATOM_US", lambda n: _read_positive_float(n, DEFAULT_ATOM_US), "the atom duration in us"),
    ("LITHOS_STRICT", lambda n: _read_bool(n, False), "refuse kernels that cannot be atomized"),
    ("LITHOS_HOLD_GIL", lambda n: _read_choice(n, HOLD_GIL_CHOICES, "latency-critical"),
     "which launches keep the GIL in driver calls"),
    ("LITHOS_LEDGER_DIR", lambda n: _read_directory(n, None, existing=True),
     "the folder of the GPU ledgers and request signals (lithos_sched.ledger; default /dev/shm)"),
    ("LITHOS_SIM_GPUS", _read_positive_int, "how many GPUs the simulated machine has (lithos_sched.visible_gpus)"),
    ("LITHOS_JOIN", _read_text,
     "python -m lithos run's tenant, key=value,... (checked by lithos.membership.parse_join_spec)"),
    ("LITHOS_SCALING_DIR", lambda n: _read_directory(n, None),
     "the folder of cached scaling profiles (lithos_sched.scaling)"),
    ("LITHOS_DVFS_ACTUATE", _read_switch, "1 lets an enabled DvfsActuator change clocks (lithos_sched.dvfs)"),
    ("LITHOS_TRACE_DIR", lambda n: _read_directory(n, None), "where the benchmarks write traces"),
)


def read_variable(name: str) -> Any:
    """The value of the ``LITHOS_*`` variable ``name`` now (its default where unset).

    Raises
    ------
    ValueError
        Naming the variable, for a value it cannot take.
    KeyError
        For a name not in `VARIABLES`.
    """
    return VARIABLES[name].read()


def check_environment() -> None:
    """Check every variable of `VARIABLES`, and warn (once per call) about any
    ``LITHOS_*`` variable of the environment that is not one of them.

    Raises
    ------
    ValueError
        Naming the first variable with a value it cannot take.
    """
    for variable in VARIABLES.values():
        variable.read()
    unknown = sorted(k for k in os.environ if k.startswith("LITHOS_") and k not in VARIABLES)
    if unknown:
        warnings.warn(f"lithos ignores the unknown environment variable{'s' * (len(unknown) > 1)} "
                      f"{', '.join(unknown)}; it reads {', '.join(VARIABLES)}", RuntimeWarning, stacklevel=3)


def environment_problem(prog: str) -> str | None:
    """Check the ``LITHOS_*`` environment for a command line, before it does any work.

    Parameters
    ----------
    prog : str
        The command's name, which starts each warning line.

    Returns
    -------
    str or None
        The first bad variable's one-line error, or None when every variable is good;
        each unknown ``LITHOS_*`` variable is warned about on stderr, one line each.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            check_environment()
        except ValueError as exc:
            return str(exc)
    for w in caught:
        print(f"{prog}: warning: {w.message}", file=sys.stderr)
    return None


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Read the settings from the environment, checking every ``LITHOS_*`` variable first
    (`check_environment`; once per process, see `reload_settings`).

    Returns
    -------
    Settings

    Raises
    ------
    ValueError
        Naming the variable, for a value it cannot take.
    """
    check_environment()
    return Settings(
        cache_dir=read_variable("LITHOS_CACHE_DIR"),
        disk_cache=read_variable("LITHOS_DISK_CACHE"),
        atom_us=read_variable("LITHOS_ATOM_US"),
        strict=read_variable("LITHOS_STRICT"),
        hold_gil=read_variable("LITHOS_HOLD_GIL"),
    )


def reload_settings() -> Settings:
    """Forget the cached settings and read the environment again.

    Returns
    -------
    Settings
    """
    get_settings.cache_clear()
    return get_settings()
