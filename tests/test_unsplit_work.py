"""CPU tier: a best-effort tenant's unsplit work on the simulated device.

Kernels run whole because they cannot be split are counted with their measured durations
(`TenantStats.unsplit_*`), traced, and kept off stolen TPCs when they are long
(`Policy.steal_max_block_us`); work lithos never sees (a library call on the tenant's
stream, played here by a kernel launched straight onto that stream) is timed between
launches where it can be (`TenantStats.opaque_*`, `lithos_sched.accounting.UnsplitWork`).
"""

from __future__ import annotations

import json

import pytest

from lithos_atom.plan import KernelKey, LaunchPlan, LaunchShape
from lithos_sched import Policy, Priority, Scheduler, SimDevice, SimKernel, TenantSpec
from lithos_sched.accounting import OPAQUE_WORK, UNSPLIT_WINDOW
from lithos_sched.timeline import SimTimeline
from tests.sim_helpers import sim_plan

SPECS = [TenantSpec("lc", Priority.LATENCY_CRITICAL, share=0.5), TenantSpec("be", Priority.BEST_EFFORT, share=0.5)]
REASON = "uses grid-wide sync (cooperative launch)"


def make(**policy):  # noqa: ANN003, ANN201
    device = SimDevice(num_tpcs=8, seed=0)
    sched = Scheduler(device, SPECS, Policy(atom_us=200.0, lend_best_effort_tpcs="none", **policy))
    sched.timeline = SimTimeline(device)
    return device, sched


def whole_plan(device: SimDevice, kernel: SimKernel, reason: str = REASON) -> LaunchPlan:
    """A launch the front end could not split: one unsplit launch of the original kernel."""
    key = KernelKey(kernel.name, (kernel.grid_blocks, 1, 1), (256, 1, 1), 0)
    return LaunchPlan.whole(key, kernel.grid_blocks, lambda stream: stream.launch(kernel), reason,
                            wave_blocks=kernel.blocks_per_sm * device.num_sms)


