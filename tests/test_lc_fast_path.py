"""CPU tier: the latency-critical launch path (`Atomizer.launch_whole`) orders work as the
user wrote it, times one launch in `Policy.lc_timing_every`, and follows the right-sizer,
checked against a timeline that records every operation."""

from __future__ import annotations

import itertools

import pytest

from lithos_atom.plan import KernelKey, LaunchShape
from lithos_sched import Policy, Priority, Scheduler, SimDevice, TenantSpec
from tests.sizers import FixedSizer

SPECS = [TenantSpec("lc", Priority.LATENCY_CRITICAL, share=0.5), TenantSpec("be", Priority.BEST_EFFORT, share=0.5)]
SHAPE = LaunchShape(KernelKey("k", (8, 1, 1), (256, 1, 1), 0, ((2048,),)), 8, 8 * 32)


class RecordingTimeline:
    """Records stream operations as (op, stream handle) tuples; events are ints."""

    def __init__(self) -> None:
        self.ops: list[tuple] = []
        self.gates: list[tuple] = []
        self._ids = itertools.count(1)

    def now_us(self) -> float:
        return 0.0

    def handle(self, stream) -> int:  # noqa: ANN001
        return 0 if stream is None else int(stream.handle)

    def marker(self) -> int:
        return -next(self._ids)

    def record(self, stream, blocking: bool = False) -> int:  # noqa: ANN001
        ev = next(self._ids)
        self.ops.append(("record", self.handle(stream), ev))
        return ev

    def record_into(self, event, stream) -> None:  # noqa: ANN001
        self.ops.append(("record", self.handle(stream), event))

    def wait(self, stream, event) -> None:  # noqa: ANN001
        self.ops.append(("wait", self.handle(stream), event))

    def done(self, event) -> bool:  # noqa: ANN001
        return False

    def synchronize(self, event) -> None:  # noqa: ANN001
        pass

    def wait_until(self, event, stop, poll_us, deadline_us=None, timeout_us=None) -> bool:  # noqa: ANN001
        return True

    def elapsed_us(self, start, end) -> float:  # noqa: ANN001
        return 1.0

    # device-side gates: recorded apart, as (op, stream handle, value, position in ``ops``),
    # so the sequences of events, waits and launches stay comparable
    def write_gate(self, stream, gate, value: int) -> None:  # noqa: ANN001
        self.gates.append(("write", self.handle(stream), value, len(self.ops)))

    def store_gate(self, gate, value: int) -> None:  # noqa: ANN001
        self.gates.append(("store", None, value, len(self.ops)))

    def call_at(self, t_us: float, fn) -> None:  # noqa: ANN001
        pass  # the gate keeper's timers never fire here

    def as_cupy(self, stream):  # noqa: ANN001, ANN201
        return stream

    def is_capturing(self, stream) -> bool:  # noqa: ANN001
        return False


def scheduler(policy: Policy | None = None, right_sizer=None):  # noqa: ANN001, ANN201
    sched = Scheduler(SimDevice(num_tpcs=8, seed=0), SPECS, policy or Policy(lc_timing_every=3),
                      right_sizer=right_sizer, trace=False)  # no request-window events among the ops
    sched.timeline = tl = RecordingTimeline()
    return sched, tl


def launch_on(tl: RecordingTimeline, name: str):  # noqa: ANN201
    return lambda stream: tl.ops.append(("launch " + name, tl.handle(stream)))


def test_own_stream_launches_need_no_waits_and_one_in_n_is_timed():
    sched, tl = scheduler()
    lc = sched.tenant("lc")
    high = lc.home.high.handle
    for i in range(6):
        sched._launch_latency_critical(lc, launch_on(tl, str(i)), None, lambda: SHAPE)
    assert not [op for op in tl.ops if op[0] == "wait"]
    launches = [op for op in tl.ops if op[0].startswith("launch")]
    assert launches == [(f"launch {i}", high) for i in range(6)]
    timed = [i for i, op in enumerate(tl.ops) if op[0] == "record" and op[2] > 0]
    assert len(timed) == 4  # launches 0 and 3: a begin and an end event each
    # no marker either: the tenant's own stream tells whether it is idle
    assert len(tl.ops) == len(launches) + len(timed)
    stats = lc.stats
    assert (stats.kernels, stats.atoms, stats.timed_atoms) == (6, 6, 2)


