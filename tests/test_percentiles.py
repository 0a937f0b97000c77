"""Bootstrap intervals of tail percentiles: coverage, determinism, errors."""

from __future__ import annotations

import numpy as np
import pytest

from lithos_atom.bench.percentiles import percentile_ci, ratio_ci


def test_the_interval_holds_the_sample_percentile_and_narrows_with_more_data():
    rng = np.random.default_rng(1)
    small, large = rng.lognormal(0, 0.5, 300), rng.lognormal(0, 0.5, 30_000)
    lo_s, hi_s = percentile_ci(small, 99)
    lo_l, hi_l = percentile_ci(large, 99, resamples=200)
    assert lo_s <= np.percentile(small, 99) <= hi_s
    assert lo_l <= np.percentile(large, 99) <= hi_l
    assert hi_l - lo_l < hi_s - lo_s
    assert percentile_ci(small, 99) == (lo_s, hi_s)  # one seed, one interval


def test_the_interval_covers_the_true_percentile_about_as_often_as_it_says():
    true_p90 = np.exp(0.5 * 1.2815515655446004)  # lognormal(0, 0.5)
    rng = np.random.default_rng(2)
    hits = sum(lo <= true_p90 <= hi for lo, hi in
               (percentile_ci(rng.lognormal(0, 0.5, 400), 90, resamples=300, seed=s) for s in range(60)))
    assert hits >= 50  # 95 % nominal; bootstrap percentile intervals run a little narrow


def test_ratio_of_identical_streams_straddles_one_and_a_real_gap_does_not():
    rng = np.random.default_rng(3)
    a, b = rng.lognormal(0, 0.3, 2000), rng.lognormal(0, 0.3, 2000)
    lo, hi = ratio_ci(a, b, 99)
    assert lo < 1 < hi
    lo, hi = ratio_ci(2 * a, b, 99)
    assert lo > 1.5


@pytest.mark.parametrize("kwargs, match", [
    (dict(values=[], q=99), "non-empty"), (dict(values=[1.0, float("nan")], q=99), "finite"),
    (dict(values=[1.0], q=100), "q must"), (dict(values=[1.0], q=99, confidence=1.0), "confidence"),
    (dict(values=[1.0], q=99, resamples=0), "resamples"),
])
def test_bad_input_names_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        percentile_ci(**kwargs)