def one_wave(device: SimDevice, name: str, block_us: float) -> SimKernel:
    """A kernel of one wave on the best-effort tenant's half of the device: it lasts ``block_us``."""
    return SimKernel(name, device.num_sms // 2, block_us)


def spans(device: SimDevice, name: str) -> list[tuple[float, float]]:
    """(start, end) of each launch of kernel ``name`` that ran, in order."""
    by_launch: dict[int, tuple[float, float]] = {}
    for r in device.records:
        if r.kernel == name:
            lo, hi = by_launch.get(r.launch_id, (float("inf"), 0.0))
            by_launch[r.launch_id] = (min(lo, r.start_us), max(hi, r.end_us))
    return [by_launch[i] for i in sorted(by_launch)]


def test_unsplit_kernels_are_counted_with_their_measured_durations_and_reasons():
    device, sched = make()
    be = sched.tenant("be")
    for block_us in (300.0, 500.0, 900.0):
        sched.submit_for(be, whole_plan(device, one_wave(device, f"coop{block_us:g}", block_us)))
    sched.submit_for(be, sim_plan(device, SimKernel("split", 64, 50.0)))  # atomized: not unsplit
    be.synchronize()
    stats = sched.stats()["tenants"]["be"]
    measured = sorted(end - start for name in ("coop300", "coop500", "coop900") for start, end in spans(device, name))
    assert stats["unsplit_kernels"] == 3
    assert stats["unsplit_ms"] == pytest.approx(sum(measured) / 1000.0)
    assert stats["unsplit_p50_us"] == pytest.approx(measured[1])
    assert stats["unsplit_max_us"] == pytest.approx(measured[2])
    assert stats["unsplit_reasons"] == {f"coop{b}": REASON for b in (300, 500, 900)}
    assert sched.stats()["tenants"]["lc"]["unsplit_kernels"] == 0
    sched.close()


def test_a_launch_run_whole_because_it_is_short_is_not_unsplit():
    device, sched = make()
    be = sched.tenant("be")
    kernel = one_wave(device, "short", 100.0)
    sched.submit_for(be, sim_plan(device, kernel))  # timed once as an atom: the predictor knows it now
    be.synchronize()
    shape = LaunchShape(KernelKey("short", (kernel.grid_blocks, 1, 1), (256, 1, 1), 0), kernel.grid_blocks,
                        kernel.blocks_per_sm * device.num_sms)
    assert be.atomizer.launch_whole(lambda s: s.launch(kernel), None, lambda: shape)  # whole: one atom anyway
    be.synchronize()
    stats = sched.stats()["tenants"]["be"]
    assert stats["kernels"] == 2 and stats["unsplit_kernels"] == 0 and not stats["unsplit_reasons"]
    sched.close()


def stolen_by_kernel(sched: Scheduler) -> dict[str, list[bool]]:
    out: dict[str, list[bool]] = {}
    for row in sched.atoms():
        out.setdefault(row.kernel, []).append(row.stolen)
    return out


@pytest.mark.parametrize("gates", [True, False])
def test_a_long_unsplit_kernel_never_runs_on_stolen_tpcs_and_a_short_one_does_once_timed(gates):
    device, sched = make(device_gates=gates, steal_max_block_us=1500.0)
    be = sched.tenant("be")
    long_k, short_k = one_wave(device, "long", 4000.0), one_wave(device, "short", 600.0)
    for _ in range(3):  # the latency-critical tenant is idle throughout: its TPCs are there to steal
        for kernel in (long_k, short_k):  # two at a time: with gates the second goes where the queue is empty
            sched.submit_for(be, whole_plan(device, kernel))
            sched.submit_for(be, whole_plan(device, kernel))
            be.synchronize()
    stolen = stolen_by_kernel(sched)
    assert not any(stolen["long"])  # 4 ms: it would hold the stolen TPCs that long
    assert stolen["short"][:2] == [False, False]  # at home until timed there
    assert any(stolen["short"][2:4]) and any(stolen["short"][4:])  # then known to end within steal_max_block_us
    sched.close()


def test_an_unsplit_kernel_never_timed_goes_by_the_tenants_latest_unsplit_kernels():
    device, sched = make(steal_max_block_us=1500.0, device_gates=False)  # the host places each launch
    be = sched.tenant("be")
    sched.submit_for(be, whole_plan(device, one_wave(device, "a", 600.0)))  # the tenant's first: home
    be.synchronize()
    sched.submit_for(be, whole_plan(device, one_wave(device, "b", 700.0)))  # never timed, history short: stolen
    be.synchronize()
    sched.submit_for(be, whole_plan(device, one_wave(device, "c", 3000.0)))  # never timed: stolen, and long
    be.synchronize()
    sched.submit_for(be, whole_plan(device, one_wave(device, "d", 600.0)))  # never timed, history long: home
    be.synchronize()
    stolen = stolen_by_kernel(sched)
    assert [stolen[k] for k in "abcd"] == [[False], [True], [True], [False]]
    assert be.book.unsplit.longest_recent_us() == pytest.approx(max(e - s for s, e in spans(device, "c")))
    sched.close()


def test_the_median_is_over_the_latest_window_and_the_longest_over_all():
    device, sched = make(stealing=False)
    be = sched.tenant("be")
    sched.submit_for(be, whole_plan(device, one_wave(device, "first", 5000.0)))
    for i in range(UNSPLIT_WINDOW):
        sched.submit_for(be, whole_plan(device, one_wave(device, "k", 100.0 + i % 3)))
    be.synchronize()
    stats = sched.stats()["tenants"]["be"]
    assert stats["unsplit_kernels"] == UNSPLIT_WINDOW + 1
    assert stats["unsplit_max_us"] == pytest.approx(5000.0)  # the first one, out of the window
    assert stats["unsplit_p50_us"] == pytest.approx(101.0)
    assert be.book.unsplit.longest_recent_us() == pytest.approx(102.0)
    sched.close()


def test_library_work_between_launches_is_timed_on_the_tenants_stream():
    device, sched = make(stealing=False)
    be = sched.tenant("be")
    big = SimKernel("atoms", 40 * device.num_sms, 100.0)  # many atoms: the host is still ahead when it returns
    library = SimKernel("gemm", device.num_sms, 700.0)  # what cuBLAS would queue on the tenant's stream
    sched.submit_for(be, sim_plan(device, big))
    be.stream.launch(library)
    be.stream.launch(library)
    sched.submit_for(be, sim_plan(device, big))
    be.synchronize()
    stats = sched.stats()["tenants"]["be"]
    (first, _), (_, last) = spans(device, "gemm")
    assert stats["opaque_gaps"] == 1 and stats["opaque_untimed_gaps"] == 0
    assert stats["opaque_ms"] * 1000.0 == pytest.approx(last - first)  # both calls, back to back, and nothing else
    assert stats["opaque_max_us"] == pytest.approx(last - first)
    sched.close()


def test_a_gap_after_the_stream_caught_up_is_counted_untimed_not_guessed():
    device, sched = make(stealing=False)
    be = sched.tenant("be")
    tl = sched.timeline
    sched.submit_for(be, sim_plan(device, SimKernel("a", 64, 100.0)))
    be.synchronize()  # the stream drains: the host is behind it from here on
    be.stream.launch(SimKernel("gemm", device.num_sms, 700.0))
    tl.advance_to(tl.now_us() + 5000.0)  # the host runs Python meanwhile; the stream idles after the call
    sched.submit_for(be, sim_plan(device, SimKernel("b", 64, 100.0)))
    be.synchronize()
    stats = sched.stats()["tenants"]["be"]
    assert (stats["opaque_gaps"], stats["opaque_untimed_gaps"], stats["opaque_ms"]) == (0, 1, 0.0)
    sched.close()


def test_the_trace_has_a_track_of_unsplit_work_per_tenant(tmp_path):
    device, sched = make(stealing=False)
    be = sched.tenant("be")
    sched.submit_for(be, sim_plan(device, SimKernel("atoms", 40 * device.num_sms, 100.0)))
    be.stream.launch(SimKernel("gemm", device.num_sms, 700.0))
    sched.submit_for(be, whole_plan(device, one_wave(device, "coop", 800.0)))
    be.synchronize()
    events = json.loads(sched.export_trace(tmp_path / "t.json").read_text())["traceEvents"]
    unsplit = [e for e in events if e["pid"] == "unsplit work"]
    assert {(e["name"], e["tid"]) for e in unsplit} == {("coop", "be"), (OPAQUE_WORK, "be")}
    coop = next(e for e in unsplit if e["name"] == "coop")
    assert coop["args"]["reason"] == REASON and coop["dur"] == pytest.approx(800.0)
    (gemm_start, gemm_end), = spans(device, "gemm")
    opaque = next(e for e in unsplit if e["name"] == OPAQUE_WORK)
    assert opaque["dur"] == pytest.approx(gemm_end - gemm_start)
    sched.close()


def test_without_tracing_nothing_is_kept_for_the_trace():
    device = SimDevice(num_tpcs=8, seed=0)
    sched = Scheduler(device, SPECS, Policy(atom_us=200.0, stealing=False), trace=False)
    sched.timeline = SimTimeline(device)
    be = sched.tenant("be")
    sched.submit_for(be, whole_plan(device, one_wave(device, "coop", 800.0)))
    be.synchronize()
    assert sched.stats()["tenants"]["be"]["unsplit_kernels"] == 1 and len(be.book.unsplit.trace) == 0
    sched.close()
