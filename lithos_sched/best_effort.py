"""Where the scheduler puts a best-effort launch's atoms, and when.

Without device-side gates the host decides each atom (`BestEffortPlacement._place_host`):
on stolen TPCs only while their latency-critical tenants are idle, each issued once the
queue on its partition is predicted to drain within a cap. With gates
(`BestEffortPlacement._place_gated`) atoms are queued deep at home and on the stolen TPCs
behind the gates, which the GPU evaluates at each atom boundary.
`BestEffortPlacement` is a part of `Scheduler`, in a file of its own.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from lithos_atom.plan import LaunchPlan, LaunchShape, WholeLaunch
from lithos_sched.gates import Gate
from lithos_sched.tenant import Priority

from lithos_sched.accounting import OPAQUE_WORK, AtomRecord

if TYPE_CHECKING:
    from lithos_sched.tenant_runtime import Tenant

#: `LaunchPlan.reason` of a best-effort launch run unsplit by `Policy.short_best_effort_whole`
_SHORT_REASON = "predicted to run within one atom"


def _cannot_split(plan: LaunchPlan) -> bool:
    """Whether ``plan`` runs whole because its kernel cannot be split (not merely because
    it is predicted within one atom, `Policy.short_best_effort_whole`)."""
    return not plan.atomized and plan.reason != _SHORT_REASON


class BestEffortPlacement:
    """`Scheduler`'s best-effort launch path (a mixin of `Scheduler`)."""

    def launch_short_best_effort(self, tenant: Tenant, launch: WholeLaunch, user: Any,
                                  describe: Callable[[], LaunchShape]) -> bool:
        """Issue a best-effort launch unsplit when it is predicted to be one atom anyway
        (`Policy.short_best_effort_whole`); returns False, issuing nothing, otherwise (the
        front end then builds its plan)."""
        if not self.policy.short_best_effort_whole:
            return False
        shape = describe()
        home = tenant.home
        predicted = self.predictor.predict_us(shape.key, home.num_tpcs, shape.total_blocks,
                                              self._partition_wave(shape.wave_blocks, home))
        if predicted is None or predicted > self.policy.atom_us:
            return False
        plan = LaunchPlan.whole(shape.key, shape.total_blocks, launch, _SHORT_REASON, wave_blocks=shape.wave_blocks)
        self.submit_for(tenant, plan, user)
        return True

    def _run_best_effort(self, tenant: Tenant, plan: LaunchPlan, user: Any) -> None:
        tl = self.timeline
        user_handle = tl.handle(user)
        unsplit = _cannot_split(plan)
        if unsplit:
            tenant.stats.unsplit_reasons.setdefault(plan.key.name, plan.reason or "")
        # Atoms start after what the tenant queued before the launch. A launch run whole is
        # one atom: that order is recorded only if it lands on another stream than the user's.
        # An event that ends the gap since the tenant's previous launch marks that point too.
        before = tenant.book.unsplit.end_gap(tl, user, tenant.stats)
        if before is None and plan.atomized:
            before = tl.record(user)
        joined: set[int] = set()  # handles of the streams ordered after ``before``
        last_on: dict[int, Any] = {}  # stream handle -> end event of its last atom
        issued = 0  # blocks issued so far, in order
        broken = False  # issuing itself failed: issuing again would fail again, or run blocks twice

        def issue(count: int, partition: Any, stream: Any, stolen: bool, gates: Sequence[Gate] = ()) -> None:
            nonlocal before, issued, broken
            broken = True
            h = tl.handle(stream)
            if h != user_handle and h not in joined:
                if before is None:
                    before = tl.record(user)
                tl.wait(stream, before)
                joined.add(h)
            for gate in gates:
                tl.wait_gate(stream, gate)
            predicted = self.predictor.predict_us(plan.key, partition.num_tpcs, count,
                                                  self._wave_blocks(plan, partition))
            record = self._issue(tenant, plan, issued, count, partition, stream, predicted, stolen)
            record.unsplit = unsplit
            last_on[h] = record.end
            issued += count
            broken = False

        try:
            if self._gated():
                self._place_gated(tenant, plan, issue, lambda: plan.total_blocks - issued)
            else:
                self._place_host(tenant, plan, issue, lambda: plan.total_blocks - issued)
        finally:
            if issued < plan.total_blocks and not broken and self._fault is None:
                # Interrupted (an exception while waiting, or close()): issue the rest now
                # on the tenant's own partition so no submitted block is lost.
                issue(plan.total_blocks - issued, tenant.home, tenant.home.normal, False)
            if not broken:
                plan.complete()
            if self._fault is None:  # order the user's stream after every atom that was issued
                for h, end in last_on.items():
                    if h != user_handle:
                        tl.wait(user, end)
                if last_on:  # the next gap starts where the user's stream passes this launch
                    tenant.book.unsplit.start_gap(tl, user, last_on[user_handle] if len(last_on) == 1 and
                                                  user_handle in last_on else None)

    def _place_host(self, tenant: Tenant, plan: LaunchPlan, issue: Callable[..., None],
                    remaining: Callable[[], int]) -> None:
        """Issue a launch's atoms one at a time, each where the host decides (no gates):
        on stolen TPCs only while their latency-critical tenants are idle, each after the
        queue on its partition is predicted to drain within the cap."""
        hold = True
        while remaining() and not self._closing:
            hold = hold and self._hold_for_requests(tenant)
            self._yield_to_latency_critical(tenant)
            partition, stolen = self._best_effort_target(tenant, plan)
            waited = self._wait_for_room(tenant, partition)
            if waited and hold and self._holds_for_requests():
                continue  # a request opened while we waited: hold first, then choose again
            if waited and self._best_effort_target(tenant, plan)[0] is not partition:
                continue  # a latency-critical tenant needs its TPCs again, or left them, since we chose
            stream = self._emptier_stream(tenant, partition)
            issue(self._atom_blocks(plan, partition, remaining()), partition, stream, stolen)

    def _place_gated(self, tenant: Tenant, plan: LaunchPlan, issue: Callable[..., None],
                     remaining: Callable[[], int]) -> None:
        """Issue a launch's atoms into two deep queues: at home, and on the stolen TPCs
        behind the latency-critical tenants' gates (`Policy.device_gates`).

        Each atom goes to the queue predicted to drain first among those with room: home
        while at most `Policy.home_queue_cap_us` is queued there, stolen while at most
        `Policy.steal_queue_us` is. While both queues run the launch, the blocks left are
        divided between them once, in proportion to their TPCs and in whole waves of each
        partition (`_split_blocks`), and each queue takes atoms from its own portion, so
        the launch ends on both at about the same time instead of in a tail of ever smaller
        atoms; a queue with no room gives its portion to the other. The stolen TPCs are
        those of the latency-critical tenants whose gates are open when the atom is placed,
        behind those gates: a request of one tenant leaves the others' TPCs to steal, and
        the rest of the launch goes home only while every gate is closed (atoms queued
        behind a closed gate would hold the launch's end until it opens). With every queue
        full, the thread waits, GIL released, for the first queue to drain to its cap, or
        for a closed gate to open. Tenants of other processes that come or go meanwhile
        (`RemoteTenants`) count from the next atom on.
        """
        may_steal = self._may_steal(tenant, plan)
        state: tuple[int, tuple[Tenant, ...]] | None = None
        stolen_part, gates, lcs, targets = None, [], (), [tenant.home]
        portions: dict[int, int] = {}  # id(partition) -> blocks left for it while both queues run the launch
        hold = True
        while remaining() and not self._closing:
            open_lcs = tuple(t for t in self._lc if t.gate is not None and t.gate.is_open()) if may_steal else ()
            if state != (self._membership, open_lcs):
                state = (self._membership, open_lcs)
                stolen_part = self._steal_partition(open_lcs)
                lcs = open_lcs if stolen_part is not None else ()
                gates = [t.gate for t in self._lc if t.gate is not None] if may_steal or self._home_gates() else []
                targets = [tenant.home] if stolen_part is None else [tenant.home, stolen_part]
                portions = self._split_blocks(plan, tenant.home, stolen_part, remaining()) \
                    if plan.atomized and stolen_part is not None else {}
            self.retire(tenant)
            self._guard_stranded(tenant, gates)
            hold = hold and self._hold_for_requests(tenant)
            own = [p for p in targets if portions.get(id(p), 1) > 0]
            part = self._gated_room(tenant, own, stolen_part, lcs) if len(own) < len(targets) else None
            part = part or self._gated_room(tenant, targets, stolen_part, lcs)
            if part is None:
                self._wait_gated(tenant, targets, stolen_part, gates)
                continue
            stolen = part is stolen_part
            count = self._atom_blocks(plan, part, remaining())
            if portions.get(id(part), 0) > 0:
                count = min(count, portions[id(part)])
            if portions:
                other = id(stolen_part) if part is tenant.home else id(tenant.home)
                taken = min(count, portions[id(part)])
                portions[id(part)] -= taken
                portions[other] -= count - taken  # a queue without room gave its portion away
            behind = [t.gate for t in lcs] if stolen else self._home_gates()
            issue(count, part, self._emptier_stream(tenant, part), stolen, behind)
        self._guard_stranded(tenant, gates)

    def _split_blocks(self, plan: LaunchPlan, home: Any, stolen: Any, blocks: int) -> dict[int, int]:
        """``blocks`` of ``plan`` divided between the ``home`` and ``stolen`` partitions in
        proportion to their TPCs, the stolen portion rounded to whole waves of its
        partition (a partial wave leaves TPCs idle for a whole block time); keyed by
        ``id(partition)``. A launch smaller than half a stolen wave stays home."""
        wave = max(1, self._wave_blocks(plan, stolen))
        share = stolen.num_tpcs / (home.num_tpcs + stolen.num_tpcs)
        stolen_blocks = min(blocks, round(blocks * share / wave) * wave)
        return {id(home): blocks - stolen_blocks, id(stolen): stolen_blocks}

    def _guard_stranded(self, tenant: Tenant, gates: Sequence[Gate]) -> None:
        """While ``tenant`` has atoms queued behind gates (`_behind_gates`), have the keeper look at them
        every `Policy.request_hold_max_us`: an atom that waited behind a closed gate
        through a whole such period gets the gate forced for it (`Gate.force`) until
        every atom queued then has started (see `GateKeeper`)."""
        if tenant.name in self._stranded_guards or not self._behind_gates(tenant):
            return
        self._stranded_guards.add(tenant.name)
        tl = self.timeline
        period_us = self.policy.request_hold_max_us

        def check(seen_waiting: dict[int, Any]) -> None:
            if self._gate_keeper.failed is not None:
                self._stranded_guards.discard(tenant.name)
                return  # the keeper failed open: every gate stays forced
            stolen = self._behind_gates(tenant)
            # by id, the events kept alive with them: a freed event's id may be a new one's
            waiting = {id(r.start): r.start for r in stolen if not tl.done(r.start)}
            waited = waiting.keys() & seen_waiting.keys()
            forced = [g for g in gates if g.forced]
            if forced and not waiting:
                for gate in forced:
                    tl.force_gate(gate, False)
            elif waited and not forced:  # waited a whole period
                for gate in gates:
                    tl.force_gate(gate, True)
                tenant.stats.forced_gate_opens += 1
            if stolen or forced:
                again_us = self.policy.steal_poll_us if forced or waited else period_us
                self._gate_keeper.at(tl.now_us() + max(again_us, 1.0), lambda: check(waiting))
            else:
                self._stranded_guards.discard(tenant.name)

        self._gate_keeper.at(tl.now_us() + period_us, lambda: check({}))

    def _behind_gates(self, tenant: Tenant) -> list[AtomRecord]:
        """``tenant``'s atoms in flight that waited behind gates: on stolen TPCs, and at home
        too while latency-critical tenants borrow them (`Policy.lend_best_effort_tpcs`); a
        snapshot, not the tenant's lock (its thread holds that for a whole launch)."""
        inflight = tuple(tenant.book.inflight)
        if tenant.priority is Priority.BEST_EFFORT and self._home_gates():
            return list(inflight)
        return [r for r in inflight if r.stolen]

    def _may_steal(self, tenant: Tenant, plan: LaunchPlan) -> bool:
        """Whether ``plan``'s atoms may run on stolen TPCs: stealing is on and what cannot
        be stopped is short enough to give TPCs back quickly (`Policy.steal_max_block_us`):
        its blocks (waves), or, for a kernel that cannot be split and runs whole, the
        whole kernel (`_unsplit_may_steal`)."""
        if not self.policy.stealing:
            return False
        if _cannot_split(plan):
            return self._unsplit_may_steal(tenant, plan)
        wave_us = self.predictor.wave_us(plan.key, tenant.home.num_tpcs)
        return wave_us is None or wave_us <= self.policy.steal_max_block_us

    def _unsplit_may_steal(self, tenant: Tenant, plan: LaunchPlan) -> bool:
        """Whether a kernel that cannot be split may run on stolen TPCs, which it holds
        until it ends: where it is predicted (on its tenant's own TPCs) to end within
        `Policy.steal_max_block_us`, or, never timed, where the tenant's latest unsplit
        kernels all did (`UnsplitWork.longest_recent_us`). A tenant's first unsplit kernel
        runs at home, where it is timed."""
        predicted = self.predictor.predict_us(plan.key, tenant.home.num_tpcs, plan.total_blocks,
                                              self._wave_blocks(plan, tenant.home))
        if predicted is None:
            predicted = tenant.book.unsplit.longest_recent_us()
        return predicted is not None and predicted <= self.policy.steal_max_block_us

    def _retire_unsplit(self, tenant: Tenant, record: AtomRecord, measured_us: float) -> None:
        """Account (and trace) a finished kernel of ``tenant`` that ran whole because it
        cannot be split (`AtomRecord.unsplit`)."""
        tenant.book.unsplit.kernel_done(tenant.stats, measured_us)
        if self._trace_on:
            tl = self.timeline
            tenant.book.unsplit.trace.append(
                record.key.name, tenant.name, record.partition.tpcs, tl.handle(record.stream), record.start_block,
                record.count, record.predicted_us, record.stolen, tl.elapsed_us(self._t0, record.start), measured_us)

    def _retire_opaque(self, tenant: Tenant) -> None:
        """Account (and trace) the timed gaps of ``tenant``'s stream that are over (`UnsplitWork`)."""
        if tenant.book.unsplit.gaps:
            tenant.book.unsplit.retire_gaps(self.timeline, tenant.stats, self._t0,
                                            tenant.name if self._trace_on else None)

    def unsplit_trace_events(self) -> list[dict[str, Any]]:
        """Perfetto events of the tenants' unsplit work: an "unsplit work" process with a
        thread per tenant, each kernel run whole (its reason in its arguments) and each
        timed gap of work lithos never saw (`OPAQUE_WORK`: cuBLAS and other library calls)."""
        events = []
        for t in self.tenants.values():
            reasons = t.stats.unsplit_reasons
            for r in t.book.unsplit.trace.rows():
                opaque = r.kernel == OPAQUE_WORK
                args = {"tenant": r.tenant, "stream": f"{r.stream:#x}"} if opaque else {
                    "tenant": r.tenant, "reason": reasons.get(r.kernel, ""), "blocks": r.blocks,
                    "tpcs": len(r.tpcs), "stolen": r.stolen, "predicted_us": r.predicted_us}
                events.append({"name": r.kernel, "ph": "X", "ts": r.start_us, "dur": r.duration_us,
                               "pid": "unsplit work", "tid": r.tenant, "args": args})
        return events

    def _steal_partition(self, lcs: Sequence[Tenant]) -> Any:
        """The partition of the stealable TPCs of the latency-critical tenants ``lcs``, or
        None where they have none."""
        tpcs = frozenset().union(*(t.stealable for t in lcs))
        if not tpcs:
            return None
        part = self._steal_partitions.get(tpcs)
        if part is None or part.closed:
            part = self._steal_partitions[tpcs] = self.device.partition(tpcs)
        return part

    def _gated_room(self, tenant: Tenant, targets: Sequence[Any], stolen_part: Any, lcs: Sequence[Tenant]) -> Any:
        """Of ``targets``, the partition with room in its queue whose work is predicted to
        drain first (see `_place_gated`), or None when every queue is full; the stolen
        partition is that of the latency-critical tenants ``lcs``."""
        now = self.timeline.now_us()
        best, best_drain = None, math.inf
        for part in targets:
            queued = [r for r in tenant.book.inflight if r.partition is part]
            drain = max([now, *(r.predicted_end_us for r in queued)])
            if part is stolen_part:
                # a tenant in this process may run work the scheduler never saw (CuPy's own
                # kernels, cuBLAS) on its stream: no gate closes for that, its stream tells
                room = (all(t.gate.is_open() for t in lcs) and drain - now <= self.policy.steal_queue_us
                        and all(t.remote or t.idle() for t in lcs))
            else:
                room = drain - now <= self.policy.home_queue_cap_us
            if room and drain < best_drain:
                best, best_drain = part, drain
        return best

    def _wait_gated(self, tenant: Tenant, targets: Sequence[Any], stolen_part: Any, gates: Sequence[Gate]) -> None:
        """Wait, GIL released, until a queue of `_place_gated` has room: for the atom of
        each queue after whose end its cap remains, whichever is predicted first. While a
        gate is closed the wait also ends when it opens (read every `Policy.steal_poll_us`),
        so the stolen queue fills again at once."""
        now = self.timeline.now_us()
        first = None
        for part in targets:
            cap = self.policy.steal_queue_us if part is stolen_part else self.policy.home_queue_cap_us
            low = self._low_point(self._queued(tenant, part), cap)
            if low is not None and (first is None or low.predicted_end_us < first.predicted_end_us):
                first = low
        if first is None:
            return  # a queue drained while we looked
        closed = [g for g in gates if not g.is_open()]
        stop = (lambda: any(g.is_open() for g in closed)) if closed and self.policy.steal_poll_us else None
        self.wait_atom(first, stop)
        tenant.stats.queue_wait_ms += (self.timeline.now_us() - now) / 1000.0

    def _yield_to_latency_critical(self, tenant: Tenant) -> None:
        """On the GPU, while a latency-critical tenant is busy, let the best-effort
        ``tenant`` issue only when at most `Policy.yield_queue_us` of its work remains
        queued.

        Each driver call of the latency-critical thread releases the GIL and must take it
        back; a best-effort thread running Python between its own driver calls wins many
        of those hand-offs, and on the lent machine a launch then took up to 8 ms (measured).
        So while the latency-critical tenant is busy (its kernels run, or it launched
        within `Policy.lc_idle_grace_us`: its host thread is between the kernels of one
        request), the best-effort thread waits, GIL released, on its own queued atom after
        which at most `Policy.yield_queue_us` of work remains (by default its last one),
        then issues again: it takes the GIL about once per drained queue, and its TPCs
        idle at most for the host time of one issue. Virtual time has no GIL
        (`Timeline.virtual`), so the simulated device skips this.
        """
        for t in self._lc:
            self.retire(t)  # the latency-critical thread leaves this to us, off its hot path
        if self.timeline.virtual or not self.policy.yield_host_to_latency_critical:
            return
        while any(not t.idle() for t in self._lc if not t.remote):
            self.retire(tenant)
            low = self._low_point(self._queued(tenant), self.policy.yield_queue_us)
            if low is None:
                return
            t0 = self.timeline.now_us()
            self.wait_atom(low)
            tenant.stats.yield_wait_ms += (self.timeline.now_us() - t0) / 1000.0

    @staticmethod
    def _queued(tenant: Tenant, partition: Any = None) -> list[AtomRecord]:
        """The atoms ``tenant`` has in flight (on ``partition``, or anywhere), by predicted end."""
        return sorted((r for r in tenant.book.inflight if partition is None or r.partition is partition),
                      key=lambda r: r.predicted_end_us)

    def _low_point(self, queued: list[AtomRecord], cap_us: float) -> AtomRecord | None:
        """Of ``queued`` (`_queued`), the atom after whose end at most ``cap_us`` of that
        work remains, by the predicted ends; None if that little is queued already."""
        if not queued:
            return None
        drain_at = queued[-1].predicted_end_us
        if drain_at - self.timeline.now_us() <= cap_us:
            return None
        return next(r for r in queued if drain_at - r.predicted_end_us <= cap_us)

    def _emptier_stream(self, tenant: Tenant, partition: Any) -> Any:
        """Of the partition's two normal streams, the one whose queued work drains first."""
        ends = {id(s): -math.inf for s in (partition.normal, partition.normal_b)}
        for r in tenant.book.inflight:
            if id(r.stream) in ends:
                ends[id(r.stream)] = max(ends[id(r.stream)], r.predicted_end_us)
        return partition.normal if ends[id(partition.normal)] <= ends[id(partition.normal_b)] else partition.normal_b

    def _best_effort_target(self, tenant: Tenant, plan: LaunchPlan) -> tuple[Any, bool]:
        policy = self.policy
        if not policy.stealing or not self._lc:
            return tenant.home, False
        # the stealable TPCs of an idle latency-critical tenant, and those a busy one leaves
        # while its work is right-sized
        free = [t.stealable if t.idle() else t.stealable - t.busy_tpcs() for t in self._lc]
        if not any(free):
            return tenant.home, False
        if not self._may_steal(tenant, plan):
            return tenant.home, False
        tpcs = frozenset(tenant.tpcs).union(*free)
        part = self._steal_partitions.get(tpcs)
        if part is None or part.closed:
            part = self._steal_partitions[tpcs] = self.device.partition(tpcs)
        return part, True

    def _shared_with_lc(self, partition: Any) -> bool:
        """Whether ``partition`` has TPCs of a latency-critical tenant (memoized by TPC
        set: tenants' TPCs never change, and this is asked twice per best-effort atom)."""
        shared = self._lc_shared.get(partition.tpcs)
        if shared is None:
            shared = self._lc_shared[partition.tpcs] = any(partition.tpcs & t.home.tpcs for t in self._lc)
        return shared

    def _wave_blocks(self, plan: LaunchPlan, partition: Any) -> int:
        return self._partition_wave(plan.wave_blocks, partition)

    def _partition_wave(self, device_wave_blocks: int, partition: Any) -> int:
        """Blocks of one wave on ``partition``, from those of one wave on the whole device."""
        per_sm = max(1, device_wave_blocks // max(1, self.device.num_sms))
        return per_sm * partition.num_sms

    def _atom_blocks(self, plan: LaunchPlan, partition: Any, remaining: int) -> int:
        """The blocks of the next atom of ``plan`` on ``partition``: a scheduler sizes its
        tenants' atoms here, from `Policy.atom_us` or `Policy.home_atom_us` (the plan's own
        ``atom_blocks``, sized by the front end for an atomizer that issues the plan
        itself, is not used)."""
        if not plan.atomized or not self.policy.atomize_best_effort:
            return remaining
        wave = self._wave_blocks(plan, partition)
        wave_us = self.predictor.wave_us(plan.key, partition.num_tpcs)
        target_us = self.policy.atom_us if self._shared_with_lc(partition) else self.policy.home_atom_us
        waves = 1 if wave_us is None else max(1, math.floor(target_us / wave_us))
        return min(remaining, waves * wave)

    def _wait_for_room(self, tenant: Tenant, partition: Any) -> bool:
        """Block until the tenant's queued work on ``partition`` is predicted to drain
        within the cap, or, on its own partition, until a busy latency-critical tenant of
        another process frees its TPCs (`Policy.steal_poll_us`); returns whether it had to
        wait.

        Where `Policy.issue_ahead_of_drain` says, an atom longer than the cap is waited
        for until the cap before its predicted end, not until it ends, once it is the only
        one left: the next atom is then queued behind it instead of after the host's time
        to issue, and at most two atoms are ever in flight on the partition.
        """
        tl = self.timeline
        shared = self._shared_with_lc(partition)
        cap = self.policy.queue_cap_us if shared else self.policy.home_queue_cap_us
        remote = [] if shared or not self.policy.stealing or not self.policy.steal_poll_us \
            else [t for t in self._lc if t.remote and not self._frees_tpcs(t)]
        mode = self.policy.issue_ahead_of_drain
        ahead = mode == "all" or (mode == "home" and not shared)
        waited = False
        while not self._closing:
            self.retire(tenant)
            queued = self._queued(tenant, partition)
            target = self._low_point(queued, cap)
            if target is None:
                return waited
            deadline_us = None
            if ahead and target is queued[-1]:
                if len(queued) > 1:
                    target = queued[-2]  # then the last is alone, and waited for ahead of its end
                else:
                    deadline_us = target.predicted_end_us - cap
            t0 = tl.now_us()
            completed = self.wait_atom(target, (lambda: any(self._frees_tpcs(t) for t in remote)) if remote else None,
                                         deadline_us)
            waited = True
            tenant.stats.queue_wait_ms += (tl.now_us() - t0) / 1000.0
            if not completed:
                return waited  # TPCs to steal, or the queue is predicted to drain within the cap
            # re-anchor the predicted ends of what is still queued at the real completion
            now = tl.now_us()
            later = sorted((r for r in tenant.book.inflight
                            if r.partition is partition and r.predicted_end_us > target.predicted_end_us),
                           key=lambda r: r.predicted_end_us)
            for r in later:
                r.predicted_end_us = now
                now += r.predicted_us if r.predicted_us is not None else self.policy.atom_us
        return waited

    @staticmethod
    def _frees_tpcs(tenant: Tenant) -> bool:
        """Whether the latency-critical ``tenant`` leaves TPCs to steal now: it is idle, or
        its work is right-sized to fewer than its stealable TPCs."""
        return tenant.idle() or bool(tenant.stealable - tenant.busy_tpcs())

