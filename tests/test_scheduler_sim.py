"""CPU tier: the scheduler's invariants on the simulated device, under random workloads."""

from __future__ import annotations

import collections
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lithos_atom.bench.sim_colocation import sim_plan
from lithos_sched import (
    LatencyPredictor,
    Policy,
    Priority,
    Scheduler,
    SchedulerClosedError,
    SimDevice,
    SimKernel,
    TenantConfigError,
    TenantSpec,
)
from lithos_sched.tenant import assign_tpcs
from lithos_sched.timeline import SimTimeline

SPECS = [TenantSpec("lc", Priority.LATENCY_CRITICAL, share=0.5), TenantSpec("be", Priority.BEST_EFFORT, share=0.5)]


def make(policy: Policy | None = None, num_tpcs: int = 8) -> tuple[SimDevice, Scheduler]:
    device = SimDevice(num_tpcs=num_tpcs, seed=0)
    sched = Scheduler(device, SPECS, policy or Policy(atom_us=200.0, queue_cap_us=100.0))
    sched.timeline = SimTimeline(device)
    return device, sched


def blocks_by_kernel(device: SimDevice) -> dict[str, list[int]]:
    out: dict[str, list[int]] = collections.defaultdict(list)
    for r in device.records:
        out[r.kernel].append(r.block)
    return out


workload = st.lists(
    st.tuples(
        st.sampled_from(["lc", "be"]),
        st.integers(1, 200),  # blocks
        st.floats(5.0, 400.0),  # block_us
        st.integers(1, 4),  # blocks_per_sm
        st.floats(0.0, 3000.0),  # submit time (us)
    ),
    min_size=1,
    max_size=8,
)


def run_workload(items, policy: Policy | None = None):
    """Each tenant submits its kernels in arrival order, one launch at a time, as its thread would."""
    device, sched = make(policy)
    tl = sched.timeline
    submitted = {}
    pending: dict[str, list] = {"lc": [], "be": []}
    busy = {"lc": False, "be": False}
    order_log: list[str] = []

    def pump(who: str) -> None:
        if busy[who]:
            return  # the tenant's thread is inside a launch; it picks this up when it returns
        busy[who] = True
        while pending[who]:
            k = pending[who].pop(0)
            submitted[k.name] = (*submitted[k.name], len(order_log))
            order_log.append(k.name)
            sched.submit_for(sched.tenant(who), sim_plan(device, k))
        busy[who] = False

    for i, (who, blocks, block_us, per_sm, at) in enumerate(items):
        k = SimKernel(f"{who}{i}", blocks, block_us, blocks_per_sm=per_sm)
        submitted[k.name] = (who, k, at)

        def fire(who=who, k=k) -> None:
            pending[who].append(k)
            pump(who)

        tl.call_at(at, fire)
    tl.advance_to(max(at for *_, at in items))
    sched.close()
    device.run_until_idle()
    return device, sched, submitted


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(workload)
def test_every_submitted_block_runs_exactly_once_and_each_tenant_runs_its_kernels_in_order(items):
    device, _, submitted = run_workload(items)  # one run, both invariants
    ran = blocks_by_kernel(device)
    for name, (_, k, *_rest) in submitted.items():
        assert sorted(ran[name]) == list(range(k.grid_blocks)), name
    spans = {}
    for r in device.records:
        lo, hi = spans.get(r.kernel, (float("inf"), 0.0))
        spans[r.kernel] = (min(lo, r.start_us), max(hi, r.end_us))
    for who in ("lc", "be"):
        order = sorted((v[3], n) for n, v in submitted.items() if v[0] == who)
        for (_, a), (_, b) in zip(order, order[1:]):
            assert spans[b][0] >= spans[a][1] - 1e-9, (a, b)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.floats(20.0, 300.0), st.integers(1, 4), st.lists(st.floats(100.0, 20000.0), min_size=1, max_size=6))
