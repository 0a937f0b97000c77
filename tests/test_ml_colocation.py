"""CPU tier of the ML co-location benchmark: config, figures, the time-slicing model, the
simulated scenarios, the CLI, the MPS start/skip logic and the worker protocol.

The simulated scenarios and the command's output are read from the session's one simulated
bench run (`simulated_bench`, tests/conftest.py)."""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from lithos_atom.bench import ml_colocation as mc
from lithos_atom.bench import ml_figures as mf
from lithos_atom.bench import mps
from lithos_atom.bench.__main__ import main as bench_main
from lithos_atom.bench.ml_colocation import MLColocationConfig
from lithos_atom.bench.ml_colocation_worker import PREFIX, WorkerError, parse, run_process_pair, worker_main
from lithos_atom.bench.sim_ml_colocation import SimMLConfig, run_sim
from lithos_atom.bench.timeslice import timeslice_model

# ---- config ---------------------------------------------------------------------------------


@pytest.mark.parametrize("field, value", [
    ("pairs", ("training", "bogus")), ("pairs", ()), ("scenarios", ("lithos", "lithos")),
    ("duration_s", 0), ("lc_rate_hz", -1.0), ("slo_mult", float("nan")), ("slo_ms", 0.0),
    ("lc_batch", (0, 8)), ("lc_batch", (4, 2)), ("lc_share", 1.0), ("size", "huge"),
    ("static_sweep", (0.5,)), ("static_sweep", (0.6, 0.6)), ("static_sweep", (1.0,)), ("static_sweep", (True,)),
    ("be_queue_depth", 0), ("warmup_s", -0.1), ("seed", 1.5),
])
def test_config_rejects_bad_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        MLColocationConfig(**{field: value})


def test_config_round_trips_through_a_dict_and_rejects_unknown_fields():
    import dataclasses

    cfg = MLColocationConfig(pairs=["training"], lc_batch=[2, 4], seed=3)
    assert MLColocationConfig.from_dict(json.loads(json.dumps(dataclasses.asdict(cfg)))) == cfg
    with pytest.raises(ValueError, match="bogus"):
        MLColocationConfig.from_dict({"bogus": 1})


def test_requests_are_seeded_poisson_arrivals_with_batches_in_range():
    cfg = MLColocationConfig(duration_s=2.0, warmup_s=0.5, lc_rate_hz=300.0, lc_batch=(2, 5), seed=4)
    t, b = cfg.requests()
    t2, b2 = cfg.requests()
    assert np.array_equal(t, t2) and np.array_equal(b, b2)
    assert np.all(np.diff(t) > 0) and t[-1] < cfg.span_s
    assert b.min() >= 2 and b.max() <= 5
    assert 0.7 * 750 < t.size < 1.3 * 750


def test_training_gemm_max_k_reaches_the_job_in_every_size_and_is_checked():
    for size in ("default", "long", "small"):
        assert MLColocationConfig(size=size).workload_sizes()["mlp"].gemm_max_k == 2048
        assert MLColocationConfig(size=size, training_gemm_max_k=None).workload_sizes()["mlp"].gemm_max_k is None
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="MLColocationConfig.training_gemm_max_k must be None or an int >= 1"):
            MLColocationConfig(training_gemm_max_k=bad)


def test_sim_training_step_splits_the_long_reductions_into_shorter_blocks():
    from lithos_atom.bench.sim_kernels import KernelModel, SimCostModel

    model = KernelModel(SimCostModel(max_waves=1000), 132)
    whole = model.training_step(MLColocationConfig(training_gemm_max_k=None).workload_sizes()["mlp"])
    split = model.training_step(MLColocationConfig().workload_sizes()["mlp"])
    longest = lambda ks: max(k.block_us for k in ks if k.name.startswith("sgemm"))  # noqa: E731
    # K = 8192 (down projection, input gradient) in 4 slices, K = 4096 (weight gradients)
    # in 2: every block reduces over 2048, as the up projection's do
    assert longest(split) == pytest.approx(longest(whole) / 4)
    assert longest(split) == pytest.approx(max(k.block_us for k in whole if k.name == "sgemm_up"))
    gemm_us = lambda ks: sum(k.block_us * k.grid_blocks for k in ks if k.name.startswith("sgemm"))  # noqa: E731
    assert gemm_us(split) == pytest.approx(gemm_us(whole))   # the same multiplications
    assert sum(k.name == "splitk_sum" for k in split) == 2 * 3 + 1 and not any(k.name == "splitk_sum" for k in whole)


