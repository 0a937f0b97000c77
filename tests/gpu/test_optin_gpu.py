"""GPU tier: the global opt-in runs unchanged user code through the atomizer."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from lithos_atom.bench import atom_cases
from lithos_atom.bench.atom_cases import poison

pytestmark = pytest.mark.gpu


def _user_code(rng):
    """Ordinary CuPy + Numba code, as a user writes it (kernels built inside)."""
    import cupy

    from lithos_atom._compat import import_numba_cuda

    cuda = import_numba_cuda()
    n = 400_003
    x = cupy.asarray(rng.standard_normal(n).astype(np.float32))
    y = cupy.asarray(rng.standard_normal(n).astype(np.float32))
    out1 = cupy.empty(n, np.float32)
    out2 = cupy.empty(n, np.float32)
    out3 = cupy.empty(n, np.float32)
    for o in (out1, out2, out3):
        poison({"o": o}, ("o",))
    k = cupy.RawKernel(atom_cases.SAXPY, "saxpy")
    blocks = (n + 255) // 256
    k((blocks,), (256,), (x, y, out1, np.float32(2.0), np.int32(n)))
    mod = cupy.RawModule(code=atom_cases.MULTI)
    mod.get_function("second")((blocks,), (256,), (x, out2, np.int32(n)))

    @cuda.jit
    def numba_axpy(a, b, out):
        i = cuda.grid(1)
        if i < a.shape[0]:
            out[i] = 3.0 * a[i] - b[i] + cuda.blockIdx.x

    numba_axpy[blocks, 256](x, y, out3)
    z = (out1 + out2) * out3  # CuPy built-in ops after the kernels see their results
    cuda.synchronize()
    return [cupy.asnumpy(a).view(np.uint8) for a in (out1, out2, out3, z)]


def test_global_opt_in_runs_unchanged_code_bitwise_identical(counting_atomizer):
    import cupy

    import lithos

    original_raw_kernel, original_raw_module = cupy.RawKernel, cupy.RawModule
    seed = np.random.SeedSequence().entropy % (2**32)
    ref = _user_code(np.random.default_rng(seed))

    atomizer = counting_atomizer(atom_blocks=101, strict=True)
    lithos.set_atomizer(atomizer)
    try:
        assert cupy.RawKernel is not original_raw_kernel
        got = _user_code(np.random.default_rng(seed))
    finally:
        lithos.set_atomizer(None)
    assert cupy.RawKernel is original_raw_kernel and cupy.RawModule is original_raw_module
    names = [p.key.name for p in atomizer.plans]
    # the three user kernels, then CuPy's own ufuncs (caught where CuPy compiles them)
    assert {"saxpy", "second"} <= set(names) and any("numba_axpy" in n for n in names), names
    assert any("cupy_add" in n for n in names) and any("cupy_multiply" in n for n in names), names
    assert all(p.atomized for p in atomizer.plans), [(p.key.name, p.reason) for p in atomizer.plans]
    assert all(len(p.atoms) > 1 for p in atomizer.plans if p.total_blocks > 101)
    for g, r in zip(got, ref):
        assert np.array_equal(g, r)


def test_using_atomizer_is_thread_local_and_restores():
    import threading

    import cupy

    import lithos

    original = cupy.RawKernel
    seen = {}

    def other_thread():
        seen["other"] = lithos.get_atomizer()

    atomizer = lithos.Atomizer(atom_blocks=64)
    with lithos.using_atomizer(atomizer):
        t = threading.Thread(target=other_thread)
        t.start()
        t.join()
        assert lithos.get_atomizer() is atomizer
        with lithos.using_atomizer(None):
            assert lithos.get_atomizer() is None
        assert lithos.get_atomizer() is atomizer
    assert seen["other"] is None
    assert lithos.get_atomizer() is None and cupy.RawKernel is original


def test_unsupported_kernel_runs_whole_with_one_warning_or_raises_in_strict():
    import cupy

    import lithos

    code = r'''
    #include <cooperative_groups.h>
    extern "C" __global__ void gsync(float* x, int n) {
        auto g = cooperative_groups::this_grid();
        int i = blockIdx.x * blockDim.x + threadIdx.x;
        if (i < n) x[i] += 1.0f;
        g.sync();
        if (i < n) x[i] *= 2.0f;
    }'''
    k = cupy.RawKernel(code, "gsync", enable_cooperative_groups=True)
    x = cupy.ones(1024, np.float32)
    a = lithos.atomize(k, atom_blocks=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        a((4,), (256,), (x, np.int32(1024)))
        a((4,), (256,), (x, np.int32(1024)))
    ours = [w for w in caught if issubclass(w.category, lithos.AtomizeWarning)]
    assert len(ours) == 1 and "gsync" in str(ours[0].message)
    assert float(x[0]) == 10.0  # ran whole, twice: ((1+1)*2+1)*2
    with pytest.raises(lithos.UnsupportedKernelError):
        lithos.atomize(k, atom_blocks=1, strict=True)((4,), (256,), (x, np.int32(1024)))
