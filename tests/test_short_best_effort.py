"""CPU tier: a best-effort launch predicted to be one atom runs unsplit through the
original kernel (`Policy.short_best_effort_whole`), placed, ordered and accounted like the
one atom it replaces; a launch never timed, or predicted longer, builds its plan."""

from __future__ import annotations

import pytest

from lithos_sched import Policy, Priority, Scheduler, SimDevice, TenantSpec
from tests.test_lc_fast_path import SHAPE, RecordingTimeline, launch_on

SPECS = [TenantSpec("lc", Priority.LATENCY_CRITICAL, share=0.5), TenantSpec("be", Priority.BEST_EFFORT, share=0.5)]


class IdleTimeline(RecordingTimeline):
    """Every stream is drained: the latency-critical tenant is idle, so a launch may steal."""

    def stream_done(self, stream) -> bool:  # noqa: ANN001
        return True

    def wait_gate(self, stream, gate) -> None:  # noqa: ANN001
        self.ops.append(("wait gate", self.handle(stream)))


def scheduler(policy: Policy | None = None):  # noqa: ANN201
    sched = Scheduler(SimDevice(num_tpcs=8, seed=0), SPECS, policy or Policy())
    sched.timeline = tl = IdleTimeline()
    return sched, tl


def teach(sched: Scheduler, wave_us: float) -> None:
    """Let the predictor have seen SHAPE's kernel take ``wave_us`` per wave on the best-effort TPCs."""
    be = sched.tenant("be")
    sched.predictor.observe(SHAPE.key, be.home.num_tpcs, SHAPE.total_blocks,
                            sched._partition_wave(SHAPE.wave_blocks, be.home), wave_us)


@pytest.mark.parametrize("gates", [False, True])
def test_a_short_launch_runs_whole_as_one_timed_atom_and_the_user_stream_waits_for_it(gates):
    sched, tl = scheduler(Policy(device_gates=gates, lend_best_effort_tpcs="none"))
    be = sched.tenant("be")
    teach(sched, 100.0)
    assert be.atomizer.launch_whole(launch_on(tl, "k"), None, lambda: SHAPE) is True
    launches = [op for op in tl.ops if op[0].startswith("launch")]
    assert len(launches) == 1  # one unsplit launch of the original kernel
    (rec,) = be.book.inflight
    assert (rec.start_block, rec.count, rec.key) == (0, SHAPE.total_blocks, SHAPE.key)
    if gates:  # its own TPCs' queue or the stolen TPCs' one, behind the gate
        lc = sched.tenant("lc")
        assert rec.partition.tpcs in (be.tpcs, lc.tpcs) and rec.stolen == (rec.partition.tpcs == lc.tpcs)
        assert (("wait gate", launches[0][1]) in tl.ops) == rec.stolen
        tl.ops = [op for op in tl.ops if op[0] != "wait gate"]
    else:
        assert rec.stolen and rec.partition.tpcs == frozenset(range(8))  # the idle TPCs too
    # begin and end events around it on its stream, and the user's stream waits for the end
    stream = launches[0][1]
    i = tl.ops.index(launches[0])
    assert tl.ops[i - 1] == ("record", stream, rec.start) and tl.ops[i + 1] == ("record", stream, rec.end)
    user = be.home.normal.handle
    if stream == user:  # home, on the user's own stream: in order with no event
        assert gates and not [op for op in tl.ops if op[0] == "wait"]
        return
    before = tl.ops[0]
    assert before[:2] == ("record", user) and tl.ops[1] == ("wait", stream, before[2])  # after earlier work
    assert tl.ops[-2] == ("wait", user, rec.end)  # later work on the user's stream runs after it
    assert tl.ops[-1] == ("record", user, be.book.unsplit.gap_start[1])  # where the gap to the next launch starts
    assert (be.stats.kernels, be.stats.atoms, be.stats.timed_atoms) == (1, 1, 1)


@pytest.mark.parametrize("wave_us", [None, 5000.0])
def test_a_launch_never_timed_or_longer_than_an_atom_builds_its_plan(wave_us):
    sched, tl = scheduler()
    be = sched.tenant("be")
    if wave_us is not None:
        teach(sched, wave_us)
    assert be.atomizer.launch_whole(launch_on(tl, "k"), None, lambda: SHAPE) is False
    assert not tl.ops and be.stats.kernels == 0  # nothing issued: the front end goes on


def test_the_policy_can_turn_it_off():
    sched, tl = scheduler(Policy(short_best_effort_whole=False))
    teach(sched, 100.0)
    described = []
    assert sched.tenant("be").atomizer.launch_whole(
        launch_on(tl, "k"), None, lambda: described.append(1) or SHAPE) is False
    assert not described and not tl.ops  # off: not even the launch's shape is asked for


def test_a_whole_launch_on_the_users_own_stream_needs_no_ordering_event():
    sched, tl = scheduler(Policy(stealing=False, lend_best_effort_tpcs="none"))
    be = sched.tenant("be")
    teach(sched, 100.0)
    assert be.atomizer.launch_whole(launch_on(tl, "k"), None, lambda: SHAPE) is True
    (rec,) = be.book.inflight
    user = be.home.normal.handle  # the emptier of the home's two streams: both are empty
    assert tl.ops == [("record", user, rec.start), ("launch k", user), ("record", user, rec.end)]