def test_sim_config_rejects_bad_timeslice():
    with pytest.raises(ValueError, match="timeslice_us"):
        SimMLConfig(timeslice_us=0)
    with pytest.raises(ValueError, match="switch_us"):
        SimMLConfig(switch_us=-1)


# ---- figures --------------------------------------------------------------------------------


def test_lc_figures_count_unserved_requests_against_the_slo():
    cfg = MLColocationConfig(duration_s=1.0, warmup_s=0.2, lc_rate_hz=100.0)
    sched, _ = cfg.requests()
    window = sched[sched >= cfg.warmup_s]
    served = window[: len(window) // 2]  # half the window's requests never completed
    hp = mf.lc_figures(np.r_[sched[sched < cfg.warmup_s], served],
                       np.r_[np.full(np.count_nonzero(sched < cfg.warmup_s), 99.0), np.ones(served.size)], cfg)
    assert hp["arrived"] == window.size and hp["completed"] == served.size
    assert hp["p99_ms"] == pytest.approx(1.0)  # warm-up requests (99 ms) are not measured
    res = mf.summarize_pair({"lc_alone": {"hp": hp}}, slo_ms=2.0)
    assert res["scenarios"]["lc_alone"]["hp"]["slo_attainment"] == pytest.approx(served.size / window.size)
    assert res["scenarios"]["lc_alone"]["hp"]["throughput_norm"] == pytest.approx(served.size / window.size)


def test_lc_figures_without_completions_and_mismatched_lengths():
    cfg = MLColocationConfig(duration_s=0.5, warmup_s=0.0, lc_rate_hz=100.0)
    hp = mf.lc_figures([], [], cfg)
    assert hp["completed"] == 0 and hp["p99_ms"] is None and hp["arrived"] > 0
    with pytest.raises(ValueError, match="differ"):
        mf.lc_figures([0.1], [], cfg)


def test_be_figures_rate_from_first_to_last_completion_in_the_window():
    cfg = MLColocationConfig(duration_s=1.0, warmup_s=0.5)
    be = mf.be_figures([0.1, 0.55, 0.75, 0.95, 1.2, 1.6], cfg)
    assert be["iterations"] == 4 and be["iters_per_s"] == pytest.approx(3 / 0.65) and not be["coarse"]
    assert mf.be_figures([0.7], cfg) == {"iterations": 1, "iters_per_s": 1.0, "coarse": True}


def test_summarize_pair_normalizes_and_compares_with_each_baseline():
    def hp(p99):
        return {"arrived": 10, "completed": 10, "p50_ms": p99 / 2, "p99_ms": p99, "p999_ms": p99, "latencies_ms": [p99] * 10}

    scen = {"lc_alone": {"hp": hp(1.0)}, "be_alone": {"be": {"iters_per_s": 10.0}},
            "streams": {"hp": hp(20.0), "be": {"iters_per_s": 9.0}},
            "mps": {"skipped": "MPS unavailable: nope"},
            "lithos": {"hp": hp(2.0), "be": {"iters_per_s": 6.0}}}
    out = mf.summarize_pair(scen, slo_ms=mf.slo_of(MLColocationConfig(slo_mult=3.0), scen["lc_alone"]))
    s = out["scenarios"]
    assert s["lithos"]["be"]["throughput_norm"] == pytest.approx(0.6)
    assert s["lithos"]["sum_norm_throughput"] == pytest.approx(1.6)
    assert s["lithos"]["hp"]["slo_attainment"] == 1.0 and s["streams"]["hp"]["slo_attainment"] == 0.0
    assert out["ratios"]["streams"] == {"p99_reduction": 10.0, "p999_reduction": 10.0,
                                        "be_throughput_gain": pytest.approx(6 / 9)}
    assert "mps" not in out["ratios"] and s["mps"] == {"skipped": "MPS unavailable: nope"}
    assert mf.slo_of(MLColocationConfig(slo_ms=5.0), scen["lc_alone"]) == 5.0


def test_lithos_across_processes_is_compared_with_each_baseline_and_the_static_splits(capsys):
    from rich.console import Console

    from lithos_atom.bench.load import with_rate
    from lithos_atom.bench.ml_summary import summarize_rounds
    from lithos_atom.bench.report_ml import print_study

    def hp(p99):
        return {"arrived": 10, "completed": 10, "p50_ms": p99 / 2, "p99_ms": p99, "p999_ms": p99, "latencies_ms": [p99] * 10}

    scen = {"lc_alone": {"hp": hp(1.0)}, "be_alone": {"be": {"iters_per_s": 10.0}},
            "static_split": {"hp": hp(1.2), "be": {"iters_per_s": 5.0}},
            "static_split@0.25": {"hp": hp(2.0), "be": {"iters_per_s": 7.0}},
            "mps_static_split": {"hp": hp(1.05), "be": {"iters_per_s": 5.0}},
            "mps_static_split@0.25": {"hp": hp(1.08), "be": {"iters_per_s": 6.0}},
            "lithos": {"hp": hp(1.6), "be": {"iters_per_s": 6.0}},
            "lithos_mps": {"hp": hp(1.1), "be": {"iters_per_s": 6.5}}}
    out = mf.summarize_pair(scen, slo_ms=3.0)
    assert out["ratios_lithos_mps"]["lithos"]["p99_reduction"] == pytest.approx(1.6 / 1.1)
    assert out["ratios_lithos_mps"]["mps_static_split"]["be_throughput_gain"] == pytest.approx(6.5 / 5.0)
    assert "lithos_mps" not in out["ratios_lithos_mps"]
    at = out["static_at_lithos_mps_p99"]
    # no in-process split reaches 1.1 ms at p99: there is no best split, and no line below its first point
    assert at["lithos_p99_ms"] == 1.1 and at["static"] is None and at["static_line_be_norm"] is None
    assert out["static_at_lithos_p99"]["static"] == "static_split"  # lithos in one process: 1.6 ms
    assert set(out["static_at_lithos_p99"]["static_p99s_ms"]) == {"static_split", "static_split@0.25"}
    per_process = out["process_static_at_lithos_mps_p99"]  # its like: a process per tenant
    assert per_process["static"] == "mps_static_split@0.25" and per_process["be_throughput_gain"] == pytest.approx(6.5 / 6)
    _, load = with_rate(MLColocationConfig(), {1: 2.0})
    print_study({"load": load, "slo_ms": 3.0, "slo": {"from": "slo_ms"}, "lc_tpcs": 33,
                 "summary": summarize_rounds([{"pairs": {"training": out}}])}, Console(width=80))
    text = capsys.readouterr().out
    assert "lithos_mps vs each baseline" in text
    assert "lithos_mps against the static splits in one process at its p99, by round: best split within it None" \
        in " ".join(text.split())
    assert max(len(line) for line in text.splitlines()) <= 80


# ---- the time-slicing model -------------------------------------------------------------------


def test_timeslice_model_waits_for_the_end_of_the_best_effort_slice():
    # one request at 0.5 ms; BE's first slice ends at 2 ms; switch 0.1 ms; 1 ms of work
    lat, share = timeslice_model([0.0005], [1000.0], 2000.0, 100.0, (0.0, 0.01))
    assert lat == [pytest.approx((2000 + 100 + 1000 - 500) / 1000)]
    # BE holds everything but the switch, the request and the switch back
    assert share == pytest.approx((10000 - 1200) / 10000)


def test_timeslice_model_splits_long_requests_over_slices():
    lat, _ = timeslice_model([0.0], [5000.0], 2000.0, 0.0, (0.0, 0.1))
    # LC waits one slice, then runs 2 ms, BE 2 ms, LC 2 ms, BE 2 ms, LC 1 ms
    assert lat == [pytest.approx(11.0)]


def _scen(p99: float, iters: float) -> dict:
    return {"hp": {"p99_ms": p99}, "be": {"iters_per_s": iters}}


def test_static_at_lithos_p99_takes_the_best_static_split_within_lithos_tail():
    scen = {"lithos": _scen(4.0, 8.0), "static_split": _scen(5.0, 6.0), "static_split@0.625": _scen(4.0, 5.0),
            "static_split@0.75": _scen(3.5, 4.0), "priorities": _scen(1.0, 20.0)}
    at = mf.static_at_p99(scen)
    assert at["static"] == "static_split@0.625" and at["static_p99_ms"] == 4.0
    assert at["be_throughput_gain"] == pytest.approx(8.0 / 5.0)
    assert set(at["static_p99s_ms"]) == {"static_split", "static_split@0.625", "static_split@0.75"}


def _norm(p99: float, norm: float) -> dict:
    return {"hp": {"p99_ms": p99}, "be": {"iters_per_s": 10.0 * norm, "throughput_norm": norm}}


def test_static_line_interpolates_between_the_splits_no_other_beats_on_both_counts():
    # 0.625 is beaten on both counts by 0.5 (lower tail, more throughput): the line skips it
    statics = {"static_split": _norm(3.5, 0.5), "static_split@0.625": _norm(4.0, 0.45),
               "static_split@0.25": _norm(5.0, 0.7)}
    at = mf.static_at_p99({"lithos": _norm(4.5, 0.6), **statics})
    assert at["static"] == "static_split"  # the measured comparison is unchanged
    assert at["static_line_be_norm"] == pytest.approx(0.5 + 0.2 * (1.0 / 1.5))
    assert at["be_throughput_gain_on_line"] == pytest.approx(0.6 / (0.5 + 0.2 / 1.5))
    # flat past the last split, undefined before the first, exact on a split
    assert mf.static_at_p99({"lithos": _norm(9.0, 0.6), **statics})["static_line_be_norm"] == pytest.approx(0.7)
    assert mf.static_at_p99({"lithos": _norm(3.0, 0.6), **statics})["static_line_be_norm"] is None
    assert mf.static_at_p99({"lithos": _norm(3.5, 0.6), **statics})["static_line_be_norm"] == pytest.approx(0.5)


def test_static_at_lithos_p99_says_when_no_static_split_reaches_lithos_tail():
    at = mf.static_at_p99({"lithos": _scen(2.0, 8.0), "static_split": _scen(5.0, 6.0)})
    assert at["static"] is None and at["be_throughput_gain"] is None and at["lithos_p99_ms"] == 2.0
    assert mf.static_at_p99({"static_split": _scen(5.0, 6.0)}) is None


# ---- the simulated scenarios and the command line --------------------------------------------------


def test_sim_runs_every_scenario_of_both_pairs(simulated_bench):
    study = simulated_bench.data["sections"]["ml"]
    assert study["simulated"] is True and study["device"]["simulated"] is True
    alone = [r["pairs"]["training"]["scenarios"]["lc_alone"]["hp"]["p99_ms"] for r in study["rounds"]]
    assert study["slo_ms"] == pytest.approx(1.5 * float(np.median(alone)))  # one SLO for every round
    assert [r["seed"] for r in study["rounds"]] == [0, 1]
    for pair, out in ((p, r) for r in study["rounds"] for p in mc.PAIRS):
        assert out["slo_ms"] == study["slo_ms"]
        scen = out["pairs"][pair]["scenarios"]
        sweep = ["static_split@0.25", "static_split@0.375"]
        process_sweep = ["mps_" + n for n in sweep]
        i, j = mc.DEFAULT_SCENARIOS.index("static_split") + 1, mc.DEFAULT_SCENARIOS.index("mps_static_split") + 1
        assert list(scen) == [*mc.DEFAULT_SCENARIOS[:i], *sweep, *mc.DEFAULT_SCENARIOS[i:j], *process_sweep, *mc.DEFAULT_SCENARIOS[j:]]
        for name in [*mc.PROCESS_SCENARIOS, *process_sweep]:  # reported, with why they are not simulated
            assert "MPS on a GPU" in scen[name]["skipped"]
        for name in [*(n for n in mc.DEFAULT_SCENARIOS if n not in mc.PROCESS_SCENARIOS), *sweep]:
            if name != "be_alone":
                hp = scen[name]["hp"]
                assert hp["completed"] > 0 and hp["p99_ms"] >= hp["p50_ms"] > 0
            if name != "lc_alone":
                assert scen[name]["be"]["throughput_norm"] is not None
        assert "time-slicing" in scen["processes"]["model"] and "MPS" in scen["mps"]["model"]
        assert set(out["pairs"][pair]["ratios"]) == set(mc.DEFAULT_SCENARIOS) - {"lithos", "be_alone", *mc.PROCESS_SCENARIOS} \
            | set(sweep)
        assert "ratios_lithos_mps" not in out["pairs"][pair]  # lithos_mps did not run
        at = out["pairs"][pair]["static_at_lithos_p99"]
        assert set(at["static_p99s_ms"]) == {"static_split", *sweep}
        occ = scen["lithos"]["be_occupancy"]  # from the scheduler's trace, over the measured span
        assert 0 < occ["busy_share"] <= 1 and occ["window_ms"] <= out["config"]["duration_s"] * 1e3 + 1e-9
        gates = scen["lithos"]["gates"]  # the gate measures of the lithos scenarios
        assert gates["device_gates"] is True and gates["windows"] == "traced launches"  # the sim marks no request
        # at this load requests come nearly back to back: whether atoms start inside them
        # is reported (a gate that held shows 0: the low-rate run below checks that)
        assert gates["reclaim"]["requests"] > 0 and gates["reclaim"]["started_inside"] >= 0
        assert 0 <= gates["idle_between_atoms"]["home"]["idle_share"] < 1
        assert gates["host_cpu_us_per_atom"] > 0
        assert scen["lithos_rightsized"]["gates"]["device_gates"] is False  # right-sizing places by host


def test_sim_is_deterministic_and_honours_the_scenario_selection(tmp_path, simulated_bench):
    ml = simulated_bench.data["sections"]["ml"]["rounds"][1]
    # the config of the bench run's second round, with one pair and two scenarios: run here, in this process
    cfg = SimMLConfig(**{**ml["config"], "pairs": ("training",), "scenarios": ("static_split", "lithos")})
    a = run_sim(cfg, trace_dir=tmp_path)
    scen = a["pairs"]["training"]["scenarios"]
    assert list(scen) == ["lc_alone", "be_alone", "static_split", "static_split@0.25", "static_split@0.375", "lithos"]
    shared = ml["pairs"]["training"]["scenarios"]["static_split"]
    assert scen["static_split"]["hp"]["latencies_ms"] == shared["hp"]["latencies_ms"]
    assert Path(scen["lithos"]["trace_file"]).is_file()
    assert "batch_inference" not in a["pairs"]


def _bench(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "lithos_atom.bench", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "COLUMNS": "160"})


