"""Fixtures of the GPU tier."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def device():
    """The GPU as a lithos device, closed after the module."""
    from lithos_sched import open_device

    dev = open_device(simulate=False)
    yield dev
    dev.close()


@pytest.fixture
def counting_atomizer():
    """A factory of `lithos.Atomizer`s (same options) that keep each plan they submit in ``.plans``."""
    import lithos

    class Counting(lithos.Atomizer):
        def __init__(self, **options):
            super().__init__(**options)
            self.plans = []

        def submit(self, plan, stream):
            self.plans.append(plan)
            super().submit(plan, stream)

    return Counting
