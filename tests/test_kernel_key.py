"""CPU tier: a launch's `KernelKey` hashes whatever its arguments are (the predictor keys
its estimates by it)."""

from __future__ import annotations

import numpy as np

from lithos_atom.plan import KernelKey, arg_shapes


class ListShaped:
    """Stands for CuPy's indexer arguments, whose ``shape`` is a list."""

    shape = [4, 8]


class Odd:
    shape = "not a shape"


def test_argument_shapes_are_tuples_of_ints_whatever_the_argument():
    shapes = arg_shapes((np.zeros((2, 3)), ListShaped(), 7, Odd(), np.float32(1.0)))
    assert shapes == ((2, 3), (4, 8), (), (), ())
    key = KernelKey("k", (1, 1, 1), (32, 1, 1), 0, shapes)
    assert {key: 1}[KernelKey("k", (1, 1, 1), (32, 1, 1), 0, arg_shapes((np.ones((2, 3)), ListShaped(), 1, Odd(),
                                                                         np.float32(2.0))))] == 1