def test_cli_ml_section_writes_json_and_plots(simulated_bench):
    proc, data = simulated_bench.proc, simulated_bench.data
    assert proc.returncode == 0, proc.stderr
    assert "SIMULATED DEVICE" in proc.stdout and "lithos vs each baseline" in proc.stdout
    assert data["environment"]["packages"] and "python" in data["environment"]
    ml = data["sections"]["ml"]["rounds"][0]
    for pair in mc.PAIRS:
        scenarios = ml["pairs"][pair]["scenarios"]
        skipped = {n for n, sc in scenarios.items() if "skipped" in sc}
        assert skipped == {*mc.PROCESS_SCENARIOS, "mps_static_split@0.25", "mps_static_split@0.375"}
        for name, sc in scenarios.items():
            if name in skipped:
                continue
            if name != "be_alone":
                assert {"p50_ms", "p99_ms", "p999_ms", "completed", "slo_attainment"} <= set(sc["hp"])
            if name != "lc_alone":
                assert "throughput_norm" in sc["be"]
    for png in ("ml_latency_cdf.png", "ml_throughput.png", "ml_timeline_training.png"):
        assert (simulated_bench.plots / png).stat().st_size > 0


def test_cli_ml_runs_only_the_ml_section_with_the_options_given(tmp_path):
    out = tmp_path / "r.json"
    proc = _bench("--ml", "--sim", "--ml-pairs", "training", "--ml-scenarios", "lithos", "--ml-size", "small",
                  "--ml-duration", "0.02", "--ml-warmup", "0", "--lc-rate", "150", "--lc-batch", "1", "--slo-ms", "4",
                  "--rounds", "1", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    assert set(data["sections"]) == {"ml"}
    ml = data["sections"]["ml"]
    assert ml["simulated"] is True and ml["slo_ms"] == 4.0 and ml["config"]["lc_rate_hz"] == 150.0
    assert ml["config"]["lc_batch"] == [1, 1] and ml["load"]["rate_from"] == "lc_rate_hz" and len(ml["rounds"]) == 1
    reclaim = ml["rounds"][0]["pairs"]["training"]["scenarios"]["lithos"]["gates"]["reclaim"]
    assert reclaim["requests"] > 0 and reclaim["started_inside"] == 0  # the gates held every request


@pytest.mark.parametrize("args, field", [
    (["--ml-pairs", "training,bogus"], "pairs"),
    (["--ml-scenarios", "lithos,nope"], "scenarios"),
    (["--slo-ms", "-1"], "slo_ms"),
    (["--lc-share", "1.5"], "lc_share"),
    (["--static-sweep", "0.6,x"], "static_sweep"),
    (["--static-sweep", "0.5"], "static_sweep"),
    (["--ml-duration", "0"], "duration_s"),
    (["--mps-steal-max-block-us", "0"], "mps_steal_max_block_us"),
    (["--training-gemm-max-k", "0"], "training_gemm_max_k"),
    (["--training-gemm-max-k", "2k"], "training_gemm_max_k"),
    (["--lc-batch", "1,x"], "lc_batch"),
    (["--lc-batch", "1,2,3"], "lc_batch"),
    (["--lc-batch", "8,1"], "lc_batch"),
    (["--lc-batch", "0"], "lc_batch"),
])
def test_cli_rejects_bad_ml_options_naming_the_field(args, field, capsys):
    status, stderr = _bench_refusal(capsys, "--ml", "--sim", *args)
    assert status == 2 and field in stderr, stderr


def test_cli_rejects_unknown_size(capsys):
    status, stderr = _bench_refusal(capsys, "--ml", "--sim", "--ml-size", "huge")
    assert status == 2 and "--ml-size" in stderr


def _bench_refusal(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """The exit status and stderr of the bench command refusing ``args``, in this process
    (it refuses before any section runs)."""
    with pytest.raises(SystemExit) as exit_:
        bench_main(list(args))
    return exit_.value.code, capsys.readouterr().err


# ---- MPS -----------------------------------------------------------------------------------------------


def test_mps_missing_binary_is_reported_as_skipped(monkeypatch):
    from lithos_atom.bench import ml_gpu

    monkeypatch.setattr(mps.shutil, "which", lambda name: None)
    with pytest.raises(mps.MPSUnavailable, match="not found"):
        with mps.MPSDaemon():
            pass
    out = ml_gpu._run_mps(MLColocationConfig(), "training")
    assert out == {"skipped": "MPS unavailable: nvidia-cuda-mps-control not found on PATH"}


def _fake_control(tmp_path: Path, body: str) -> str:
    path = tmp_path / "fake-mps-control"
    path.write_text("#!/bin/sh\n" + textwrap.dedent(body))
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


def test_mps_daemon_that_fails_to_start_says_why(tmp_path):
    binary = _fake_control(tmp_path, 'echo "cannot open /dev/nvidia0" >&2; exit 3\n')
    with pytest.raises(mps.MPSUnavailable, match="exited 3: cannot open /dev/nvidia0"):
        with mps.MPSDaemon(binary):
            pass


def test_mps_daemon_starts_with_private_dirs_and_is_stopped(tmp_path):
    # "-d" creates the control pipe (as a file); a "quit" on stdin removes it
    binary = _fake_control(tmp_path, '''
        if [ "$1" = "-d" ]; then touch "$CUDA_MPS_PIPE_DIRECTORY/control"; exit 0; fi
        read cmd
        if [ "$cmd" = quit ]; then rm -f "$CUDA_MPS_PIPE_DIRECTORY/control"; fi
        if [ "$cmd" = get_server_list ]; then echo 4242; fi
        ''')
    daemon = mps.MPSDaemon(binary)
    with daemon:
        env = daemon.client_env()
        assert Path(env["CUDA_MPS_PIPE_DIRECTORY"], "control").exists()
        assert env["CUDA_MPS_LOG_DIRECTORY"].startswith(str(daemon.root))
        assert daemon.server_list() == "4242"
    assert daemon.stop_status == "quit" and not daemon.root.exists()


# ---- the worker protocol -----------------------------------------------------------------------------


def _echo_role(cfg, spec):
    return lambda t0: {"role": spec["role"], "t0": t0, "span": cfg.span_s}


def test_worker_main_speaks_the_protocol():
    import dataclasses

    cfg = MLColocationConfig(duration_s=1.0, warmup_s=0.25)
    inp = io.StringIO(json.dumps({"config": dataclasses.asdict(cfg), "role": "lc"}) + "\n" + json.dumps({"go": 12.5}) + "\n")
    out = io.StringIO()
    assert worker_main(inp, out, {"lc": _echo_role}) == 0
    msgs = [parse(line) for line in out.getvalue().splitlines()]
    assert msgs == [{"ready": True}, {"result": {"role": "lc", "t0": 12.5, "span": 1.25}}]


def test_worker_main_reports_errors():
    out = io.StringIO()
    assert worker_main(io.StringIO(json.dumps({"config": {}, "role": "nope"}) + "\n"), out, {"lc": _echo_role}) == 1
    assert "spec.role" in parse(out.getvalue().strip())["error"]
    assert parse("some library chatter") is None


_FAKE_WORKER = """
import sys
from lithos_atom.bench.ml_colocation_worker import worker_main
def role(cfg, spec):
    if spec["role"] == "be" and "{fail}" == "yes":
        raise RuntimeError("out of memory, say")
    print("chatter before the protocol")
    if spec["role"] == "lc":
        return lambda t0: {{"arrivals_s": [0.1], "latencies_ms": [1.0], "phases_ms": [[0, 0, 1]], "t0": t0}}
    return lambda t0: {{"done_s": [t0]}}
sys.exit(worker_main(sys.stdin, sys.stdout, {{"lc": role, "be": role}}))
"""


#: The fake workers are scripts in a temporary folder: this puts the checkout under test, not
#: whichever copy of lithos is installed, first on their import path.
_CHECKOUT_ENV = {"PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parent.parent),
                                                *filter(None, [os.environ.get("PYTHONPATH")])])}


