"""GPU tier of the ML study: the service's capacity alone is measured on the GPU, and a
study of short rounds runs each round's scenarios in its rotated order, with one SLO."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.gpu


def test_the_service_time_of_each_batch_is_measured_back_to_back():
    from lithos_atom.bench.load import gpu_service_ms, with_rate
    from lithos_atom.bench.ml_colocation import MLColocationConfig

    cfg = MLColocationConfig(size="small", lc_batch=(1, 4))
    times = gpu_service_ms(cfg, per_batch=5)
    assert set(times) == {1, 2, 3, 4} and all(0 < t < 1000 for t in times.values())
    rated, rec = with_rate(cfg, times)
    assert rated.lc_rate_hz == pytest.approx(0.5 * 1000 / (sum(times.values()) / 4))


def test_a_short_study_rotates_its_rounds_and_sets_one_slo():
    from lithos_atom.bench.ml_colocation import MLColocationConfig, run_order
    from lithos_atom.bench.ml_rounds import run_study

    cfg = MLColocationConfig(size="small", pairs=("training",), scenarios=("streams", "static_split", "lithos"),
                             static_sweep=(), duration_s=0.3, warmup_s=0.1)
    study = run_study(cfg, simulated=False, rounds=2)
    assert [r["order"] for r in study["rounds"]] == [[list(x) for x in run_order(cfg, r, 2)] for r in range(2)]
    assert all(r["slo_ms"] == study["slo_ms"] for r in study["rounds"]) and study["slo_ms"] > 0
    lithos = study["summary"]["pairs"]["training"]["scenarios"]["lithos"]
    assert len(lithos["hp"]["p99_ms"]["by_round"]) == 2 and lithos["be"]["throughput_norm"]["median"] > 0
