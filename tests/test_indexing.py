"""The pure-Python model of atoms: splitting a grid's blocks and renumbering them."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lithos_atom.indexing import MAX_GRID_X, MAX_GRID_YZ, split_blocks, total_blocks, virtual_block


def test_split_blocks_examples():
    assert split_blocks(10, 4) == [(0, 4), (4, 4), (8, 2)]
    assert split_blocks(8, 4) == [(0, 4), (4, 4)]
    assert split_blocks(3, 100) == [(0, 3)]
    assert split_blocks(1, 1) == [(0, 1)]


@pytest.mark.parametrize(
    "total, atom_blocks, name",
    [(0, 1, "total"), (-3, 1, "total"), (2.0, 1, "total"), (True, 1, "total"), ("4", 1, "total"),
     (4, 0, "atom_blocks"), (4, -1, "atom_blocks"), (4, 1.5, "atom_blocks"), (4, False, "atom_blocks")],
)
def test_split_blocks_names_the_bad_argument(total, atom_blocks, name):
    with pytest.raises(ValueError, match=f"^{name} must be"):
        split_blocks(total, atom_blocks)


def test_total_blocks_limits():
    assert total_blocks((1, 1, 1)) == 1
    assert total_blocks((MAX_GRID_X, MAX_GRID_YZ, MAX_GRID_YZ)) == (2**31 - 1) * 65535**2
    assert total_blocks([3, 4, 5]) == 60


@pytest.mark.parametrize(
    "grid, name",
    [((0, 1, 1), "grid.x"), ((2**31, 1, 1), "grid.x"), ((1, 0, 1), "grid.y"), ((1, 65536, 1), "grid.y"),
     ((1, 1, 0), "grid.z"), ((1, 1, 65536), "grid.z"), ((1.0, 1, 1), "grid.x"), ((1, True, 1), "grid.y"),
     ((1, 1), "grid must be"), ("abc", "grid must be"), (5, "grid must be")],
)
def test_total_blocks_names_the_bad_dimension(grid, name):
    with pytest.raises(ValueError, match=name.replace(".", r"\.")):
        total_blocks(grid)


def test_virtual_block_examples_and_validation():
    assert virtual_block(0, (4, 3, 2)) == (0, 0, 0)
    assert virtual_block(5, (4, 3, 2)) == (1, 1, 0)
    assert virtual_block(23, (4, 3, 2)) == (3, 2, 1)
    with pytest.raises(ValueError, match="linear"):
        virtual_block(24, (4, 3, 2))
    with pytest.raises(ValueError, match="linear"):
        virtual_block(-1, (4, 3, 2))
    with pytest.raises(ValueError, match="grid.y"):
        virtual_block(0, (4, 0, 2))


small_grids = st.tuples(st.integers(1, 40), st.integers(1, 12), st.integers(1, 8))
large_grids = st.tuples(st.integers(1, MAX_GRID_X), st.integers(1, MAX_GRID_YZ), st.integers(1, MAX_GRID_YZ))


@settings(max_examples=150, deadline=None)
@given(grid=small_grids, atom_blocks=st.integers(1, 5000))
def test_atoms_cover_small_grids_exactly_once_in_order(grid, atom_blocks):
    total = total_blocks(grid)
    seen = [virtual_block(start + i, grid) for start, count in split_blocks(total, atom_blocks) for i in range(count)]
    # F order on (gx, gy, gz) is x fastest: exactly the launch order of the original grid
    expected = list(zip(*(a.tolist() for a in np.unravel_index(np.arange(total), grid, order="F"))))
    assert seen == expected
    assert len(set(seen)) == total


@settings(max_examples=300, deadline=None)
@given(grid=large_grids, n_atoms=st.integers(1, 3000), pick=st.lists(st.floats(0, 1), min_size=1, max_size=8))
def test_atoms_cover_large_grids_exactly_once_in_order(grid, n_atoms, pick):
    total = total_blocks(grid)
    atom_blocks = -(-total // n_atoms)
    atoms = split_blocks(total, atom_blocks)
    # contiguous, increasing, each nonempty, covering [0, total): by arithmetic, not enumeration
    assert atoms[0][0] == 0 and atoms[-1][0] + atoms[-1][1] == total
    assert all(s2 == s1 + c1 for (s1, c1), (s2, _) in zip(atoms, atoms[1:]))
    assert all(1 <= c <= atom_blocks for _, c in atoms)
    assert all(c == atom_blocks for _, c in atoms[:-1])
    # the first and last block of sampled atoms map to numpy's unravel_index, x fastest
    for p in pick:
        start, count = atoms[min(int(p * len(atoms)), len(atoms) - 1)]
        for linear in (start, start + count - 1):
            expected = tuple(int(v) for v in np.unravel_index(linear, grid, order="F"))
            assert virtual_block(linear, grid) == expected


@settings(max_examples=300, deadline=None)
@given(grid=large_grids, where=st.floats(0, 1))
def test_virtual_block_inverts_linearization(grid, where):
    total = total_blocks(grid)
    linear = min(int(where * total), total - 1)
    x, y, z = virtual_block(linear, grid)
    gx, gy, gz = grid
    assert 0 <= x < gx and 0 <= y < gy and 0 <= z < gz
    assert x + gx * (y + gy * z) == linear
    if linear + 1 < total:  # the next block is the next in x, wrapping into y, then z
        nx, ny, nz = virtual_block(linear + 1, grid)
        assert (nx, ny, nz) == ((x + 1, y, z) if x + 1 < gx else (0, y + 1, z) if y + 1 < gy else (0, 0, z + 1))
