"""Errors of lithos_sched: driver failures carry the driver's error name."""

from __future__ import annotations

from typing import Any

from lithos_atom.errors import LithosCudaError

__all__ = ["LithosCudaError", "PartitionError", "check", "error_name"]


class PartitionError(ValueError):
    """A bad partition request (TPC ids, priority, a closed device or partition); the
    message names the bad value."""


def error_name(err: Any) -> str:
    """The ``CUresult`` name of ``err`` (an enum member or a plain int)."""
    name = getattr(err, "name", None)
    if isinstance(name, str):
        return name
    try:
        from cuda.bindings import driver

        return driver.CUresult(int(err)).name
    except Exception:  # an unknown code, or no cuda.bindings: still say which code it was
        return f"CUresult {int(err)}"


def check(result: tuple, call: str) -> Any:
    """Unpack a ``cuda.bindings`` driver result ``(err, *values)``.

    Parameters
    ----------
    result : tuple
        What the driver function returned.
    call : str
        The function's name, for the error message.

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
        raise LithosCudaError(call, int(err), error_name(err))
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)
