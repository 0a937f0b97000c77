"""The arithmetic of atoms in Python: how a grid's blocks are split and renumbered.

Blocks are numbered linearly, x fastest, then y, then z. An atom is a contiguous range
``[start, start + count)`` of that numbering, launched as a 1-D grid of ``count`` blocks;
the PTX prelude (`lithos_atom.ptx`) turns hardware block ``i`` of the atom back into the
original ``(x, y, z)``. `virtual_block` is that prelude's arithmetic, step for step, so
property tests can check the covering without a GPU.
"""

from __future__ import annotations

MAX_GRID_X = 2**31 - 1
MAX_GRID_YZ = 65535


def _check_int(name: str, value: object, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return value


def total_blocks(grid: tuple[int, int, int]) -> int:
    """Number of blocks in a 3-D grid, after checking it against CUDA's limits.

    Parameters
    ----------
    grid : tuple (or list) of 3 int
        ``(gx, gy, gz)`` with ``1 <= gx <= 2**31 - 1`` and ``1 <= gy, gz <= 65535``.

    Returns
    -------
    int

    Raises
    ------
    ValueError
        Naming the bad dimension.
    """
    if not isinstance(grid, (tuple, list)) or len(grid) != 3:
        raise ValueError(f"grid must be 3 ints (x, y, z), got {grid!r}")
    gx = _check_int("grid.x", grid[0], 1, MAX_GRID_X)
    gy = _check_int("grid.y", grid[1], 1, MAX_GRID_YZ)
    gz = _check_int("grid.z", grid[2], 1, MAX_GRID_YZ)
    return gx * gy * gz


def split_blocks(total: int, atom_blocks: int) -> list[tuple[int, int]]:
    """Cover ``[0, total)`` with ``(start, count)`` ranges of ``atom_blocks``, in increasing order.

    Every range but the last has ``atom_blocks`` blocks; the last has the rest.

    Parameters
    ----------
    total : int
        Blocks of the launch, at least 1.
    atom_blocks : int
        Blocks per atom, at least 1 (values above ``total`` give one atom).

    Returns
    -------
    list of (int, int)

    Raises
    ------
    ValueError
        Naming ``total`` or ``atom_blocks`` when it is not a positive int.
    """
    _check_int("total", total, 1)
    _check_int("atom_blocks", atom_blocks, 1)
    return [(start, min(atom_blocks, total - start)) for start in range(0, total, atom_blocks)]


def virtual_block(linear: int, grid: tuple[int, int, int]) -> tuple[int, int, int]:
    """The original ``(x, y, z)`` of linear block ``linear``, as the prelude computes it.

    The prelude forms ``linear = base + %ctaid.x`` in 64 bits, then ``t = linear / gx``,
    ``x = linear - t * gx``, ``z = t / gy``, ``y = t - z * gy`` (the last two in 32 bits:
    ``t < gy * gz < 2**32``).

    Parameters
    ----------
    linear : int
        In ``[0, total_blocks(grid))``.
    grid : tuple of 3 int
        The original grid.

    Returns
    -------
    tuple of 3 int

    Raises
    ------
    ValueError
        If ``grid`` is not a valid grid or ``linear`` is outside it.
    """
    total = total_blocks(grid)
    _check_int("linear", linear, 0, total - 1)
    gx, gy, _ = grid
    t = linear // gx
    x = linear - t * gx
    z = t // gy
    y = t - z * gy
    return x, y, z
