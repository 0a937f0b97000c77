"""How many blocks go into one atom.

An atom should last about ``atom_us`` (the LithOS paper: 250-500 us works well; shorter
atoms cost more launches). Blocks run in waves of ``wave_blocks`` (occupancy x SMs), so a
launch of W waves takes about W times one wave; atoms are whole waves, which keeps every
SM busy until the atom's end. Until a kernel has been timed once, it runs as one atom.
"""

from __future__ import annotations

import math
import threading
import warnings
from typing import Any

from lithos_atom.plan import KernelKey

#: Most atoms one launch is split into. Each atom is one driver launch (5-9 us of host
#: time): a fixed ``atom_blocks`` of 1 on a 22-million-block grid would otherwise issue 22
#: million launches. 65,536 atoms keep such a launch to well under a second of host time.
MAX_ATOMS_PER_LAUNCH = 65536


class CoarsenedAtomsWarning(UserWarning):
    """A fixed ``atom_blocks`` was raised so that a launch has at most `MAX_ATOMS_PER_LAUNCH` atoms."""


_coarsened_warned: set[tuple[int, int]] = set()


def choose_atom_blocks(
    total_blocks: int,
    wave_blocks: int,
    *,
    atom_blocks: int | None = None,
    atom_us: float | None = None,
    launch_us: float | None = None,
) -> int:
    """Blocks per atom for one launch.

    Parameters
    ----------
    total_blocks : int
        Blocks in the launch.
    wave_blocks : int
        Blocks resident on the device at once; 0 if unknown (treated as 1).
    atom_blocks : int, optional
        Explicit atom size; wins over ``atom_us``.
    atom_us : float, optional
        Target atom duration in microseconds.
    launch_us : float, optional
        Measured duration of the whole launch; without it (first launch) the kernel
        runs as a single atom.

    Returns
    -------
    int
        Between 1 and ``total_blocks``. A fixed ``atom_blocks`` that would make more than
        `MAX_ATOMS_PER_LAUNCH` atoms is coarsened, with a `CoarsenedAtomsWarning` once per
        size and grid (atoms sized by ``atom_us`` are bounded by the launch's duration).
    """
    if total_blocks < 1:
        raise ValueError(f"total_blocks must be >= 1, got {total_blocks}")
    if atom_blocks is not None:
        if atom_blocks < 1:
            raise ValueError(f"atom_blocks must be >= 1, got {atom_blocks}")
        return _bounded(min(atom_blocks, total_blocks), total_blocks)
    if atom_us is None or launch_us is None or launch_us <= 0:
        return total_blocks
    wave = max(1, wave_blocks)
    waves = math.ceil(total_blocks / wave)
    wave_us = launch_us / waves
    waves_per_atom = max(1, math.floor(atom_us / wave_us))
    return min(total_blocks, waves_per_atom * wave)


def _bounded(atom_blocks: int, total_blocks: int) -> int:
    least = -(-total_blocks // MAX_ATOMS_PER_LAUNCH)
    if atom_blocks >= least:
        return atom_blocks
    key = (atom_blocks, total_blocks)
    if key not in _coarsened_warned:
        _coarsened_warned.add(key)
        warnings.warn(f"lithos: {atom_blocks}-block atoms would split a {total_blocks}-block launch into more than "
                      f"{MAX_ATOMS_PER_LAUNCH} atoms; using {least}-block atoms", CoarsenedAtomsWarning, stacklevel=3)
    return least


class LaunchDurations:
    """Durations of whole launches, learned from device events without blocking.

    A pending measurement is a (start, end) event pair recorded around a launch; it is
    read the next time the same kernel shape is launched, if the end event is done, so
    no launch ever waits for the device.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._measured: dict[KernelKey, float] = {}
        self._pending: dict[KernelKey, tuple[Any, Any]] = {}

    def estimate_us(self, key: KernelKey) -> float | None:
        """The last measured duration of ``key`` in microseconds, or None."""
        with self._lock:
            pending = self._pending.get(key)
            if pending is not None and pending[1].done:
                import cupy

                self._measured[key] = cupy.cuda.get_elapsed_time(*pending) * 1000.0
                del self._pending[key]
            return self._measured.get(key)

    def wants_measurement(self, key: KernelKey) -> bool:
        """Whether a launch of ``key`` should be timed (no measurement yet, none pending)."""
        with self._lock:
            return key not in self._measured and key not in self._pending

    def add_pending(self, key: KernelKey, start: Any, end: Any) -> None:
        """Remember events recorded around a launch of ``key``."""
        with self._lock:
            self._pending[key] = (start, end)

    def record(self, key: KernelKey, duration_us: float) -> None:
        """Store a duration measured elsewhere (for example by the scheduler)."""
        with self._lock:
            self._measured[key] = duration_us
