"""CPU tests of the model services and jobs in the ML benchmarks (`lithos_atom.bench.ml_services`).

- the config picks a service, its batch sizes and the GPT-2 job, and refuses bad ones;
- a request recorded at its real shape (metadata-only arrays, `model_launches`) computes
  exactly the FLOPs its model's `cost` says, and the simulated device's kernels of it
  (`sim_models`) take longer for a larger batch;
- the right-sizing report sizes the services' modeled requests per batch size on the
  simulated device and summarizes them against the 25 % target;
- the ML bench runs a model service beside the GPT-2 job on the simulated device.
"""

from __future__ import annotations

import pytest

from lithos_atom.bench import ml_services
from lithos_atom.bench.ml_colocation import MLColocationConfig
from lithos_atom.bench.model_launches import MetadataArrays, TENSOR_KERNELS, ATTENTION_KERNELS
from lithos_atom.bench.sim_kernels import KernelModel, SimCostModel
from lithos_atom.bench.sim_models import gpt2_work, service_kernels, service_work

# ---- config ---------------------------------------------------------------------------------


def test_services_serve_their_own_batch_sizes_unless_told():
    cfg = MLColocationConfig(lc_service="resnet50", seed=3, lc_rate_hz=100.0)
    assert cfg.batch_sizes() == ml_services.DEFAULT_BATCH_SIZES["resnet50"]
    _, batches = cfg.requests()
    assert set(batches.tolist()) <= set(cfg.batch_sizes()) and len(set(batches.tolist())) > 1
    assert MLColocationConfig(lc_service="llama-1b", lc_batch_sizes=(16, 1)).batch_sizes() == (1, 16)
    assert MLColocationConfig(lc_batch=(2, 4)).batch_sizes() == (2, 3, 4)   # the decoder: its range


@pytest.mark.parametrize("kw", [{"lc_service": "gpt-5"}, {"lc_batch_sizes": (1, 1)}, {"lc_batch_sizes": (0,)},
                                {"lc_batch_sizes": ()}, {"pairs": ("gpt3_training",)}])
def test_bad_service_settings_are_refused(kw):
    with pytest.raises(ValueError, match="MLColocationConfig"):
        MLColocationConfig(**kw)


def test_small_sizes_keep_the_widths_and_cut_the_depth():
    full, small = ml_services.model_config("llama-8b", "default"), ml_services.model_config("llama-8b", "small")
    assert (small.hidden, small.n_kv_heads, small.n_layers) == (full.hidden, full.n_kv_heads, 2)
    assert ml_services.model_config("resnet50", "small").blocks == (1, 1, 1, 1)
    assert ml_services.model_config("decoder", "small") is None
    gpt = ml_services.gpt2_config("default", None)
    assert gpt.gemm_max_k == ml_services.UNSPLIT_K and ml_services.gpt2_config("small", 1024).gemm_max_k == 1024
    sizes = MLColocationConfig(lc_service="bert-base", pairs=("gpt2_training",), size="small").workload_sizes()
    assert sizes["service"].n_layers == 2 and sizes["gpt2"].n_layers == 2


# ---- recorded requests and their simulated kernels --------------------------------------------


def _model_flops(works):
    return sum(w.flops for _, w in works if w.kind in ("tensor", "attention"))


@pytest.mark.parametrize("service", ["llama-1b", "llama-1b-prefill", "resnet50", "bert-base"])
def test_recorded_request_computes_the_flops_of_its_model(service):
    sizes = (128, 256) if service == "llama-1b-prefill" else (1, 4)
    works = service_work(service, "small", sizes)
    model = ml_services.build_model(service, "small", sizes, 0, arrays=MetadataArrays(0))
    for b in sizes:
        cost = model.prefill_cost(b) if service == "llama-1b-prefill" else model.cost(b)
        assert _model_flops(works[b]) == pytest.approx(cost.flops, rel=1e-9)
        assert {n for n, w in works[b] if w.kind != "memory"} <= {*TENSOR_KERNELS, *ATTENTION_KERNELS} | \
            {n for n, _ in works[b] if n.startswith(ATTENTION_KERNELS)}
    assert _model_flops(works[sizes[1]]) > _model_flops(works[sizes[0]])


def test_recorded_gpt2_step_computes_the_flops_of_its_job():
    from lithos_atom.bench.model_launches import RecordingStream, recording

    with recording():   # the job's set-up launches kernels (its compute copies)
        job = ml_services.build_gpt2_job("small", 1024, 0, stream=RecordingStream(), arrays=MetadataArrays(0))
    assert _model_flops(gpt2_work("small", 1024)) == pytest.approx(job.cost().flops, rel=1e-9)


def test_simulated_requests_take_longer_at_larger_batches():
    from lithos_atom.bench.sim_ml_colocation import service_times

    model = KernelModel(SimCostModel(), 132)
    ks = service_kernels(model, "bert-base", "small", (1, 16))
    assert len(ks[1]) == len(ks[16]) == len(service_work("bert-base", "small", (1, 16))[1])
    times = service_times(ks, seed=0)
    assert 0 < times[1] < times[16]


# ---- right-sizing on the services ---------------------------------------------------------------


