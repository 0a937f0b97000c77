"""Checks of configuration fields for the scheduler's options: those of `lithos_atom.fields`."""

from lithos_atom.fields import is_int, is_number, require

__all__ = ["is_int", "is_number", "require"]