def test_latency_critical_waits_at_most_about_one_best_effort_block(be_block_us, per_sm, arrivals):
    device, sched = make()
    tl = sched.timeline
    lc, be = sched.tenant("lc"), sched.tenant("be")
    be_kernel = SimKernel("be", 40 * 16 * per_sm, be_block_us, blocks_per_sm=per_sm)
    lc_submit = {}
    for i, at in enumerate(sorted(arrivals)):
        k = SimKernel(f"lc{i}", 8, 50.0)

        def fire(k=k) -> None:
            lc_submit[k.name] = tl.now_us()
            sched.submit_for(lc, sim_plan(device, k))

        tl.call_at(at, fire)
    for _ in range(3):  # best-effort kernels back to back while the requests arrive
        sched.submit_for(be, sim_plan(device, be_kernel))
    tl.synchronize(tl.record(be.stream))
    tl.advance_to(max(arrivals) + 1)
    sched.close()
    device.run_until_idle()
    first, last = {}, {}
    for r in device.records:
        if r.kernel.startswith("lc"):
            first[r.kernel] = min(first.get(r.kernel, float("inf")), r.start_us)
            last[r.kernel] = max(last.get(r.kernel, 0.0), r.end_us)
    prev_end = 0.0
    for name, t in sorted(lc_submit.items(), key=lambda kv: int(kv[0][2:])):
        ready = max(t, prev_end)  # it also waits for its own tenant's previous kernel
        assert first[name] - ready <= be_block_us + 1e-6, (name, first[name] - ready)
        prev_end = last[name]


def _be_makespan(policy: Policy) -> float:
    device, sched = make(policy)
    be = sched.tenant("be")
    for i in range(3):
        sched.submit_for(be, sim_plan(device, SimKernel(f"be{i}", 16 * 20, 100.0)))
    sched.timeline.synchronize(sched.timeline.record(be.stream))
    stats = sched.stats()["tenants"]["be"]
    sched.close()
    return device.now_us, stats


def test_stealing_raises_best_effort_throughput_while_latency_critical_is_idle():
    with_steal, s1 = _be_makespan(Policy(atom_us=200.0))
    without, s2 = _be_makespan(Policy(atom_us=200.0, stealing=False))
    assert s1["stolen_atoms"] > 0 and s2["stolen_atoms"] == 0
    assert with_steal < 0.6 * without  # the idle half of the device is used