def _run_fake_pair(tmp_path: Path, worker_source: str, env: dict | None = None, **kw) -> dict:
    """`run_process_pair` of a short training config with both workers running ``worker_source``."""
    script = tmp_path / "worker.py"
    script.write_text(worker_source)
    return run_process_pair(MLColocationConfig(duration_s=0.1, warmup_s=0.0), "training",
                            command=[sys.executable, str(script)], ready_timeout_s=60,
                            env={**_CHECKOUT_ENV, **(env or {})}, **kw)


def test_process_pair_starts_both_workers_together(tmp_path):
    res = _run_fake_pair(tmp_path, _FAKE_WORKER.format(fail="no"))
    assert res["lc"]["t0"] == res["be"][0]  # one start time for both
    assert res["lc"]["latencies_ms"] == [1.0] and res["setup_s"] >= 0


_PLACED_WORKER = """
import sys
from lithos_atom.bench.ml_colocation_worker import worker_main
def role(cfg, spec):
    where = {"sms_seen": [2 * t for t in spec["tpcs"]], "partition_sms": [2 * t for t in spec["tpcs"]]} \\
        if "tpcs" in spec else {}
    if spec["role"] == "lc":
        return lambda t0: {"arrivals_s": [0.1], "latencies_ms": [1.0], "phases_ms": [[0, 0, 1]], **where}
    return lambda t0: {"done_s": [t0], **where}
sys.exit(worker_main(sys.stdin, sys.stdout, {"lc": role, "be": role}))
"""


