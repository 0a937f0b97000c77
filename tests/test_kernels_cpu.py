"""CPU tier of the kernels package: no GPU needed.

- every CuPy kernel source compiles to PTX for compute_90 with NVRTC (the options CuPy
  uses) and every entry is one lithos can atomize; every Numba kernel compiles with
  ``numba.cuda.compile_ptx`` for cc 9.0;
- the registry is well formed and its cost formulas match hand counts;
- the NumPy references agree with simpler formulas on tiny inputs;
- argument validation raises clear errors before touching a device (CuPy arrays are
  faked over unowned memory: metadata only, never dereferenced);
- the launch plumbing of every CuPy op (grids, blocks, shared memory, argument packing)
  runs against fake ``cupy.RawKernel`` / ``cupy.RawModule`` classes looked up at call time.
"""

from __future__ import annotations

import inspect
import math
import os
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import kernels
from kernels import _compile, dtypes, registry
from kernels import attention as attention_mod
from kernels import conv as conv_mod
from kernels import elementwise as ew_mod
from kernels import gemm as gemm_mod
from kernels import norm as norm_mod
from kernels import ops
from kernels import optim as optim_mod
from kernels import reduce as reduce_mod
from tests.conftest import early, start_early

# ---- helpers -----------------------------------------------------------------------------


def fake(shape, dtype=np.float32, *, offset: int = 0):
    """A cupy.ndarray over unowned (never touched) memory: shape, dtype, strides, pointer."""
    import cupy

    dt = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dt.itemsize + offset + 64
    mem = cupy.cuda.UnownedMemory(1 << 30, nbytes, None, device_id=0)
    return cupy.ndarray(shape, dt, memptr=cupy.cuda.MemoryPointer(mem, offset))


class Launch:
    def __init__(self, name, grid, block, args, shared_mem, stream):
        self.name, self.grid, self.block, self.args = name, grid, block, args
        self.shared_mem, self.stream = shared_mem, stream


class FakeKernel:
    """Records launches instead of running them; mimics cupy.RawKernel's call signature."""

    instances: list = []
    log: list = []   # every launch of every fake kernel, in order

    def __init__(self, code, name, options=(), **kw):
        self.code, self.name, self.options = code, name, tuple(options)
        self.launches: list[Launch] = []
        FakeKernel.instances.append(self)

    def __call__(self, grid, block, args, *, shared_mem=0, stream=None):
        self.launches.append(Launch(self.name, grid, block, tuple(args), shared_mem, stream))
        FakeKernel.log.append(self.launches[-1])


class FakeModule:
    instances: list = []

    def __init__(self, *, code, options=(), name_expressions=()):
        self.code, self.options, self.name_expressions = code, tuple(options), list(name_expressions)
        self.functions = {}
        FakeModule.instances.append(self)

    def get_function(self, name):
        assert name in self.name_expressions, name
        return self.functions.setdefault(name, FakeKernel(self.code, name, self.options))


STREAM = object()  # stands for the cupy stream the ops resolve


def _fake_empty(shape, dtype, stream):
    return fake((shape,) if isinstance(shape, int) else tuple(shape), dtype)


@pytest.fixture
def fake_cupy(monkeypatch):
    """Swap cupy.RawKernel/RawModule for recorders; streams and allocation stay off the device."""
    import cupy

    FakeKernel.instances.clear()
    FakeKernel.log.clear()
    FakeModule.instances.clear()
    monkeypatch.setattr(cupy, "RawKernel", FakeKernel)
    monkeypatch.setattr(cupy, "RawModule", FakeModule)
    for mod in (gemm_mod, attention_mod, norm_mod, ew_mod, conv_mod, reduce_mod, optim_mod):
        if hasattr(mod, "as_cupy_stream"):
            monkeypatch.setattr(mod, "as_cupy_stream", lambda s: STREAM)
        if hasattr(mod, "empty"):
            monkeypatch.setattr(mod, "empty", _fake_empty)
    monkeypatch.setattr(_compile, "sm_count", lambda: 132)
    kernels.reset_cache()
    yield
    kernels.reset_cache()


def launches():
    return list(FakeKernel.log)


def assert_packable(args):
    """CuPy raw kernels take ndarrays and NumPy scalars (sized types, not Python ints)."""
    import cupy

    for a in args:
        assert isinstance(a, (cupy.ndarray, np.generic)), type(a)


# ---- compiling every kernel without a GPU --------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]
SOURCES = kernels.all_cupy_sources()


def test_sources_have_unique_keys_and_entries():
    keys = [s.key for s in SOURCES]
    assert len(keys) == len(set(keys))
    kinds = {s.kind for s in SOURCES}
    assert kinds == {"kernel", "module"}  # both RawKernel and RawModule are exercised
    assert any(s.kind == "module" and "<" in s.name_expressions[0] for s in SOURCES)  # templates


@pytest.mark.parametrize("src", SOURCES, ids=[s.key for s in SOURCES])
def test_cupy_source_compiles_to_ptx_and_is_atomizable(src):
    ptx, mapping = _compile.compile_to_ptx(src, "compute_90")
    for name in src.entry_names:
        assert f".entry {mapping[name]}(" in ptx, name
    assert "%cluster" not in ptx and "barrier.cluster" not in ptx
    try:
        from lithos_atom.ptx import rewrite_module
    except ImportError:  # kernels without lithos: the compile check alone
        return
    result = rewrite_module(ptx, skip_unsupported=True)
    refused = {n: e.reason for n, e in result.entries.items() if not e.atomized}
    assert not refused, refused
    assert set(result.entries) == set(mapping.values())


def test_every_registry_cupy_kernel_variant_has_a_source():
    names = {s.key for s in SOURCES}
    for tile in gemm_mod.SGEMM_TILES:
        for ta in "nt":
            for tb in "nt":
                assert f"sgemm_{tile}_{ta}{tb}" in names
    for kind in ("f32", "f16", "bf16"):
        for d in attention_mod.HEAD_DIMS:
            assert f"flash_attn_fwd_{kind}_d{d}" in names


def test_numba_kernels_compile_for_sm90():
    from kernels import numba_kernels
    from kernels._numba import cuda

    for name, (fn, sig) in numba_kernels.SIGNATURES.items():
        ptx, _ = cuda.compile_ptx(fn, sig, cc=(9, 0))
        assert ".entry" in ptx, name
        assert "f64" not in ptx.replace("%f64", ""), f"{name} computes in double precision"


def test_bench_cli_lists_cases_without_a_gpu():
    result = subprocess.run([sys.executable, "-m", "kernels.bench", "--list", "--size", "small"],
                            capture_output=True, text=True, check=True)
    assert len(result.stdout.splitlines()) == len(registry.CASES)
    assert "gemm_f16" in result.stdout


def test_import_needs_neither_gpu_nor_numba():
    code = ("import sys, kernels, kernels.ops, kernels.registry, kernels.workloads; "
            "assert 'numba' not in sys.modules, 'numba imported eagerly'")
    subprocess.run([sys.executable, "-c", code], check=True)


# ---- the lazy kernel cache --------------------------------------------------------------------


def test_kernels_are_built_lazily_through_the_current_cupy_classes(fake_cupy):
    import cupy

    src = gemm_mod.sgemm_source("64x64", False, True)
    k1 = _compile.raw_kernel(src)
    assert isinstance(k1, FakeKernel) and k1.name == src.name and k1.options == ("-std=c++17",)
    assert _compile.raw_kernel(src) is k1  # cached
    fn = _compile.module_function(norm_mod.NORM_SOURCE, "layernorm_fwd<__half>")
    assert isinstance(fn, FakeKernel)
    assert len(FakeModule.instances) == 1 and FakeModule.instances[0].name_expressions == list(
        norm_mod.NORM_SOURCE.name_expressions)
    _compile.module_function(norm_mod.NORM_SOURCE, "softmax_warp<float>")
    assert len(FakeModule.instances) == 1  # one module, several functions

    class Other(FakeKernel):
        pass

    cupy.RawKernel = Other  # e.g. lithos' opt-in switched on (fixture restores it)
    assert _compile.raw_kernel(src) is k1  # not rebuilt until the cache is reset
    kernels.reset_cache()
    assert isinstance(_compile.raw_kernel(src), Other)


