"""CPU tier: a latency-critical tenant's requests published across processes
(`RequestSignal`), and a best-effort scheduler that steals its TPCs only while it has none
open (`Tenant.follow_requests`)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from lithos_atom.bench.sim_colocation import sim_plan
from lithos_sched import Policy, Priority, Scheduler, SimDevice, SimKernel, TenantSpec
from lithos_sched.request_signal import RequestSignal
from lithos_sched.timeline import SimTimeline

SPECS = [TenantSpec("lc", Priority.LATENCY_CRITICAL, share=0.5), TenantSpec("be", Priority.BEST_EFFORT, share=0.5)]


def test_another_process_sees_the_requests_open_and_the_last_close(tmp_path):
    with RequestSignal.create(tmp_path) as signal:
        reader = textwrap.dedent(f"""
            from lithos_sched.request_signal import RequestSignal
            s = RequestSignal.attach({str(signal.path)!r})
            print(s.open_requests, s.busy(0.0), s.busy(3.6e9 * 1e6))
            s.close()
        """)

        def read() -> str:
            return subprocess.run([sys.executable, "-c", reader], capture_output=True, text=True, check=True).stdout.split()

        assert read() == ["0", "False", "False"]  # never opened: not busy, whatever the grace
        with signal.request():
            with signal.request():
                assert read() == ["2", "True", "True"]
        assert read() == ["0", "False", "True"]  # closed: busy only within the grace
        assert signal.path.exists()
    assert not signal.path.exists()  # the creator removes the file


def test_a_right_sized_request_publishes_its_tpc_count(tmp_path):
    with RequestSignal.create(tmp_path) as signal, RequestSignal.attach(signal.path) as reader:
        assert reader.tpcs_in_use() == 0  # never opened: all
        with signal.request(tpcs=5):
            assert reader.tpcs_in_use() == 5 and reader.open_requests == 1
        assert reader.tpcs_in_use() == 5  # it stands through the grace after the close
        with signal.request():
            assert reader.tpcs_in_use() == 0
        for bad in (0, -1, 2.5, True):
            with pytest.raises(ValueError, match="tpcs must be an int >= 1"):
                with signal.request(tpcs=bad):
                    pass
        assert reader.open_requests == 0  # a refused mark opens nothing


def test_attach_refuses_what_is_not_a_signal(tmp_path):
    other = tmp_path / "other"
    other.write_bytes(b"x" * 3)
    with pytest.raises(ValueError, match="not a request signal"):
        RequestSignal.attach(other)
    with pytest.raises(FileNotFoundError):
        RequestSignal.attach(tmp_path / "missing")


def scheduler(grace_us: float, gates: bool = True) -> Scheduler:
    device = SimDevice(num_tpcs=8, seed=0)
    sched = Scheduler(device, SPECS, Policy(lc_idle_grace_us=grace_us, device_gates=gates))
    sched.timeline = SimTimeline(device)
    return sched


def stolen_atoms(sched: Scheduler) -> int:
    be = sched.tenant("be")
    before = be.stats.stolen_atoms
    sched.submit_for(be, sim_plan(sched.device, SimKernel("k", grid_blocks=64, block_us=20.0, blocks_per_sm=1)))
    be.synchronize()
    return be.stats.stolen_atoms - before


def test_a_best_effort_tenant_steals_a_remote_tenants_tpcs_only_between_its_requests(tmp_path):
    sched = scheduler(grace_us=0.0)
    with RequestSignal.create(tmp_path) as signal:
        sched.tenant("lc").follow_requests(signal)
        assert stolen_atoms(sched) > 0  # no request: its TPCs are idle
        with signal.request():
            assert stolen_atoms(sched) == 0
        assert stolen_atoms(sched) > 0
    sched.close()


def stolen_tpcs(sched: Scheduler) -> set[int]:
    """The TPCs of the partitions the best-effort tenant's stolen atoms ran on."""
    be = sched.tenant("be")
    sched.submit_for(be, sim_plan(sched.device, SimKernel("k", grid_blocks=64, block_us=20.0, blocks_per_sm=1)))
    be.synchronize()
    return {t for r in sched.atoms() if r.stolen for t in r.tpcs} - set(be.tpcs)


def test_a_right_sized_remote_request_leaves_the_rest_of_its_tpcs_to_steal(tmp_path):
    # the host's placement: a device-side gate covers all of the tenant's TPCs
    sched = scheduler(grace_us=0.0, gates=False)
    lc = sched.tenant("lc")
    first = sorted(lc.tpcs)
    with RequestSignal.create(tmp_path) as signal:
        lc.follow_requests(signal)
        with signal.request(tpcs=1):
            assert lc.busy_tpcs() == frozenset(first[:1])
            assert stolen_tpcs(sched) == set(first[1:])  # all but the request's
        with signal.request(tpcs=len(first)):  # sized to all of them: nothing to steal
            assert lc.busy_tpcs() == lc.tpcs and stolen_atoms(sched) == 0
        with signal.request():
            assert stolen_atoms(sched) == 0
    sched.close()


def test_the_idle_grace_runs_from_the_remote_requests_close(tmp_path):
    sched = scheduler(grace_us=3.6e9, gates=False)  # an hour: still within it when the launch comes
    with RequestSignal.create(tmp_path) as signal:
        sched.tenant("lc").follow_requests(signal)
        with signal.request():
            pass
        assert stolen_atoms(sched) == 0
    sched.close()


