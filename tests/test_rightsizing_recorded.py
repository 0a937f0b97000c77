"""CPU tier: the right-sizing policy on the profiles recorded on the H100
(bench/results/h100-2026-11-25-rightsizing): refitting each kernel's recorded samples
gives the TPC count the GPU run chose, and the choices held their slack when re-timed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lithos_sched.rightsizing import RightSizeOptions, choose_tpcs
from lithos_sched.scaling_fit import fit_scaling

REPORT = Path(__file__).resolve().parents[1] / "bench/results/h100-2026-11-25-rightsizing/rightsizing.json"


@pytest.fixture(scope="module")
def report():
    return json.loads(REPORT.read_text())


def test_refit_reproduces_the_recorded_choices(report):
    for row in report["kernels"]:
        samples = {int(t): (us, 9) for t, us in row["profile_us"].items()}
        model = fit_scaling(list(samples), [m for m, _ in samples.values()], [c for _, c in samples.values()])
        assert model.kind == row["model"]["kind"], row["key"]
        chosen = choose_tpcs(model, row["home_tpcs"], report["slack"], min_saving=RightSizeOptions().min_saving,
                             samples=samples)
        assert chosen == row["tpcs"], row["key"]


def test_recorded_registry_choices_held_the_slack(report):
    registry = [r for r in report["kernels"] if r["key"].startswith("case:")]
    assert len(registry) == 45
    assert all(r["measured_slowdown"] <= report["slack"] for r in registry)
    # what right-sizing can do for kernels sized to fill the GPU: memory-bound ones only
    saved = {r["key"] for r in registry if r["capacity_saved"] > 0.2}
    assert "case:sgd_f32@bench" in saved and "case:gemm_f32@bench" not in saved


def test_recorded_report_labels_modeled_energy(report):
    energy = report["dvfs"]["energy"]
    assert energy["source_of_savings"] == "modeled" and energy["power_model"]["source"] == "modeled"
    assert report["dvfs"]["actuator_active"] is False


def test_the_profile_bound_is_at_least_what_each_recorded_choice_saves_within_slack(report):
    from lithos_atom.bench.rightsize_bench import best_profiled_saving

    slack = report["slack"]
    for row in report["kernels"]:
        prof = {int(t): us for t, us in row["profile_us"].items()}
        full = row["home_tpcs"]
        tpcs, saved = best_profiled_saving(prof, full, slack)
        assert prof[tpcs] <= (1 + slack) * prof[full], row["key"]
        chosen = row["tpcs"]  # the model may choose a size between the profiled ones
        if chosen in prof and prof[chosen] <= (1 + slack) * prof[full]:  # judged on the same profile
            assert saved >= 1 - chosen * prof[chosen] / (full * prof[full]) - 1e-12, row["key"]