def test_large_dynamic_shared_memory_raises_the_kernel_limit(fake_cupy):
    k = _compile.raw_kernel(attention_mod.attention_source("float32", 128),
                            max_dynamic_shared=attention_mod.shared_bytes(128))
    assert k.max_dynamic_shared_size_bytes == attention_mod.shared_bytes(128) == 78336
    k64 = _compile.raw_kernel(attention_mod.attention_source("float32", 64), max_dynamic_shared=43520)
    assert not hasattr(k64, "max_dynamic_shared_size_bytes")
    assert attention_mod.shared_bytes(64) == 43520 <= 48 * 1024


def test_unknown_name_expression_and_wrong_kinds_are_rejected():
    with pytest.raises(KeyError):
        _compile.module_function(norm_mod.NORM_SOURCE, "softmax_warp<double>")
    with pytest.raises(ValueError):
        _compile.raw_kernel(norm_mod.NORM_SOURCE)
    with pytest.raises(ValueError):
        _compile.KernelSource(key="x", code="", kind="kernel")
    with pytest.raises(TypeError, match="stream"):
        _compile.as_cupy_stream(12345)


# ---- launch plumbing of every op (fake kernels) -------------------------------------------


def test_sgemm_launch_configs(fake_cupy):
    a, b, c = fake((300, 130)), fake((130, 200)), fake((300, 200))
    ops.gemm(a, b, out=c)
    (l1,) = launches()
    assert l1.name == "sgemm_64x64_nn" and l1.grid == (4, 5) and l1.block == (256,) and l1.stream is STREAM
    assert_packable(l1.args)
    assert [int(x) for x in l1.args[3:9]] == [300, 200, 130, 130, 200, 200]
    big_a, big_b, big_c = fake((4096, 512)), fake((4096, 4096)), fake((512, 4096))
    ops.gemm(big_a, big_b, out=big_c, trans_a=True)  # (512x4096)^T... op(a) is 512 x 4096
    l2 = launches()[-1]
    assert l2.name == "sgemm_64x64_tn" and l2.grid == (64, 8)
    ops.gemm(fake((2048, 64)), fake((2048, 64)), out=fake((2048, 2048)), trans_b=True)
    l3 = launches()[-1]
    assert l3.name == "sgemm_128x128_nt" and l3.grid == (16, 16) and int(l3.args[5]) == 64
    ops.gemm(a, b, out=c, tile="128x128")
    assert launches()[-1].name == "sgemm_128x128_nn"


@pytest.mark.parametrize("kind,ctype", [("float16", "__half"), ("bfloat16", "__nv_bfloat16")])
def test_wmma_gemm_launch_config(fake_cupy, kind, ctype):
    dt = dtypes.numpy_dtype(kind)
    a, b = fake((200, 72), dt), fake((72, 136), dt)
    ops.gemm(a, b, out=fake((200, 136), dt))
    (l1,) = launches()
    assert l1.name == f"wmma_gemm<{ctype}, {ctype}>" and l1.grid == (2, 2) and l1.block == (256,)
    assert l1.shared_mem == gemm_mod.WMMA_SHARED_BYTES == 37888 <= 48 * 1024
    assert int(l1.args[-1]) == 1  # 16-byte path
    assert_packable(l1.args)
    ops.gemm(fake((77, 33), dt), fake((33, 50), dt), out=fake((77, 50), np.float32))
    l2 = launches()[-1]
    assert l2.name == f"wmma_gemm<{ctype}, float>" and int(l2.args[-1]) == 0  # K % 8 != 0: element path
    ops.gemm(fake((40, 64), dt), fake((96, 40), dt), trans_a=True, trans_b=True, out=fake((64, 96), dt))
    names = [x.name for x in launches()[-3:]]
    assert names == ["transpose_16b", "transpose_16b", f"wmma_gemm<{ctype}, {ctype}>"]


def test_attention_launch_config(fake_cupy):
    q = fake((2, 3, 77, 64), np.float16)
    ops.attention(q, q, q, causal=True, out=fake((2, 3, 77, 64), np.float16))
    (l1,) = launches()
    assert l1.name == "flash_attn_fwd_f16_d64" and l1.grid == (2, 3, 2) and l1.block == (256,)
    assert l1.shared_mem == 43520
    assert_packable(l1.args)
    assert [int(x) for x in l1.args[6:9]] == [3 * 77 * 64, 77 * 64, 64]  # q strides (elements)
    assert int(l1.args[-1]) == 1
    # heads split out of a fused (B, S, 3, H, D) projection: strided views
    qkv = fake((2, 50, 3, 4, 128), np.float32)
    qv, kv, vv = (qkv[:, :, i].transpose(0, 2, 1, 3) for i in range(3))
    out = fake((2, 50, 4, 128), np.float32).transpose(0, 2, 1, 3)
    ops.attention(qv, kv, vv, out=out)
    l2 = launches()[-1]
    assert l2.name == "flash_attn_fwd_f32_d128" and l2.grid == (1, 4, 2) and l2.shared_mem == 78336
    assert [int(x) for x in l2.args[6:9]] == [50 * 3 * 512, 128, 3 * 512]
    assert [int(x) for x in l2.args[15:18]] == [50 * 512, 128, 512]


def test_rowwise_launch_configs(fake_cupy):
    x = fake((37, 1000))
    ops.softmax(x, out=fake((37, 1000)))
    ops.softmax(fake((5, 3000), np.float16), out=fake((5, 3000), np.float16))
    w = fake((1000,))
    ops.layernorm(x, w, w, out=fake((37, 1000)))
    ops.layernorm(x, w, None, out=fake((37, 1000)))
    ops.rmsnorm(fake((4, 6, 1000), np.uint16), fake((1000,), np.uint16), out=fake((4, 6, 1000), np.uint16))
    ls = launches()
    assert [(x.name, x.grid, x.block) for x in ls] == [
        ("softmax_warp<float>", (5,), (256,)),
        ("softmax_block<__half>", (5,), (256,)),
        ("layernorm_fwd<float>", (37,), (256,)),
        ("layernorm_fwd<float>", (37,), (256,)),
        ("rmsnorm_fwd<__nv_bfloat16>", (24,), (256,)),
    ]
    assert int(ls[2].args[-1]) == 1 and int(ls[3].args[-1]) == 0
    for launch in ls:
        assert_packable(launch.args)
    assert norm_mod.row_threads(33) == 32 and norm_mod.row_threads(600) == 160 and norm_mod.row_threads(10**6) == 256


def test_elementwise_launch_configs(fake_cupy):
    x = fake((1000, 1001))
    ops.gelu(x, out=x)
    ops.silu(fake((77,), np.float16), out=fake((77,), np.float16))
    ops.gelu_backward(x, x, out=x)
    ops.mse_grad(x, x, out=x)
    ops.residual_add(x, x, bias=fake((1001,)), out=x)              # cols % 4 != 0: scalar path
    ops.residual_add(fake((8, 1024), np.float16), fake((8, 1024), np.float16), bias=fake((1024,), np.float16),
                     out=fake((8, 1024), np.float16))
    mis = fake((100,), offset=4)                                    # 4-byte offset: not 16-byte aligned
    ops.gelu(mis, out=fake((100,)))
    ls = launches()
    assert [(x.name, x.grid) for x in ls] == [
        ("gelu_fwd<float, 4>", (math.ceil(1001000 / 4 / 256),)),
        ("silu_fwd<__half, 8>", (1,)),
        ("gelu_bwd<float, 4>", (math.ceil(1001000 / 4 / 256),)),
        ("scaled_diff<float, 4>", (math.ceil(1001000 / 4 / 256),)),
        ("residual_add<float, 1>", (math.ceil(1001000 / 256),)),
        ("residual_add<__half, 8>", (4,)),
        ("gelu_fwd<float, 1>", (1,)),
    ]
    assert float(ls[3].args[-1]) == pytest.approx(2.0 / 1001000)
    for launch in ls:
        assert_packable(launch.args)