def test_with_gates_a_remote_request_stops_queued_atoms_and_its_close_resumes_them(tmp_path):
    """The remote request's gate, not the host's grace: closed while a request is open
    (atoms queued on the tenant's TPCs wait at the gate), open as soon as it closes."""
    sched = scheduler(grace_us=3.6e9)
    tl = sched.timeline
    lc, be = sched.tenant("lc"), sched.tenant("be")
    with RequestSignal.create(tmp_path) as signal:
        lc.follow_requests(signal)
        assert lc.gate is signal.gate and lc.gate.is_open()
        kernel = SimKernel("k", grid_blocks=8 * 40, block_us=100.0)
        sched.submit_for(be, sim_plan(sched.device, kernel))  # teaches the predictor the kernel
        be.synchronize()
        t0 = tl.now_us()
        request = signal.request()
        tl.call_at(t0 + 150.0, request.__enter__)  # opens while stolen atoms are queued
        tl.call_at(t0 + 5000.0, lambda: request.__exit__(None, None, None))
        sched.submit_for(be, sim_plan(sched.device, kernel))
        be.synchronize()
        starts = [r.start_us - t0 for r in sched.atoms() if r.stolen and r.start_us >= t0]
        assert starts and not [t for t in starts if 150.0 < t < 5000.0]  # none starts inside the request
        assert [t for t in starts if t >= 5000.0]  # the queued ones run once it closes
        assert stolen_atoms(sched) > 0  # the grace of an hour holds nothing: the gate is open
    sched.close()


def test_a_remote_tenant_cannot_be_entered_and_only_latency_critical_ones_follow(tmp_path):
    sched = scheduler(grace_us=0.0)
    with RequestSignal.create(tmp_path) as signal:
        with pytest.raises(TypeError, match="latency-critical"):
            sched.tenant("be").follow_requests(signal)
        with sched.tenant("lc"):
            with pytest.raises(RuntimeError, match="entered"):
                sched.tenant("lc").follow_requests(signal)
        sched.tenant("lc").follow_requests(signal)
        with pytest.raises(RuntimeError, match="another process"):
            sched.tenant("lc").__enter__()
    sched.close()


def run_through_a_request(tmp_path, steal_poll_us: float, close_at_us: float) -> tuple[float, int]:
    """A best-effort kernel of 20 ms on its own TPCs, launched while the remote tenant is
    inside a request that closes ``close_at_us`` later: its run time and stolen atoms."""
    device = SimDevice(num_tpcs=8, seed=0)
    sched = Scheduler(device, SPECS, Policy(lc_idle_grace_us=0.0, steal_poll_us=steal_poll_us, lend_best_effort_tpcs="none"))
    tl = sched.timeline = SimTimeline(device)
    be = sched.tenant("be")
    with RequestSignal.create(tmp_path) as signal:
        sched.tenant("lc").follow_requests(signal)
        request = signal.request()
        request.__enter__()
        t0 = tl.now_us()
        tl.call_at(t0 + close_at_us, lambda: request.__exit__(None, None, None))
        sched.submit_for(be, sim_plan(device, SimKernel("k", grid_blocks=800, block_us=200.0, blocks_per_sm=1)))
        be.synchronize()
        took = tl.now_us() - t0
    sched.close()
    return took, be.stats.stolen_atoms


def test_a_best_effort_tenant_waiting_on_its_own_tpcs_steals_as_soon_as_the_remote_request_closes(tmp_path):
    polled, polled_stolen = run_through_a_request(tmp_path, steal_poll_us=100.0, close_at_us=1000.0)
    blocked, blocked_stolen = run_through_a_request(tmp_path, steal_poll_us=0.0, close_at_us=1000.0)
    assert polled_stolen > 0 and blocked_stolen > 0
    # Blocking, it waits for room behind its own queued atoms (home_queue_cap_us + an atom)
    # before it looks at the signal again; polling, it leaves that wait when the request closes.
    assert polled < blocked - 500.0


def test_steal_poll_us_must_be_a_number_at_least_zero():
    with pytest.raises(ValueError, match="steal_poll_us"):
        Policy(steal_poll_us=-1.0)


def test_a_published_tenant_closes_the_shared_gate_for_unmarked_launches_and_reopens_it_when_idle(tmp_path):
    """Two schedulers on one device stand for two processes: the latency-critical one
    publishes its tenant's requests, the best-effort one follows them. The launches are
    not marked: each closes the shared gate, and the publisher's keeper opens it once the
    tenant is idle past its grace."""
    device = SimDevice(num_tpcs=8, seed=0)
    publisher = Scheduler(device, SPECS, Policy(lc_idle_grace_us=300.0))
    follower = Scheduler(device, SPECS, Policy(lc_idle_grace_us=300.0))
    tl = follower.timeline = publisher.timeline  # one virtual clock for both "processes"
    lc = publisher.tenant("lc")
    with RequestSignal.create(tmp_path) as signal:
        lc.publish_requests(signal)
        follower.tenant("lc").follow_requests(signal)
        assert lc.gate is signal.gate and follower.tenant("lc").gate is signal.gate
        publisher.submit_for(lc, sim_plan(device, SimKernel("lc", 8, 100.0)))
        assert lc.gate_held and not signal.gate.is_open()  # closed by the launch, no request marked
        tl.synchronize(tl.record(lc.stream))
        assert not signal.gate.is_open()  # within the grace after its launch
        tl.advance_to(tl.now_us() + 400.0)
        assert signal.gate.is_open() and not lc.gate_held  # the keeper opened it
        with lc, lc.request():
            assert not signal.gate.is_open() and signal.open_requests == 1  # marked: words and gate
        tl.synchronize(tl.record(lc.stream))
        assert signal.gate.is_open() and signal.open_requests == 0
        with pytest.raises(TypeError, match="latency-critical"):
            publisher.tenant("be").publish_requests(signal)
    publisher.close()
    follower.close()
