"""Fixtures of the GPU tier, and its bound on one test's time."""

from __future__ import annotations

import faulthandler
import os
import sys

import pytest

#: Seconds one GPU test may run before every thread's stack is printed and the run ends
#: (``GPU_TEST_TIMEOUT``; 0: no bound): a hang on the lent machine then shows where
#: it hung, within the device tool's limit, instead of returning nothing.
GPU_TEST_TIMEOUT_S = float(os.environ.get("GPU_TEST_TIMEOUT", "150"))


@pytest.fixture(autouse=True)
def _bounded_gpu_test():
    if GPU_TEST_TIMEOUT_S > 0:
        faulthandler.dump_traceback_later(GPU_TEST_TIMEOUT_S, exit=True, file=sys.stderr)
    yield
    faulthandler.cancel_dump_traceback_later()


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