def test_conv_reduce_transpose_optim_launch_configs(fake_cupy):
    x, w = fake((2, 5, 11, 13)), fake((70, 5, 3, 3))
    ops.conv2d(x, w, fake((70,)), stride=2, padding=1, out=fake((2, 70, 6, 7)))
    (lc,) = launches()
    assert lc.name == "conv2d_nchw_igemm" and lc.grid == (math.ceil(2 * 6 * 7 / 64), 2) and lc.block == (256,)
    assert [int(v) for v in lc.args[4:]] == [2, 5, 11, 13, 70, 3, 3, 6, 7, 2, 2, 1, 1, 1, 1, 1]
    n = 5000 * 4096 + 3
    ops.reduce_sum(fake((n,)), out=fake(()))
    r = launches()[1:]
    assert [(v.name, v.grid) for v in r] == [("reduce_sum_f32", (5001,)), ("reduce_sum_f32", (2,)),
                                             ("reduce_sum_f32", (1,))]
    assert reduce_mod.pass_sizes(4096 * 4096) == [4096, 1]
    ops.transpose(fake((300, 77)), out=fake((77, 300)))
    assert launches()[-1].grid == (3, 10) and launches()[-1].block == (32, 8)
    p = fake((10001,))
    ops.sgd_step(p, p, 0.1)
    ops.adam_step(p, p, p, p, 1)
    assert [(v.name, v.grid) for v in launches()[-2:]] == [("sgd_step_f32", (10,)), ("adam_step_f32", (10,))]
    for launch in launches():
        assert_packable(launch.args)


# ---- argument validation (no device) ---------------------------------------------------------


