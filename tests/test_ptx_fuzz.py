"""Fuzzing the PTX reader and rewriter with mutants of real PTX (CPU only, a few seconds).

Hypothesis draws mutants of the corpus (`tests.ptx_mutations`): deleted, repeated, swapped
and cut lines, flipped characters, digits that are not ASCII, broken calls, parameters and
guards, very long lines and modules, byte-order marks and other line ends. Every mutant is
rewritten or refused with an `AtomizeError` naming one of its lines, within a time limit;
a few mutants that ptxas accepts are checked to stay accepted once rewritten.
``scripts/fuzz_ptx.py`` runs the same property over 100,000 mutants and more.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, assume, given, note, settings
from hypothesis import strategies as st

from tests.ptx_mutations import LINE_MUTATIONS, check_mutant, fuzz_corpus, mutate, ptxas_accepts, time_limit
from tests.ptx_sources import find_ptxas

SECONDS_PER_MUTANT = 10.0
"""The slowest mutant of 100,000 takes under a second; ten is a hang."""


@pytest.fixture(scope="module")
def corpus() -> dict[str, str]:
    """The modules to mutate, compiled once (outside hypothesis's examples)."""
    return fuzz_corpus()


def _picker(data: st.DataObject):
    return lambda n: data.draw(st.integers(0, n - 1))


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_every_mutant_is_rewritten_or_refused_naming_a_line(corpus, data):
    text, what = mutate(corpus, _picker(data))
    note(what)
    with time_limit(SECONDS_PER_MUTANT):
        check_mutant(text)


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(data=st.data())
def test_mutants_ptxas_accepts_stay_accepted_once_rewritten(corpus, data):
    if find_ptxas((9, 5)) is None:
        pytest.skip("no ptxas for PTX 9.5 (install nvidia-cuda-nvcc)")
    text, what = mutate(corpus, _picker(data), max_rounds=1, names=LINE_MUTATIONS)
    note(what)
    _, out = check_mutant(text)
    assume(out is not None and ptxas_accepts(text)[0])
    ok, log = ptxas_accepts(out)
    assert ok, f"ptxas rejects the rewritten {what}:\n{log}"
