"""CPU tier of the ML study: the load, the rotating order of the rounds, the figures under
load (SLO attainment, goodput, saturation), the summary across rounds, the study on the
simulated device at tiny sizes, the 80-column tables and the bench's option checks."""

from __future__ import annotations

import io
import math

import pytest
from rich.console import Console

from lithos_atom.bench import load as load_mod
from lithos_atom.bench import ml_figures as mf
from lithos_atom.bench import report, report_ml
from lithos_atom.bench.__main__ import main as bench_main
from lithos_atom.bench.ml_colocation import MLColocationConfig, run_order
from lithos_atom.bench.ml_rounds import run_study, sim_round
from lithos_atom.bench.ml_summary import across, summarize_rounds
from lithos_atom.bench.percentiles import median_ci
from lithos_atom.bench.sim_ml_colocation import SimMLConfig

# ---- load -------------------------------------------------------------------------------------


def test_the_rate_is_the_load_times_one_over_the_mean_service_time():
    rated, rec = load_mod.with_rate(MLColocationConfig(load=0.5), {1: 1.0, 2: 3.0})
    assert rec["mean_service_ms"] == 2.0 and rec["capacity_hz"] == pytest.approx(500.0)
    assert rated.lc_rate_hz == pytest.approx(250.0) and rec["rate_from"] == "load" and rec["load"] == 0.5
    swept, rec = load_mod.with_rate(MLColocationConfig(), {1: 2.0}, load=0.25)  # a point of a sweep
    assert swept.lc_rate_hz == pytest.approx(125.0) and swept.load == 0.25
    given, rec = load_mod.with_rate(MLColocationConfig(lc_rate_hz=100.0), {1: 2.0})  # an explicit rate stays
    assert given.lc_rate_hz == 100.0 and rec["rate_from"] == "lc_rate_hz" and rec["load"] == pytest.approx(0.2)
    with pytest.raises(ValueError, match="positive"):
        load_mod.with_rate(MLColocationConfig(), {1: 0.0})


@pytest.mark.parametrize("load", [0, -0.5, 2.5, float("nan"), True])
def test_a_load_outside_zero_to_two_is_refused_naming_the_field(load):
    with pytest.raises(ValueError, match="MLColocationConfig.load"):
        MLColocationConfig(load=load)


def test_arrivals_need_a_rate_derived_first():
    with pytest.raises(ValueError, match="with_rate"):
        MLColocationConfig().requests()


# ---- the order of a round -----------------------------------------------------------------------


def test_each_round_runs_every_run_once_starting_a_third_further_in():
    cfg = MLColocationConfig(pairs=("training",), scenarios=("streams", "static_split", "lithos"),
                             static_sweep=(0.25,))
    first = run_order(cfg, 0, 3)
    assert first == [(None, "lc_alone"), ("training", "be_alone"), ("training", "streams"),
                     ("training", "static_split"), ("training", "static_split@0.25"), ("training", "lithos")]
    assert len(first) == cfg.run_count()
    for r in (1, 2):
        rotated = run_order(cfg, r, 3)
        start = r * len(first) // 3
        assert rotated == first[start:] + first[:start]
    with pytest.raises(ValueError, match="round_index"):
        run_order(cfg, 3, 3)


# ---- figures under load ----------------------------------------------------------------------------