@pytest.mark.parametrize("tpcs", [{"lc": [0, 1], "be": [2, 3]}, {"be": [3, 2]}])
def test_process_pair_gives_each_worker_its_tpcs_and_reports_where_it_ran(tmp_path, tpcs):
    res = _run_fake_pair(tmp_path, _PLACED_WORKER, tpcs=tpcs)
    assert res["placement"] == {role: {"sms_seen": [2 * t for t in sorted(ts)], "partition_sms": [2 * t for t in sorted(ts)]}
                                for role, ts in tpcs.items()}
    assert "sms_seen" not in res["lc"] and res["lc"]["latencies_ms"] == [1.0]  # records stay as they were


_SIGNAL_WORKER = """
import sys
from lithos_atom.bench.ml_colocation_worker import worker_main
from lithos_sched.request_signal import RequestSignal
def role(cfg, spec):
    signal = RequestSignal.attach(spec["request_signal"])
    if spec["role"] == "lc":
        with signal.request():
            open_now = signal.open_requests
        return lambda t0: {"arrivals_s": [0.1], "latencies_ms": [1.0], "phases_ms": [[0, 0, 1]], "open": open_now,
                           "policy": spec.get("policy")}
    return lambda t0: {"done_s": [t0], "scheduler": {"signal": spec["request_signal"], "policy": spec.get("policy")}}
sys.exit(worker_main(sys.stdin, sys.stdout, {"lc": role, "be": role}))
"""