def test_a_launch_outside_a_request_closes_the_gate_on_its_stream_first_and_a_request_at_its_edges():
    sched, tl = scheduler(Policy(lc_timing_every=1000))
    lc = sched.tenant("lc")
    high = lc.home.high.handle
    sched._launch_latency_critical(lc, launch_on(tl, "a"), None, lambda: SHAPE)
    assert [g[:3] for g in tl.gates] == [("write", high, 0)]
    assert tl.gates[0][3] <= tl.ops.index(("launch a", high))  # closed, then launched
    assert lc.gate_held  # the keeper opens it once the tenant is idle
    tl.gates.clear()
    from lithos_sched import tenant_runtime as scheduler_module

    scheduler_module._current.tenant = lc
    try:
        with lc.request():
            sched._launch_latency_critical(lc, launch_on(tl, "b"), None, lambda: SHAPE)
    finally:
        scheduler_module._current.tenant = None
    b = tl.ops.index(("launch b", high))
    # inside the request no launch writes the gate: it closes at the start, opens at the end
    assert [(op, h, v) for op, h, v, _ in tl.gates] == [("write", high, 0), ("write", high, 1)]
    assert tl.gates[0][3] <= b < tl.gates[1][3] and not lc.gate_held


def test_a_launch_on_another_stream_is_ordered_both_ways():
    sched, tl = scheduler()
    lc = sched.tenant("lc")
    other = sched.device.partition(range(8)).normal  # any stream that is not the tenant's
    sched._launch_latency_critical(lc, launch_on(tl, "x"), other, lambda: SHAPE)
    ops = [op for op in tl.ops if op[0] != "record" or op[2] < 0]  # drop timing events
    high, user = lc.home.high.handle, other.handle
    join, busy = lc._join, lc._busy
    assert ops == [("record", user, join), ("wait", high, join), ("launch x", high),
                   ("record", high, busy), ("wait", user, busy)]


@pytest.mark.parametrize("n", [1, 3])
def test_a_right_sized_kernel_runs_on_its_first_tpcs_ordered_with_the_tenant_stream(n):
    sched, tl = scheduler(Policy(lc_timing_every=1000), FixedSizer(n))
    lc = sched.tenant("lc")
    sched._launch_latency_critical(lc, launch_on(tl, "k"), None, lambda: SHAPE)
    part = lc._rightsized[n]
    assert part.tpcs == frozenset(sorted(lc.tpcs)[:n])  # its first n TPCs
    assert lc._active_tpcs == part.tpcs and len(part.tpcs) == n
    high, sub = lc.home.high.handle, part.high.handle
    ops = [op for op in tl.ops if op[0] != "record" or op[2] < 0]
    assert ops == [("record", high, lc._join), ("wait", sub, lc._join), ("launch k", sub),
                   ("record", sub, lc._busy), ("wait", high, lc._busy)]


def test_right_sizer_answering_the_whole_home_keeps_the_plain_path():
    sched, tl = scheduler(Policy(lc_timing_every=1000), FixedSizer(10**6))
    lc = sched.tenant("lc")
    sched._launch_latency_critical(lc, launch_on(tl, "k"), None, lambda: SHAPE)
    assert not [op for op in tl.ops if op[0] == "wait"] and lc._active_tpcs == lc.tpcs


