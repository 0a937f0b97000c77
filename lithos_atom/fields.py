"""Checks of configuration fields and parameters, each refusing a bad value by its name.

Options objects check their fields when made (``__post_init__``), functions their
parameters on entry; the message names the field as ``Owner.field`` (or the parameter as
the user passes it) so a user sees which setting to change. `lithos_sched.fields` gives the
scheduler's options the same checks.
"""

from __future__ import annotations

import numpy as np


def is_int(value: object) -> bool:
    """Whether ``value`` is an integer (a NumPy one too), not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    """Whether ``value`` is an int or a float (NumPy ones too), not a bool; NaN and
    infinities count."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def require(ok: bool, field: str, expected: str, value: object) -> None:
    """Raise ``ValueError("<field> must be <expected>, got <value!r>")`` unless ``ok``.

    Parameters
    ----------
    ok : bool
        The check's outcome.
    field : str
        The field as the user names it, e.g. ``"Policy.atom_us"``.
    expected : str
        What the field must be, e.g. ``"a positive number"``.
    value : object
        The value refused.
    """
    if not ok:
        raise ValueError(f"{field} must be {expected}, got {value!r}")
