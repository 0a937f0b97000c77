"""CPU tier: the right-sizing policy, its online learning on the simulated device, the
profile command and the report on the simulated device."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lithos_atom.bench import profile, rightsize_bench
from lithos_atom.plan import KernelKey
from lithos_sched import SimKernel, open_device
from lithos_sched.partition_timing import TimingOptions, default_sizes, profile_on_partitions, validate_sizes
from lithos_sched.rightsizing import RightSizeOptions, RightSizer, choose_tpcs
from lithos_sched.scaling import ProfileStore
from lithos_sched.scaling_fit import ScalingModel, fit_scaling
from tests.conftest import cuda_device_count, early, start_early

SIZES = np.array([66, 59, 53, 46, 40, 33, 26, 20, 13, 7])


def test_saturating_kernel_is_cut_to_its_knee():
    model = fit_scaling(SIZES, 3000 / np.minimum(SIZES, 30) + 5)
    chosen = choose_tpcs(model, 66, slack=0.05)
    assert 26 <= chosen <= 33
    assert model.slowdown(chosen, 66) <= 0.05 + 1e-9


def test_slack_bounds_the_predicted_slowdown():
    model = ScalingModel("amdahl", m_us=1000.0, b_us=200.0, t_min=1, t_max=66)
    for slack in (0.0, 0.02, 0.05, 0.2, 1.0):
        chosen = choose_tpcs(model, 66, slack, min_saving=0.0)
        assert model.slowdown(chosen, 66) <= slack + 1e-9
        if chosen > 1:
            assert model.slowdown(chosen - 1, 66) > slack


def test_a_perfectly_scaling_kernel_keeps_its_home():
    model = ScalingModel("amdahl", m_us=66000.0, b_us=0.0, t_min=7, t_max=66)
    assert choose_tpcs(model, 66, 0.05) == 66  # 63 TPCs would cost as much TPC-time, 5% slower
    assert choose_tpcs(model, 66, 0.05, min_saving=0.0) == 66  # 63 TPCs save exactly nothing
    almost = ScalingModel("amdahl", m_us=66000.0, b_us=10.0, t_min=7, t_max=66)
    assert choose_tpcs(almost, 66, 0.05, min_saving=0.0) < 66  # saves 0.05%: only a zero threshold takes it
    assert choose_tpcs(almost, 66, 0.05) == 66


def test_no_extrapolation_below_the_smallest_sample():
    model = ScalingModel("amdahl", m_us=0.0, b_us=50.0, t_min=13, t_max=66)
    assert choose_tpcs(model, 66, 0.05) == 13
    assert choose_tpcs(model, 66, 0.05, cap_tpcs=10) == 10


@pytest.mark.parametrize("kwargs, field", [
    ({"slack": -0.1}, "slack"), ({"min_tpcs": 0}, "min_tpcs"), ({"min_sizes": 1.5}, "min_sizes"),
    ({"min_saving": 1.0}, "min_saving"), ({"explore_max_slowdown": True}, "explore_max_slowdown"),
])
def test_options_name_the_bad_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        RightSizeOptions(**kwargs)


def test_occupancy_filter_needs_no_profile():
    sizer = RightSizer(ProfileStore("unused.json"))
    key = KernelKey("small", (24, 1, 1), (256, 1, 1), 0)
    assert sizer.tpcs_for(key, 66, blocks_per_tpc=4) == 6
    assert sizer.tpcs_for("unknown", 66) == 66
    with pytest.raises(ValueError, match="home_tpcs"):
        sizer.tpcs_for(key, 0)


def test_exploration_walks_down_the_ladder_and_stops_when_it_hurts():
    sizer = RightSizer(ProfileStore("unused.json"), RightSizeOptions(min_sizes=4, explore_max_slowdown=0.25))
    key = "k"
    latency = {66: 100.0, 50: 105.0, 33: 140.0, 17: 300.0}
    seen = []
    for _ in range(4):
        t = sizer.tpcs_for(key, 66)
        seen.append(t)
        sizer.store.profile(key).observe(t, latency[t])
    # 66, 50 and 33 are probed; 33 was 40% slower, so 17 is never tried.
    assert seen[:3] == [66, 50, 33]
    assert 17 not in seen
    assert sizer.tpcs_for(key, 66) == 66


def test_decisions_are_memoized_until_a_new_size_or_enough_timings():
    store = ProfileStore("unused.json")
    prof = store.profile("k")
    for t in (66, 40, 20):
        prof.add(t, 100.0)
    sizer = RightSizer(store, RightSizeOptions(refit_every=3))
    assert sizer.tpcs_for("k", 66) == 20
    prof.observe(20, 2000.0)  # 20 TPCs turn out slow; one timing keeps the decision
    assert sizer.tpcs_for("k", 66) == 20
    prof.observe(20, 2000.0)
    prof.observe(20, 2000.0)  # the third refits
    assert sizer.tpcs_for("k", 66) > 20
    prof.observe(50, 100.0)  # a new size refits at once: the answer is a fresh sizer's
    assert sizer.tpcs_for("k", 66) == RightSizer(store).tpcs_for("k", 66)


def test_online_right_sizing_on_the_simulated_device():
    """The scheduler's loop: ask, run on that many home TPCs, observe; it settles on the
    fewest TPCs the grid can fill, with no latency lost (simulated device)."""
    dev = open_device(simulate=True)
    try:
        kernel = SimKernel("k", grid_blocks=40, block_us=100.0)  # 20 TPCs' worth at 1 block per SM
        key = KernelKey("k", (40, 1, 1), (128, 1, 1), 0)
        sizer = RightSizer(ProfileStore("unused.json"))
        chosen = []
        for _ in range(8):
            t = sizer.tpcs_for(key, 66)  # blocks_per_tpc unknown: learned from the timings alone
            part = dev.partition(range(t))
            start = part.normal.record()
            part.normal.launch(kernel)
            end = part.normal.record()
            end.synchronize()
            sizer.observe(key, t, 40, 2 * t, start.elapsed_ms(end) * 1000.0)
            chosen.append(t)
            part.close()
        assert chosen[0] == 66
        assert 20 <= chosen[-1] <= 33
        assert sizer.store.get(key).samples[chosen[-1]][0] == pytest.approx(100.0)
    finally:
        dev.close()


def test_offline_profile_on_the_simulated_device_matches_wave_quantization():
    dev = open_device(simulate=True)
    try:
        kernel = SimKernel("w", grid_blocks=264, block_us=50.0)  # 2 waves on 132 SMs
        prof = profile_on_partitions(dev, "w", lambda s: s.launch(kernel), [66, 44, 33, 22],
                                     TimingOptions(rounds=1, launches_per_round=2, warmup=0))
        assert prof.samples[66][0] == pytest.approx(100.0)
        assert prof.samples[44][0] == pytest.approx(150.0)  # ceil(264 / 88) = 3 waves
        assert prof.samples[33][0] == pytest.approx(200.0)
    finally:
        dev.close()


def test_knee_sizes_are_the_untimed_counts_above_the_last_one_outside_the_slack():
    from lithos_sched.partition_timing import knee_sizes

    medians = {66: 100.0, 59: 100.5, 53: 101.0, 46: 104.0, 40: 106.0, 33: 130.0}
    # 40 is 6% slower: nothing below it can be within 5%, every count above it can.
    assert knee_sizes(medians, 66, 0.05) == [t for t in range(65, 40, -1) if t not in (59, 53, 46)]
    assert knee_sizes(medians, 66, 0.0) == [65, 64, 63, 62, 61, 60]  # 59 is already slower
    assert knee_sizes({66: 1.0, 33: 1.0}, 66, 0.05)[-1] == 1  # nothing outside: every count
    assert knee_sizes({t: 1.0 for t in range(1, 67)}, 66, 0.05) == []
    with pytest.raises(ValueError, match="full 66 TPCs"):
        knee_sizes({33: 1.0}, 66, 0.05)
    with pytest.raises(ValueError, match="slack"):
        knee_sizes(medians, 66, -0.1)


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.integers(1, 65), st.floats(50.0, 400.0), min_size=1, max_size=12),
       st.floats(0.0, 0.5))
def test_knee_sizes_leave_no_candidate_untimed(timed, slack):
    from lithos_sched.partition_timing import knee_sizes

    medians = {66: 100.0, **timed}
    knee = knee_sizes(medians, 66, slack)
    assert not set(knee) & set(medians) and knee == sorted(knee, reverse=True)
    outside = [t for t, us in medians.items() if us > (1 + slack) * 100.0]
    floor = max(outside, default=0)
    # With the knee timed, every count above the last one outside the slack is timed.
    assert set(range(floor + 1, 67)) <= set(medians) | set(knee)
    assert all(t > floor for t in knee)


def test_a_refined_profile_puts_the_choice_on_the_knee_not_the_next_coarse_size():
    dev = open_device(simulate=True)
    try:
        # 1000 blocks of 10 us, one per SM at a time: 8 waves, 80 us, on 66 TPCs, and still
        # 8 waves down to 63 TPCs (126 SMs); 59, the next coarse size, takes 9.
        kernel = SimKernel("k", grid_blocks=1000, block_us=10.0)
        timing = TimingOptions(rounds=1, launches_per_round=1, warmup=0)
        coarse = profile_on_partitions(dev, "k", lambda s: s.launch(kernel), default_sizes(66), timing)
        fine = profile_on_partitions(dev, "k", lambda s: s.launch(kernel), default_sizes(66), timing,
                                     refine_slack=0.05)
        assert set(coarse.samples) == set(default_sizes(66))
        assert set(fine.samples) == set(default_sizes(66)) | set(range(60, 66))  # 59 is 12.5% slower
        assert fine.samples[63][0] == pytest.approx(80.0) and fine.samples[62][0] == pytest.approx(90.0)
        assert choose_tpcs(fine.model(), 66, 0.05, samples=fine.samples) == 63
        assert choose_tpcs(coarse.model(), 66, 0.05, samples=coarse.samples) == 66
    finally:
        dev.close()


def test_size_helpers():
    assert default_sizes(66)[0] == 66 and len(default_sizes(66)) == 10
    assert validate_sizes([3, 66, 3], 66) == [66, 3]
    with pytest.raises(ValueError, match="1..66"):
        validate_sizes([67], 66)
    with pytest.raises(ValueError, match="rounds"):
        TimingOptions(rounds=0)


def _start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finished(name: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    """The folder and the finished run of command ``name`` (started with the session)."""
    folder, proc = early(name, tmp_path_factory)
    stdout, stderr = proc.communicate(timeout=300)
    return folder, subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


# the two commands run beside the session's other tests (`tests.conftest.start_early`)
start_early("profile-cli", "profile_cli", lambda folder: _start(
    "lithos_atom.bench.profile", "--sim", "--cache", str(folder / "p.json"), "--rounds", "1"))
start_early("rightsize-report", "rightsize_report", lambda folder: _start(
    "lithos_atom.bench.rightsize_bench", *(["--sim"] if cuda_device_count() > 0 else []), "--out", str(folder)))


@pytest.fixture(scope="module")
def profile_cli(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    return _finished("profile-cli", tmp_path_factory)


@pytest.fixture(scope="module")
def rightsize_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    return _finished("rightsize-report", tmp_path_factory)


def test_profile_cli_sim_writes_the_cache(profile_cli):
    folder, proc = profile_cli
    cache = folder / "p.json"
    assert proc.returncode == 0, proc.stderr
    assert "SIMULATED DEVICE" in proc.stdout
    data = json.loads(cache.read_text())
    assert "simulated" in data["device"]
    assert {p["key"] for p in data["profiles"]} >= {"sim:small_grid", "sim:tiny_grid"}


@pytest.mark.parametrize("args, message", [
    ((), "nothing to profile"),
    (("--sim", "--case", "gemm_f16"), "takes no --case"),
    (("--case", "no_such_kernel"), "invalid choice"),
    (("--sim", "--sizes", "0,5"), "--sizes"),
    (("--sim", "--sizes", "a,b"), "comma-separated"),
    (("--inference-batch", "9"), "1-8"),
    (("--sim", "--slack", "-1"), "--slack"),
])
def test_profile_cli_errors(args, message, capsys, monkeypatch):
    monkeypatch.setattr(profile, "gpu_available", lambda: True)  # without a GPU, no options profile the simulation
    with pytest.raises(SystemExit) as exit_:  # in this process: the command refuses before any profiling
        profile.main(list(args))
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_report_on_the_simulated_device(rightsize_report):
    gpu = cuda_device_count() > 0  # without one, the command falls back to the simulated device by itself
    tmp_path, proc = rightsize_report
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("SIMULATED DEVICE: " + ("--sim was given" if gpu else "no CUDA GPU was found"))
    report = json.loads((tmp_path / "rightsizing.json").read_text())
    assert report["simulated"] is True
    rows = {r["key"]: r for r in report["kernels"]}
    assert rows["sim:tiny_grid"]["tpcs"] < 66 and rows["sim:three_waves"]["tpcs"] == 66
    assert all(r["measured_slowdown"] <= 0.05 + 1e-9 for r in rows.values())
    assert report["summary"]["registry"]["mean_capacity_saved"] > 0.25
    assert report["dvfs"]["actuator_active"] is False
    assert (tmp_path / "rightsizing.png").stat().st_size > 0


def test_report_refuses_a_negative_slack(capsys):
    with pytest.raises(SystemExit) as exit_:
        rightsize_bench.main(["--sim", "--slack", "-1"])
    assert exit_.value.code == 2 and "--slack" in capsys.readouterr().err


def test_measured_envelope_keeps_a_smooth_knee_from_looking_free():
    # A memory-bound kernel that saturates gradually (as gelu_f32 did on the H100): the
    # sharp 'saturating' fit alone would put the knee at ~35 TPCs; the samples say 40
    # TPCs are already 5.7% slower, so 46 (1.6%) is the answer.
    ratios = {66: 1.000, 59: 0.999, 53: 0.993, 46: 1.016, 40: 1.057, 33: 1.103, 26: 1.276, 20: 1.598,
              13: 2.401, 7: 4.280}
    samples = {t: (1417.0 * r, 9) for t, r in ratios.items()}
    model = fit_scaling(list(samples), [m for m, _ in samples.values()])
    assert choose_tpcs(model, 66, 0.05, samples=samples) == 46
    assert choose_tpcs(model, 66, 0.05) < 40  # the model alone is too optimistic between samples


def test_the_profile_bound_takes_the_least_tpc_time_within_slack():
    from lithos_atom.bench.rightsize_bench import best_profiled_saving

    profile = {66: 100.0, 46: 103.0, 33: 104.9, 13: 200.0, 7: 400.0}
    tpcs, saved = best_profiled_saving(profile, 66, 0.05)
    assert tpcs == 33 and saved == pytest.approx(1 - 33 * 104.9 / 6600)
    assert best_profiled_saving(profile, 66, 0.0) == (66, 0.0)  # nothing else is as fast
    with pytest.raises(ValueError, match="full 66 TPCs"):
        best_profiled_saving({33: 1.0}, 66, 0.05)


def test_the_report_summary_carries_the_profile_bound_of_kernels_and_requests():
    from lithos_atom.bench.rightsize_bench import _summaries, best_profiled_saving

    def row(key, profile, tpcs, per_request=1):  # noqa: ANN001, ANN202
        bound_tpcs, bound = best_profiled_saving(profile, 66, 0.05)
        return {"key": key, "per_request": per_request, "profile_us": {str(t): us for t, us in profile.items()},
                "tpcs": tpcs, "home_tpcs": 66, "us_full": profile[66], "us_chosen": profile[tpcs],
                "measured_slowdown": profile[tpcs] / profile[66] - 1,
                "capacity_saved": 1 - tpcs * profile[tpcs] / (66 * profile[66]),
                "profile_bound": {"tpcs": bound_tpcs, "capacity_saved": bound}}

    rows = [row("case:a", {66: 10.0, 33: 10.2, 13: 30.0}, 66),  # the policy kept all TPCs; 33 would do
            row("inference:b1:ln", {66: 5.0, 33: 5.1, 13: 5.2}, 13, 4),
            row("inference:b1:gemm", {66: 20.0, 33: 35.0, 13: 80.0}, 66, 4)]
    summary = _summaries(rows, 0.05)
    assert summary["registry"]["mean_capacity_saved"] == 0.0
    assert summary["registry"]["mean_profile_bound"] == pytest.approx(1 - 33 * 10.2 / 660)
    request = summary["inference"]["b1"]["per_kernel"]
    assert request["profile_bound"] == pytest.approx(1 - 4 * (13 * 5.2 + 66 * 20.0) / (66 * 4 * 25.0))
    assert summary["suite"]["mean_profile_bound"] == pytest.approx(
        (summary["registry"]["mean_profile_bound"] + request["profile_bound"]) / 2)