def test_process_pair_as_lithos_shares_one_request_signal_and_removes_it(tmp_path):
    res = _run_fake_pair(tmp_path, _SIGNAL_WORKER, lithos=True, policy={"steal_max_block_us": 4000.0})
    assert res["lc"]["open"] == 1  # the LC worker marked a request in the signal
    assert res["be_scheduler"]["scheduler"]["policy"] == {"steal_max_block_us": 4000.0}  # for the BE scheduler
    assert res["lc"]["policy"] is None
    path = res["be_scheduler"]["scheduler"]["signal"]  # the BE worker was given the same one
    assert "lithos-requests-" in path and not Path(path).exists()  # removed by the parent


_SIZED_WORKER = """
import sys
from lithos_atom.bench.ml_colocation_worker import worker_main
def role(cfg, spec):
    if spec["role"] == "lc":
        return lambda t0: {"arrivals_s": [0.1], "latencies_ms": [1.0], "phases_ms": [[0, 0, 1]],
                           "request_tpcs": spec.get("request_tpcs")}
    return lambda t0: {"done_s": [t0], "request_tpcs": spec.get("request_tpcs")}
sys.exit(worker_main(sys.stdin, sys.stdout, {"lc": role, "be": role}))
"""


def test_process_pair_right_sized_gives_the_lc_worker_its_request_tpcs(tmp_path):
    sizes = {b: min(b, 3) for b in range(1, 9)}
    res = _run_fake_pair(tmp_path, _SIZED_WORKER, lithos=True, tpcs={"lc": [0, 1, 2, 3]}, request_tpcs=sizes)
    assert res["lc"]["request_tpcs"] == {str(b): n for b, n in sizes.items()}
    assert res["be_scheduler"]["request_tpcs"] is None  # the BE worker reads the counts from the signal


