"""CPU tests of the inference-inference stacking study (`lithos_atom.bench.stacking`).

- `StackConfig` refuses bad stacks before any work and gives each service its TPCs;
- the time-slicing model serves several contexts round robin;
- `summarize_variant` derives SLOs from the alone p99s, counts unfinished requests as
  misses and names the best baseline;
- the study runs on the simulated device (every scenario of both variants), and its
  command writes the JSON.
"""

from __future__ import annotations

import json

import pytest

from lithos_atom.bench.stacking import main
from lithos_atom.bench.stacking_config import StackConfig, StackService, cuda_priority, summarize_variant
from lithos_atom.bench.timeslice import timeslice_contexts

TWO = (StackService("llama-1b", rank=0, share=0.4, rate_hz=400.0, batch_sizes=(1, 4)),
       StackService("bert-base", rank=1, share=0.3, rate_hz=400.0, batch_sizes=(1, 2)))

# ---- config -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kw, what", [
    ({"services": (StackService("resnet50", share=0.5), StackService("bert-base", share=0.5))}, "be_share"),
    ({"services": (StackService("resnet50"), StackService("resnet50"))}, "StackConfig.services"),
    ({"scenarios": ("mps", "lithos", "mps")}, "StackConfig.scenarios"),
    ({"be_job": "gpt3"}, "StackConfig.be_job"),
    ({"size": "huge"}, "MLColocationConfig.size"),
])
def test_bad_stacks_are_refused(kw, what):
    with pytest.raises(ValueError, match=what):
        StackConfig(**kw)


@pytest.mark.parametrize("kw", [{"service": "gpt-5"}, {"service": "bert-base", "share": 1.0},
                                {"service": "bert-base", "rank": -1}, {"service": "bert-base", "slo_mult": 0}])
def test_bad_services_are_refused(kw):
    with pytest.raises(ValueError, match="StackService"):
        StackService(**kw)


def test_tenant_specs_give_the_job_tpcs_or_share_them_out_among_the_services():
    cfg = StackConfig(services=TWO, be_share=0.3)
    with_be = {s.name: s.share for s in cfg.tenant_specs(True)}
    assert with_be == {"llama-1b": 0.4, "bert-base": 0.3, "be": 0.3}
    alone = {s.name: s.share for s in cfg.tenant_specs(False)}
    assert set(alone) == {"llama-1b", "bert-base"} and sum(alone.values()) == pytest.approx(1.0)
    assert alone["llama-1b"] / alone["bert-base"] == pytest.approx(4 / 3)
    assert [c.lc_service for c in (cfg.service_config(0), cfg.service_config(1))] == ["llama-1b", "bert-base"]
    assert cfg.service_config(1).seed == cfg.seed + 1 and cfg.service_config(1).batch_sizes() == (1, 2)


def test_cuda_priorities_order_the_services_above_the_job():
    assert cuda_priority(0, -5) == -5 and cuda_priority(1, -5) == -4
    assert cuda_priority(9, -5) == -1       # still above the job's 0
    assert cuda_priority(0, 0) == 0         # a device without priorities


# ---- the time-slicing model -----------------------------------------------------------------------


def test_timeslice_serves_contexts_round_robin_and_idles_without_a_job():
    lat, share = timeslice_contexts([[0.0], [0.0]], [[1000.0], [500.0]], False, 2000.0, 25.0, (0.0, 0.01))
    assert lat == [[pytest.approx(1.0)], [pytest.approx(1.525)]] and share == 0.0
    lat, share = timeslice_contexts([[0.0], [0.0]], [[1000.0], [500.0]], True, 2000.0, 0.0, (0.0, 0.01))
    assert lat == [[pytest.approx(3.0)], [pytest.approx(3.5)]]   # the job's slice first
    assert share == pytest.approx((2000.0 + 10000.0 - 3500.0) / 10000.0)


# ---- figures -------------------------------------------------------------------------------------


