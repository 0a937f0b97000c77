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
