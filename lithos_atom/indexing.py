"""The arithmetic of atoms, in Python: how a grid's blocks are split and renumbered.

This mirrors the prelude the PTX rewriter emits, so property tests can check it covers
every block exactly once without a GPU.
"""

from __future__ import annotations

MAX_GRID_X = 2**31 - 1
MAX_GRID_YZ = 65535


def total_blocks(grid: tuple[int, int, int]) -> int:
    """Blocks in a 3-D grid, after checking each dimension is within CUDA's limits.

    Raises
    ------
    ValueError
        Naming the bad dimension.
    """
    if len(grid) != 3:
        raise ValueError(f"grid must have 3 dimensions, got {grid!r}")
    for axis, size, limit in zip("xyz", grid, (MAX_GRID_X, MAX_GRID_YZ, MAX_GRID_YZ)):
        if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= limit:
            raise ValueError(f"grid.{axis} must be an int in [1, {limit}], got {size!r}")
    return grid[0] * grid[1] * grid[2]


def split_blocks(total: int, atom_blocks: int) -> list[tuple[int, int]]:
    """Cover ``[0, total)`` with (start, count) ranges of ``atom_blocks``, in order.

    Raises
    ------
    ValueError
        If ``total`` or ``atom_blocks`` is not a positive int.
    """
    if isinstance(total, bool) or not isinstance(total, int) or total < 1:
        raise ValueError(f"total must be a positive int, got {total!r}")
    if isinstance(atom_blocks, bool) or not isinstance(atom_blocks, int) or atom_blocks < 1:
        raise ValueError(f"atom_blocks must be a positive int, got {atom_blocks!r}")
    return [(start, min(atom_blocks, total - start)) for start in range(0, total, atom_blocks)]


def virtual_block(linear: int, grid: tuple[int, int, int]) -> tuple[int, int, int]:
    """The (x, y, z) block index the prelude computes from a linear block index."""
    gx, gy, _ = grid
    return linear % gx, (linear // gx) % gy, linear // (gx * gy)
