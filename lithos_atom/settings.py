"""Typed lithos settings, read from the environment in one place.

Each setting has a default and an environment variable; a bad value raises a one-line
``ValueError`` naming the variable when the settings are first read, which `atomize` and
`Atomizer` do when they are made, before any kernel is launched.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from pathlib import Path


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
        Default target duration of one atom in microseconds, finite and > 0
        (``LITHOS_ATOM_US``, default 250, the low end of what the LithOS paper found to
        work well).
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


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


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


def _read_directory(name: str, default: Path) -> Path:
    raw = os.environ.get(name)
    if not raw:
        return default
    path = Path(raw)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{name}={raw!r} is not a directory")
    return path


def _read_choice(name: str, choices: tuple[str, ...], default: str) -> str:
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value not in choices:
        raise ValueError(f"{name}={raw!r} is not one of {', '.join(choices)}")
    return value


HOLD_GIL_CHOICES = ("latency-critical", "all", "none")


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Read the settings from the environment (once per process; see `reload_settings`).

    Returns
    -------
    Settings

    Raises
    ------
    ValueError
        Naming the variable, for a value it cannot take.
    """
    return Settings(
        cache_dir=_read_directory("LITHOS_CACHE_DIR", Path.home() / ".cache" / "lithos"),
        disk_cache=_read_bool("LITHOS_DISK_CACHE", True),
        atom_us=_read_positive_float("LITHOS_ATOM_US", 250.0),
        strict=_read_bool("LITHOS_STRICT", False),
        hold_gil=_read_choice("LITHOS_HOLD_GIL", HOLD_GIL_CHOICES, "latency-critical"),
    )


def reload_settings() -> Settings:
    """Forget the cached settings and read the environment again.

    Returns
    -------
    Settings
    """
    get_settings.cache_clear()
    return get_settings()
