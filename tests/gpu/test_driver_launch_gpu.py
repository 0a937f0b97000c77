"""GPU tier: a CuPy kernel launched through lithos' own driver call with its arguments
packed by lithos (`lithos_atom.driver_launch`, as atoms are), with the GIL held or
released, writes the same bytes as CuPy's own launch, for every argument type it packs;
fresh random inputs, outputs poisoned before each launch."""

from __future__ import annotations

import numpy as np
import pytest

from lithos_atom.bench.atom_cases import POISON

pytestmark = pytest.mark.gpu

SOURCE = r"""
extern "C" __global__ void mix(float* out, const float* x, int n, long long m, double a, float b,
                               bool flag, unsigned short h, signed char c, const float* maybe) {
    int i = blockIdx.x * blockDim.x + threadIdx.x + blockIdx.y * gridDim.x * blockDim.x;
    if (i >= n) return;
    float extra = maybe ? maybe[i] : -1.0f;
    out[i] = x[i] * (float)a + b + (flag ? (float)(m % 1000003) : (float)h) + (float)c + extra;
}
"""


@pytest.fixture
def launches(monkeypatch):
    """Count the launches that reach the driver through lithos."""
    from lithos_atom import driver_calls

    seen = []
    real = driver_calls.launch_kernel

    def counting(*a):
        seen.append(a)
        real(*a)

    monkeypatch.setattr(driver_calls, "launch_kernel", counting)
    return seen


@pytest.mark.parametrize("n_arg", ["np.int32", "python int"])
@pytest.mark.parametrize("with_pointer", [True, False])
@pytest.mark.parametrize("hold_gil", [True, False])
def test_packed_launch_matches_cupys_bitwise(launches, n_arg, with_pointer, hold_gil):
    import cupy

    from lithos_atom import driver_calls, driver_launch

    rng = np.random.default_rng()
    kernel = cupy.RawKernel(SOURCE, "mix")
    n = int(rng.integers(1000, 5000))
    x = cupy.asarray(rng.standard_normal(n, dtype=np.float32))
    maybe = cupy.asarray(rng.standard_normal(n, dtype=np.float32)) if with_pointer else None
    args = (None, x, np.int32(n) if n_arg == "np.int32" else n, int(rng.integers(-2**62, 2**62)),
            float(rng.standard_normal()), np.float32(rng.standard_normal()), bool(rng.integers(2)),
            np.uint16(rng.integers(0, 2**16)), np.int8(rng.integers(-128, 128)), maybe)
    grid, block = ((n + 255) // 256, 2), (128, 1)  # a 2-D grid, padded to 3-D by both paths
    stream = cupy.cuda.Stream(non_blocking=True)
    outs = []
    for use_lithos in (False, True):
        out = cupy.empty(n, np.float32)
        cupy.cuda.runtime.memset(out.data.ptr, POISON, out.nbytes)
        call = (out, *args[1:])
        if use_lithos:
            function = kernel.kernel.ptr
            packed = driver_launch.pack(function, call)
            assert packed is not None, "every argument here is one lithos packs"
            with driver_calls.gil_held(hold_gil):
                driver_launch.launch_packed(function, grid + (1,), block + (1,), 0, stream.ptr, packed)
        else:
            kernel(grid, block, call, stream=stream)
        stream.synchronize()
        outs.append(cupy.asnumpy(out).view(np.uint8))
    assert len(launches) == 1, "the launch must have gone through lithos' driver call"
    assert (outs[1].view(np.uint32) != int.from_bytes(bytes([POISON]) * 4, 'little')).all()  # all written
    np.testing.assert_array_equal(outs[0], outs[1])