def test_launch_whole_routes_by_the_calling_threads_tenant():
    from lithos_sched import SchedulerClosedError
    from lithos_sched import tenant_runtime as scheduler_module

    sched, tl = scheduler()
    ran: list = []
    assert sched.launch_whole(ran.append, "user-stream", lambda: SHAPE) is True  # unbound: as written
    assert ran == ["user-stream"]
    scheduler_module._current.tenant = sched.tenant("be")
    try:
        assert sched.launch_whole(ran.append, None, lambda: SHAPE) is False  # best-effort: split into atoms
        scheduler_module._current.tenant = sched.tenant("lc")
        assert sched.launch_whole(launch_on(tl, "k"), None, lambda: SHAPE) is True
        assert ("launch k", sched.tenant("lc").home.high.handle) in tl.ops
        sched.close()
        with pytest.raises(SchedulerClosedError):
            sched.launch_whole(launch_on(tl, "k"), None, lambda: SHAPE)
    finally:
        scheduler_module._current.tenant = None


# ---- Tenant.on_tpcs: a whole request on a right-sized partition ------------------------------


def bound(sched, name: str):  # noqa: ANN001, ANN201
    """Bind this thread to tenant ``name`` as ``with tenant:`` does, without CuPy."""
    from lithos_sched import tenant_runtime as scheduler_module

    scheduler_module._current.tenant = sched.tenant(name)
    return scheduler_module


def test_a_request_block_joins_the_tenant_stream_once_at_each_end_and_launches_without_waits():
    sched, tl = scheduler(Policy(lc_timing_every=1000))
    lc = sched.tenant("lc")
    mod = bound(sched, "lc")
    try:
        with lc.on_tpcs(3) as stream:
            part = lc._rightsized[3]
            assert stream is part.high and part.tpcs == frozenset(sorted(lc.tpcs)[:3])
            assert lc._active_tpcs == part.tpcs and not lc.idle()  # busy for the whole block
            for i in range(3):  # the current stream (None here) or the block's stream
                sched._launch_latency_critical(lc, launch_on(tl, str(i)), None if i else stream, lambda: SHAPE)
        assert lc._active_tpcs == lc.tpcs and lc._request is None
    finally:
        mod._current.tenant = None
    high, sub = lc.home.high.handle, part.high.handle
    timing = {e for r in lc._inflight for e in (r.start, r.end)}  # the first launch is timed
    assert {op[1] for op in tl.ops if op[0] == "record" and op[2] in timing} == {sub}
    ops = [op for op in tl.ops if not (op[0] == "record" and op[2] in timing)]
    (enter, _), (leave, _) = [(op[2], op) for op in ops if op[0] == "record"]
    assert ops == [("record", high, enter), ("wait", sub, enter),
                   ("launch 0", sub), ("launch 1", sub), ("launch 2", sub),
                   ("record", sub, leave), ("wait", high, leave)]
    assert lc._last_end == leave  # the tenant looks busy until the block's work is done


def test_a_request_block_is_not_right_sized_again_per_kernel_and_its_timed_launches_say_where_they_ran():
    sched, tl = scheduler(Policy(lc_timing_every=1), FixedSizer(1))
    lc = sched.tenant("lc")
    mod = bound(sched, "lc")
    try:
        with lc.on_tpcs(3):
            sched._launch_latency_critical(lc, launch_on(tl, "k"), None, lambda: SHAPE)
    finally:
        mod._current.tenant = None
    assert 1 not in lc._rightsized  # the per-kernel sizer was not asked
    (rec,) = lc._inflight
    assert rec.partition is lc._rightsized[3] and rec.stream is lc._rightsized[3].high
    assert not [op for op in tl.ops if op[0] == "wait" and op[1] == lc._rightsized[3].high.handle][1:]


def test_a_request_on_all_its_tpcs_runs_on_the_tenant_stream_unchanged():
    sched, tl = scheduler()
    lc = sched.tenant("lc")
    mod = bound(sched, "lc")
    try:
        with lc.on_tpcs(len(lc.tpcs)) as stream:
            assert stream is lc.stream and lc._request is None
    finally:
        mod._current.tenant = None
    assert tl.ops == []


