"""GPU tier: CuPy's own kernels (ufuncs, reductions, ElementwiseKernel, ReductionKernel, fuse,
cupyx.jit) and Numba ufuncs run as one-block atoms under the opt-in, bitwise identical to a
plain run, with every launch really split."""

from __future__ import annotations

import numpy as np
import pytest

from lithos_atom.bench.atom_cases import poison

pytestmark = pytest.mark.gpu

N = 50_003  # odd: the last atom is partial
ROWS, COLS = 97, 1031

cupy = pytest.importorskip("cupy")
from cupyx import jit  # noqa: E402

# Module-level, as users keep them: the first opt-in of a process forgets kernels CuPy
# loaded for module-level objects before it (`lithos_atom.cupy_generated.forget_loaded_kernels`).
FMA = cupy.ElementwiseKernel("float32 x, float32 y", "float32 z", "z = x * y + 1.0f", "lithos_test_fma")
L2 = cupy.ReductionKernel("float32 x", "float32 y", "x * x", "a + b", "y = sqrt(a)", "0", "lithos_test_l2")


@cupy.fuse()
def fused(x, y):
    return cupy.exp(x) * y + x


@jit.rawkernel()
def jit_scale(x, y, size):
    tid = jit.threadIdx.x + jit.blockIdx.x * jit.blockDim.x
    ntid = jit.gridDim.x * jit.blockDim.x
    for i in range(tid, size, ntid):
        y[i] = x[i] * 2.0 + tid


def _outputs(shape_by_name: dict) -> dict:
    outs = {name: cupy.empty(shape, np.float32) for name, shape in shape_by_name.items()}
    poison(outs, tuple(outs))
    return outs


def _cupy_code(seed: int) -> list:
    """Ordinary CuPy code with fresh random inputs and poisoned outputs; the results' bytes."""
    rng = np.random.default_rng(seed)
    x = cupy.asarray(rng.standard_normal(N, dtype=np.float32))
    y = cupy.asarray(rng.standard_normal(N, dtype=np.float32))
    m = cupy.asarray(rng.standard_normal((ROWS, COLS), dtype=np.float32))
    o = _outputs({"add": N, "exp": N, "fma": N, "fused": N, "jit": N, "sum1": ROWS, "sum0": COLS, "l2": ROWS})
    cupy.add(x, y, out=o["add"])
    cupy.exp(x, out=o["exp"])
    FMA(x, y, o["fma"])
    o["fused"][...] = fused(x, y)
    jit_scale((101,), (128,), (x, o["jit"], cupy.uint32(N)))
    m.sum(axis=1, out=o["sum1"])
    m.sum(axis=0, out=o["sum0"])
    L2(m, axis=1, out=o["l2"])
    cupy.cuda.get_current_stream().synchronize()
    return [cupy.asnumpy(v).view(np.uint8) for v in o.values()]


@pytest.mark.parametrize("accelerators", [[], ["cub"]], ids=["plain-reductions", "cub-block-reductions"])
def test_cupy_generated_kernels_as_one_block_atoms_bitwise_identical(accelerators, counting_atomizer):
    import lithos
    from cupy._core import _accelerator

    saved = (_accelerator.get_routine_accelerators(), _accelerator.get_reduction_accelerators())
    # the routine accelerator sends x.sum to CUB's device-wide library call, which is not compiled by CuPy
    _accelerator.set_routine_accelerators([])
    _accelerator.set_reduction_accelerators(accelerators)
    try:
        seed = int(np.random.SeedSequence().entropy % (2**32))
        ref = _cupy_code(seed)
        atomizer = counting_atomizer(atom_blocks=1, strict=True)
        with lithos.using_atomizer(atomizer):
            got = _cupy_code(seed)
    finally:
        _accelerator.set_routine_accelerators(saved[0])
        _accelerator.set_reduction_accelerators(saved[1])
    names = [p.key.name for p in atomizer.plans]
    for expected in ("cupy_add", "cupy_exp", "lithos_test_fma", "lithos_test_l2", "jit_scale", "fused"):
        assert any(expected in n for n in names), (expected, names)
    assert all(p.atomized for p in atomizer.plans), [(p.key.name, p.reason) for p in atomizer.plans]
    assert all(len(p.atoms) == p.total_blocks for p in atomizer.plans)
    assert sum(p.total_blocks > 1 for p in atomizer.plans) >= 6  # really split, not one-block launches
    for g, r in zip(got, ref):
        assert np.array_equal(g, r)


def test_raw_kernel_made_before_the_opt_in_is_caught_at_its_first_launch(counting_atomizer):
    import lithos

    k = cupy.RawKernel(r'''extern "C" __global__ void early(const float* x, float* y, int n) {
        int i = blockIdx.x * blockDim.x + threadIdx.x;
        if (i < n) y[i] = x[i] * 3.0f + blockIdx.x; }''', "early")  # constructed before, launched after
    x = cupy.arange(N, dtype=np.float32)
    ref, got = _outputs({"r": N})["r"], _outputs({"g": N})["g"]
    blocks = (N + 127) // 128
    atomizer = counting_atomizer(atom_blocks=1, strict=True)
    with lithos.using_atomizer(atomizer):
        k((blocks,), (128,), (x, got, np.int32(N)))
    k((blocks,), (128,), (x, ref, np.int32(N)))
    assert [p.key.name for p in atomizer.plans if p.key.name == "early"] == ["early"]
    assert all(len(p.atoms) == blocks for p in atomizer.plans if p.key.name == "early")
    assert np.array_equal(cupy.asnumpy(got).view(np.uint8), cupy.asnumpy(ref).view(np.uint8))


def test_numba_ufuncs_run_as_atoms_bitwise_identical(counting_atomizer):
    import lithos
    from lithos_atom._compat import import_numba_cuda

    cuda = import_numba_cuda()
    from numba import guvectorize, vectorize

    @vectorize(["float32(float32, float32)"], target="cuda")
    def vmul(a, b):
        return a * b + 0.5

    @guvectorize(["void(float32[:], float32[:], float32[:])"], "(n),(n)->(n)", target="cuda")
    def gu_axpy(a, b, out):
        for i in range(a.shape[0]):
            out[i] = 2.0 * a[i] + b[i]

    rng = np.random.default_rng()
    a = rng.standard_normal((4099, 33), dtype=np.float32)
    b = rng.standard_normal((4099, 33), dtype=np.float32)
    da, db = cuda.to_device(a), cuda.to_device(b)
    ref = (vmul(da, db).copy_to_host(), gu_axpy(da, db).copy_to_host())
    atomizer = counting_atomizer(atom_blocks=1, strict=True)
    with lithos.using_atomizer(atomizer):
        got = (vmul(da, db).copy_to_host(), gu_axpy(da, db).copy_to_host())
    assert len(atomizer.plans) >= 2 and all(p.atomized and len(p.atoms) > 1 for p in atomizer.plans), \
        [(p.key.name, p.reason, p.total_blocks) for p in atomizer.plans]
    for g, r in zip(got, ref):
        assert np.array_equal(g.view(np.uint8), r.view(np.uint8))
