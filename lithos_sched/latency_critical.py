"""The scheduler's latency-critical launches and the device-side gates they close.

A latency-critical launch runs unsplit at once on a high-priority stream of its tenant's
partition (or, with a right-sizer, of the part of it the kernel needs); outside a request
it closes the tenant's gate first (`lithos_sched.gates`). A CUDA graph is one request of
its own. `LatencyCriticalLaunches` is a part of `Scheduler`, in a file of its own.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from lithos_atom.plan import KernelKey, LaunchPlan, LaunchShape, WholeLaunch
from lithos_sched.faults import cuda_error_code
from lithos_sched.gates import CLOSED, OPEN, Gate, GateBoard
from lithos_sched.tenant import Priority

from lithos_sched.accounting import AtomRecord

if TYPE_CHECKING:
    from lithos_sched.tenant_runtime import Tenant

# A latency-critical thread retires its own timed launches only once this many are pending.
_LC_RETIRE_BATCH = 32


class LatencyCriticalLaunches:
    """`Scheduler`'s latency-critical launch path and gate set-up (a mixin of `Scheduler`)."""

    # ---- device-side gates ---------------------------------------------------------

    def _open_gate_board(self) -> GateBoard | None:
        """The gates of this scheduler's latency-critical tenants (`Policy.device_gates`),
        or None where they are off or the device cannot use them."""
        if not self.policy.device_gates or not self._lc:
            return None
        board = GateBoard()
        if not self._prepare_gates(board.memory):
            board.close()
            return None
        return board

    def _usable_gate(self, gate: Gate | None) -> Gate | None:
        """``gate`` (a followed tenant's, from its `RequestSignal`) if gates are on and the
        device can use it, else None."""
        if gate is None or not self.policy.device_gates or not self._prepare_gates(gate.memory):
            return None
        return gate

    def _prepare_gates(self, memory: Any) -> bool:
        """Whether the device can wait on and write gates in ``memory``; if not, one
        warning names the reason (best-effort atoms then fall back to the host's hold)."""
        try:
            self.timeline.prepare_gates(memory)
        except Exception as exc:
            warnings.warn(f"lithos: device-side gates are unavailable ({type(exc).__name__}: {exc}); best-effort "
                          "atoms on stolen TPCs fall back to the host's hold", RuntimeWarning, stacklevel=4)
            return False
        return True

    def _gated(self) -> bool:
        """Whether best-effort atoms on stolen TPCs wait behind device-side gates: every
        latency-critical tenant has one, and no right-sizer gives TPCs away kernel by
        kernel (a gate covers all of its tenant's TPCs)."""
        return bool(self._lc) and self.right_sizer is None and all(t.gate is not None for t in self._lc)

    def _close_gate_for_launch(self, tenant: Tenant, stream: Any) -> None:
        """Before a latency-critical launch outside any request, close the tenant's gate
        by a write on the launch's stream; the `GateKeeper` opens it once the tenant is
        idle (`Tenant.idle`: the idle grace covers the host's gaps between kernels)."""
        if tenant.hold_gate(stream):
            self._gate_keeper.arm()

    def _launch_latency_critical(self, tenant: Tenant, launch: WholeLaunch, user: Any,
                                 describe: Callable[[], LaunchShape]) -> None:
        """Issue one latency-critical launch unsplit on a high-priority stream.

        The hot path of a latency-critical request: one launch, one re-recorded event that
        tells best-effort tenants whether this one is idle, and, one launch in
        `Policy.lc_timing_every`, timing events for the predictor and the accounting. With
        a right-sizer the kernel runs on the partition of the TPCs it needs, ordered with
        the user's stream by two event waits.
        """
        self._check_open(tenant)
        tl = self.timeline
        home = tenant.home
        if tenant._stream_handle is None:
            tenant._stream_handle = tl.handle(home.high)
            tenant._busy = tl.marker()  # type: ignore[attr-defined]
            tenant._join = tl.marker()  # type: ignore[attr-defined]
        user_handle = tl.handle(user)
        base, base_handle = home, tenant._stream_handle
        if tenant._request is not None and user_handle in (0, tenant._request_handle):
            # inside `Tenant.on_tpcs`: the block's stream, already ordered with the tenant's
            base, base_handle = tenant._request, tenant._request_handle
            user, user_handle = base.high, base_handle
        elif user_handle == 0 or user_handle == tenant._stream_handle:
            user, user_handle = home.high, tenant._stream_handle  # the tenant's own stream
        timed = False
        with tenant._lock:
            if tenant._in_launch:
                raise RuntimeError(f"tenant {tenant.name!r} submitted a launch from inside its own launch")
            tenant._in_launch = True
            try:
                t_host = time.perf_counter()
                stats = tenant.stats
                stats.kernels += 1
                stats.atoms += 1
                tenant._last_submit_us = tl.now_us()
                timed = (stats.kernels - 1) % self.policy.lc_timing_every == 0
                sized = self.right_sizer is not None and base is home  # a block chose its partition
                shape = describe() if timed or sized else None
                part = base if shape is None or not sized else self._latency_critical_partition(
                    tenant, shape.key, shape.total_blocks, shape.wave_blocks)
                stream = part.high
                own = part is base and user_handle == base_handle
                if not own:
                    tl.record_into(tenant._join, user)  # type: ignore[attr-defined]
                    tl.wait(stream, tenant._join)
                if timed:
                    assert shape is not None
                    wave = self._partition_wave(shape.wave_blocks, part)
                    predicted = self.predictor.predict_us(shape.key, part.num_tpcs, shape.total_blocks, wave)
                    begin = tl.record(stream)
                self._close_gate_for_launch(tenant, stream)
                launch(stream)
                if timed:
                    end = tl.record(stream, blocking=self._blocking_waits(tenant))
                    now = tl.now_us()
                    tenant._inflight.append(AtomRecord(
                        tenant, shape.key, 0, shape.total_blocks, part, stream, begin, end, wave, predicted,
                        now + (predicted or 0.0), False))
                    stats.timed_atoms += 1
                if not own:
                    # Its own stream tells `Tenant.idle` when an own launch is done; a launch
                    # elsewhere is marked, and the user's stream waits for it.
                    tl.record_into(tenant._busy, stream)  # type: ignore[attr-defined]
                    tenant._last_end = tenant._busy
                    tl.wait(user, tenant._busy)
                    if part is not home:
                        tenant._gate_after = tenant._busy
                tenant._last_submit_us = tl.now_us()
                stats.host_issue_us += (time.perf_counter() - t_host) * 1e6
            except Exception as exc:
                if cuda_error_code(exc) is None:
                    raise
                raise self._device_error(tenant, "a launch failed", exc) from exc
            finally:
                tenant._in_launch = False
        if timed and len(tenant._inflight) >= _LC_RETIRE_BATCH:
            self._retire(tenant)  # rarely: best-effort threads retire these between atoms

    def _launch_graph(self, tenant: Tenant, graph: Any, user: Any) -> None:
        """Launch a CUDA graph of ``tenant`` on its own TPCs, unsplit, ordered with the
        user's stream by events where it is another.

        A latency-critical graph is one request: outside a `Tenant.request` its gate is
        closed before it and opened after it by writes on its stream, so stolen atoms stop
        for it and resume when it ends with no host involved. A best-effort graph cannot
        be split into atoms or preempted: it runs whole on the tenant's own TPCs, never on
        stolen ones (one warning per scheduler)."""
        self._check_open(tenant)
        try:
            self._launch_graph_on(tenant, graph, user)
        except Exception as exc:
            if cuda_error_code(exc) is None:
                raise
            raise self._device_error(tenant, "a graph launch failed", exc) from exc

    def _launch_graph_on(self, tenant: Tenant, graph: Any, user: Any) -> None:
        tl = self.timeline
        lc = tenant.priority is Priority.LATENCY_CRITICAL
        target = tenant.stream if lc else tenant.home.normal
        if tenant._request is not None and lc:
            target = tenant._request.high  # inside `on_tpcs`: the block's partition
        if not lc:
            self.warn_whole("CUDA graph", "a best-effort graph runs whole on its tenant's own TPCs")
        user_stream = target if user is None or tl.handle(user) in (0, tl.handle(target)) else user
        own = user_stream is target
        with tenant._lock:
            tenant.stats.kernels += 1
            tenant._last_submit_us = tl.now_us()
            if not own:
                tl.wait(target, tl.record(user_stream))
            request = lc and not tenant._request_depth  # the graph is a request of its own
            if request:
                tenant.stats.requests += 1
                if tenant.gate is not None:
                    tl.write_gate(target, tenant.gate, CLOSED)
            begin = tl.record(target) if request and self._trace_on else None
            graph.launch(stream=tl.as_cupy(target))  # type: ignore[attr-defined]
            end = tl.record(target)
            if request and tenant.gate is not None:
                with tenant._gate_lock:  # what launches held before the graph is done once it is
                    tl.write_gate(target, tenant.gate, OPEN)
                    tenant._gate_held = False
            if begin is not None:
                tenant._request_marks.append((begin, end))
            if not own:
                tl.wait(user_stream, end)
            tenant._last_end = end
            tenant._last_submit_us = tl.now_us()

    def _run_latency_critical(self, tenant: Tenant, plan: LaunchPlan, user: Any) -> None:
        tl = self.timeline
        part = self._latency_critical_partition(tenant, plan.key, plan.total_blocks, plan.wave_blocks)
        stream = part.high
        tenant._last_submit_us = tl.now_us()
        own = tl.handle(user) == tl.handle(stream)
        if not own:
            tl.wait(stream, tl.record(user))
        predicted = self.predictor.predict_us(plan.key, part.num_tpcs, plan.total_blocks,
                                              self._wave_blocks(plan, part))
        self._close_gate_for_launch(tenant, stream)
        rec = self._issue(tenant, plan, 0, plan.total_blocks, part, stream, predicted, False)
        plan.complete()
        tenant._last_end = rec.end
        tenant._last_submit_us = tl.now_us()
        if not own:
            tl.wait(user, rec.end)
        if part is not tenant.home:
            tenant._gate_after = rec.end
        self._retire(tenant)

    def _latency_critical_partition(self, tenant: Tenant, key: KernelKey, total_blocks: int,
                                    device_wave_blocks: int) -> Any:
        """Where a latency-critical kernel runs: its tenant's home partition or, with a
        right-sizer, the partition of the first TPCs of the home that the kernel needs."""
        home = tenant.home
        sizer = self.right_sizer
        if sizer is None:
            return home
        per_tpc = device_wave_blocks / self.device.num_tpcs if device_wave_blocks > 0 else None
        n = sizer.tpcs_for(key, home.num_tpcs, total_blocks, per_tpc)
        part = self._first_tpcs_partition(tenant, n)
        tenant._active_tpcs = part.tpcs
        return part

    def _first_tpcs_partition(self, tenant: Tenant, n: int) -> Any:
        """The partition of ``tenant``'s first ``n`` TPCs (its home for ``n`` >= all)."""
        if n >= tenant.home.num_tpcs:
            return tenant.home
        part = tenant._rightsized.get(n)  # by size: no TPC set is built per launch
        if part is None or part.closed:
            part = tenant._rightsized[n] = self.device.partition(sorted(tenant.tpcs)[:n])
        return part

