"""What a `Scheduler` keeps of the work it ran: statistics, the atom trace, request windows.

`SchedulerRecords.retire` takes each tenant's finished atoms off its in-flight list, adds
their device time to the tenant's statistics, teaches the predictor (and the right-sizer)
their measured durations and, while tracing, keeps a row per atom (`TraceBuffer`) and the
window of each finished `Tenant.request` block. `stats`, `atoms`, `request_windows` and
`export_trace` (a Chrome/Perfetto file) read them back. A part of `Scheduler`, in a file
of its own.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from lithos_sched.predictor import LatencyPredictor
from lithos_sched.rightsizing import RightSizer
from lithos_sched.tenant import Priority
from lithos_sched.tenant_runtime import Tenant
from lithos_sched.timeline import Timeline
from lithos_sched.trace_buffer import TraceBuffer, TraceRow


class SchedulerRecords:
    """`Scheduler`'s accounting and trace (a mixin of `Scheduler`)."""

    tenants: dict[str, Tenant]
    timeline: Timeline
    predictor: LatencyPredictor
    right_sizer: RightSizer | None

    def _start_records(self, trace: bool) -> None:
        """Start with no record; keep a row per atom and the request windows if ``trace``."""
        self._trace_on = trace
        self._trace = TraceBuffer()
        self._request_windows: list[tuple[str, float, float]] = []  # (tenant, start_us, duration_us)
        self._t0 = self.timeline.origin()  # the trace's clock starts here

    def stats(self) -> dict[str, Any]:
        """Per-tenant accounting and the predictor's error report.

        Besides the `TenantStats` fields, each tenant has ``host_us_per_atom`` and
        ``host_cpu_us_per_atom`` (``host_issue_us`` and ``host_cpu_us`` per atom), and
        ``tpc_ms_estimated``: its measured TPC-time scaled from the timed atoms to all of
        them (the same as ``tpc_ms`` for best-effort tenants, whose atoms are all timed).
        """
        for t in self.tenants.values():
            self.retire(t)
        return {
            "tenants": {
                t.name: {"priority": t.priority.value, "tpcs": len(t.tpcs), **dataclasses.asdict(t.stats),
                         "host_us_per_atom": t.stats.host_issue_us / max(1, t.stats.atoms),
                         "host_cpu_us_per_atom": t.stats.host_cpu_us / max(1, t.stats.atoms),
                         "tpc_ms_estimated": t.stats.tpc_ms * t.stats.atoms / max(1, t.stats.timed_atoms)}
                for t in self.tenants.values()
            },
            "predictor": self.predictor.error_report(),
        }

    def atoms(self) -> list[TraceRow]:
        """Every atom retired so far (those finished are retired first), in retiring order."""
        for t in self.tenants.values():
            self.retire(t)
        return list(self._trace.rows())

    @property
    def tracing(self) -> bool:
        """Whether the scheduler keeps a record of every atom (its ``trace`` argument)."""
        return self._trace_on

    def request_windows(self) -> list[tuple[str, float, float]]:
        """``(tenant, start_us, duration_us)`` of every finished `Tenant.request` block, on
        the clock of `atoms` (events on the tenant's stream at the block's edges: from
        when its stream reached its work to when that work was done); kept while tracing."""
        for t in self.tenants.values():
            self.retire(t)
        return list(self._request_windows)

    def export_trace(self, path: str | Path) -> Path:
        """Write a Chrome/Perfetto trace of every retired atom (one process per partition,
        one thread per stream), of the requests and of the unsplit work (one thread per
        tenant each: `unsplit_trace_events`). Returns the path."""
        events = [
            {"name": r.kernel, "ph": "X", "ts": r.start_us, "dur": r.duration_us, "pid": f"TPCs {_ranges(r.tpcs)}",
             "tid": f"{r.tenant} stream {r.stream:#x}",
             "args": {"tenant": r.tenant, "blocks": [r.start_block, r.start_block + r.blocks],
                      "predicted_us": r.predicted_us, "stolen": r.stolen}}
            for r in self.atoms()
        ]
        events += [{"name": "request", "ph": "X", "ts": start, "dur": dur, "pid": "requests", "tid": name}
                   for name, start, dur in self.request_windows()]
        events += self.unsplit_trace_events()
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"traceEvents": events, "displayTimeUnit": "ms"}))
        return out

    def retire(self, tenant: Tenant) -> None:
        """Account, learn from and trace every finished atom of ``tenant`` (and the
        windows of its finished requests)."""
        tl = self.timeline
        with tenant.book.lock:
            while tenant.book.request_marks and tl.done(tenant.book.request_marks[0][1]):
                begin, end = tenant.book.request_marks.popleft()
                self._request_windows.append((tenant.name, tl.elapsed_us(self._t0, begin), tl.elapsed_us(begin, end)))
            self._retire_opaque(tenant)
            done = [r for r in tenant.book.inflight if tl.done(r.end)]
            if not done:
                return
            for r in done:
                tenant.book.inflight.remove(r)
        for r in done:
            measured = tl.elapsed_us(r.start, r.end)
            self.predictor.observe(r.key, r.partition.num_tpcs, r.count, r.wave_blocks, measured, r.predicted_us)
            if self.right_sizer is not None and tenant.priority is Priority.LATENCY_CRITICAL:
                self.right_sizer.observe(r.key, r.partition.num_tpcs, r.count, r.wave_blocks, measured)
            tenant.stats.busy_ms += measured / 1000.0
            tenant.stats.tpc_ms += measured / 1000.0 * r.partition.num_tpcs
            if r.unsplit:
                self._retire_unsplit(tenant, r, measured)
            if self._trace_on:
                self._trace.append(r.key.name, tenant.name, r.partition.tpcs, tl.handle(r.stream), r.start_block,
                                   r.count, r.predicted_us, r.stolen, tl.elapsed_us(self._t0, r.start), measured)


def _ranges(ids: Any) -> str:
    """'0-32,40' for a set of ints."""
    runs: list[list[int]] = []
    for i in sorted(ids):
        if runs and runs[-1][1] == i - 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return ",".join(f"{a}-{b}" if a != b else f"{a}" for a, b in runs)
