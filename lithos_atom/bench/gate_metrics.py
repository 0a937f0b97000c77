"""What the device-side gates achieve, read from a scheduler's trace.

Two measures of the best-effort side, from `Scheduler.atoms` and `Scheduler.request_windows`:

- `idle_between_atoms`: the share of a window in which a best-effort tenant's partition
  (home, or the stolen TPCs) ran none of its atoms although the tenant had work queued
  there, leaving out, for the stolen TPCs, the requests that closed their gate. Gaps are
  what the host costs when it issues too slowly.
- `reclaim`: for each latency-critical request, how long stolen atoms that were running
  when it started kept going (the request's kernels wait for their blocks), and whether
  any stolen atom started inside a request (a gate that did not hold).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from lithos_sched.scheduler import Scheduler
from lithos_sched.tenant import Priority
from lithos_sched.trace_buffer import TraceRow

#: Gaps shorter than this are not idle: events time atoms to about half a microsecond.
MIN_GAP_US = 1.0
#: A stolen atom that starts this soon after a request's start event is one the gate let
#: through just before: the event and the gate write are a few microseconds apart.
START_SLACK_US = 20.0


def _merge(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The union of ``intervals`` as sorted disjoint intervals (gaps under `MIN_GAP_US` closed)."""
    out: list[list[float]] = []
    for start, end in sorted(intervals):
        if out and start - out[-1][1] < MIN_GAP_US:
            out[-1][1] = max(out[-1][1], end)
        else:
            out.append([start, end])
    return [(a, b) for a, b in out]


def _overlap(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> float:
    """Total length of the intersection of two sorted disjoint interval lists."""
    total, j = 0.0, 0
    for start, end in a:
        while j < len(b) and b[j][1] <= start:
            j += 1
        k = j
        while k < len(b) and b[k][0] < end:
            total += max(0.0, min(end, b[k][1]) - max(start, b[k][0]))
            k += 1
    return total


def idle_between_atoms(atoms: Iterable[TraceRow], tenant: str,
                       windows: Sequence[tuple[str, float, float]] = ()) -> dict[str, Any]:
    """Idle shares of ``tenant``'s home and stolen partitions between its atoms.

    The window of each is from its first atom's start to its last atom's end; time inside
    latency-critical requests (``windows``, as `Scheduler.request_windows` gives them) is
    left out of the stolen TPCs' window, since their gate is meant to hold atoms then.

    Returns
    -------
    dict
        For ``home`` and ``stolen``: ``window_ms`` (what was counted), ``idle_share``
        (gaps with no atom running, of that window) and ``gaps``; None for a partition
        the tenant never ran on.
    """
    rows = [r for r in atoms if r.tenant == tenant]
    requests = _merge([(start, start + dur) for _, start, dur in windows])
    out: dict[str, Any] = {}
    for name, stolen in (("home", False), ("stolen", True)):
        busy = _merge([(r.start_us, r.start_us + r.duration_us) for r in rows if r.stolen is stolen])
        if not busy:
            out[name] = None
            continue
        span = [(busy[0][0], busy[-1][1])]
        gaps = [(a[1], b[0]) for a, b in zip(busy, busy[1:])]
        counted = span[0][1] - span[0][0]
        idle = sum(end - start for start, end in gaps)
        if stolen:
            counted -= _overlap(span, requests)
            idle -= _overlap(gaps, requests)
        out[name] = {"window_ms": counted / 1e3, "idle_share": idle / counted if counted > 0 else 0.0,
                     "gaps": len(gaps)}
    return out


def reclaim(atoms: Iterable[TraceRow], windows: Sequence[tuple[str, float, float]],
            atom_us: float | None = None) -> dict[str, Any]:
    """How the stolen atoms of every tenant behaved at each request's start.

    Parameters
    ----------
    atoms : iterable of TraceRow
    windows : sequence of (tenant, start_us, duration_us)
        The latency-critical requests.
    atom_us : float, optional
        The target atom length, to report the reclaim in atoms too.

    Returns
    -------
    dict
        ``requests``; ``reclaim_us_p50``/``p99``/``max``: per request, from its start to
        the end of the last stolen atom already running then (0 when none was);
        ``started_inside``: stolen atoms that started after a request's start (beyond
        `START_SLACK_US`) and before its end; ``reclaim_atoms_p99`` with ``atom_us``.
    """
    stolen = sorted((r.start_us, r.start_us + r.duration_us) for r in atoms if r.stolen)
    starts = np.array([s for s, _ in stolen])
    reclaims, inside = [], 0
    for _, start, dur in windows:
        end = start + dur
        running = [e - start for s, e in stolen if s <= start + START_SLACK_US and e > start]
        reclaims.append(max(running, default=0.0))
        if starts.size:
            lo, hi = np.searchsorted(starts, [start + START_SLACK_US, end], side="right")
            inside += int(hi - lo)
    if not reclaims:
        return {"requests": 0}
    r = np.array(reclaims)
    out = {"requests": len(reclaims), "reclaim_us_p50": float(np.percentile(r, 50)),
           "reclaim_us_p99": float(np.percentile(r, 99)), "reclaim_us_max": float(r.max()),
           "started_inside": inside}
    if atom_us:
        out["reclaim_atoms_p99"] = out["reclaim_us_p99"] / atom_us
    return out


def busy_windows(atoms: Iterable[TraceRow], tenants: Sequence[str], grace_us: float) -> list[tuple[str, float, float]]:
    """Windows of latency-critical work from the traced launches of ``tenants`` (for runs
    whose requests are not marked): each tenant's launches closer than ``grace_us`` to the
    previous one's end join one window, as its gate stays closed through that grace."""
    out: list[tuple[str, float, float]] = []
    for name in tenants:
        spans = sorted((r.start_us, r.start_us + r.duration_us) for r in atoms if r.tenant == name)
        merged: list[list[float]] = []
        for start, end in spans:
            if merged and start - merged[-1][1] < grace_us:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        out += [(name, a, b - a) for a, b in merged]
    return sorted(out, key=lambda w: w[1])


def gate_figures(sched: Scheduler, tenant: str = "be") -> dict[str, Any]:
    """The measures of this module for a finished scheduler run: whether gates were on,
    `idle_between_atoms` of best-effort ``tenant``, `reclaim` at the requests the trace
    holds (or, where no request was marked, at the `busy_windows` of the latency-critical
    tenants' traced launches: ``windows`` says which), and the host CPU per best-effort
    atom (`TenantStats.host_cpu_us`)."""
    atoms, windows = sched.atoms(), sched.request_windows()
    source = "requests"
    if not windows:
        lc = [t.name for t in sched.tenants.values() if t.priority is Priority.LATENCY_CRITICAL]
        windows, source = busy_windows(atoms, lc, sched.policy.lc_idle_grace_us), "traced launches"
    stats = sched.stats()["tenants"].get(tenant, {})
    return {"device_gates": sched.uses_gates, "windows": source,
            "idle_between_atoms": idle_between_atoms(atoms, tenant, windows),
            "reclaim": reclaim(atoms, windows, sched.policy.atom_us),
            "host_cpu_us_per_atom": stats.get("host_cpu_us_per_atom")}
