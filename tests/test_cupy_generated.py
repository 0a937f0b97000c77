"""CPU tests of the seam for CuPy's own kernels (`lithos_atom.cupy_generated`).

CuPy's code generators (elementwise, reduction) run here without a device, and so does
CuPy's ``compile_with_cache``, the Cython function every generated kernel is compiled
through, up to the call of ``cupy.cuda.compiler._compile_module_with_cache``; only loading
the cubin needs a GPU, so the compile CuPy would run is replaced by a recording stub. What
reaches the seam is then compiled to PTX, rewritten, assembled by ptxas and linked, as it
would be on the GPU (tests/gpu/test_cupy_generated_gpu.py launches the real thing).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

cupy = pytest.importorskip("cupy")

from cupy._core import _carray, _kernel, _reduction, core  # noqa: E402

from lithos_atom import cupy_generated  # noqa: E402
from lithos_atom.compile import link_ptx  # noqa: E402
from lithos_atom.cupy_frontend import CupySource, rewrite_source  # noqa: E402
from tests.ptx_sources import ARCH, assemble  # noqa: E402

_NDARRAY, _INDEXER, _SCALAR = 1, 2, 3  # CuPy's _ArgKind
F32 = np.dtype("float32")


def _array(ndim: int = 1) -> object:
    return _kernel._ArgInfo(_NDARRAY, cupy.ndarray, F32, ndim, True, True)


def _indexer(ndim: int = 1) -> object:
    return _kernel._ArgInfo(_INDEXER, _carray.Indexer, None, ndim, True, True)


def _elementwise_code(name: str, operation: str) -> str:
    """The code CuPy generates for ``z = f(x, y)`` over float32 vectors (``a + b``, an ElementwiseKernel)."""
    params = (_kernel._get_param_info("T x, T y", True) + _kernel._get_param_info("T z", False)
              + _kernel._get_param_info("CIndexer _ind", False))
    return _kernel._get_elementwise_kernel_code((_array(), _array(), _array(), _indexer()),
                                                _kernel._TypeMap((("T", F32),)), params, operation, name, "")


def _reduction_code(name: str) -> str:
    """The code CuPy generates for a float32 sum over the last axis (``x.sum(axis=1)``)."""
    params = (_kernel._get_param_info("T in0", True) + _kernel._get_param_info("T out0", False)
              + _kernel._get_param_info("CIndexer _in_ind, CIndexer _out_ind", False)
              + _kernel._get_param_info("int32 _block_stride", True))
    arginfos = (_array(2), _array(1), _indexer(2), _indexer(1),
                _kernel._ArgInfo(_SCALAR, cupy._core._scalar.CScalar, np.dtype("int32"), 0, True, True))
    type_map = _kernel._TypeMap((("T", F32), ("type_in0_raw", F32), ("type_out0_raw", F32), ("IndexT", np.dtype("int32"))))
    return _reduction._create_reduction_function_code(
        name, 128, "float", params, arginfos, "0", "in0", "a + b", "out0 = a", type_map,
        "const type_in0_raw in0 = _raw_in0[_in_ind.get()];", "type_out0_raw &out0 = _raw_out0[_out_ind.get()];",
        "", ())


@pytest.fixture
def seam(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, tuple, dict]]:
    """The seam installed over a stub of CuPy's compile that records its calls."""
    calls: list[tuple[str, tuple, dict]] = []

    def compile_stub(source: str, options: tuple = (), **kwargs: object) -> object:
        calls.append((source, options, kwargs))
        if kwargs.get("to_ltoir"):
            return b"LTO-IR"
        return cupy.cuda.function.Module()  # not loaded: loading needs a device

    was_installed = cupy_generated.installed()
    cupy_generated.uninstall()
    monkeypatch.setattr(cupy.cuda.compiler, "_compile_module_with_cache", compile_stub)
    cupy_generated.install()
    assert cupy.cuda.compiler._compile_module_with_cache is not compile_stub
    yield calls
    cupy_generated.uninstall()
    assert cupy.cuda.compiler._compile_module_with_cache is compile_stub
    monkeypatch.undo()
    if was_installed:
        cupy_generated.install()


def _caught(seam_calls: list, code: str, name: str, **kwargs: object) -> CupySource:
    module = core.compile_with_cache(code, arch="90", **kwargs)  # CuPy's Cython entry point
    assert isinstance(module, cupy.cuda.function.Module) and hasattr(module, "lithos_source")
    source, _, _ = seam_calls[-1]
    assert module.lithos_source.code == source and name in source
    return dataclasses.replace(module.lithos_source, name=name)


@pytest.mark.parametrize("what", ["a + b", "ElementwiseKernel", "x.sum(axis=1)"])
def test_seam_catches_cupy_compiles_and_their_ptx_is_rewritten(seam, what):
    if what == "x.sum(axis=1)":
        name, code = "cupy_sum", _reduction_code("cupy_sum")
    else:
        name = "cupy_add" if what == "a + b" else "my_fma"
        code = _elementwise_code(name, "z = x + y" if what == "a + b" else "z = x * y + 1.0f")
    source = _caught(seam, code, name)
    assert any(o.startswith("-I") for o in source.options) and not source.cooperative
    rewritten = rewrite_source(source, "90")
    assert not isinstance(rewritten, str), rewritten
    result, entry = rewritten
    assert entry == name and result.entries[entry].atomized
    assemble(result.ptx)  # ptxas accepts the rewritten module
    assert link_ptx(result.ptx, ARCH, name=entry)


def test_grid_sync_kernels_are_caught_and_run_whole(seam):
    code = "#include <cooperative_groups.h>\nextern \"C\" __global__ void fused(float* x) {\n" \
           "  cooperative_groups::this_grid().sync(); x[blockIdx.x] = 1.0f; }\n"
    source = _caught(seam, code, "fused", enable_cooperative_groups=True)
    assert source.cooperative
    assert "cooperative" in rewrite_source(source, "90")


def test_seam_leaves_lto_ir_alone(seam):
    assert cupy.cuda.compiler._compile_module_with_cache("code", (), to_ltoir=True) == b"LTO-IR"


def test_source_of_compile_reads_cupys_arguments():
    source = cupy_generated.source_of_compile("code", ("-DCUPY_USE_JITIFY",), backend="nvcc",
                                              name_expressions=["k<1>"], enable_cooperative_groups=True)
    assert (source.backend, source.jitify, source.name_expressions, source.cooperative) == (
        "nvcc", True, ("k<1>",), True)
    assert source.unsupported_reason() is not None


def test_adopt_moves_the_module_handle():
    plain = cupy.cuda.function.Module()
    plain.ptr = 12345  # a handle the adopted module now owns (reset below: nothing was loaded)
    adopted = cupy_generated.adopt(plain, CupySource(code="", name=""))
    try:
        assert (adopted.ptr, plain.ptr) == (12345, 0)
        assert isinstance(adopted, cupy.cuda.function.Module)
    finally:
        adopted.ptr = 0