def test_split_k_launches_one_sgemm_per_slice_then_the_ordered_sum(fake_cupy):
    a, b, c = fake((4096, 512)), fake((4096, 2048)), fake((512, 2048))   # op(a) = a^T: K = 4096
    ops.gemm(a, b, out=c, trans_a=True, split_k=2, alpha=0.5)
    *parts, total = launches()
    assert [p.name for p in parts] == ["sgemm_64x64_tn"] * 2 and total.name == "splitk_sum"
    for i, p in enumerate(parts):
        assert_packable(p.args)
        # K-slice i: its rows of a and b, the full leading dimensions, into workspace slice i
        assert p.args[0].data.ptr == a.data.ptr + i * 2048 * 512 * 4
        assert p.args[1].data.ptr == b.data.ptr + i * 2048 * 2048 * 4
        assert [int(x) for x in p.args[3:9]] == [512, 2048, 2048, 512, 2048, 2048] and float(p.args[9]) == 1.0
    ws = parts[0].args[2]
    assert parts[1].args[2].data.ptr == ws.data.ptr + 512 * 2048 * 4
    assert_packable(total.args)
    assert total.args[0].data.ptr == ws.data.ptr and total.args[1] is c
    assert [int(total.args[2]), int(total.args[3]), float(total.args[4])] == [512 * 2048, 2, 0.5]
    assert total.grid == (512 * 2048 // 256,)
    ops.gemm(fake((64, 300)), fake((80, 300)), out=fake((64, 80)), trans_b=True, split_k=3)   # op(a) = a: columns
    parts = launches()[-4:-1]
    assert [p.args[0].data.ptr - parts[0].args[0].data.ptr for p in parts] == [0, 100 * 4, 200 * 4]
    assert [p.args[1].data.ptr - parts[0].args[1].data.ptr for p in parts] == [0, 100 * 4, 200 * 4]
    assert [int(p.args[5]) for p in parts] == [100, 100, 100] and {int(p.args[6]) for p in parts} == {300}


@pytest.mark.parametrize("bad", [0, -1, 9, 2.0, True])
def test_split_k_out_of_range_names_the_field(bad):
    with pytest.raises(ValueError, match=r"split_k must be an int from 1 to K \(8\)"):
        ops.gemm(fake((4, 8)), fake((8, 3)), split_k=bad)


def test_split_k_is_float32_only():
    with pytest.raises(ValueError, match="split_k is float32 only"):
        ops.gemm(fake((4, 8), np.float16), fake((8, 3), np.float16), split_k=2)


def test_gemm_validation():
    a, b = fake((4, 8)), fake((8, 3))
    with pytest.raises(TypeError, match="a must be a cupy.ndarray"):
        ops.gemm(np.ones((4, 8), np.float32), b)
    with pytest.raises(ValueError, match="a must be 2-D"):
        ops.gemm(fake((2, 4, 8)), b)
    with pytest.raises(ValueError, match="inner dimensions"):
        ops.gemm(a, fake((7, 3)))
    with pytest.raises(TypeError, match="a has dtype float64"):
        ops.gemm(fake((4, 8), np.float64), b)
    with pytest.raises(TypeError, match="same dtype"):
        ops.gemm(a, fake((8, 3), np.float16))
    with pytest.raises(ValueError, match="out has shape"):
        ops.gemm(a, b, out=fake((4, 4)))
    with pytest.raises(TypeError, match="out must be float32"):
        ops.gemm(a, b, out=fake((4, 3), np.float16))
    with pytest.raises(ValueError, match="b must be C-contiguous"):
        ops.gemm(a, fake((3, 8)).T)
    with pytest.raises(ValueError, match="tile"):
        ops.gemm(a, b, tile="32x32")
    with pytest.raises(ValueError, match="empty"):
        ops.gemm(fake((0, 8)), b)
    with pytest.raises(TypeError, match="float32"):
        ops.gemm_numba(fake((4, 8), np.float16), fake((8, 3), np.float16))
    with pytest.raises(TypeError, match="x has dtype float64"):
        ops.transpose(fake((3, 3), np.float64))


def test_attention_validation():
    q = fake((2, 3, 10, 64), np.float16)
    with pytest.raises(ValueError, match="head_dim 32"):
        ops.attention(fake((2, 3, 10, 32)), fake((2, 3, 10, 32)), fake((2, 3, 10, 32)))
    with pytest.raises(ValueError, match="k has shape"):
        ops.attention(q, fake((2, 4, 10, 64), np.float16), q)
    with pytest.raises(ValueError, match="v has shape"):
        ops.attention(q, q, fake((2, 3, 9, 64), np.float16))
    with pytest.raises(TypeError, match="k has dtype"):
        ops.attention(q, fake((2, 3, 10, 64)), q)
    with pytest.raises(ValueError, match="causal"):
        ops.attention(q, fake((2, 3, 12, 64), np.float16), fake((2, 3, 12, 64), np.float16), causal=True)
    with pytest.raises(TypeError, match="out has dtype"):
        ops.attention(q, q, q, out=fake((2, 3, 10, 64)))
    with pytest.raises(ValueError, match="q must be contiguous in its last"):
        ops.attention(fake((2, 3, 64, 10), np.float16).transpose(0, 1, 3, 2), q, q)
    with pytest.raises(ValueError, match="q must be 4-D"):
        ops.attention(fake((3, 10, 64), np.float16), q, q)


def test_norm_and_elementwise_validation():
    x = fake((4, 16))
    with pytest.raises(ValueError, match="weight has 8 elements"):
        ops.layernorm(x, fake((8,)))
    with pytest.raises(TypeError, match="bias has dtype float16"):
        ops.layernorm(x, fake((16,)), fake((16,), np.float16))
    with pytest.raises(TypeError, match="x has dtype int32"):
        ops.softmax(fake((4, 16), np.int32))
    with pytest.raises(ValueError, match="out has shape"):
        ops.rmsnorm(x, fake((16,)), out=fake((4, 15)))
    with pytest.raises(ValueError, match="residual has shape"):
        ops.residual_add(x, fake((4, 15)))
    with pytest.raises(ValueError, match="bias has 15 elements"):
        ops.residual_add(x, x, bias=fake((15,)))
    with pytest.raises(TypeError, match="grad_out has dtype"):
        ops.gelu_backward(x, fake((4, 16), np.float16))
    with pytest.raises(ValueError, match="x must be C-contiguous"):
        ops.gelu(fake((16, 4)).T)
    with pytest.raises(TypeError, match="x has dtype float16"):
        ops.softmax_numba(fake((4, 16), np.float16))


def test_conv_reduce_optim_validation():
    x = fake((2, 3, 8, 8))
    with pytest.raises(ValueError, match="w has 4 input channels"):
        ops.conv2d(x, fake((5, 4, 3, 3)))
    with pytest.raises(ValueError, match="does not fit"):
        ops.conv2d(x, fake((5, 3, 9, 9)))
    with pytest.raises(ValueError, match="stride"):
        ops.conv2d(x, fake((5, 3, 3, 3)), stride=0)
    with pytest.raises(TypeError, match="padding"):
        ops.conv2d(x, fake((5, 3, 3, 3)), padding=(1, 2, 3))
    with pytest.raises(ValueError, match="bias has 4 elements"):
        ops.conv2d(x, fake((5, 3, 3, 3)), bias=fake((4,)))
    with pytest.raises(ValueError, match="out has shape"):
        ops.conv2d(x, fake((5, 3, 3, 3)), padding=1, out=fake((2, 5, 6, 6)))
    with pytest.raises(TypeError, match="x has dtype float16"):
        ops.reduce_sum(fake((10,), np.float16))
    with pytest.raises(ValueError, match="out has shape"):
        ops.reduce_max(fake((10,)), out=fake((1,)))
    p = fake((10,))
    with pytest.raises(ValueError, match="step must be >= 1"):
        ops.adam_step(p, p, p, p, 0)
    with pytest.raises(ValueError, match="grad has shape"):
        ops.sgd_step(p, fake((11,)), 0.1)


def test_conv_output_shape():
    assert conv_mod.conv2d_output_shape((2, 3, 11, 13), (7, 3, 3, 3), 1, 1, 1) == (2, 7, 11, 13)
    assert conv_mod.conv2d_output_shape((1, 1, 17, 15), (9, 1, 5, 3), 2, 2, 2) == (1, 9, 7, 8)


# ---- registry ----------------------------------------------------------------------------------


def test_registry_is_well_formed():
    names = [c.name for c in registry.CASES]
    assert len(names) == len(set(names))
    ops_names = set(ops.__all__)
    for c in registry.CASES:
        assert c.frontend in registry.FRONTENDS
        assert c.bound in registry.PEAKS
        assert c.dtype in dtypes.CTYPE
        assert c.op in ops_names, c.op
        assert set(c.sizes) == set(registry.SIZES)
        assert callable(c.build) and callable(c.make)
        assert registry.get_case(c.name) is c
        small_flops, small_bytes = c.cost(c.sizes["small"])
        bench_flops, bench_bytes = c.cost(c.sizes["bench"])
        assert small_bytes > 0 and small_flops >= 0 and bench_bytes > small_bytes
        assert small_bytes < 16 * 2**20, f"{c.name}: 'small' should be quick"
        # 'bench' fills the GPU: at a plausible 25-90% of the peak it runs roughly 0.3-50 ms.
        rate = registry.PEAKS[c.bound]
        ideal_s = (bench_bytes if c.bound == "memory" else bench_flops) / rate
        assert 0.3e-3 <= ideal_s / 0.9 and ideal_s / 0.25 <= 50e-3, (c.name, ideal_s)
    assert {c.frontend for c in registry.CASES} == {"cupy", "numba"}
    assert set(registry.case_names("numba")) == {"gemm_f32_numba", "softmax_f32_numba", "gelu_f32_numba"}
    with pytest.raises(KeyError, match="no kernel case"):
        registry.get_case("nope")


def test_registry_cost_formulas():
    assert registry.gemm_cost(dict(kind="float16", M=2, N=3, K=4)) == (48.0, (8 + 12) * 2 + 6 * 2)
    assert registry.gemm_cost(dict(kind="float16", out="float32", M=2, N=3, K=4))[1] == (8 + 12) * 2 + 6 * 4
    assert registry.attention_flops(1, 1, 4, 4, 64, False) == 4 * 64 * 16
    assert registry.attention_flops(1, 1, 4, 4, 64, True) == 4 * 64 * 10
    cost = registry.attention_cost(dict(kind="float32", B=1, H=2, Sq=3, Sk=5, D=64, causal=False))
    assert cost[1] == 2 * 2 * 8 * 64 * 4
    assert registry.conv_cost(dict(N=1, C=2, H=4, W=4, K=3, R=3, S=3, stride=1, pad=1, dil=1)) == (
        2.0 * 3 * 16 * 2 * 9, 4.0 * (32 + 54 + 48))
    assert registry.transpose_cost(dict(kind="float16", R=3, C=5)) == (0.0, 60.0)
    prep = registry.Prepared(lambda s=None: None, (), (), lambda: (), 0, 0, 2e9, 3e9, {})
    got = registry.get_case("gemm_f32").achieved(prep, 1e-3)
    assert got["tflops"] == pytest.approx(2.0) and got["fraction_of_peak"] == pytest.approx(2e12 / 60e12)
    got = registry.get_case("gelu_f32").achieved(prep, 1e-3)
    assert got["fraction_of_peak"] == pytest.approx(1.0)


def test_check_reports_unwritten_and_wrong_elements(monkeypatch):
    monkeypatch.setattr(registry, "host", lambda a: np.asarray(a, np.float64))
    good = np.array([1.0, 2.0])
    prep = registry.Prepared(None, (good,), (), lambda: (np.array([1.0, 2.0]),), 1e-6, 1e-6, 0, 0, {})
    registry.check(prep)
    prep.outputs = (np.array([1.0, np.nan]),)
    with pytest.raises(AssertionError, match="not finite"):
        registry.check(prep)
    prep.outputs = (np.array([1.0, 2.1]),)
    with pytest.raises(AssertionError, match="out of tolerance"):
        registry.check(prep)


# ---- references vs simpler formulas --------------------------------------------------------


def test_reference_gemm():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((3, 4)), rng.standard_normal((4, 2))
    loops = np.array([[sum(a[i, k] * b[k, j] for k in range(4)) for j in range(2)] for i in range(3)])
    np.testing.assert_allclose(ops.reference_gemm(a, b), loops)
    np.testing.assert_allclose(ops.reference_gemm(a.T.copy(), b.T.copy(), trans_a=True, trans_b=True, alpha=2.0),
                               2 * loops)
    bits_a, bits_b = dtypes.to_bf16_bits(a), dtypes.to_bf16_bits(b)
    np.testing.assert_allclose(ops.reference_gemm(bits_a, bits_b), loops, rtol=3e-2, atol=3e-2)


def test_reference_attention_matches_loops():
    rng = np.random.default_rng(2)
    B, H, S, D = 1, 2, 5, 64
    q, k, v = (rng.standard_normal((B, H, S, D)) for _ in range(3))
    for causal in (False, True):
        want = np.zeros((B, H, S, D))
        for h in range(H):
            for i in range(S):
                keys = range(i + 1) if causal else range(S)
                s = [float(q[0, h, i] @ k[0, h, j]) / math.sqrt(D) for j in keys]
                m = max(s)
                p = [math.exp(x - m) for x in s]
                want[0, h, i] = sum(pj * v[0, h, j] for pj, j in zip(p, keys)) / sum(p)
        np.testing.assert_allclose(ops.reference_attention(q, k, v, causal=causal), want, rtol=1e-12, atol=1e-12)
    assert np.allclose(ops.reference_attention(q, k, v, causal=True)[0, :, 0], v[0, :, 0])


def test_reference_softmax_and_norms():
    x = np.array([[1.0, 2.0, 3.0], [1000.0, 1000.0, 1000.0]])
    sm = ops.reference_softmax(x)
    np.testing.assert_allclose(sm[0], np.exp([1, 2, 3]) / np.exp([1, 2, 3]).sum())
    np.testing.assert_allclose(sm[1], [1 / 3] * 3)
    rng = np.random.default_rng(3)
    y = rng.standard_normal((4, 50)) * 3 + 2
    ln = ops.reference_layernorm(y, np.ones(50), np.zeros(50), eps=0.0)
    np.testing.assert_allclose(ln.mean(axis=1), 0, atol=1e-12)
    np.testing.assert_allclose(ln.std(axis=1), 1, atol=1e-12)
    w, b = rng.standard_normal(50), rng.standard_normal(50)
    row = y[1]
    want = (row - row.mean()) / math.sqrt(row.var() + 1e-5) * w + b
    np.testing.assert_allclose(ops.reference_layernorm(y, w, b)[1], want)
    np.testing.assert_allclose(ops.reference_rmsnorm(y, w, 1e-6)[2], y[2] / math.sqrt(np.mean(y[2] ** 2) + 1e-6) * w)
    half = y.astype(np.float16)
    np.testing.assert_allclose(ops.reference_softmax(half), ops.reference_softmax(half.astype(np.float64)))


def test_reference_elementwise():
    x = np.linspace(-6, 6, 101)
    exact_gelu = np.array([0.5 * t * (1 + math.erf(t / math.sqrt(2))) for t in x])
    np.testing.assert_allclose(ops.reference_gelu(x), exact_gelu, atol=1e-3)  # tanh approximation
    assert ops.reference_gelu(np.array([0.0]))[0] == 0.0
    np.testing.assert_allclose(ops.reference_silu(x), x / (1 + np.exp(-x)))
    h = 1e-6
    numeric = (ops.reference_gelu(x + h) - ops.reference_gelu(x - h)) / (2 * h)
    np.testing.assert_allclose(ops.reference_gelu_backward(x, np.ones_like(x)), numeric, atol=1e-8)
    np.testing.assert_allclose(ops.reference_gelu_backward(x, 3 * np.ones_like(x)), 3 * numeric, atol=1e-8)
    np.testing.assert_allclose(ops.reference_residual_add(np.ones((2, 3)), 2 * np.ones((2, 3)), np.arange(3.0)),
                               [[3, 4, 5], [3, 4, 5]])
    p, t = np.array([1.0, 2.0, 4.0]), np.array([0.0, 2.0, 1.0])
    loss = lambda v: np.mean((v - t) ** 2)  # noqa: E731
    grad = np.array([(loss(p + h * e) - loss(p - h * e)) / (2 * h) for e in np.eye(3)])
    np.testing.assert_allclose(ops.reference_mse_grad(p, t), grad, atol=1e-8)


def test_reference_conv2d_matches_loops():
    rng = np.random.default_rng(4)
    x, w, b = rng.standard_normal((2, 3, 7, 6)), rng.standard_normal((4, 3, 3, 2)), rng.standard_normal(4)
    stride, pad, dil = (2, 1), (1, 2), (2, 1)
    N, K, P, Q = conv_mod.conv2d_output_shape(x.shape, w.shape, stride, pad, dil)
    want = np.zeros((N, K, P, Q))
    for n in range(N):
        for k in range(K):
            for p in range(P):
                for q in range(Q):
                    acc = b[k]
                    for c in range(3):
                        for r in range(3):
                            for s in range(2):
                                hh, ww = p * stride[0] - pad[0] + r * dil[0], q * stride[1] - pad[1] + s * dil[1]
                                if 0 <= hh < 7 and 0 <= ww < 6:
                                    acc += x[n, c, hh, ww] * w[k, c, r, s]
                    want[n, k, p, q] = acc
    np.testing.assert_allclose(ops.reference_conv2d(x, w, b, stride, pad, dil), want, atol=1e-12)


def test_reference_reductions_and_optimizers():
    x = np.array([1.5, -2.0, 3.25], np.float32)
    assert float(ops.reference_sum(x)) == 2.75 and float(ops.reference_max(x)) == 3.25
    p, g, m, v = np.array([1.0]), np.array([0.5]), np.array([0.1]), np.array([0.2])
    m1 = 0.9 * 0.1 + 0.1 * 0.5
    v1 = 0.999 * 0.2 + 0.001 * 0.25
    p1 = 1.0 - 1e-2 * (m1 / (1 - 0.9**2)) / (math.sqrt(v1 / (1 - 0.999**2)) + 1e-8)
    got = ops.reference_adam(p, g, m, v, 2, lr=1e-2)
    np.testing.assert_allclose([got[0][0], got[1][0], got[2][0]], [p1, m1, v1])
    np.testing.assert_allclose(ops.reference_sgd(p, g, 0.1, 0.01), [1.0 - 0.1 * (0.5 + 0.01)])


def test_bfloat16_bits():
    vals = np.array([1.0, -2.5, 3.140625, 1e-3, 65504.0, np.inf], np.float32)
    bits = dtypes.to_bf16_bits(vals)
    assert bits.dtype == np.uint16 and bits[0] == 0x3F80 and bits[1] == 0xC020
    np.testing.assert_allclose(dtypes.from_bf16_bits(bits)[:5], vals[:5], rtol=2**-8)
    assert np.isinf(dtypes.from_bf16_bits(bits)[5])
    # ties round to even: 1 + 2**-8 is halfway between 1 and 1 + 2**-7
    assert dtypes.to_bf16_bits(np.array([1 + 2**-8], np.float32))[0] == 0x3F80
    assert dtypes.to_bf16_bits(np.array([1 + 3 * 2**-8], np.float32))[0] == 0x3F82
    assert np.isnan(dtypes.from_bf16_bits(dtypes.to_bf16_bits(np.array([np.nan], np.float32))))[0]
    assert dtypes.storage_kind(np.uint16) == "bfloat16" and dtypes.storage_kind(np.float64) is None
    np.testing.assert_array_equal(dtypes.to_float64(bits[:2]), [1.0, -2.5])


# ---- workloads (configuration only) ----------------------------------------------------------


def test_workload_configs():
    from kernels import workloads

    with pytest.raises(ValueError, match="64 or 128"):
        workloads.DecoderConfig(d_model=1000, n_heads=10)
    with pytest.raises(ValueError, match="dtype"):
        workloads.DecoderConfig(dtype="float64")
    with pytest.raises(ValueError, match="optimizer"):
        workloads.MLPConfig(optimizer="lamb")
    for bad in (0, 2048.0, True):
        with pytest.raises(ValueError, match="MLPConfig.gemm_max_k must be None or an int >= 1"):
            workloads.MLPConfig(gemm_max_k=bad)
    assert [workloads.MLPConfig(gemm_max_k=2048).split_k(k) for k in (2048, 2049, 4096, 8192)] == [1, 2, 2, 4]
    assert workloads.MLPConfig().split_k(8192) == 1
    c = workloads.DecoderConfig()
    assert c.head_dim == 64 and c.flops_per_token() == 2 * 4 * (4 * 1024**2 + 8 * 1024**2)
    m = workloads.MLPConfig(d_model=2, hidden=3, batch=5, n_layers=2)
    assert m.flops_per_step() == 11 * 2 * 5 * 2 * 3
    s = workloads.latency_summary([1.0, 2.0, 3.0, 4.0])
    assert s["count"] == 4 and s["p50"] == 2.5 and s["max"] == 4.0
    assert workloads.latency_summary([]) == {"count": 0}


def test_run_steps_synchronizes_after_every_step_and_needs_one_bound():
    from kernels import workloads

    class Stream:
        def __init__(self) -> None:
            self.log: list[str] = []

        def synchronize(self) -> None:
            self.log.append("sync")

    s = Stream()
    n, secs = workloads._run_steps(lambda st: st.log.append("step"), s, 3, None)
    assert n == 3 and secs >= 0 and s.log == ["step", "sync"] * 3
    n, secs = workloads._run_steps(lambda st: st.log.append("step"), Stream(), None, 0.01)
    assert n >= 1 and secs >= 0.01
    for iters, duration in ((None, None), (2, 1.0)):
        with pytest.raises(ValueError, match="exactly one of iters and duration_s"):
            workloads._run_steps(lambda st: None, Stream(), iters, duration)


# ---- documentation ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", [n for n in ops.__all__ if not n.startswith("reference_")])
def test_public_ops_have_numpydoc_and_a_stream_argument(name):
    fn = getattr(ops, name)
    doc = inspect.getdoc(fn) or ""
    assert "Parameters\n----------" in doc and "Returns\n-------" in doc, name
    params = inspect.signature(fn).parameters
    assert "stream" in params and params["stream"].default is None
    assert params["stream"].kind is inspect.Parameter.KEYWORD_ONLY


# ---- the kernels themselves, emulated on the CPU -------------------------------------------
#
# kernels._emulator compiles each CUDA source as C++ (g++) and runs every thread of a block
# as an OS thread; the op functions run unchanged on CuPy arrays that view host memory.

def _emulator():
    from kernels import _emulator

    if not _emulator.available():
        pytest.skip("no g++ on PATH for the CPU emulation of the CUDA kernels")
    return _emulator


def _start_builds(folder: Path) -> list[Future] | None:
    """Compile every kernel source for the host, in parallel, without waiting (None: no g++)."""
    from kernels import _emulator

    if not _emulator.available():
        return None
    pool = ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2))
    builds = [pool.submit(_emulator.build, s.code, s.entry_names) for s in SOURCES]
    pool.shutdown(wait=False)
    return builds


