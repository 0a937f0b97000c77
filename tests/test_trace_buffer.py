"""The scheduler's atom record: rows come back as appended, and nothing in it is tracked
by the garbage collector (so a long trace adds nothing to collection pauses)."""

from __future__ import annotations

import gc

from hypothesis import given
from hypothesis import strategies as st

from lithos_sched.trace_buffer import TraceBuffer, TraceRow

rows = st.lists(st.builds(
    TraceRow,
    kernel=st.sampled_from(["gemm", "softmax", "burn"]),
    tenant=st.sampled_from(["lc", "be"]),
    tpcs=st.frozensets(st.integers(0, 65), min_size=1, max_size=5),
    stream=st.integers(0, 2**63 - 1),
    start_block=st.integers(0, 2**40),
    blocks=st.integers(1, 2**31 - 1),
    predicted_us=st.none() | st.floats(0, 1e6, allow_nan=False),
    stolen=st.booleans(),
    start_us=st.floats(0, 1e9, allow_nan=False),
    duration_us=st.floats(0, 1e6, allow_nan=False),
), max_size=50)


@given(rows)
def test_rows_round_trip_in_order(expected):
    buf = TraceBuffer()
    for r in expected:
        buf.append(*r)
    assert list(buf.rows()) == expected
    assert len(buf) == len(expected)


def test_appending_allocates_no_tracked_objects():
    buf = TraceBuffer()
    tpcs = frozenset({1, 2})
    buf.append("k", "be", tpcs, 7, 0, 10, None, True, 1.0, 2.0)  # names and partitions interned once
    gc.collect()
    before = len(gc.get_objects())
    for i in range(10_000):
        buf.append("k", "be", tpcs, 7, i, 10, 3.0, False, float(i), 2.0)
    assert len(gc.get_objects()) - before < 100