def test_on_tpcs_refuses_what_it_cannot_do_by_name():
    sched, _ = scheduler()
    lc, be = sched.tenant("lc"), sched.tenant("be")
    with pytest.raises(TypeError, match="latency-critical"):
        with be.on_tpcs(2):
            pass
    with pytest.raises(ValueError, match="TPC count"):
        with lc.on_tpcs(0):
            pass
    with pytest.raises(RuntimeError, match="inside `with` tenant 'lc'"):
        with lc.on_tpcs(2):
            pass
    mod = bound(sched, "lc")
    try:
        with lc.on_tpcs(2):
            with pytest.raises(RuntimeError, match="already inside"):
                with lc.on_tpcs(1):
                    pass
        assert lc._request is None
    finally:
        mod._current.tenant = None


def test_during_a_request_block_best_effort_work_may_use_the_tenants_other_tpcs():
    from lithos_atom.plan import LaunchPlan

    sched, _ = scheduler()
    lc, be = sched.tenant("lc"), sched.tenant("be")
    plan = LaunchPlan.build(SHAPE.key, 8, 8, lambda start, count, stream: None, wave_blocks=8)
    mod = bound(sched, "lc")
    try:
        with lc.on_tpcs(1):
            part, stolen = sched._best_effort_target(be, plan)
            assert stolen and part.tpcs == be.tpcs | (lc.tpcs - frozenset(sorted(lc.tpcs)[:1]))
    finally:
        mod._current.tenant = None


def test_inside_a_request_block_work_put_on_the_tenants_own_stream_stays_there():
    sched, tl = scheduler(Policy(lc_timing_every=1000))
    lc = sched.tenant("lc")
    mod = bound(sched, "lc")
    try:
        with lc.on_tpcs(2):
            sched._launch_latency_critical(lc, launch_on(tl, "own"), lc.home.high, lambda: SHAPE)
    finally:
        mod._current.tenant = None
    assert ("launch own", lc.home.high.handle) in tl.ops  # with CuPy's ops the user put there


class FakeGraph:
    """Stands in for a captured ``cupy.cuda.Graph``: its launches are recorded."""

    def __init__(self, tl: RecordingTimeline) -> None:
        self.tl = tl

    def launch(self, stream=None) -> None:  # noqa: ANN001
        self.tl.ops.append(("graph", self.tl.handle(stream)))


def test_a_latency_critical_graph_is_one_request_on_its_stream_between_its_gate_writes():
    sched, tl = scheduler()
    lc = sched.tenant("lc")
    high = lc.home.high.handle
    sched._launch_graph(lc, FakeGraph(tl), None)
    g = tl.ops.index(("graph", high))
    assert [op[:3] for op in tl.gates] == [("write", high, 0), ("write", high, 1)]
    assert tl.gates[0][3] <= g < tl.gates[1][3]  # closed before it, opened after it, on its stream
    assert not [op for op in tl.ops if op[0] == "wait"] and not lc.gate_held
    assert (lc.stats.kernels, lc.stats.requests) == (1, 1)
    other = sched.device.partition(range(8)).normal
    tl.ops.clear()
    sched._launch_graph(lc, FakeGraph(tl), other)  # on another stream: joined both ways
    waits = [op for op in tl.ops if op[0] == "wait"]
    assert [w[1] for w in waits] == [high, other.handle] and ("graph", high) in tl.ops


def test_a_best_effort_graph_runs_whole_at_home_with_one_warning():
    sched, tl = scheduler()
    be = sched.tenant("be")
    with pytest.warns(UserWarning, match="best-effort graph runs whole"):
        sched._launch_graph(be, FakeGraph(tl), None)
    sched._launch_graph(be, FakeGraph(tl), None)  # warned once
    assert tl.ops.count(("graph", be.home.normal.handle)) == 2 and not tl.gates
