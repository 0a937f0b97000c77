"""GPU tier: scaling profiles of real kernels on partitions, right-sizing, NVML energy.

Behaviour only: no wall-clock figure is a pass/fail threshold of performance; the fit is
checked for predicting a held-out size within a loose bound, and the energy counter for
advancing. Nothing here changes clocks or power (NVML reads only).
"""

from __future__ import annotations

import statistics

import numpy as np
import pytest

pytestmark = pytest.mark.gpu

SIZES = [66, 44, 33, 22, 11]


@pytest.fixture(scope="module")
def cases():
    from lithos_atom.bench.rightsize_cases import registry_case

    # bench size: the 'small' inputs are too small to fill even a few TPCs
    made = {name: registry_case(name, "bench") for name in ("gemm_f32", "layernorm_f32")}
    yield made
    for c in made.values():
        c.release()


@pytest.mark.parametrize("name", ["gemm_f32", "layernorm_f32"])
def test_profile_fits_and_predicts_a_held_out_size(device, cases, name):
    from lithos_sched.partition_timing import TimingOptions, profile_on_partitions, time_on_partitions
    from lithos_sched.rightsizing import choose_tpcs

    case = cases[name]
    timing = TimingOptions(rounds=3, launches_per_round=3)
    prof = profile_on_partitions(device, case.key, case.launch, SIZES, timing)
    model = prof.model()
    assert set(prof.samples) == set(SIZES)
    assert all(m > 0 for m, _ in prof.samples.values())
    held_out = statistics.median(time_on_partitions(device, case.launch, [27], timing)[27])
    assert model.predict_us(27) == pytest.approx(held_out, rel=0.35)
    chosen = choose_tpcs(model, 66, 0.05)
    assert 11 <= chosen <= 66


def test_a_refined_profile_times_every_count_where_a_choice_could_lie(device, cases):
    from lithos_sched.partition_timing import TimingOptions, default_sizes, knee_sizes, profile_on_partitions

    case = cases["layernorm_f32"]
    coarse = default_sizes(device.num_tpcs)
    prof = profile_on_partitions(device, case.key, case.launch, coarse, TimingOptions(rounds=2, launches_per_round=2),
                                 refine_slack=0.05)
    medians = {t: m for t, (m, _) in prof.samples.items()}
    assert set(coarse) < set(medians)  # the knee holds counts the coarse sizes skip
    assert knee_sizes(medians, device.num_tpcs, 0.05) == []  # and every candidate was timed


def test_copy_bandwidth_is_measured_on_the_device(device):
    from lithos_atom.bench.rightsize_bench import copy_bandwidth_bytes_per_s

    assert copy_bandwidth_bytes_per_s(nbytes=1 << 26, reps=2) > 0


def test_partition_timing_is_confined_to_the_partition(device, cases):
    """Fewer TPCs never make a full-device GEMM faster (it fills the GPU)."""
    from lithos_sched.partition_timing import TimingOptions, time_on_partitions

    big = time_on_partitions(device, cases["gemm_f32"].launch, [66, 6], TimingOptions(rounds=2))
    assert statistics.median(big[6]) > statistics.median(big[66])


def test_energy_counter_advances_and_power_is_read(device, cases):
    from lithos_sched.energy import EnergyMeter

    meter = EnergyMeter()
    part = device.partition(range(device.num_tpcs))
    try:
        def run():
            for _ in range(50):
                cases["gemm_f32"].launch(part.normal)
            part.normal.synchronize()

        run()
        result = meter.measure(lambda: [run() for _ in range(3)])
        assert result.joules > 0 and result.seconds > 0
        assert meter.power_w() > 0
        clocks = meter.supported_sm_clocks_mhz()
        assert clocks and min(clocks) < meter.max_sm_clock_mhz() <= max(clocks)
    finally:
        part.close()


def test_inference_layer_kernels_profile(device):
    from lithos_atom.bench.rightsize_cases import DECODER_OPS, inference_cases
    from lithos_sched.partition_timing import TimingOptions, profile_on_partitions

    cases = inference_cases(1)
    try:
        assert [c.key.rsplit(":", 1)[1] for c in cases] == [*DECODER_OPS, "request"]
        for case in (cases[0], cases[1]):
            prof = profile_on_partitions(device, case.key, case.launch, [66, 33, 11],
                                         TimingOptions(rounds=2, launches_per_round=5))
            assert prof.model() is not None
            assert np.isfinite(prof.model().predict_us(20))
    finally:
        cases[0].release()


def test_the_ml_benchs_request_sizes_stay_within_the_inference_tpcs_and_run_a_request(device):
    """The ``lithos_rightsized`` ML scenario sizes each request batch from profiles of
    whole requests; a request on that many TPCs (`Tenant.on_tpcs`) gives the same output
    as on a plain stream."""
    import cupy

    from kernels.workloads import InferenceService
    from lithos_atom.bench.ml_colocation import MLColocationConfig
    from lithos_atom.bench.ml_gpu import inference_request_tpcs
    from lithos_sched import Priority, Scheduler, TenantSpec

    cfg = MLColocationConfig(lc_batch=(1, 2))
    n_lc = device.num_tpcs // 2
    sizes = inference_request_tpcs(cfg, device, n_lc)
    assert set(sizes) == {1, 2} and all(1 <= n <= n_lc for n in sizes.values())
    plain = cupy.cuda.Stream(non_blocking=True)
    service = InferenceService(batch=1, stream=plain)
    # read on the request's stream: CuPy's current one (the legacy default stream) does
    # not wait for a non-blocking stream, and reading there raced the request (seen once)
    want = cupy.asnumpy(service.request(1, plain, 0), stream=plain)
    sched = Scheduler(device, [TenantSpec("lc", Priority.LATENCY_CRITICAL, share=0.5),
                               TenantSpec("be", Priority.BEST_EFFORT, share=0.5)])
    try:
        with sched.tenant("lc") as lc, lc.on_tpcs(sizes[1]) as block:
            got = cupy.asnumpy(service.request(1, block.cupy, 0), stream=block.cupy)
    finally:
        sched.close()
    assert np.array_equal(got, want)