start_early("emulator", "emulator_built", _start_builds)  # g++ runs beside the session's other tests


@pytest.fixture(scope="session")
def emulator_built(tmp_path_factory: pytest.TempPathFactory):
    """Every kernel source compiled for the host, once per session (started with it)."""
    _, builds = early("emulator", tmp_path_factory)
    emu = _emulator()
    for build in builds:
        build.result()
    return emu


@pytest.fixture
def emu(emulator_built, monkeypatch):
    import cupy

    from kernels import workloads

    monkeypatch.setattr(cupy, "RawKernel", emulator_built.EmulatedRawKernel)
    monkeypatch.setattr(cupy, "RawModule", emulator_built.EmulatedRawModule)
    for mod in (gemm_mod, attention_mod, norm_mod, ew_mod, conv_mod, reduce_mod, optim_mod, workloads):
        monkeypatch.setattr(mod, "as_cupy_stream", lambda s: None)
        if hasattr(mod, "empty"):
            monkeypatch.setattr(mod, "empty", emulator_built.empty)
    monkeypatch.setattr(_compile, "sm_count", lambda: 132)
    kernels.reset_cache()
    yield emulator_built
    kernels.reset_cache()


def _rand(rng, shape, kind="float32", scale=1.0, shift=0.0):
    x = (rng.standard_normal(shape) * scale + shift).astype(np.float32)
    return dtypes.to_storage(x, kind)