def _hp(lat, arrived):
    return {"latencies_ms": lat, "arrived": arrived, "completed": len(lat), "p99_ms": max(lat) if lat else None}


def test_summary_counts_unfinished_requests_as_misses_and_names_the_best_baseline():
    cfg = StackConfig(services=TWO, duration_s=2.0)
    alone = {"llama-1b": {"p99_ms": 2.0}, "bert-base": {"p99_ms": 1.0}}
    scenarios = {
        "mps": {"services": {"llama-1b": _hp([1.0, 9.0], 4), "bert-base": _hp([1.0], 2)}, "be": {"iters_per_s": 5.0}},
        "static_split": {"services": {"llama-1b": _hp([1.0, 2.0], 2), "bert-base": _hp([1.0, 5.0], 2)}},
        "processes": {"skipped": "no GPU"},
        "lithos": {"services": {"llama-1b": _hp([1.0, 2.9], 2), "bert-base": _hp([1.0, 1.5], 2)},
                   "be": {"iters_per_s": 10.0}},
    }
    out = summarize_variant(cfg, scenarios, alone, {"iters_per_s": 20.0})
    assert out["slo_ms"] == {"llama-1b": 3.0, "bert-base": 1.5}
    mps = out["scenarios"]["mps"]
    assert mps["services"]["llama-1b"]["slo_attainment"] == 0.25   # 1 met of 4 arrived (2 unfinished)
    assert mps["goodput_rps"] == 1.0 and mps["be"]["throughput_norm"] == 0.25
    assert out["scenarios"]["lithos"]["goodput_rps"] == 2.0 and out["scenarios"]["processes"] == {"skipped": "no GPU"}
    assert out["ratios"]["mps"]["p99_reduction"]["llama-1b"] == pytest.approx(9.0 / 2.9)
    assert out["best_baseline"] == {"scenario": "static_split", "goodput_rps": 1.5,
                                    "lithos_goodput_gain": pytest.approx(2.0 / 1.5)}


# ---- the study on the simulated device -----------------------------------------------------------


def test_sim_study_runs_every_scenario_of_both_variants():
    from lithos_atom.bench.sim_stacking import SimStackConfig, run_sim

    cfg = SimStackConfig(services=TWO, be_job="training", size="small", duration_s=0.02, warmup_s=0.005)
    out = run_sim(cfg)
    assert out["simulated"] is True and set(out["variants"]) == {"lc_only", "with_training"}
    assert set(out["alone"]) == {"llama-1b", "bert-base", "be"}
    assert out["sim_service_ms"]["llama-1b"][4] > 0
    for variant, v in out["variants"].items():
        assert list(v["scenarios"]) == list(cfg.scenarios)
        for name, sc in v["scenarios"].items():
            for svc, hp in sc["services"].items():
                assert hp["arrived"] == out["alone"][svc]["arrived"] > 0, (variant, name, svc)
                assert 0 <= hp["slo_attainment"] <= 1
            assert ("be" in sc) == (variant == "with_training")
        assert set(v["ratios"]) == set(cfg.scenarios) - {"lithos"}
    assert "modeled" in out["variants"]["lc_only"]["scenarios"]["processes"]["model"]


def test_stacking_command_on_the_simulated_device(tmp_path, capsys):
    path = tmp_path / "stack.json"
    assert main(["--sim", "--size", "small", "--duration", "0.01", "--warmup", "0.005", "--be-job", "none",
                 "--scenarios", "static_split,lithos", "--json", str(path)]) == 0
    assert "SIMULATED" in capsys.readouterr().out
    out = json.loads(path.read_text())
    assert list(out["variants"]) == ["lc_only"]
    assert set(out["variants"]["lc_only"]["scenarios"]) == {"static_split", "lithos"}


def test_stacking_command_refuses_bad_scenarios_before_any_work():
    with pytest.raises(SystemExit) as exc:
        main(["--sim", "--scenarios", "mps,nope"])
    assert exc.value.code == 2