@pytest.mark.parametrize("kw, message", [
    ({"tpcs": {"lc": [0, 1]}, "request_tpcs": {b: 1 for b in range(1, 9)}}, "needs lithos=True"),
    ({"lithos": True, "request_tpcs": {b: 1 for b in range(1, 9)}}, r"tpcs\['lc'\]"),
    ({"lithos": True, "tpcs": {"lc": [0, 1]}, "request_tpcs": {1: 1}}, r"missing \[2, 3, 4, 5, 6, 7, 8\]"),
    ({"lithos": True, "tpcs": {"lc": [0, 1]}, "request_tpcs": {b: 3 for b in range(1, 9)}}, "out of range"),
])
def test_process_pair_request_tpcs_are_checked_before_any_worker_starts(kw, message):
    with pytest.raises(ValueError, match=message):
        run_process_pair(MLColocationConfig(duration_s=0.1), "training", command=["false"], **kw)


_ENV_WORKER = """
import os, sys
from lithos_atom.bench.ml_colocation_worker import worker_main
def role(cfg, spec):
    seen = {k: os.environ.get(k) for k in ("LITHOS_TEST_BOTH", "LITHOS_TEST_ROLE")}
    if spec["role"] == "lc":
        return lambda t0: {"arrivals_s": [0.1], "latencies_ms": [1.0], "phases_ms": [[0, 0, 1]], "env": seen}
    return lambda t0: {"done_s": [t0], "env": seen}
sys.exit(worker_main(sys.stdin, sys.stdout, {"lc": role, "be": role}))
"""


