"""How much of the time a tenant's atoms kept the device busy, from the scheduler's trace.

A best-effort tenant gains from lithos only while its atoms run: this tells how much of a
window any of them ran, how much on stolen TPCs and how much on its own, and how the time
with none running splits into gaps (many short gaps: the host issues too slowly; few long
ones: it was held or waited).
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from typing import Any

from lithos_sched.trace_buffer import TraceRow


#: Gaps shorter than this between atoms are not idle time: events time atoms to about
#: half a microsecond on the GPU, and back-to-back atoms differ by rounding in virtual time.
MIN_GAP_US = 1.0


def _covered_us(intervals: list[tuple[float, float]]) -> tuple[float, list[float]]:
    """Total length of the union of ``intervals`` (sorted by start), gaps under
    `MIN_GAP_US` closed, and the gaps left inside it."""
    covered, gaps = 0.0, []
    cur_start, cur_end = intervals[0]
    for start, end in intervals[1:]:
        if start - cur_end >= MIN_GAP_US:
            covered += cur_end - cur_start
            gaps.append(start - cur_end)
            cur_start, cur_end = start, end
        else:
            cur_end = max(cur_end, end)
    return covered + (cur_end - cur_start), gaps


def tenant_occupancy(atoms: Iterable[TraceRow], tenant: str, window_us: float | None = None) -> dict[str, Any] | None:
    """The share of a window in which ``tenant`` had an atom running.

    Parameters
    ----------
    atoms : iterable of TraceRow
        Retired atoms (`Scheduler.atoms`).
    tenant : str
    window_us : float, optional
        The window: this long, ending when the tenant's last atom ended (a run's
        measurement, without the warm-up before it). The whole span of its atoms if None
        or longer.

    Returns
    -------
    dict or None
        ``window_ms``; ``busy_share``, ``stolen_share`` and ``home_share`` (of the window,
        with any atom, with a stolen one, with one on its own TPCs: the two overlap when
        both ran); ``idle_gaps``, ``idle_gap_median_us`` and ``idle_ms`` (the gaps with
        none running). None if the tenant has no atom.
    """
    if window_us is not None and not window_us > 0:
        raise ValueError(f"window_us must be > 0, got {window_us!r}")
    rows = [(r.start_us, r.start_us + r.duration_us, r.stolen) for r in atoms if r.tenant == tenant]
    if not rows:
        return None
    last = max(end for _, end, _ in rows)
    first = min(start for start, _, _ in rows)
    begin = first if window_us is None else max(first, last - window_us)
    clipped = sorted((max(s, begin), e, stolen) for s, e, stolen in rows if e > begin)
    span = last - begin
    busy, gaps = _covered_us([(s, e) for s, e, _ in clipped])
    shares = {}
    for name, want in (("stolen_share", True), ("home_share", False)):
        part = [(s, e) for s, e, stolen in clipped if stolen is want]
        shares[name] = _covered_us(part)[0] / span if part and span > 0 else 0.0
    return {"window_ms": span / 1e3, "busy_share": busy / span if span > 0 else 0.0, **shares,
            "idle_gaps": len(gaps), "idle_gap_median_us": statistics.median(gaps) if gaps else 0.0,
            "idle_ms": sum(gaps) / 1e3}