def test_a_launch_shared_by_home_and_stolen_tpcs_is_split_once_in_whole_waves():
    """With the gates open, a best-effort launch runs on both queues, each taking whole
    waves of its partition from its own portion: no tail of ever smaller atoms, and both
    sides end within about one atom of each other."""
    device, sched = make(Policy(atom_us=200.0))
    be = sched.tenant("be")
    wave = device.num_sms  # one block per SM of the 4-TPC partitions: 8 blocks a wave
    sched.submit_for(be, sim_plan(device, SimKernel("big", 16 * 20 + 3, 100.0)))
    sched.timeline.synchronize(sched.timeline.record(be.stream))
    rows = [r for r in sched.atoms() if r.tenant == "be"]
    sched.close()
    assert {r.stolen for r in rows} == {True, False}  # really split across both queues
    for stolen in (True, False):
        side = sorted((r for r in rows if r.stolen is stolen), key=lambda r: r.start_us)
        assert all(r.blocks % (wave // 2) == 0 for r in side[:-1]), [r.blocks for r in side]
        assert min(r.blocks for r in side[:-1]) >= wave // 2
    ends = {stolen: max(r.start_us + r.duration_us for r in rows if r.stolen is stolen) for stolen in (True, False)}
    assert abs(ends[True] - ends[False]) <= 2 * 200.0
    assert sum(r.blocks for r in rows) == 16 * 20 + 3


@pytest.mark.parametrize("gates", [False, True])
def test_best_effort_is_not_starved_by_a_busy_latency_critical_tenant(gates):
    device, sched = make(Policy(atom_us=200.0, queue_cap_us=100.0, device_gates=gates, lend_best_effort_tpcs="none"))
    tl = sched.timeline
    lc, be = sched.tenant("lc"), sched.tenant("be")
    stop = []

    def lc_kernel(i: int) -> None:
        if not stop:
            sched.submit_for(lc, sim_plan(device, SimKernel(f"lc{i}", 8, 100.0)))

    for i in range(200):  # the latency-critical tenant is busy the whole time
        tl.call_at(i * 100.0, lambda i=i: lc_kernel(i))
    if gates:
        # its TPCs are full from its first kernel on: atoms queued on them before that
        # would wait behind its kernels' blocks; the launch comes once it is busy
        tl.advance_to(50.0)
    sched.submit_for(be, sim_plan(device, SimKernel("be", 8 * 10, 100.0)))
    done = tl.record(be.stream)
    tl.synchronize(done)
    assert done.time_us < 20000.0 / 2  # it finished while the latency-critical load went on
    assert be.stats.stolen_atoms == 0 or not gates  # a closed gate sends the launch home
    stop.append(True)
    sched.close()


def test_a_request_borrows_the_best_effort_tpcs_and_holds_their_atoms_at_most_the_hold_bound():
    """With `Policy.lend_best_effort_tpcs`, a latency-critical kernel runs on every TPC and
    best-effort atoms at home wait behind its gate; a tenant busy without end holds them at
    most `Policy.request_hold_max_us` before the gate is forced for them."""
    device, sched = make(Policy(atom_us=200.0, request_hold_max_us=2000.0))
    tl = sched.timeline
    lc, be = sched.tenant("lc"), sched.tenant("be")
    assert lc.home.tpcs == device.all_tpcs() and lc.tpcs | be.tpcs == device.all_tpcs()
    sched.submit_for(lc, sim_plan(device, SimKernel("wide", 16, 100.0)))
    tl.synchronize(tl.record(lc.stream))
    assert {r.sm for r in device.records if r.kernel == "wide"} == set(range(device.num_sms))  # every SM
    tl.call_at(tl.now_us() + 150.0, lambda: tl.store_gate(lc.gate, 0))  # a request opens, and never closes
    start = tl.now_us()
    sched.submit_for(be, sim_plan(device, SimKernel("be", 8 * 40, 100.0)))
    done = tl.record(be.stream)
    tl.synchronize(done)
    assert be.stats.forced_gate_opens >= 1
    assert 2000.0 < done.time_us - start < 2 * 2000.0 + 2000.0  # held, then let through
    sched.close()


def test_lending_by_priority_leaves_the_home_atoms_ungated():
    """``lend_best_effort_tpcs="priority"``: the latency-critical kernels still run on every
    TPC, but best-effort atoms at home never wait at a gate (a closed gate holds only the
    stolen ones), so a request that never ends does not hold them."""
    device, sched = make(Policy(atom_us=200.0, request_hold_max_us=50_000.0, lend_best_effort_tpcs="priority"))
    tl = sched.timeline
    lc, be = sched.tenant("lc"), sched.tenant("be")
    assert lc.home.tpcs == device.all_tpcs()
    tl.store_gate(lc.gate, 0)  # a request opens, and never closes
    sched.submit_for(be, sim_plan(device, SimKernel("be", 8 * 40, 100.0)))
    done = tl.record(be.stream)
    tl.synchronize(done)
    assert done.time_us <= 1.1 * 40 * 100.0 and be.stats.forced_gate_opens == 0  # 40 waves of 100 us on its 8 SMs
    sched.close()


def test_without_lending_the_latency_critical_tenant_keeps_to_its_own_tpcs():
    device, sched = make(Policy(atom_us=200.0, lend_best_effort_tpcs="none"))
    lc = sched.tenant("lc")
    assert lc.home.tpcs == lc.tpcs != device.all_tpcs()
    sched.close()


def test_atoms_stranded_behind_a_closed_gate_are_let_through_after_the_hold_bound():
    """Atoms queued on stolen TPCs before a request that never ends pass its gate once
    they waited `Policy.request_hold_max_us`: the best-effort launch completes."""
    device, sched = make(Policy(atom_us=200.0, request_hold_max_us=2000.0, lend_best_effort_tpcs="none"))
    tl = sched.timeline
    lc, be = sched.tenant("lc"), sched.tenant("be")
    tl.call_at(150.0, lambda: tl.store_gate(lc.gate, 0))  # a request opens, and never closes
    sched.submit_for(be, sim_plan(device, SimKernel("be", 8 * 40, 100.0)))
    assert be.stats.stolen_atoms > 0  # the idle tenant's TPCs took part of the launch
    done = tl.record(be.stream)
    tl.synchronize(done)
    assert be.stats.forced_gate_opens >= 1
    assert done.time_us < 2 * 2000.0 + 1000.0
    assert not lc.gate.forced  # cleared once the stranded atoms started
    sched.close()


def test_an_interrupted_best_effort_launch_loses_no_block():
    device, sched = make()
    be = sched.tenant("be")
    calls = {"n": 0}
    original = sched.timeline.wait_until

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("tenant thread interrupted while waiting")
        return original(*args, **kwargs)

    sched.timeline.wait_until = flaky
    k = SimKernel("be", 16 * 30, 100.0)
    with pytest.raises(KeyboardInterrupt):
        sched.submit_for(be, sim_plan(device, k))
    sched.timeline.wait_until = original
    device.run_until_idle()
    assert sorted(blocks_by_kernel(device)["be"]) == list(range(k.grid_blocks))
    sched.close()


def test_an_exception_in_one_tenants_launch_leaves_the_other_tenant_running():
    device, sched = make()
    lc, be = sched.tenant("lc"), sched.tenant("be")
    first = SimKernel("lc0", 8, 100.0)
    sched.submit_for(lc, sim_plan(device, first))  # the latency-critical tenant's work before
    original = sched.timeline.wait_until

    def failing(*args, **kwargs):
        raise RuntimeError("the best-effort tenant's thread failed while waiting")

    sched.timeline.wait_until = failing
    k = SimKernel("be", 16 * 30, 100.0)
    with pytest.raises(RuntimeError, match="failed while waiting"):
        sched.submit_for(be, sim_plan(device, k))
    sched.timeline.wait_until = original
    after = SimKernel("lc1", 8, 100.0)
    sched.submit_for(lc, sim_plan(device, after))  # the other tenant goes on
    lc.synchronize()
    device.run_until_idle()
    blocks = blocks_by_kernel(device)
    assert sorted(blocks["lc0"]) == list(range(8)) and sorted(blocks["lc1"]) == list(range(8))
    assert sorted(blocks["be"]) == list(range(k.grid_blocks))  # and the failed launch lost no block
    sched.close()


def test_close_with_work_queued_finishes_it_and_refuses_new_work():
    device, sched = make()
    be = sched.tenant("be")
    k = SimKernel("be", 16 * 10, 100.0)
    sched.submit_for(be, sim_plan(device, k))
    sched.close()
    assert sorted(blocks_by_kernel(device)["be"]) == list(range(k.grid_blocks))
    with pytest.raises(SchedulerClosedError):
        sched.submit_for(be, sim_plan(device, k))
    with pytest.raises(SchedulerClosedError):
        be.__enter__()


def test_accounting_and_trace(tmp_path):
    device, sched, _ = run_workload([("lc", 16, 50.0, 1, 0.0), ("be", 200, 80.0, 2, 10.0)])
    stats = sched.stats()
    assert stats["tenants"]["lc"]["kernels"] == 1 and stats["tenants"]["be"]["kernels"] == 1
    assert stats["tenants"]["be"]["atoms"] >= 1 and stats["tenants"]["be"]["tpc_ms"] > 0
    trace = json.loads(sched.export_trace(tmp_path / "t.json").read_text())["traceEvents"]
    assert {e["args"]["tenant"] for e in trace} == {"lc", "be"}
    assert all(e["ph"] == "X" and e["dur"] > 0 for e in trace)
    blocks = sum(e["args"]["blocks"][1] - e["args"]["blocks"][0] for e in trace if e["args"]["tenant"] == "be")
    assert blocks == 200


def test_predictor_learns_wave_time_and_reports_errors():
    from lithos_atom.plan import KernelKey

    p = LatencyPredictor(alpha=0.5)
    key = KernelKey("k", (100, 1, 1), (256, 1, 1), 0)
    assert p.predict_us(key, 8, 100, 16) is None
    p.observe(key, 8, 32, 16, measured_us=200.0)  # 2 waves of 100 us
    assert p.predict_us(key, 8, 48, 16) == pytest.approx(300.0)
    p.observe(key, 8, 16, 16, measured_us=100.0, predicted_us=160.0)
    report = p.error_report()
    assert report["count"] == 1 and report["share_off_by_more_than_50us"] == 1.0
    with pytest.raises(ValueError, match="alpha"):
        LatencyPredictor(alpha=0)


@pytest.mark.parametrize(
    "specs, match",
    [
        ([TenantSpec("a", Priority.BEST_EFFORT, share=0.7), TenantSpec("b", Priority.BEST_EFFORT, share=0.7)], "shares ask"),
        ([TenantSpec("a", Priority.BEST_EFFORT, tpcs=(0, 1)), TenantSpec("b", Priority.BEST_EFFORT, tpcs=(1,))], "already belong"),
        ([TenantSpec("a", Priority.BEST_EFFORT, tpcs=(99,))], "out of range"),
        ([TenantSpec("a", Priority.BEST_EFFORT, share=0.5), TenantSpec("a", Priority.BEST_EFFORT, share=0.5)], "duplicate"),
        ([TenantSpec("a", Priority.BEST_EFFORT, share=0.01)], "less than one TPC"),
    ],
)
def test_invalid_tenant_configuration_is_refused(specs, match):
    with pytest.raises(TenantConfigError, match=match):
        assign_tpcs(specs, 8)


@pytest.mark.parametrize("shares, num_tpcs, want", [
    ((0.75, 0.25), 66, (50, 16)),  # 49.5 and 16.5: flooring both left TPC 65 to nobody
    ((0.5, 0.5), 66, (33, 33)),
    ((1 / 3, 1 / 3, 1 / 3), 8, (3, 3, 2)),
    ((0.3, 0.3), 10, (3, 3)),  # shares below the whole device leave the rest free
])
def test_shares_are_apportioned_without_losing_a_tpc(shares, num_tpcs, want):
    specs = [TenantSpec(f"t{i}", Priority.BEST_EFFORT, share=x) for i, x in enumerate(shares)]
    got = assign_tpcs(specs, num_tpcs)
    assert tuple(len(got[f"t{i}"]) for i in range(len(shares))) == want
    owned = [t for tpcs in got.values() for t in tpcs]
    assert len(owned) == len(set(owned))  # disjoint
    for i, x in enumerate(shares):  # each within one TPC of its exact share
        assert abs(len(got[f"t{i}"]) - x * num_tpcs) < 1


@pytest.mark.parametrize(
    "kwargs, match",
    [({"name": "", "priority": Priority.BEST_EFFORT, "share": 0.5}, "name"),
     ({"name": "x", "priority": "high", "share": 0.5}, "priority"),
     ({"name": "x", "priority": Priority.BEST_EFFORT}, "exactly one"),
     ({"name": "x", "priority": Priority.BEST_EFFORT, "share": 1.5}, "share"),
     ({"name": "x", "priority": Priority.BEST_EFFORT, "tpcs": ()}, "empty"),
     ({"name": "x", "priority": Priority.BEST_EFFORT, "tpcs": (1, 1)}, "duplicates")],
)
def test_invalid_tenant_spec_names_the_field(kwargs, match):
    with pytest.raises(TenantConfigError, match=match):
        TenantSpec(**kwargs)


@pytest.mark.parametrize("field, value", [("atom_us", 0), ("queue_cap_us", -1.0), ("lc_idle_grace_us", -5.0),
                                          ("gil_switch_interval_s", 0.0), ("steal_reserve_tpcs", -1),
                                          ("steal_reserve_tpcs", 1.5), ("lend_best_effort_tpcs", True)])
def test_invalid_policy_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        Policy(**{field: value})


def test_tenant_binds_one_thread_and_routes_its_launches():
    device, sched = make()
    with sched.tenant("be") as t:
        from lithos_sched.scheduler import current_tenant

        assert current_tenant() is t
        with pytest.raises(RuntimeError, match="already"):
            sched.tenant("lc").__enter__()
    assert current_tenant() is None
    sched.close()


def _right_sized_run(right_sizer):
    """A latency-critical tenant busy with small kernels (4 one-wave blocks on its 4 TPCs)
    beside a best-effort kernel; returns the device, the scheduler and the BE finish time."""
    device = SimDevice(num_tpcs=8, seed=0)
    sched = Scheduler(device, SPECS, Policy(atom_us=200.0, queue_cap_us=100.0), right_sizer=right_sizer)
    sched.timeline = tl = SimTimeline(device)
    lc, be = sched.tenant("lc"), sched.tenant("be")
    stop = []

    def lc_kernel(i: int) -> None:
        if not stop:
            sched.submit_for(lc, sim_plan(device, SimKernel(f"lc{i}", 4, 500.0)))

    for i in range(100):  # busy the whole time: nothing is idle to steal
        tl.call_at(i * 500.0, lambda i=i: lc_kernel(i))
    sched.submit_for(be, sim_plan(device, SimKernel("be", 16 * 20, 100.0)))
    done = tl.record(be.stream)
    tl.synchronize(done)
    stop.append(True)
    sched.close()
    device.run_until_idle()
    return device, sched, done.time_us


def test_right_sizing_runs_small_latency_critical_kernels_on_fewer_tpcs_and_gives_the_rest_away():
    from lithos_sched.rightsizing import RightSizer

    device, sched, be_done_sized = _right_sized_run(RightSizer())
    lc_tpcs = sorted(sched.tenant("lc").tpcs)
    needed = {sm for t in lc_tpcs[:2] for sm in device.tpc_sms(t)}  # 4 blocks, 2 per TPC
    lc_sms = {r.sm for r in device.records if r.kernel.startswith("lc")}
    assert lc_sms <= needed
    lc_ends = [r.end_us - r.start_us for r in device.records if r.kernel.startswith("lc")]
    assert max(lc_ends) <= 500.0 + 1e-6  # one wave either way: no slower
    spare_sms = {sm for t in lc_tpcs[2:] for sm in device.tpc_sms(t)}
    be_sms = {r.sm for r in device.records if r.kernel == "be"}
    assert be_sms & spare_sms  # best-effort blocks ran on the TPCs the kernels left
    _, _, be_done_home = _right_sized_run(None)
    assert be_done_sized < be_done_home


@pytest.mark.parametrize("home_cap", [100.0, 2000.0])
def test_best_effort_queues_deeper_only_on_tpcs_no_latency_critical_tenant_uses(home_cap):
    device, sched = make(Policy(atom_us=200.0, queue_cap_us=100.0, home_queue_cap_us=home_cap, stealing=False))
    be = sched.tenant("be")
    ahead: list[float] = []  # predicted work queued on the partition when each atom is issued
    issue = sched._issue

    def watched(tenant, plan, start, count, partition, stream, predicted, stolen):
        now = sched.timeline.now_us()
        ahead.append(max([r.predicted_end_us - now for r in tenant.book.inflight if r.partition is partition],
                         default=0.0))
        return issue(tenant, plan, start, count, partition, stream, predicted, stolen)

    sched._issue = watched
    for i in range(3):  # the first launch teaches the predictor the block time
        sched.submit_for(be, sim_plan(device, SimKernel(f"be{i}", 8 * 200, 100.0)))
    sched.close()
    assert max(ahead) <= home_cap + 1e-6
    if home_cap > 100.0:
        assert max(ahead) > 100.0  # deeper than the cap where latency-critical SMs are shared


def test_work_a_latency_critical_tenant_runs_outside_the_scheduler_keeps_its_tpcs_from_stealing():
    device, sched = make(Policy(atom_us=200.0, queue_cap_us=100.0, lend_best_effort_tpcs="none"))
    lc, be = sched.tenant("lc"), sched.tenant("be")
    opaque = SimKernel("opaque", 2, 3000.0)  # a CuPy/cuBLAS op on the tenant's stream, not intercepted
    lc.home.high.launch(opaque)
    sched.submit_for(be, sim_plan(device, SimKernel("be", 16 * 40, 100.0)))
    sched.close()
    device.run_until_idle()
    lc_sms = set(lc.home.sm_ids)
    opaque_end = max(r.end_us for r in device.records if r.kernel == "opaque")
    stolen_early = [r for r in device.records if r.kernel == "be" and r.sm in lc_sms and r.start_us < opaque_end]
    assert not stolen_early
    assert be.stats.stolen_atoms > 0  # once the opaque work was done, the idle TPCs were used


@pytest.mark.parametrize("stealing", [False, True])
def test_best_effort_atoms_are_longer_only_where_no_latency_critical_tenant_runs(stealing):
    device, sched = make(Policy(atom_us=200.0, home_atom_us=800.0, queue_cap_us=100.0, stealing=stealing,
                                device_gates=False))
    be = sched.tenant("be")
    issued: list[tuple[bool, float]] = []  # (on TPCs a latency-critical tenant owns, predicted us)
    issue = sched._issue

    def watched(tenant, plan, start, count, partition, stream, predicted, stolen):
        if predicted is not None:
            issued.append((bool(partition.tpcs & sched.tenant("lc").tpcs), predicted))
        return issue(tenant, plan, start, count, partition, stream, predicted, stolen)

    sched._issue = watched
    for i in range(3):  # the first launch teaches the predictor the block time
        sched.submit_for(be, sim_plan(device, SimKernel(f"be{i}", 8 * 200, 100.0)))
    sched.close()
    lengths = {shared: [p for s, p in issued if s == shared] for shared in (False, True)}
    if stealing:  # the latency-critical tenant is idle: every atom runs on its TPCs too
        assert lengths[True] and max(lengths[True]) <= 200.0 + 1e-6 and not lengths[False]
    else:
        assert lengths[False] and max(lengths[False]) > 200.0
        assert max(lengths[False]) <= 800.0 + 1e-6 and not lengths[True]


def test_request_windows_are_traced_on_the_atoms_clock(tmp_path):
    device, sched = make()
    tl = sched.timeline
    lc = sched.tenant("lc")
    with lc:
        tl.advance_to(100.0)
        with lc.request():
            sched.submit_for(lc, sim_plan(device, SimKernel("lc", 8, 50.0)))
            tl.synchronize(tl.record(lc.stream))
    (name, start, dur), = sched.request_windows()
    assert name == "lc" and start == pytest.approx(100.0) and dur == pytest.approx(50.0)
    trace = json.loads(sched.export_trace(tmp_path / "t.json").read_text())["traceEvents"]
    assert [e for e in trace if e["pid"] == "requests"] == [
        {"name": "request", "ph": "X", "ts": start, "dur": dur, "pid": "requests", "tid": "lc"}]
    sched.close()


def test_with_gates_atoms_on_stolen_tpcs_are_short_and_those_at_home_long():
    """Gated, one launch runs on two queues at once: on the idle tenant's TPCs in atoms of
    `Policy.atom_us` (two 100 us waves) and at home in atoms of up to `Policy.home_atom_us`."""
    device, sched = make(Policy(atom_us=200.0, home_atom_us=800.0, lend_best_effort_tpcs="none"))
    be, lc = sched.tenant("be"), sched.tenant("lc")
    for i in range(3):
        sched.submit_for(be, sim_plan(device, SimKernel(f"be{i}", 8 * 200, 100.0)))
    sched.close()
    atoms = [r for r in sched.atoms() if r.kernel != "be0"]  # after the first taught the predictor
    stolen = [r.blocks for r in atoms if r.stolen]
    home = [r.blocks for r in atoms if not r.stolen]
    assert {r.tpcs for r in atoms if r.stolen} == {lc.tpcs} and {r.tpcs for r in atoms if not r.stolen} == {be.tpcs}
    assert stolen and max(stolen) <= 2 * 8  # two waves of the 8 SMs
    assert home and max(home) > 2 * 8 and max(home) <= 8 * 8


@pytest.mark.parametrize("reserve", [0, 1, 3, 4])
def test_stealing_leaves_the_latency_critical_tenants_first_reserved_tpcs_alone(reserve):
    device, sched = make(Policy(atom_us=200.0, queue_cap_us=100.0, steal_reserve_tpcs=reserve))
    lc, be = sched.tenant("lc"), sched.tenant("be")
    sched.submit_for(be, sim_plan(device, SimKernel("be", 16 * 40, 100.0)))
    sched.close()
    device.run_until_idle()
    reserved_sms = {sm for t in sorted(lc.tpcs)[:reserve] for sm in device.tpc_sms(t)}
    used = {r.sm for r in device.records if r.kernel == "be"}
    assert not used & reserved_sms  # the reserve is never stolen
    if reserve < len(lc.tpcs):
        assert be.stats.stolen_atoms > 0 and used - set(be.home.sm_ids)  # the rest of its TPCs are
    else:
        assert be.stats.stolen_atoms == 0