def test_process_pair_role_env_reaches_only_that_worker(tmp_path):
    res = _run_fake_pair(tmp_path, _ENV_WORKER, lithos=True, env={"LITHOS_TEST_BOTH": "b", "LITHOS_TEST_ROLE": "both"},
                         role_env={"be": {"LITHOS_TEST_ROLE": "be only"}})
    assert res["lc"]["env"] == {"LITHOS_TEST_BOTH": "b", "LITHOS_TEST_ROLE": "both"}
    assert res["be_scheduler"]["env"] == {"LITHOS_TEST_BOTH": "b", "LITHOS_TEST_ROLE": "be only"}


def test_process_pair_role_env_names_an_unknown_role():
    with pytest.raises(ValueError, match=r"role_env has roles \['trainer'\]"):
        run_process_pair(MLColocationConfig(duration_s=0.1), "training", role_env={"trainer": {"X": "1"}})


def test_process_pair_failure_names_the_worker_and_the_error(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(_FAKE_WORKER.format(fail="yes"))
    with pytest.raises(WorkerError, match="worker be: RuntimeError: out of memory"):
        run_process_pair(MLColocationConfig(duration_s=0.1), "training", command=[sys.executable, str(script)],
                         ready_timeout_s=60, env=_CHECKOUT_ENV)


def test_process_pair_worker_that_dies_is_reported(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text("import sys; sys.stderr.write('segfault, say'); sys.exit(139)\n")
    with pytest.raises(WorkerError, match="exited .*segfault, say"):
        run_process_pair(MLColocationConfig(duration_s=0.1), "training", command=[sys.executable, str(script)],
                         ready_timeout_s=60)


def test_protocol_prefix_is_stable():
    assert PREFIX == "LITHOS-WORKER "


def test_run_count_counts_each_pairs_runs_and_every_static_share():
    cfg = MLColocationConfig(pairs=("training",), scenarios=("lc_alone", "be_alone", "static_split", "lithos"),
                             static_sweep=(0.25, 0.375))
    assert cfg.pair_scenarios() == ["static_split", "lithos"]
    assert cfg.run_count() == 1 + (1 + 2 + 2)  # inference alone; BE alone, lithos and three static shares
    no_split = MLColocationConfig(pairs=("training", "batch_inference"), scenarios=("lithos",))
    assert no_split.run_count() == 1 + 2 * (1 + 1)
    both = MLColocationConfig(pairs=("training",), scenarios=("static_split", "mps_static_split"),
                              static_sweep=(0.25,))
    assert both.process_static_shares() == {"mps_static_split": 0.5, "mps_static_split@0.25": 0.25}
    assert both.run_count() == 1 + (1 + 2 + 1 + 1)  # each split at two shares
    assert cfg.process_static_shares() == {}