def assert_close(got, ref, rtol, atol, what=""):
    got = dtypes.to_float64(np.asarray(got))
    assert got.shape == np.shape(ref), what
    assert np.isfinite(got).all(), f"{what}: {int((~np.isfinite(got)).sum())} elements unwritten or not finite"
    err = np.abs(got - ref)
    bad = err > atol + rtol * np.abs(ref)
    assert not bad.any(), f"{what}: {int(bad.sum())} of {got.size} out of tolerance, max error {err.max():.3g}"


def _tol(kind, f32=(2e-5, 2e-6)):
    u = dtypes.unit_roundoff(kind)
    return f32 if kind == "float32" else (4 * u, 0.4 * u)


@pytest.mark.parametrize("tile", sorted(gemm_mod.SGEMM_TILES))
@pytest.mark.parametrize("ta,tb", [(False, False), (False, True), (True, False), (True, True)])
def test_emulated_sgemm(emu, tile, ta, tb):
    rng = np.random.default_rng(10)
    M, N, K = 130, 77, 45
    a = _rand(rng, (K, M) if ta else (M, K))
    b = _rand(rng, (N, K) if tb else (K, N))
    c = ops.gemm(emu.host_array(a), emu.host_array(b), trans_a=ta, trans_b=tb, tile=tile, alpha=0.5)
    assert_close(emu.to_numpy(c), ops.reference_gemm(a, b, trans_a=ta, trans_b=tb, alpha=0.5), 1e-5, 1e-5)


