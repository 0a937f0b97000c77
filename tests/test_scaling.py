"""CPU tier: scaling models, their fitting, profiles and the profile cache."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lithos_atom.plan import KernelKey
from lithos_sched.scaling import ProfileStore, ScalingProfile, default_cache_dir
from lithos_sched.scaling_fit import ScalingModel, fill_tpcs, fit_scaling

SIZES = np.array([66, 59, 53, 46, 40, 33, 26, 20, 13, 7])


@settings(max_examples=40, deadline=None)
@given(m=st.floats(1e2, 1e6), b=st.floats(0.0, 1e4))
def test_amdahl_fit_recovers_noise_free_data(m, b):
    model = fit_scaling(SIZES, m / SIZES + b)
    assert model.rel_rms < 1e-3
    pred = model.predict_us(SIZES)
    np.testing.assert_allclose(pred, m / SIZES + b, rtol=2e-3)


def test_saturating_fit_finds_the_knee():
    lat = 3000 / np.minimum(SIZES, 30) + 5
    model = fit_scaling(SIZES, lat)
    assert model.kind == "saturating"
    assert 26 <= model.t_sat <= 33
    assert model.elasticity(66) == pytest.approx(0.0, abs=1e-9)
    assert model.elasticity(13) > 0.9


@settings(max_examples=25, deadline=None)
@given(waves=st.integers(30, 400), wave_us=st.floats(5.0, 500.0), b=st.floats(0.0, 50.0))
def test_wave_fit_predicts_the_sampled_sizes(waves, wave_us, b):
    lat = wave_us * np.ceil(waves / SIZES) + b
    model = fit_scaling(SIZES, lat)
    np.testing.assert_allclose(model.predict_us(SIZES), lat, rtol=0.02)


def test_known_waves_are_used_exactly():
    lat = 40.0 * np.ceil(148 / 2 / SIZES) + 3.0
    model = fit_scaling(SIZES, lat, waves_w=74.0)
    assert model.kind == "wave" and model.waves_w == 74.0
    assert model.predict_us(37) == pytest.approx(40.0 * 2 + 3.0)
    assert model.predict_us(36) == pytest.approx(40.0 * 3 + 3.0)


def test_ambiguous_wave_count_errs_towards_more_waves():
    # Samples at 40 and 33 TPCs cannot tell W=67 from W=80: the fit keeps the larger,
    # which predicts the extra wave at 36 TPCs (so right-sizing does not go there).
    lat = 100.0 * np.ceil(74 / SIZES)
    model = fit_scaling(SIZES, lat)
    assert model.predict_us(36) > model.predict_us(40)


def test_recorded_h100_scaling_of_a_compute_bound_kernel():
    # docs/design.md: a compute-bound kernel ran 1.93x / 5.77x longer on 33 / 11 of 66 TPCs.
    model = fit_scaling([66, 33, 11], [1.0, 1.93, 5.77])
    assert model.rel_rms < 0.02
    assert model.predict_us(22) / model.predict_us(66) == pytest.approx(66 / 22, rel=0.06)
    assert model.elasticity(66) > 0.9


def test_single_size_is_flat():
    model = fit_scaling([33, 33], [10.0, 12.0])
    assert model.kind == "amdahl" and model.m_us == 0 and model.predict_us(5) == pytest.approx(11.0)


@pytest.mark.parametrize("args, field", [
    (([1, 2], [1.0]), "one value per sample"),
    (([], []), "at least one sample"),
    (([0, 2], [1.0, 2.0]), "tpcs"),
    (([1, 2], [1.0, -2.0]), "latency_us"),
    (([1, 2], [1.0, float("nan")]), "latency_us"),
])
def test_fit_rejects_bad_samples(args, field):
    with pytest.raises(ValueError, match=field):
        fit_scaling(*args)


def test_model_json_round_trip_and_bad_kind():
    model = fit_scaling(SIZES, 500 / SIZES + 1)
    assert ScalingModel.from_json(json.loads(json.dumps(model.to_json()))) == model
    with pytest.raises(ValueError, match="kind"):
        ScalingModel.from_json({"kind": "linear", "m_us": 1, "b_us": 0})
    with pytest.raises(ValueError, match="tpcs"):
        model.predict_us(0)


def test_fill_tpcs():
    assert fill_tpcs(8, 4) == 2
    assert fill_tpcs(9, 4) == 3
    assert fill_tpcs(1, 16) == 1
    with pytest.raises(ValueError, match="grid_blocks"):
        fill_tpcs(0, 4)
    with pytest.raises(ValueError, match="blocks_per_tpc"):
        fill_tpcs(8, 0)


def test_profile_online_mean_and_refit():
    prof = ScalingProfile("k", alpha=0.5)
    prof.observe(66, 100.0)
    prof.observe(66, 200.0)
    assert prof.samples[66] == (150.0, 2)
    v = prof.version
    prof.observe(33, 300.0)
    assert prof.version > v
    assert prof.model().samples == 2
    with pytest.raises(ValueError, match="tpcs"):
        prof.observe(0, 1.0)
    with pytest.raises(ValueError, match="latency_us"):
        prof.observe(3, math.inf)


def test_store_observe_scales_partial_atoms_to_the_whole_grid():
    key = KernelKey("k", (264, 1, 1), (128, 1, 1), 0)
    store = ProfileStore(path="unused.json")
    # 66 TPCs x 2 blocks per TPC = 132 per wave; the grid is 2 waves; an atom of one wave took 50 us.
    store.observe(key, 66, 132, 132, 50.0)
    prof = store.get(key)
    assert prof.samples[66][0] == pytest.approx(100.0)
    assert prof.grid_blocks == 264 and prof.blocks_per_tpc == 2 and prof.fill_tpcs() == 132
    with pytest.raises(ValueError, match="count"):
        store.observe(key, 66, 0, 132, 1.0)
    with pytest.raises(TypeError, match="KernelKey"):
        store.get(3.5)


def test_a_key_without_a_profile_is_answered_from_memory_until_one_appears(tmp_path, monkeypatch):
    key = KernelKey("k", (264, 1, 1), (128, 1, 1), 0)
    store = ProfileStore(path=tmp_path / "p.json")
    assert store.get(key) is None
    from lithos_sched import scaling

    monkeypatch.setattr(scaling, "key_id", lambda k: pytest.fail("formatted the key again"))
    assert store.get(key) is None  # the miss is remembered: no key formatting per launch
    monkeypatch.undo()
    store.observe(key, 66, 264, 132, 80.0)  # a profile appears under the key
    assert store.get(key) is not None and store.get(key).samples[66][0] == pytest.approx(80.0)
    other = KernelKey("other", (1, 1, 1), (32, 1, 1), 0)
    assert store.get(other) is None
    store.save()
    store.alias(other, key)  # appears by alias
    assert store.get(other).samples == store.get(key).samples
    fresh = ProfileStore(path=tmp_path / "p.json")
    assert fresh.get(key) is None
    fresh.load()  # appears by loading the cache
    assert fresh.get(key) is not None


def test_store_cache_round_trip(tmp_path, monkeypatch):
    monkeypatch.delenv("LITHOS_SCALING_DIR", raising=False)
    monkeypatch.setenv("LITHOS_CACHE_DIR", str(tmp_path))
    assert default_cache_dir() == tmp_path / "scaling"
    store = ProfileStore(device_name="H100")
    assert store.path == tmp_path / "scaling" / "profiles.json"
    for t in SIZES:
        store.profile("case:x").add(int(t), 1000 / t + 2, 3)
    store.save()
    again = ProfileStore(device_name="H100")
    assert again.load() == 1
    assert again.get("case:x").samples == store.get("case:x").samples
    assert again.get("case:x").model() == store.get("case:x").model()
    other = ProfileStore(device_name="A100")
    assert other.load() == 0 and len(other) == 0


def test_store_rejects_a_file_that_is_not_a_cache(tmp_path):
    bad = tmp_path / "p.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="p.json"):
        ProfileStore(bad).load()
    bad.write_text(json.dumps({"profiles": {}}))
    with pytest.raises(ValueError, match="'profiles' list"):
        ProfileStore(bad).load()


def test_an_alias_files_a_profile_under_the_schedulers_kernel_key_and_survives_the_cache(tmp_path):
    from lithos_atom.plan import KernelKey
    from lithos_sched.scaling import ProfileStore

    store = ProfileStore(tmp_path / "p.json", device_name="H100")
    for tpcs, us in ((66, 100.0), (33, 120.0), (11, 300.0)):
        store.profile("gemm_f16").observe(tpcs, us)
    key = KernelKey("gemm", (528, 1, 1), (256, 1, 1), 0, ((4096, 4096),))
    copy = store.alias(key, "gemm_f16")
    assert store.get(key) is copy and copy.samples == store.get("gemm_f16").samples
    store.save()
    again = ProfileStore(tmp_path / "p.json", device_name="H100")
    again.load()
    assert again.get(key).samples == copy.samples
    with pytest.raises(KeyError, match="nothing"):
        store.alias(key, "nothing")


def test_launch_keys_records_every_intercepted_launch_and_runs_it(monkeypatch):
    import kernels
    from lithos_atom.active import get_atomizer
    from lithos_atom.bench import profile
    from lithos_atom.plan import KernelKey, LaunchShape

    resets = []
    monkeypatch.setattr(kernels, "reset_cache", lambda: resets.append(1))
    ran = []

    def front_end_launch(stream):  # what an intercepted kernel call does
        for name in ("a", "b"):
            key = KernelKey(name, (1, 1, 1), (32, 1, 1), 0)
            assert get_atomizer().launch_whole(lambda s, n=name: ran.append((n, s)), stream,
                                               lambda k=key: LaunchShape(k, 1, 132))

    keys = profile.launch_keys(front_end_launch, "s0")
    assert [k.name for k in keys] == ["a", "b"] and ran == [("a", "s0"), ("b", "s0")]
    assert len(resets) == 2 and get_atomizer() is None