def _hp(latencies, arrived, window_s=1.0):
    unfinished = arrived - len(latencies)
    return {"arrived": arrived, "completed": len(latencies), "unfinished": unfinished,
            "saturated": unfinished > 0 and unfinished >= arrived / 100, "window_s": window_s,
            "p50_ms": sorted(latencies)[len(latencies) // 2], "p99_ms": max(latencies), "p999_ms": max(latencies),
            "latencies_ms": list(latencies)}


def test_unfinished_requests_are_misses_and_a_saturated_baseline_has_no_tail_ratio():
    scen = {"lc_alone": {"hp": _hp([1.0] * 100, 100)},
            "streams": {"hp": _hp([1.0] * 50 + [9.0] * 40, 100)},  # 10 never finished: saturated
            "lithos": {"hp": _hp([1.0] * 99 + [2.0], 100)}}
    out = mf.summarize_pair(scen, slo_ms=1.5)
    streams = out["scenarios"]["streams"]["hp"]
    assert streams["slo_attainment"] == pytest.approx(0.5) and streams["goodput_rps"] == pytest.approx(50.0)
    assert out["scenarios"]["lithos"]["hp"]["slo_attainment"] == pytest.approx(0.99)
    assert out["ratios"]["streams"] == {"p99_reduction": None, "p999_reduction": None, "baseline_saturated": True}
    assert out["ratios"]["lc_alone"]["p99_reduction"] == pytest.approx(0.5)


def test_lc_figures_say_when_the_service_fell_behind_its_arrivals():
    cfg = MLColocationConfig(duration_s=1.0, warmup_s=0.0, lc_rate_hz=200.0)
    arrivals, _ = cfg.requests()
    kept = arrivals[: int(arrivals.size * 0.9)]
    hp = mf.lc_figures(kept, [1.0] * kept.size, cfg)
    assert hp["unfinished"] == arrivals.size - kept.size and hp["saturated"] and hp["window_s"] == 1.0
    assert not mf.lc_figures(arrivals, [1.0] * arrivals.size, cfg)["saturated"]


# ---- across rounds -----------------------------------------------------------------------------------


def test_the_median_interval_of_three_rounds_is_their_range_and_inf_bounds_it():
    assert median_ci([3.0, 1.0, 2.0]) == (1.0, 3.0)
    lo, hi = median_ci([1.0, 2.0, math.inf])
    assert lo == 1.0 and hi == math.inf
    with pytest.raises(ValueError, match="values"):
        median_ci([])
    with pytest.raises(ValueError, match="values"):
        median_ci([1.0, float("nan")])


def test_a_figure_across_rounds_keeps_each_round_and_names_the_unbounded_ones():
    fig = across([2.0, 1.0, 3.0])
    assert fig == {"median": 2.0, "ci95": [1.0, 3.0], "by_round": [2.0, 1.0, 3.0], "median_round": 0}
    sat = across([2.0, 1.0, 50.0], unbounded=[False, True, True])
    assert sat["median"] is None and sat["ci95"][1] is None and sat["unbounded_rounds"] == [1, 2]
    assert sat["by_round"] == [2.0, None, None]
    assert across([None, None]) is None


def test_the_summary_takes_medians_of_each_rounds_ratios():
    def pair(lithos_p99, be):
        scen = {"lc_alone": {"hp": _hp([1.0] * 100, 100)}, "be_alone": {"be": {"iters_per_s": 10.0}},
                "lithos": {"hp": _hp([1.0] * 99 + [lithos_p99], 100), "be": {"iters_per_s": be}}}
        return {"pairs": {"training": mf.summarize_pair(scen, slo_ms=1.5)}}

    summary = summarize_rounds([pair(1.2, 6.0), pair(1.6, 7.0), pair(1.4, 8.0)])
    lithos = summary["pairs"]["training"]["scenarios"]["lithos"]
    assert summary["rounds"] == 3 and lithos["hp"]["p99_ms"]["median"] == pytest.approx(1.4)
    assert lithos["hp"]["p99_x_alone"]["by_round"] == pytest.approx([1.2, 1.6, 1.4])
    assert lithos["be"]["throughput_norm"]["median"] == pytest.approx(0.7)
    ratio = summary["pairs"]["training"]["ratios"]["lc_alone"]["p99_reduction"]
    assert ratio["median"] == pytest.approx(1 / 1.4) and ratio["median_round"] == 2


# ---- the study on the simulated device ----------------------------------------------------------------


def _tiny(**kw) -> SimMLConfig:
    return SimMLConfig(size="small", pairs=("batch_inference",), scenarios=("priorities",), duration_s=0.004,
                       warmup_s=0.001, **kw)


def test_a_study_sets_one_slo_from_the_median_alone_p99_over_rotated_rounds():
    study = run_study(_tiny(slo_mult=2.0), simulated=True, rounds=3)
    alone = sorted(r["pairs"]["batch_inference"]["scenarios"]["lc_alone"]["hp"]["p99_ms"] for r in study["rounds"])
    assert study["slo_ms"] == pytest.approx(2.0 * alone[1]) and study["slo"]["from"] == "2 x the median alone p99"
    assert [r["seed"] for r in study["rounds"]] == [0, 1, 2]
    assert study["load"]["load"] == 0.5 and study["config"]["lc_rate_hz"] == pytest.approx(study["load"]["rate_hz"])
    prio = study["summary"]["pairs"]["batch_inference"]["scenarios"]["priorities"]
    assert len(prio["hp"]["p99_ms"]["by_round"]) == 3 and prio["hp"]["slo_attainment"]["median"] is not None
    text = _printed(lambda c: report_ml.print_study(study, c))
    assert "medians over 3 rounds" in text and "0.5 of its capacity alone" in text
    # the rounds ran in worker processes where there are CPUs for them: the same as here
    again = sim_round(SimMLConfig(**{**study["rounds"][1]["config"]}))
    assert [again["pairs"]["batch_inference"]["scenarios"][n]["hp"]["latencies_ms"] for n in ("lc_alone", "priorities")] \
        == [study["rounds"][1]["pairs"]["batch_inference"]["scenarios"][n]["hp"]["latencies_ms"]
            for n in ("lc_alone", "priorities")]


def test_a_load_sweep_runs_a_study_per_load_and_prints_them_side_by_side():
    study = run_study(_tiny(), simulated=True, rounds=1, loads=[0.5, 0.25])
    assert [s["load"]["load"] for s in (study, *study["load_sweep"])] == [0.5, 0.25]
    assert study["load_sweep"][0]["config"]["lc_rate_hz"] == pytest.approx(study["config"]["lc_rate_hz"] / 2)
    assert "load 0.25" in _printed(lambda c: report_ml.print_study(study, c))
    with pytest.raises(ValueError, match="not both"):
        run_study(_tiny(lc_rate_hz=100.0), simulated=True, loads=[0.5])
    with pytest.raises(ValueError, match="rounds"):
        run_study(_tiny(), simulated=True, rounds=0)


def _printed(draw) -> str:
    buf = io.StringIO()
    draw(Console(file=buf, width=80))
    text = buf.getvalue()
    assert max(len(line) for line in text.splitlines()) <= 80 and "…" not in text  # fits, nothing cut
    return text


def test_the_shared_bench_runs_tables_fit_80_columns_uncut(simulated_bench):
    sections = simulated_bench.data["sections"]
    _printed(lambda c: report_ml.print_study(sections["ml"], c))
    _printed(lambda c: report.print_colocation(sections["colocation"], c))
    _printed(lambda c: report.print_mapping(sections["partitions"], c, "partitions"))


# ---- the bench's options -------------------------------------------------------------------------------


@pytest.mark.parametrize("args, message", [
    (["--rounds", "0"], "--rounds must be an int >= 1, got 0"),
    (["--load", "3"], "MLColocationConfig.load"),
    (["--load", "0.5,x"], "--load is not a list of numbers"),
    (["--load", "0.5,0"], "MLColocationConfig.load"),
    (["--load", "0.5", "--lc-rate", "100"], "give --load or --lc-rate, not both"),
    (["--duration", "-1"], "--duration must be a finite number > 0"),
    (["--duration", "0"], "--duration must be a finite number > 0"),
    (["--atom-us", "0"], "--atom-us must be a finite number > 0"),
    (["--seed", "-1"], "--seed must be an int >= 0"),
    (["--json", "."], "--json: . is a folder"),
    (["--plot", __file__], "is not a folder"),
])
def test_every_bench_option_is_checked_before_any_work_in_one_line(args, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        bench_main(["--sim", *args])
    out, err = capsys.readouterr()
    assert exit_.value.code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert message in err


def test_without_a_gpu_the_bench_falls_back_to_the_simulated_device_and_says_why(capsys, monkeypatch):
    from lithos_atom.bench import __main__ as bench

    monkeypatch.setattr(bench, "environment", lambda: {"simulated": True, "gpu": None})
    assert bench_main(["--partitions"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "SIMULATED DEVICE: no CUDA GPU was found" in out and "partitions (simulated)" in out
