"""Errors of lithos_sched: driver failures carry the driver's error name."""

from __future__ import annotations

from typing import Any


class LithosCudaError(RuntimeError):
    """A CUDA driver call failed.

    Attributes
    ----------
    call : str
        The driver function.
    code : int
        The ``CUresult`` value.
    name : str
        The ``CUresult`` name, for example ``CUDA_ERROR_INVALID_HANDLE``.
    """

    def __init__(self, call: str, code: int, name: str):
        self.call, self.code, self.name = call, code, name
        super().__init__(f"{call} failed: {name} ({code})")


class PartitionError(ValueError):
    """A bad partition request (TPC ids, a closed device or partition); names the bad value."""


def check(result: tuple, call: str) -> Any:
    """Unpack a ``cuda.bindings`` driver result ``(err, *values)``.

    Returns
    -------
    The single value, a tuple of values, or None.

    Raises
    ------
    LithosCudaError
        If ``err`` is not ``CUDA_SUCCESS``.
    """
    err, *values = result
    if int(err) != 0:
        raise LithosCudaError(call, int(err), getattr(err, "name", str(err)))
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)
