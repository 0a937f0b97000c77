"""Tenant declarations: who shares the GPU, with what priority, on which TPCs."""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Iterable, Sequence

from lithos_sched.fields import is_int, is_number


class Priority(enum.Enum):
    """Priority class of a tenant.

    LATENCY_CRITICAL work is issued at once onto its partition's high-priority stream.
    BEST_EFFORT work is issued atom by atom, with a cap on queued work, onto its own TPCs
    and onto the idle TPCs of latency-critical tenants.
    """

    LATENCY_CRITICAL = "latency-critical"
    BEST_EFFORT = "best-effort"


class TenantConfigError(ValueError):
    """A tenant declaration is invalid; the message names the tenant and the field."""


@dataclasses.dataclass(frozen=True)
class TenantSpec:
    """A tenant declaration.

    Attributes
    ----------
    name : str
        Unique name.
    priority : Priority
        Priority class (its value, ``"latency-critical"`` or ``"best-effort"``, is taken
        too, as `lithos.join` takes it).
    share : float, optional
        Fraction of the device's TPCs (0 < share <= 1); TPCs are handed out in
        declaration order. Exactly one of ``share`` and ``tpcs`` is given.
    tpcs : tuple of int, optional
        Explicit TPC ids (any iterable of ints is taken, and kept as a tuple).

    Raises
    ------
    TenantConfigError
        A `ValueError` naming the tenant and the field, for a field of the wrong type or
        out of range.
    """

    name: str
    priority: Priority
    share: float | None = None
    tpcs: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise TenantConfigError(f"tenant name must be a non-empty string, got {self.name!r}")
        values = [p.value for p in Priority]
        if isinstance(self.priority, str) and self.priority in values:
            object.__setattr__(self, "priority", Priority(self.priority))
        if not isinstance(self.priority, Priority):
            raise TenantConfigError(f"tenant {self.name!r}: priority must be a lithos_sched.Priority or one of "
                                    f"{values}, got {self.priority!r}")
        if (self.share is None) == (self.tpcs is None):
            raise TenantConfigError(f"tenant {self.name!r}: give exactly one of share= and tpcs=")
        if self.share is not None:
            if not (is_number(self.share) and 0 < self.share <= 1):
                raise TenantConfigError(f"tenant {self.name!r}: share must be a number in (0, 1], got {self.share!r}")
            object.__setattr__(self, "share", float(self.share))
        if self.tpcs is not None:
            if isinstance(self.tpcs, (str, bytes)) or not isinstance(self.tpcs, Iterable):
                raise TenantConfigError(f"tenant {self.name!r}: tpcs must be TPC ids (a sequence of ints), "
                                        f"got {self.tpcs!r}")
            ids = tuple(self.tpcs)
            if len(ids) == 0:
                raise TenantConfigError(f"tenant {self.name!r}: tpcs is empty")
            bad = [t for t in ids if not is_int(t) or t < 0]
            if bad:
                raise TenantConfigError(f"tenant {self.name!r}: tpcs must be non-negative ints, got {bad!r}")
            if len(set(ids)) != len(ids):
                raise TenantConfigError(f"tenant {self.name!r}: tpcs has duplicates")
            object.__setattr__(self, "tpcs", tuple(int(t) for t in ids))


def assign_tpcs(specs: Sequence[TenantSpec], num_tpcs: int) -> dict[str, frozenset[int]]:
    """Give each tenant its TPC set: explicit sets as declared, shares from what is left.

    Parameters
    ----------
    specs : sequence of TenantSpec
    num_tpcs : int
        TPCs on the device.

    Returns
    -------
    dict
        Tenant name to TPC ids.

    Raises
    ------
    TenantConfigError
        Duplicate names, TPC ids out of range, overlapping sets, shares that do not fit,
        or a tenant left with no TPC (it would starve while others are busy).
    """
    names = [s.name for s in specs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise TenantConfigError(f"duplicate tenant names: {dupes}")
    taken: dict[int, str] = {}
    result: dict[str, frozenset[int]] = {}
    for spec in specs:
        if spec.tpcs is None:
            continue
        out = [t for t in spec.tpcs if t >= num_tpcs]
        if out:
            raise TenantConfigError(f"tenant {spec.name!r}: TPC ids {out} out of range (device has {num_tpcs})")
        clash = sorted(t for t in spec.tpcs if t in taken)
        if clash:
            raise TenantConfigError(f"tenant {spec.name!r}: TPCs {clash} already belong to {taken[clash[0]]!r}")
        for t in spec.tpcs:
            taken[t] = spec.name
        result[spec.name] = frozenset(spec.tpcs)
    free = [t for t in range(num_tpcs) if t not in taken]
    share_specs = [s for s in specs if s.share is not None]
    wanted = _apportion({s.name: s.share * num_tpcs for s in share_specs})  # type: ignore[operator]
    if sum(wanted.values()) > len(free):
        raise TenantConfigError(
            f"shares ask for {sum(wanted.values())} TPCs but only {len(free)} are free after explicit sets"
        )
    for spec in share_specs:
        n = wanted[spec.name]
        if n < 1:
            raise TenantConfigError(f"tenant {spec.name!r}: share {spec.share} of {num_tpcs} TPCs is less than one TPC")
        result[spec.name] = frozenset(free[:n])
        free = free[n:]
    return {s.name: result[s.name] for s in specs}


def _apportion(exact: dict[str, float]) -> dict[str, int]:
    """Whole TPC counts for fractional ones: each gets its floor, and the TPCs the floors
    leave out of the shares' whole total go to the largest remainders (declaration order
    breaks ties), so shares of 0.75 and 0.25 of 66 TPCs own all 66 (50 and 16), not 65."""
    counts = {name: math.floor(x + 1e-9) for name, x in exact.items()}
    extra = math.floor(sum(exact.values()) + 1e-9) - sum(counts.values())
    by_remainder = sorted(exact, key=lambda name: -(exact[name] - counts[name]))  # stable: declaration order
    for name in by_remainder[:max(0, extra)]:
        counts[name] += 1
    return counts


def specs_from(items: Iterable[TenantSpec]) -> list[TenantSpec]:
    """Validate that every item is a `TenantSpec` and return them as a list.

    Raises
    ------
    TenantConfigError
        For ``items`` that are not an iterable of `TenantSpec` (a single one, say).
    """
    if not isinstance(items, Iterable) or isinstance(items, (str, bytes)):
        raise TenantConfigError(f"tenants must be a sequence of TenantSpec, got {type(items).__name__}")
    out = list(items)
    for item in out:
        if not isinstance(item, TenantSpec):
            raise TenantConfigError(f"expected TenantSpec, got {type(item).__name__}")
    return out