def test_service_summaries_say_which_batch_sizes_reach_the_target():
    from lithos_atom.bench.rightsize_bench import _service_summaries

    def row(batch, saved, slowdown):
        return {"key": f"service:resnet50:b{batch}:request", "tpcs": 10, "home_tpcs": 66, "us_full": 100.0,
                "us_chosen": 100.0 * (1 + slowdown), "measured_slowdown": slowdown, "capacity_saved": saved,
                "profile_bound": {"capacity_saved": saved}}

    out = _service_summaries([row(1, 0.6, 0.01), row(8, 0.3, 0.07), row(32, 0.1, 0.0)], 0.05)
    svc = out["per_service"]["resnet50"]
    assert svc["reach_target_at"] == [1]          # b8 saves enough but slows down past the slack
    assert svc["mean_capacity_saved"] == pytest.approx(1.0 / 3)
    assert out["services_reaching_target"] == ["resnet50"]


def test_simulated_service_requests_are_right_sized_per_batch_size(tmp_path):
    from lithos_atom.bench import rightsize_cases as rc
    from lithos_atom.bench.rightsize_bench import _service_summaries, measure_case
    from lithos_sched.partition_timing import TimingOptions, default_sizes
    from lithos_sched.scaling import ProfileStore
    from lithos_sched.sim_device import SimDevice

    device = SimDevice(seed=0, record_blocks=False)
    try:
        cases = rc.sim_service_cases("bert-base", device.num_sms, "small", (1, 16))
        assert [c.key for c in cases] == ["service:bert-base:b1:request", "service:bert-base:b16:request"]
        store = ProfileStore(tmp_path / "p.json", device_name=device.name)
        timing = TimingOptions(rounds=1, launches_per_round=1)
        rows = [measure_case(device, c, default_sizes(device.num_tpcs), 0.05, None, timing, timing, 0.0, store, None,
                             refine=False) for c in cases]
    finally:
        device.close()
    per = _service_summaries(rows, 0.05)["per_service"]["bert-base"]["batches"]
    assert per["1"]["tpcs"] < per["16"]["tpcs"]        # batch 1 fills fewer TPCs
    assert per["1"]["capacity_saved"] > per["16"]["capacity_saved"]


def test_rightsize_service_batch_needs_a_service(tmp_path):
    from lithos_atom.bench.rightsize_bench import main

    with pytest.raises(SystemExit) as exc:
        main(["--sim", "--service-batch", "4", "--out", str(tmp_path)])
    assert exc.value.code == 2


# ---- the ML bench with a model service and the GPT-2 job ---------------------------------------


def test_sim_ml_bench_serves_a_model_beside_the_gpt2_job():
    from lithos_atom.bench.sim_ml_colocation import SimMLConfig, run_sim

    cfg = SimMLConfig(lc_service="resnet50", lc_batch_sizes=(1, 8), size="small", pairs=("gpt2_training",),
                      duration_s=0.03, warmup_s=0.005, lc_rate_hz=400.0, scenarios=("lc_alone", "be_alone", "lithos"))
    out = run_sim(cfg)
    pair = out["pairs"]["gpt2_training"]
    sc = pair.get("scenarios", pair)
    assert sc["lc_alone"]["hp"]["completed"] > 0
    assert sc["be_alone"]["be"]["iterations"] > 0
    assert sc["lithos"]["hp"]["arrived"] == sc["lc_alone"]["hp"]["arrived"]
    assert sc["lithos"]["be_occupancy"]["busy_share"] > 0.5   # the job's atoms ran beside the requests


# ---- each service alone (its GPU run is the lead's; here the figures and the refusals) ----------


def test_services_alone_figures_relate_each_request_to_its_batch_gpu_time():
    from lithos_atom.bench.ml_tenants import LCRecord
    from lithos_atom.bench.services_alone import variant_figures

    cfg = MLColocationConfig(lc_service="resnet50", lc_batch_sizes=(1, 8), duration_s=1.0, warmup_s=0.0, seed=1,
                             lc_rate_hz=100.0)
    arrivals, batches = cfg.requests()
    gpu = {1: 1.0, 8: 4.0}
    lat = [2.0 * gpu[int(b)] for b in batches]   # every request twice its batch's GPU time
    rec = LCRecord(arrivals.tolist(), lat, [(0.0, 0.1, 1.0)] * len(lat))
    out = variant_figures(cfg, rec, gpu)
    assert out["p99_over_gpu"] == pytest.approx(2.0) and out["issue_p99_ms"] == pytest.approx(0.1)
    assert out["completed"] == len(lat) and "latencies_ms" not in out


def test_services_alone_refuses_bad_options_and_a_machine_without_a_gpu(monkeypatch, capsys):
    from lithos_atom.bench import environment
    from lithos_atom.bench.services_alone import main

    with pytest.raises(SystemExit) as exc:
        main(["--services", "resnet50,gpt-5"])
    assert exc.value.code == 2
    monkeypatch.setattr(environment, "environment", lambda: {"simulated": True})
    assert main(["--services", "resnet50"]) == 1
    assert "needs a CUDA GPU" in capsys.readouterr().err
