"""Atoms: the block ranges one kernel launch is split into, issued one at a time.

A `LaunchPlan` is one intercepted launch (kernel, grid, block, shared memory, arguments),
split into `Atom`s that cover the linearized block index space ``[0, total_blocks)`` in
increasing order. Each atom can be issued onto any stream; the front end that built the
plan knows how to launch the rewritten kernel for a block range.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from lithos_atom.indexing import split_blocks

# issue_range(start, count, stream) launches blocks [start, start + count) of the plan.
IssueRange = Callable[[int, int, Any], None]


@dataclasses.dataclass(frozen=True)
class KernelKey:
    """What identifies a kernel launch shape for prediction and caching.

    Attributes
    ----------
    name : str
        Kernel (entry) name.
    grid, block : tuple of int
        The user's 3-D grid and block.
    shared_mem : int
        Dynamic shared memory in bytes.
    arg_shapes : tuple
        Shapes of array arguments (``()`` for scalars), so one kernel over different
        sizes is predicted separately.
    """

    name: str
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    shared_mem: int
    arg_shapes: tuple = ()


def arg_shapes(args: Any) -> tuple:
    """The `KernelKey.arg_shapes` of a launch's arguments: each argument's ``shape`` as a
    tuple of ints (``()`` for scalars and for objects without one), so the key hashes
    whatever the argument types (CuPy's own kernels pass indexers whose shape is a list)."""
    out = []
    for a in args:
        shape = getattr(a, "shape", ())
        try:
            out.append(tuple(int(d) for d in shape))
        except (TypeError, ValueError):  # not a sequence of ints: no shape to tell launches apart by
            out.append(())
    return tuple(out)


@dataclasses.dataclass(frozen=True)
class LaunchShape:
    """What a scheduler needs to time and predict an unsplit launch.

    Attributes
    ----------
    key : KernelKey
        The launch's shape.
    total_blocks : int
        Blocks in the whole grid.
    wave_blocks : int
        Blocks that fit on the whole device at once (occupancy x SMs); 0 if unknown.
    """

    key: KernelKey
    total_blocks: int
    wave_blocks: int


# launch(stream) runs one launch unsplit, as the user wrote it, on the given stream.
WholeLaunch = Callable[[Any], None]


@dataclasses.dataclass(frozen=True)
class Atom:
    """One contiguous range of a launch's blocks.

    Attributes
    ----------
    plan : LaunchPlan
        The launch this atom belongs to.
    index : int
        Position of the atom in the plan.
    start : int
        First linear block index.
    count : int
        Number of blocks.
    """

    plan: LaunchPlan
    index: int
    start: int
    count: int

    def issue(self, stream: Any) -> None:
        """Launch this atom's blocks on ``stream`` (asynchronously).

        Parameters
        ----------
        stream
            A CuPy stream, a Numba/cuda.core stream, or any object with ``__cuda_stream__``.
        """
        self.plan.issue_range(self.start, self.count, stream)


@dataclasses.dataclass
class LaunchPlan:
    """One kernel launch, split into atoms.

    Attributes
    ----------
    key : KernelKey
        The launch's shape.
    total_blocks : int
        Blocks in the whole grid.
    wave_blocks : int
        Blocks that fit on the whole device at once (occupancy x SMs); 0 if unknown.
    atom_blocks : int
        Blocks per atom (the last atom may be shorter).
    atoms : tuple of Atom
        The atoms, in increasing block order (made on access: atoms refer to their plan,
        and storing them would make every launch a reference cycle for the collector).
    atomized : bool
        False when the kernel runs whole (one unsplit launch of the original kernel).
    reason : str or None
        Why the kernel runs whole, when it does.
    """

    key: KernelKey
    total_blocks: int
    wave_blocks: int
    issue_range: IssueRange
    atom_blocks: int = 1
    atomized: bool = True
    reason: str | None = None
    finish: Callable[[], None] | None = None

    @classmethod
    def build(
        cls,
        key: KernelKey,
        total_blocks: int,
        atom_blocks: int,
        issue_range: IssueRange,
        *,
        wave_blocks: int = 0,
        finish: Callable[[], None] | None = None,
    ) -> LaunchPlan:
        """Split a launch into atoms of ``atom_blocks`` blocks (the last may be shorter)."""
        split_blocks(total_blocks, atom_blocks)  # validates both counts
        return cls(key=key, total_blocks=total_blocks, wave_blocks=wave_blocks, issue_range=issue_range,
                   atom_blocks=atom_blocks, finish=finish)

    @classmethod
    def whole(
        cls, key: KernelKey, total_blocks: int, launch_whole: Callable[[Any], None], reason: str,
        *, wave_blocks: int = 0,
    ) -> LaunchPlan:
        """A plan with a single atom that launches the original kernel unsplit
        (``wave_blocks`` as in `LaunchShape`, when the caller knows it)."""
        return cls(
            key=key,
            total_blocks=total_blocks,
            wave_blocks=wave_blocks,
            issue_range=lambda start, count, stream: launch_whole(stream),
            atom_blocks=total_blocks,
            atomized=False,
            reason=reason,
        )

    @property
    def num_atoms(self) -> int:
        """Number of atoms."""
        return -(-self.total_blocks // self.atom_blocks)

    @property
    def atoms(self) -> tuple[Atom, ...]:
        """The atoms, in increasing block order."""
        return tuple(Atom(self, i, start, count)
                     for i, (start, count) in enumerate(split_blocks(self.total_blocks, self.atom_blocks)))

    def issue_all(self, stream: Any) -> None:
        """Issue every atom on ``stream`` in order, then run the front end's completion step."""
        for atom in self.atoms:
            atom.issue(stream)
        self.complete()

    def complete(self) -> None:
        """Run the front end's step after the last atom is issued (Numba copies back host arrays)."""
        if self.finish is not None:
            self.finish()
