"""Rewriting stays near-linear in the module's size (CPU only).

Each case rewrites a module of size ``n`` and of size ``4 n`` (`tests.ptx_scaling`); four
times the size must take less than eight times as long (quadratic work would take about
sixteen). Sizes keep each case near a second; the full-size cases of issue 23 (32,000
entries, 800 functions and entries, a 20 MB string) are measured in the report, not here.
"""

from __future__ import annotations

import gc
import time
import tracemalloc
from collections.abc import Callable

import pytest

from lithos_atom.errors import AtomizeError
from lithos_atom.ptx import RewriteResult, rewrite_module
from tests import ptx_scaling
from tests.ptx_mutations import time_limit

GROWTH = 4
MAX_TIME_RATIO = 8.0


def seconds(build: Callable[[int], str], n: int, repeat: int = 1) -> tuple[float, RewriteResult]:
    """Best CPU time of ``repeat`` rewrites of ``build(n)`` (the module is built outside the timing)."""
    text = build(n)
    best, result = float("inf"), None
    for _ in range(repeat):
        gc.collect()
        start = time.process_time()  # CPU time: other processes on the machine do not count
        with time_limit(30):  # a quadratic regression fails here instead of hanging
            result = rewrite_module(text, skip_unsupported=True)
        best = min(best, time.process_time() - start)
    assert result is not None
    return best, result


def assert_near_linear(build: Callable[[int], str], n: int) -> RewriteResult:
    small, _ = seconds(build, n, repeat=2)  # the small size is the noisier one
    large, result = seconds(build, GROWTH * n)
    assert large < MAX_TIME_RATIO * max(small, 0.01), (
        f"{build.__name__}: {GROWTH}x the size took {large / small:.1f}x the time ({small:.3f} s -> {large:.3f} s)")
    return result


def test_many_entries_half_of_them_refused():
    result = assert_near_linear(ptx_scaling.many_entries, 1000)
    entries = list(result.entries.values())
    assert len(entries) == 4000 and [e.atomized for e in entries] == [i % 2 == 0 for i in range(4000)]
    assert all("griddepcontrol" in e.reason for e in entries[1::2])


def test_indirect_calls_from_address_taken_functions():
    result = assert_near_linear(ptx_scaling.indirect_calls, 50)
    assert all(e.atomized for e in result.entries.values()) and len(result.entries) == 200
    assert len(result.funcs_patched) == 200  # every function may be reached by every indirect call


def test_refusal_spreading_through_a_chain_of_shared_functions():
    result = assert_near_linear(ptx_scaling.shared_chain, 100)
    entries = list(result.entries.values())
    assert not any(e.atomized for e in entries) and result.funcs_patched == ()
    # each names its neighbour and the cause, however long the chain
    first = entries[0].reason
    assert "with entry 'k1'" in first and "entry 'k399', which uses griddepcontrol.wait" in first
    assert max(len(e.reason) for e in entries) < 400


def test_one_long_body():
    result = assert_near_linear(ptx_scaling.long_body, 1500)
    assert result.entries["k"].atomized and result.ptx.count("mov.u32 %r1, %__lithos_ctaid_x;") == 6000


def test_a_long_comment_at_the_end():
    result = assert_near_linear(ptx_scaling.trailing_comment, 100_000)
    assert result.entries["k"].atomized


def test_an_unterminated_string_costs_no_memory_beyond_the_text():
    text = ptx_scaling.unterminated_string(2_000_000)
    tracemalloc.start()
    try:
        with pytest.raises(AtomizeError, match=r"^line 4: unterminated string$"):
            rewrite_module(text)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 10_000_000, f"{peak / 1e6:.0f} MB to refuse a 2 MB string"