@pytest.mark.parametrize("ta,tb", [(False, False), (False, True), (True, False), (True, True)])
@pytest.mark.parametrize("split_k", [2, 3])
def test_emulated_split_k_sgemm_sums_the_slices_in_order(emu, ta, tb, split_k):
    rng = np.random.default_rng(13)
    M, N, K = 70, 45, 37   # K-slices of 12-19: edges in every slice
    a = _rand(rng, (K, M) if ta else (M, K))
    b = _rand(rng, (N, K) if tb else (K, N))
    out = emu.host_array(np.full((M, N), np.nan, np.float32))   # poisoned: every element must be written
    ops.gemm(emu.host_array(a), emu.host_array(b), out=out, trans_a=ta, trans_b=tb, tile="64x64", alpha=0.5,
             split_k=split_k)
    got = emu.to_numpy(out)
    assert_close(got, ops.reference_gemm(a, b, trans_a=ta, trans_b=tb, alpha=0.5), 1e-5, 1e-5)
    # The same sum as the slices' own products added in slice order, bit for bit.
    bounds = [(i * K // split_k, (i + 1) * K // split_k) for i in range(split_k)]
    parts = []
    for k0, k1 in bounds:
        a_k = a[k0:k1, :] if ta else a[:, k0:k1]
        b_k = b[:, k0:k1] if tb else b[k0:k1, :]
        parts.append(emu.to_numpy(ops.gemm(emu.host_array(np.ascontiguousarray(a_k)),
                                           emu.host_array(np.ascontiguousarray(b_k)),
                                           trans_a=ta, trans_b=tb, tile="64x64")))
    total = parts[0]
    for p in parts[1:]:
        total = total + p
    assert np.array_equal(got, np.float32(0.5) * total)


@pytest.mark.parametrize("kind", ["float16", "bfloat16"])
@pytest.mark.parametrize("M,N,K,out_kind", [(200, 136, 72, None), (77, 50, 33, None), (130, 264, 96, "float32")])
def test_emulated_wmma_gemm(emu, kind, M, N, K, out_kind):
    rng = np.random.default_rng(11)
    a, b = _rand(rng, (M, K), kind), _rand(rng, (K, N), kind)
    out_kind = out_kind or kind
    out = emu.empty((M, N), dtypes.numpy_dtype(out_kind))
    ops.gemm(emu.host_array(a), emu.host_array(b), out=out)
    u = dtypes.unit_roundoff(out_kind)
    rtol = 4 * u if out_kind != "float32" else 1e-5
    assert_close(emu.to_numpy(out), ops.reference_gemm(a, b), rtol, (4 * u + 1e-5) * math.sqrt(K), kind)
    a2, b2 = _rand(rng, (40, 64), kind), _rand(rng, (96, 40), kind)
    c2 = ops.gemm(emu.host_array(a2), emu.host_array(b2), trans_a=True, trans_b=True)
    u = dtypes.unit_roundoff(kind)
    assert_close(emu.to_numpy(c2), ops.reference_gemm(a2, b2, trans_a=True, trans_b=True), 4 * u, 4 * u * 8, "tt")


def test_emulated_transpose(emu):
    rng = np.random.default_rng(12)
    for kind, shape in (("float32", (300, 77)), ("float16", (33, 70)), ("bfloat16", (5, 3))):
        x = _rand(rng, shape, kind)
        got = emu.to_numpy(ops.transpose(emu.host_array(x)))
        assert np.array_equal(got, x.T), kind


ATTENTION_CASES = [
    ("float32", 64, False, (2, 3, 77, 77)),
    ("float32", 64, False, (1, 2, 70, 45)),
    ("float32", 128, True, (1, 2, 100, 100)),
    ("float16", 128, False, (1, 1, 100, 100)),
    ("float16", 64, True, (2, 2, 130, 130)),
    ("bfloat16", 64, True, (1, 3, 65, 65)),
]


@pytest.mark.parametrize("kind,D,causal,shape", ATTENTION_CASES)
def test_emulated_attention(emu, kind, D, causal, shape):
    rng = np.random.default_rng(13)
    B, H, Sq, Sk = shape
    q, k, v = _rand(rng, (B, H, Sq, D), kind), _rand(rng, (B, H, Sk, D), kind), _rand(rng, (B, H, Sk, D), kind)
    o = ops.attention(emu.host_array(q), emu.host_array(k), emu.host_array(v), causal=causal)
    u = dtypes.unit_roundoff(kind)
    atol = 2e-5 if kind == "float32" else 8 * u
    assert_close(emu.to_numpy(o), ops.reference_attention(q, k, v, causal=causal), 4 * max(u, 2**-20), atol)


def test_emulated_attention_on_strided_head_views(emu):
    rng = np.random.default_rng(14)
    B, S, H, D = 2, 50, 4, 64
    qkv = _rand(rng, (B, S, 3, H, D))
    hq = emu.host_array(qkv)
    out = emu.empty((B, S, H, D), np.float32)
    q, k, v = (hq[:, :, i].transpose(0, 2, 1, 3) for i in range(3))
    ops.attention(q, k, v, causal=True, out=out.transpose(0, 2, 1, 3))
    ref = ops.reference_attention(*(qkv[:, :, i].transpose(0, 2, 1, 3) for i in range(3)), causal=True)
    assert_close(emu.to_numpy(out), ref.transpose(0, 2, 1, 3), 1e-5, 2e-5)


@pytest.mark.parametrize("kind,rows,cols", [("float32", 37, 1000), ("float16", 5, 3000), ("bfloat16", 33, 129),
                                            ("float32", 3, 2)])
def test_emulated_rowwise(emu, kind, rows, cols):
    rng = np.random.default_rng(15)
    x = _rand(rng, (rows, cols), kind, 3.0)
    w, b = _rand(rng, (cols,), kind, 0.5, 1.0), _rand(rng, (cols,), kind)
    hx, hw, hb = emu.host_array(x), emu.host_array(w), emu.host_array(b)
    assert_close(emu.to_numpy(ops.softmax(hx)), ops.reference_softmax(x), *_tol(kind), "softmax")
    tol = (2e-5, 8e-5) if kind == "float32" else (4 * dtypes.unit_roundoff(kind), 16 * dtypes.unit_roundoff(kind))
    assert_close(emu.to_numpy(ops.layernorm(hx, hw, hb)), ops.reference_layernorm(x, w, b), *tol, "layernorm")
    assert_close(emu.to_numpy(ops.layernorm(hx, hw)), ops.reference_layernorm(x, w), *tol, "layernorm, no bias")
    assert_close(emu.to_numpy(ops.rmsnorm(hx, hw)), ops.reference_rmsnorm(x, w), *tol, "rmsnorm")


@pytest.mark.parametrize("kind", ["float32", "float16", "bfloat16"])
def test_emulated_elementwise(emu, kind):
    rng = np.random.default_rng(16)
    H, T = emu.host_array, emu.to_numpy
    tol = _tol(kind)
    u = dtypes.unit_roundoff(kind)
    for n in (5003, 8):
        x, g = _rand(rng, (n,), kind, 2.0), _rand(rng, (n,), kind)
        assert_close(T(ops.gelu(H(x))), ops.reference_gelu(x), *tol, "gelu")
        assert_close(T(ops.silu(H(x))), ops.reference_silu(x), *tol, "silu")
        assert_close(T(ops.gelu_backward(H(x), H(g))), ops.reference_gelu_backward(x, g), tol[0], tol[0], "gelu'")
        assert_close(T(ops.mse_grad(H(x), H(g))), ops.reference_mse_grad(x, g), 4 * u, 2**-24, "mse")
        hx = H(x)
        ops.gelu(hx, out=hx)  # in place
        assert_close(T(hx), ops.reference_gelu(x), *tol, "gelu in place")
    x = _rand(rng, (1001,), kind)
    assert_close(T(ops.gelu(H(x)[1:])), ops.reference_gelu(x[1:]), *tol, "gelu, misaligned input")
    for rows, cols in ((37, 1001), (8, 1024), (3, 4100)):
        x, r, b = _rand(rng, (rows, cols), kind), _rand(rng, (rows, cols), kind), _rand(rng, (cols,), kind)
        assert_close(T(ops.residual_add(H(x), H(r), bias=H(b))), ops.reference_residual_add(x, r, b), 4 * u, 4 * u)
        assert_close(T(ops.residual_add(H(x), H(r))), ops.reference_residual_add(x, r), 4 * u, 4 * u)


@pytest.mark.parametrize("shape", [(2, 5, 11, 13, 70, 3, 3, 1, 1, 1, True), (3, 4, 17, 15, 9, 5, 3, 2, 2, 2, False),
                                   (1, 3, 8, 9, 4, 1, 1, (2, 1), 0, 1, True)])
def test_emulated_conv2d(emu, shape):
    rng = np.random.default_rng(17)
    N, C, Hh, W, K, R, S, stride, pad, dil, has_bias = shape
    x, w = _rand(rng, (N, C, Hh, W)), _rand(rng, (K, C, R, S))
    b = _rand(rng, (K,)) if has_bias else None
    y = ops.conv2d(emu.host_array(x), emu.host_array(w), None if b is None else emu.host_array(b), stride=stride,
                   padding=pad, dilation=dil)
    assert_close(emu.to_numpy(y), ops.reference_conv2d(x, w, b, stride, pad, dil), 1e-4, 2e-5 * math.sqrt(C * R * S))


def test_emulated_reductions_and_optimizers(emu):
    rng = np.random.default_rng(18)
    H, T = emu.host_array, emu.to_numpy
    for n in (1, 4099, 20000):
        x = _rand(rng, (n,))
        assert_close(T(ops.reduce_sum(H(x))), ops.reference_sum(x), 1e-5, 1e-6 * n, f"sum {n}")
        assert_close(T(ops.reduce_max(H(x))), ops.reference_max(x), 0, 0, f"max {n}")
        if n > 1:
            assert_close(T(ops.reduce_sum(H(x)[1:])), ops.reference_sum(x[1:]), 1e-5, 1e-6 * n, "misaligned")
    for n in (10001, 3):
        p, g, m = _rand(rng, (n,)), _rand(rng, (n,)), _rand(rng, (n,), scale=0.1)
        v = rng.uniform(0.01, 1, n).astype(np.float32)
        hp, hg, hm, hv = H(p), H(g), H(m), H(v)
        ops.adam_step(hp, hg, hm, hv, 3, lr=1e-2)
        for got, ref in zip((hp, hm, hv), ops.reference_adam(p, g, m, v, 3, lr=1e-2)):
            assert_close(T(got), ref, 1e-5, 1e-6, "adam")
        hp = H(p)
        ops.sgd_step(hp, hg, 0.1, 0.01)
        assert_close(T(hp), ops.reference_sgd(p, g, 0.1, 0.01), 1e-6, 1e-7, "sgd")


@pytest.mark.parametrize("kind", ["float32", "float16"])
def test_emulated_decoder_forward(emu, kind):
    from kernels import workloads

    rng = np.random.default_rng(19)
    cfg = workloads.DecoderConfig(d_model=128, n_heads=2, n_layers=2, seq_len=16, dtype=kind)
    d, f = cfg.d_model, cfg.ffn_mult * cfg.d_model
    layers = [{"ln1_w": _rand(rng, (d,), kind, 0.1, 1.0), "ln1_b": _rand(rng, (d,), kind, 0.1),
               "w_qkv": _rand(rng, (d, 3 * d), kind, d**-0.5), "w_o": _rand(rng, (d, d), kind, d**-0.5),
               "b_o": _rand(rng, (d,), kind, 0.1), "ln2_w": _rand(rng, (d,), kind, 0.1, 1.0),
               "ln2_b": _rand(rng, (d,), kind, 0.1), "w_1": _rand(rng, (d, f), kind, d**-0.5),
               "w_2": _rand(rng, (f, d), kind, f**-0.5), "b_2": _rand(rng, (d,), kind, 0.1)} for _ in range(2)]
    stack = object.__new__(workloads.DecoderStack)   # the constructor allocates on a GPU
    stack.config, stack.max_batch = cfg, 3
    stack.layers = [{k: emu.host_array(v) for k, v in p.items()} for p in layers]
    stack._ws = {n: emu.empty((3 * cfg.seq_len, w), dtypes.numpy_dtype(kind))
                 for n, w in (("x", d), ("h", d), ("qkv", 3 * d), ("attn", d), ("proj", d), ("u", f))}
    x = _rand(rng, (2 * cfg.seq_len, d), kind)
    out = emu.to_numpy(stack.forward(emu.host_array(x), 2, None))
    ref = workloads.reference_decoder_forward(layers, x, cfg, 2)
    rtol, atol = (1e-5, 1e-4) if kind == "float32" else (1e-2, 2e-2)
    assert_close(out, ref, rtol, atol, "decoder")


@pytest.mark.parametrize("gemm_max_k", [None, 16])   # 16: the K=24 and K=40 GEMMs in 2 and 3 slices
def test_emulated_training_step(emu, gemm_max_k):
    from kernels import workloads

    rng = np.random.default_rng(20)
    B, d, F, L = 24, 16, 40, 2
    H = emu.host_array
    job = object.__new__(workloads.TrainingJob)   # the constructor allocates on a GPU
    job.config = workloads.MLPConfig(d_model=d, hidden=F, batch=B, n_layers=L, optimizer="adam", lr=1e-2,
                                     gemm_max_k=gemm_max_k)
    job.stream, job.steps = None, 0
    w1 = [_rand(rng, (d, F), scale=d**-0.5) for _ in range(L)]
    w2 = [_rand(rng, (F, d), scale=0.5 * F**-0.5) for _ in range(L)]
    x0, target = _rand(rng, (B, d)), _rand(rng, (B, d))
    job.w1, job.w2 = [H(w) for w in w1], [H(w) for w in w2]
    job.params = [*job.w1, *job.w2]
    job.grads = [emu.empty(p.shape, np.float32) for p in job.params]
    job.adam_m = [H(np.zeros(p.shape, np.float32)) for p in job.params]
    job.adam_v = [H(np.zeros(p.shape, np.float32)) for p in job.params]
    job.xs = [H(x0)] + [emu.empty((B, d), np.float32) for _ in range(L)]
    job.target = H(target)
    job.us = [emu.empty((B, F), np.float32) for _ in range(L)]
    job.hs = [emu.empty((B, F), np.float32) for _ in range(L)]
    job._y, job._g, job._dh = (emu.empty(s, np.float32) for s in ((B, d), (B, d), (B, F)))
    job.step()
    _, grads = workloads.reference_mlp_gradients(w1, w2, x0, target)
    for i, (got, ref) in enumerate(zip(job.grads, grads)):
        assert_close(emu.to_numpy(got), ref, 1e-4, 1e-7, f"gradient {i}")
    # Adam's first step moves every weight by about lr (sign of its gradient).
    moved = emu.to_numpy(job.w1[0]) - w1[0]
    np.testing.assert_allclose(np.abs(moved)[np.abs(grads[0]) > 1e-6], 1e-2, rtol=1e-2)
    assert job.steps == 1


_NUMBA_SIM_SCRIPT = r'''
import os
os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
import numpy as np
from kernels import _compile, _emulator as emu, _numba
from kernels import elementwise, gemm, norm
_numba.as_numba_array = emu.to_numpy
_numba.as_numba_stream = lambda s: 0
_compile.sm_count = lambda: 1
for m in (gemm, norm, elementwise):
    m.as_cupy_stream = lambda s: None
    m.empty = emu.empty
rng = np.random.default_rng(0)
# 2x2 tiles of 64, each partial, and K = 20: a whole and a partial step of 16 (the simulator runs
# every thread in Python, so each K step costs)
a, b = rng.standard_normal((70, 20)).astype(np.float32), rng.standard_normal((20, 75)).astype(np.float32)
c = emu.to_numpy(gemm.gemm_numba(emu.host_array(a), emu.host_array(b)))
assert np.abs(c - gemm.reference_gemm(a, b)).max() < 1e-4
x = (3 * rng.standard_normal((3, 300))).astype(np.float32)
y = emu.to_numpy(norm.softmax_numba(emu.host_array(x)))
assert np.abs(y - norm.reference_softmax(x)).max() < 1e-6
x = (2 * rng.standard_normal((7, 300))).astype(np.float32)
y = emu.to_numpy(elementwise.gelu_numba(emu.host_array(x)))  # grid of 8 blocks: the grid-stride loop wraps
assert np.abs(y - elementwise.reference_gelu(x)).max() < 1e-5
print("numba-sim-ok")
'''


start_early("numba-sim", "numba_sim", lambda folder: subprocess.Popen(
    [sys.executable, "-c", _NUMBA_SIM_SCRIPT], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))


@pytest.fixture(scope="module")
def numba_sim(tmp_path_factory: pytest.TempPathFactory) -> subprocess.CompletedProcess:
    """`_NUMBA_SIM_SCRIPT`'s finished run (started with the session)."""
    _, proc = early("numba-sim", tmp_path_factory)
    stdout, stderr = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def test_numba_kernels_in_the_cuda_simulator(numba_sim):
    """The Numba ops, kernels and launch configurations, on Numba's CUDA simulator (a subprocess:
    the simulator must be chosen before Numba is imported)."""
    assert numba_sim.returncode == 0 and "numba-sim-ok" in numba_sim.stdout, numba_sim.stderr[-4000:]
