"""Test stand-ins for a `lithos_sched.rightsizing.RightSizer`."""

from __future__ import annotations


class FixedSizer:
    """A right-sizer that runs every kernel on ``n`` TPCs (or all its tenant has)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def tpcs_for(self, key, home_tpcs, grid_blocks=None, blocks_per_tpc=None) -> int:  # noqa: ANN001
        return min(self.n, home_tpcs)

    def observe(self, *args) -> None:  # noqa: ANN002
        pass
