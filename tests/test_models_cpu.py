"""CPU tier of the model workloads (`kernels.models`) and their kernels: no GPU needed.

- the new kernels (`kernels.transformer`, `kernels.convnet`, `kernels.training`) run through
  the CPU emulator (`kernels._emulator`) against their float64 references;
- each model at a small size runs through the emulator against a float64 reference of the
  whole model (and, for the training step, of its gradients);
- each model at its real shape (a few layers) runs against recording fake kernels: the
  launches' shapes, streams and FLOPs are checked without computing anything.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import subprocess
import sys

import numpy as np
import pytest

import kernels
from kernels import _compile, dtypes
from kernels.models import _common

_KERNEL_MODULES = ("gemm", "attention", "norm", "elementwise", "conv", "reduce", "optim", "transformer", "convnet",
                   "training")


def _modules():
    return [importlib.import_module(f"kernels.{n}") for n in _KERNEL_MODULES]


# ---- the emulator ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def emulator_sources():
    """Compile the sources the models use for the host once per session, in parallel."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    from kernels import _emulator
    from kernels import attention as attention_mod
    from kernels import convnet, elementwise, gemm, norm, optim, training, transformer

    if not _emulator.available():
        pytest.skip("no g++ on PATH for the CPU emulation of the CUDA kernels")
    sources = [transformer.TRANSFORMER_SOURCE, convnet.CONVNET_SOURCE, training.TRAINING_SOURCE, gemm.WMMA_SOURCE,
               norm.NORM_SOURCE, elementwise.ELEMENTWISE_SOURCE, attention_mod.attention_source(dtypes.FLOAT16, 64),
               gemm.transpose_source(2), gemm.transpose_source(4), gemm.sgemm_source("64x64", False, False),
               optim.ADAM_SOURCE]
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        list(pool.map(lambda s: _emulator.build(s.code, s.entry_names), sources))
    return _emulator


@pytest.fixture
def emu(emulator_sources, monkeypatch):
    """Kernels run on the CPU: CuPy's raw kernel classes swapped for the emulator's."""
    import cupy

    monkeypatch.setattr(cupy, "RawKernel", emulator_sources.EmulatedRawKernel)
    monkeypatch.setattr(cupy, "RawModule", emulator_sources.EmulatedRawModule)
    for mod in _modules():
        monkeypatch.setattr(mod, "as_cupy_stream", lambda s: None)
        if hasattr(mod, "empty"):
            monkeypatch.setattr(mod, "empty", emulator_sources.empty)
    monkeypatch.setattr(_compile, "sm_count", lambda: 132)
    kernels.reset_cache()
    yield emulator_sources
    kernels.reset_cache()


def _rand(rng, shape, kind="float32", scale=1.0, shift=0.0):
    return dtypes.to_storage((rng.standard_normal(shape) * scale + shift).astype(np.float32), kind)


def _nan(shape, kind):
    return dtypes.to_storage(np.full(shape, np.nan, np.float32), kind)


def assert_close(got, ref, rtol, atol, what=""):
    got = dtypes.to_float64(np.asarray(got))
    assert got.shape == np.shape(ref), f"{what}: shape {got.shape}, reference {np.shape(ref)}"
    assert np.isfinite(got).all(), f"{what}: {int((~np.isfinite(got)).sum())} elements unwritten or not finite"
    err = np.abs(got - ref)
    bad = err > atol + rtol * np.abs(ref)
    assert not bad.any(), f"{what}: {int(bad.sum())} of {got.size} out of tolerance, max error {err.max():.3g}"


# ---- recording fake kernels (real shapes, nothing computed) -------------------------------------------


class Recorder:
    """Stands in for cupy.RawKernel / RawModule functions: records (name, grid, block, args, stream)."""

    log: list = []

    def __init__(self, code=None, name=None, options=(), **kw):
        self.name = name

    def get_function(self, name):
        return Recorder(name=name)

    def __call__(self, grid, block, args, *, shared_mem=0, stream=None):
        Recorder.log.append((self.name, tuple(grid), tuple(block), tuple(args), shared_mem, stream))


_next_address = [1 << 30]


def _fake(shape, dtype):
    """A cupy.ndarray at an address of its own that is never dereferenced: metadata only."""
    import cupy

    dt = np.dtype(dtype)
    nbytes = max(1, int(np.prod(shape, dtype=np.int64)) * dt.itemsize)
    mem = cupy.cuda.UnownedMemory(_next_address[0], nbytes, None, device_id=0)
    _next_address[0] += -(-nbytes // 256) * 256
    return cupy.ndarray(tuple(shape), dt, memptr=cupy.cuda.MemoryPointer(mem, 0))


class FakeArrays(_common.EmulatorArrays):
    """Arrays that are metadata only (never dereferenced): models at their real shapes on the CPU."""

    def normal(self, shape, scale=1.0, shift=0.0):
        return np.broadcast_to(np.float32(0), tuple(shape))   # no memory behind it

    def integers(self, high, shape):
        return _fake(shape, np.int32)

    def store(self, x, kind):
        return _fake(x.shape, dtypes.numpy_dtype(kind))

    def asarray(self, host):
        return _fake(np.shape(host), np.asarray(host).dtype)

    def empty(self, shape, dtype):
        return _fake(shape, dtype)

    def zeros(self, shape, dtype):
        return _fake(shape, dtype)

    def assign(self, x, values):
        pass

    def stream(self, stream):
        return stream

    own_stream = stream


class _Stream:
    """The stream every recorded launch must name."""

    def synchronize(self):
        pass


STREAM = _Stream()


@pytest.fixture
def recorder(monkeypatch):
    import cupy

    Recorder.log = []
    monkeypatch.setattr(cupy, "RawKernel", Recorder)
    monkeypatch.setattr(cupy, "RawModule", Recorder)
    for mod in _modules():
        monkeypatch.setattr(mod, "as_cupy_stream", lambda s: s)
        if hasattr(mod, "empty"):
            monkeypatch.setattr(mod, "empty", lambda shape, dtype, s: _fake(
                (shape,) if isinstance(shape, int) else shape, dtype))
    monkeypatch.setattr(_compile, "sm_count", lambda: 132)
    kernels.reset_cache()
    yield Recorder.log
    kernels.reset_cache()


def gemm_flops(log) -> float:
    """2 M N K of every tensor-core GEMM launch recorded."""
    return sum(2.0 * int(a[3]) * int(a[4]) * int(a[5]) for name, _, _, a, _, _ in log if name.startswith("wmma_gemm"))


# ---- transformer kernels ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["float16", "bfloat16"])
def test_embeddings_swiglu_bias_act(emu, kind):
    from kernels import transformer as tr

    rng = np.random.default_rng(1)
    H, T = emu.host_array, emu.to_numpy
    u = dtypes.unit_roundoff(kind)
    vocab, d, n = 50, 40, 7
    ids = rng.integers(0, vocab, n).astype(np.int32)
    table = _rand(rng, (vocab, d), kind)
    out = H(_nan((n, d), kind))
    assert np.array_equal(T(tr.embedding_gather(H(ids), H(table), out)), table[ids])
    tied = np.ascontiguousarray(table.T)
    assert np.array_equal(T(tr.embedding_gather(H(ids), H(tied), H(_nan((n, d), kind)), transposed=True)),
                          table[ids])
    pos, types, type_ids = _rand(rng, (9, d), kind), _rand(rng, (2, d), kind), rng.integers(0, 2, n).astype(np.int32)
    f64 = dtypes.to_float64
    got = tr.embedding_sum(H(ids), H(table), H(pos), H(_nan((n, d), kind)), seq_len=3, type_ids=H(type_ids),
                           type_table=H(types))
    ref = f64(table)[ids] + f64(pos)[np.arange(n) % 3] + f64(types)[type_ids]
    assert_close(T(got), ref, 2 * u, 2 * u, "embedding_sum")
    got = tr.embedding_sum(H(ids), H(table), H(pos), H(_nan((n, d), kind)), seq_len=9)
    assert_close(T(got), f64(table)[ids] + f64(pos)[np.arange(n)], 2 * u, 2 * u, "embedding_sum, no types")

    gu = _rand(rng, (5, 2 * 33), kind, 2.0)
    assert_close(T(tr.swiglu(H(gu), H(_nan((5, 33), kind)))), tr.reference_swiglu(gu), 4 * u, 4 * u, "swiglu")
    x, b = _rand(rng, (6, 30), kind, 2.0), _rand(rng, (30,), kind)
    for act in tr.ACTIVATIONS:
        assert_close(T(tr.bias_act(H(x), H(b), H(_nan((6, 30), kind)), act)), tr.reference_bias_act(x, b, act),
                     4 * u, 4 * u, act)
    hx = H(x)
    tr.bias_act(hx, H(b), hx, "gelu")                       # in place
    assert_close(T(hx), tr.reference_bias_act(x, b, "gelu"), 4 * u, 4 * u, "in place")


def test_rope_inverse_frequencies_follow_llama3_scaling():
    from kernels.transformer import rope_inv_freq

    plain = rope_inv_freq(128, 500000.0)
    assert plain[0] == 1.0 and np.isclose(plain[-1], 500000.0 ** (-126 / 128))
    scaling = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192}
    scaled = rope_inv_freq(128, 500000.0, scaling)
    wavelen = 2 * np.pi / plain
    short, long_ = wavelen < 8192 / 4, wavelen > 8192
    assert short.any() and long_.any() and (~short & ~long_).any()
    assert np.array_equal(scaled[short], plain[short])                # high frequencies kept
    assert np.allclose(scaled[long_], plain[long_] / 8)              # low frequencies slowed down 8x
    mid = ~short & ~long_
    assert (scaled[mid] < plain[mid]).all() and (scaled[mid] > plain[mid] / 8).all()


@pytest.mark.parametrize("kind", ["float16", "bfloat16"])
def test_rope_kv_append_rotates_and_writes_only_its_cache_rows(emu, kind):
    from kernels import transformer as tr

    rng = np.random.default_rng(2)
    H, T = emu.host_array, emu.to_numpy
    Hq, Hkv, D, slots_n, max_seq = 4, 2, 64, 3, 20
    inv = tr.rope_inv_freq(D, 10000.0).astype(np.float32)
    u = dtypes.unit_roundoff(kind)
    cache_shape = (slots_n, Hkv, max_seq, D)
    # decode: token b at its own position in its own slot (slots permuted); rows strided
    n = 3
    buf = _rand(rng, (n, (Hq + 2 * Hkv) * D + 8), kind)
    qkv = H(buf)[:, :(Hq + 2 * Hkv) * D]
    positions, slots = np.array([5, 0, 19], np.int32), np.array([2, 0, 1], np.int32)
    kc, vc = H(_nan(cache_shape, kind)), H(_nan(cache_shape, kind))
    tr.rope_kv_append(qkv, H(positions), H(slots), H(inv), kc, vc, Hq)
    x = buf[:, :(Hq + 2 * Hkv) * D]
    q, k = x[:, :Hq * D].reshape(n, Hq, D), x[:, Hq * D:(Hq + Hkv) * D].reshape(n, Hkv, D)
    v = x[:, (Hq + Hkv) * D:].reshape(n, Hkv, D)
    assert_close(T(qkv)[:, :Hq * D].reshape(n, Hq, D), tr.reference_rope(q, positions, inv), 2 * u, 4 * u, "q")
    assert np.array_equal(T(qkv)[:, Hq * D:], x[:, Hq * D:])          # k and v left in place
    got_k, got_v = T(kc), T(vc)
    ref_k = tr.reference_rope(k, positions, inv)
    written = np.zeros(cache_shape[:3], bool)
    for t in range(n):
        written[slots[t], :, positions[t]] = True
        assert_close(got_k[slots[t], :, positions[t]], ref_k[t], 2 * u, 4 * u, "k")
        assert np.array_equal(got_v[slots[t], :, positions[t]], v[t])
    assert np.isnan(dtypes.to_float64(got_k)[~written]).all() and np.isnan(dtypes.to_float64(got_v)[~written]).all()
    # prefill: a prompt at positions 0..n-1, all into one slot (slot_step 0)
    n = 6
    x = _rand(rng, (n, (Hq + 2 * Hkv) * D), kind)
    kc = H(_nan(cache_shape, kind))
    tr.rope_kv_append(H(x), H(np.arange(n, dtype=np.int32)), H(np.array([1], np.int32)), H(inv), kc,
                      H(_nan(cache_shape, kind)), Hq, slot_step=0)
    ref_k = tr.reference_rope(x[:, Hq * D:(Hq + Hkv) * D].reshape(n, Hkv, D), np.arange(n), inv)
    assert_close(T(kc)[1, :, :n].transpose(1, 0, 2), ref_k, 2 * u, 4 * u, "prefill k")
    assert np.isnan(dtypes.to_float64(T(kc))[1, :, n:]).all() and np.isnan(dtypes.to_float64(T(kc))[[0, 2]]).all()


@pytest.mark.parametrize("kind,Hq,Hkv", [("float16", 8, 2), ("bfloat16", 4, 4)])
def test_gqa_decode_reads_exactly_its_own_positions(emu, kind, Hq, Hkv):
    """Every cache entry a sequence must not read is NaN: one read would poison its output."""
    from kernels import transformer as tr

    rng = np.random.default_rng(3)
    H, T = emu.host_array, emu.to_numpy
    D, n_slots, max_seq, chunk = 64, 4, 50, 16     # 4 chunks, the last one ragged
    positions = np.array([0, 15, 16, 49, 33], np.int32)[:n_slots]
    slots = np.array([3, 1, 0, 2], np.int32)
    B = len(positions)
    k, v = _rand(rng, (n_slots, Hkv, max_seq, D), kind), _rand(rng, (n_slots, Hkv, max_seq, D), kind)
    k_poisoned, v_poisoned = k.copy(), v.copy()
    nan = _nan((), kind)
    for b in range(B):
        k_poisoned[slots[b], :, positions[b] + 1:] = nan
        v_poisoned[slots[b], :, positions[b] + 1:] = nan
    q = _rand(rng, (B, Hq * D + 16), kind)
    splits = tr.decode_splits(max_seq, chunk)
    out = H(_nan((B, Hq * D), kind))
    tr.gqa_decode_attention(H(q)[:, :Hq * D], H(k_poisoned), H(v_poisoned), H(positions), H(slots), out,
                            n_heads=Hq, chunk=chunk, partial_ml=H(np.full(B * Hq * splits * 2, np.nan, np.float32)),
                            partial_acc=H(np.full(B * Hq * splits * D, np.nan, np.float32)))
    ref = tr.reference_gqa_decode(q[:, :Hq * D].reshape(B, Hq, D), k, v, positions, slots)
    u = dtypes.unit_roundoff(kind)
    assert_close(T(out).reshape(B, Hq, D), ref, 4 * u, 4 * u, "decode attention")


def test_argmax_and_advance_positions(emu):
    from kernels import transformer as tr

    H, T = emu.host_array, emu.to_numpy
    x = np.random.default_rng(4).standard_normal((4, 1000)).astype(np.float32)
    x[1, 7] = x[1, 900] = 50.0                 # a tie: the first index wins
    x[2] = -np.inf
    x[3, :10] = np.nan
    x[3, 500] = 9.0
    out = H(np.full(6, -1, np.int32))
    assert T(tr.argmax_rows(H(x), out)).tolist() == [int(np.argmax(x[0])), 7, 0, 500, -1, -1]
    pos = H(np.array([0, 8, 9, 3], np.int32))
    tr.advance_positions(pos, H(np.array([5, 5, 2, 1], np.int32)), 3, 10)
    assert T(pos).tolist() == [1, 9, 2, 3]


def test_transformer_ops_validate_their_arguments():
    from kernels import transformer as tr

    f16 = np.float16
    ids = _fake((4,), np.int32)
    with pytest.raises(ValueError, match="out has shape"):
        tr.embedding_gather(ids, _fake((10, 8), f16), _fake((4, 9), f16))
    with pytest.raises(TypeError, match="float16, bfloat16"):
        tr.swiglu(_fake((4, 8), np.float32), _fake((4, 4), np.float32))
    cache = _fake((2, 2, 16, 64), f16)
    with pytest.raises(ValueError, match="1 to 8 times"):
        tr.gqa_decode_attention(_fake((2, 18 * 64), f16), cache, cache, _fake((2,), np.int32), _fake((2,), np.int32),
                                _fake((2, 18 * 64), f16), n_heads=18, chunk=8, partial_ml=_fake((9999,), np.float32),
                                partial_acc=_fake((99999,), np.float32))
    with pytest.raises(ValueError, match="partial_acc"):
        tr.gqa_decode_attention(_fake((2, 4 * 64), f16), cache, cache, _fake((2,), np.int32), _fake((2,), np.int32),
                                _fake((2, 4 * 64), f16), n_heads=4, chunk=8, partial_ml=_fake((32,), np.float32),
                                partial_acc=_fake((100,), np.float32))
    with pytest.raises(ValueError, match="act must be"):
        tr.bias_act(_fake((4, 8), f16), _fake((8,), f16), _fake((4, 8), f16), "relu")


# ---- Llama --------------------------------------------------------------------------------------------


def _tiny_llama(kind="float16", **kw):
    from kernels.models import llama

    cfg = llama.LlamaConfig(name="tiny", hidden=128, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=64,
                            mlp_hidden=256, vocab=256, tie_embeddings=kw.pop("tie", True), dtype=kind)
    arrays = kw.pop("arrays_cls", _common.EmulatorArrays)(7)
    return llama.LlamaService(cfg, batch_sizes=(1, 2, 3), max_seq_len=kw.pop("max_seq_len", 40), context=20,
                              max_prompt=12, chunk=16, seed=7, arrays=arrays, **kw)


def test_llama_published_shapes_and_parameter_counts():
    from kernels.models import llama

    assert llama.LLAMA_3_2_1B.param_count() == 1_235_814_400
    assert llama.LLAMA_3_1_8B.param_count() == 8_030_261_248
    assert llama.LLAMA_3_1_8B.qkv_width == (32 + 2 * 8) * 128
    two = llama.LLAMA_3_1_8B.with_layers(2)
    assert two.n_layers == 2 and two.hidden == 4096
    with pytest.raises(ValueError, match="head_dim"):
        llama.LlamaConfig(name="x", hidden=64, n_layers=1, n_heads=2, n_kv_heads=1, head_dim=32, mlp_hidden=64,
                          vocab=10, tie_embeddings=True)


def test_llama_prefill_then_batched_decode_equals_longer_prefills(emu):
    """Two prompts prefilled into slots 0 and 1, then one decode step of both at their own
    positions: each row is the float64 model's prediction for its own sequence (and the same as
    the service's prefill of the longer prompt), so the cache slots and positions don't mix."""
    from kernels.models import llama

    svc = _tiny_llama()
    a = svc.arrays
    rng = np.random.default_rng(5)
    prompts = [rng.integers(0, svc.config.vocab, n) for n in (6, 9)]
    refs = [llama.reference_logits(svc, p) for p in prompts]
    tol = 0.02                                           # logits ~ N(0, 1), fp16 through two layers
    for slot, p in enumerate(prompts):
        svc.set_prompt(p)
        logits = a.to_host(svc.prefill(len(p) - 1, None, slot=slot))
        assert_close(logits[0], refs[slot][-2], tol, tol, f"prefill {slot}")
        assert a.to_host(svc.tokens)[slot] == np.argmax(logits[0])
    svc.set_positions([len(p) - 1 for p in prompts], [p[-1] for p in prompts])
    step = a.to_host(svc.forward(2, None))
    for slot in range(2):
        assert_close(step[slot], refs[slot][-1], tol, tol, f"decode {slot}")
    assert a.to_host(svc.positions)[:2].tolist() == [len(p) for p in prompts]
    assert a.to_host(svc.tokens)[:2].tolist() == np.argmax(step, axis=1).tolist()
    longer = a.to_host(svc.prefill(len(prompts[1]), None, slot=2))
    assert np.abs(longer[0] - step[1]).max() < tol


def test_llama_untied_embedding_prefill(emu):
    from kernels.models import llama

    svc = _tiny_llama(tie=False)
    prompt = svc.arrays.to_host(svc.prompt)[:5]
    got = svc.arrays.to_host(svc.prefill(5, None, slot=0))
    assert_close(got[0], llama.reference_logits(svc, prompt)[-1], 0.02, 0.02, "prefill, untied embedding")


def test_llama_start_positions_and_bad_state_are_refused():
    svc = _tiny_llama(max_seq_len=17, arrays_cls=FakeArrays)
    assert svc.start_positions.tolist() == [10, 16, 16]      # 20 // 2 + b * 20 // 3, below max_seq_len
    with pytest.raises(ValueError, match="positions"):
        svc.set_positions([17])
    with pytest.raises(ValueError, match="tokens"):
        svc.set_positions([3], [svc.config.vocab])
    with pytest.raises(ValueError, match="batch_size"):
        svc.forward(4, STREAM)
    with pytest.raises(ValueError, match="length"):
        svc.prefill(13, STREAM)
    with pytest.raises(RuntimeError, match="GPU"):
        svc.capture(STREAM)


@pytest.mark.parametrize("model", ["LLAMA_3_2_1B", "LLAMA_3_1_8B"])
def test_llama_real_shapes_launches_and_flops(recorder, model):
    from kernels.models import llama

    cfg = getattr(llama, model).with_layers(2)
    svc = llama.LlamaService(cfg, batch_sizes=(1, 32), arrays=FakeArrays(0))
    out = svc.forward(32, STREAM)
    assert out.shape == (32, cfg.vocab) and out.dtype == np.float32
    assert all(launch[5] is STREAM for launch in recorder)
    names = [launch[0].split("<")[0] for launch in recorder]
    per_layer = ["rmsnorm_fwd", "wmma_gemm", "rope_kv_append", "gqa_decode_partial", "gqa_decode_combine",
                 "wmma_gemm", "residual_add", "rmsnorm_fwd", "wmma_gemm", "swiglu", "wmma_gemm", "residual_add"]
    assert names == ["embedding_gather", *per_layer * 2, "rmsnorm_fwd", "wmma_gemm", "argmax_rows",
                     "advance_positions"]
    partial = recorder[4]
    assert partial[1] == (2048 // 128, cfg.n_kv_heads, 32) and partial[2] == (128,)
    cost = svc.cost(32)
    keys = svc.start_positions.astype(np.float64) + 1
    attention_flops = 2 * 4.0 * cfg.n_heads * cfg.head_dim * keys.sum()
    assert math.isclose(gemm_flops(recorder), cost.flops - attention_flops, rel_tol=1e-12)
    weights = (2 * cfg.layer_linear_params() + cfg.hidden * cfg.vocab) * 2
    assert weights < cost.bytes < weights * 1.5       # a decode step is its weights and KV cache, mostly
    Recorder.log.clear()
    svc.prefill(100, STREAM, slot=5)
    names = [launch[0].split("<")[0] for launch in Recorder.log]
    assert names.count("flash_attn_fwd_bf16_d%d" % cfg.head_dim) == 2
    assert math.isclose(gemm_flops(Recorder.log), svc.prefill_cost(100).flops
                        - 2 * 4.0 * cfg.n_heads * cfg.head_dim * 100 * 101 / 2, rel_tol=1e-12)


def test_models_import_without_a_gpu_or_numba():
    code = ("import sys, kernels.models.llama, kernels.models.resnet, kernels.models.bert, kernels.models.gpt2; "
            "assert 'numba' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_models_refuse_the_default_stream():
    import cupy

    arrays = _common.DeviceArrays.__new__(_common.DeviceArrays)
    for s in (None, cupy.cuda.Stream.null):
        with pytest.raises(ValueError, match="default"):
            arrays.stream(s)


# ---- convolutional network ------------------------------------------------------------------------


@pytest.mark.parametrize("kind,shape", [
    ("float16", (2, 10, 9, 8, 72, 3, 1, 1, True, True)),     # 3 pixel tiles, 2 channel tiles, 3 k-tiles
    ("bfloat16", (1, 12, 11, 3, 8, 7, 2, 3, False, True)),   # 3 input channels: the element path
    ("float16", (3, 5, 4, 16, 20, 1, 2, 0, True, False)),    # K % 8 != 0: element path for the weights
])
def test_conv2d_nhwc_with_fused_epilogue(emu, kind, shape):
    from kernels import convnet

    N, Hh, W, C, K, R, stride, pad, with_residual, relu = shape
    rng = np.random.default_rng(6)
    H, T = emu.host_array, emu.to_numpy
    x, w, b = _rand(rng, (N, Hh, W, C), kind), _rand(rng, (R, R, C, K), kind, 0.3), _rand(rng, (K,), kind)
    P, Q = convnet.conv_output_hw(Hh, W, (R, R), stride, pad)
    res = _rand(rng, (N, P, Q, K), kind) if with_residual else None
    out = H(_nan((N, P, Q, K), kind))
    convnet.conv2d_nhwc(H(x), H(w), H(b), out, stride=stride, padding=pad,
                        residual=None if res is None else H(res), relu=relu)
    ref = convnet.reference_conv2d_nhwc(x, w, b, stride, pad, res, relu)
    u = dtypes.unit_roundoff(kind)
    assert_close(T(out), ref, 4 * u, 4 * u * math.sqrt(C * R * R), "conv")


def test_fold_batchnorm_equals_conv_then_batchnorm(emu):
    from kernels import convnet
    from kernels.conv import reference_conv2d

    rng = np.random.default_rng(7)
    N, C, Hh, K = 2, 8, 6, 16
    x = rng.standard_normal((N, Hh, Hh, C))
    w = rng.standard_normal((K, C, 3, 3)) * 0.3
    gamma, beta, mean = rng.standard_normal(K), rng.standard_normal(K), rng.standard_normal(K)
    var = rng.uniform(0.5, 2.0, K)
    conv = reference_conv2d(x.transpose(0, 3, 1, 2), w, None, 1, 1).transpose(0, 2, 3, 1)
    bn = (conv - mean) / np.sqrt(var + 1e-5) * gamma + beta
    folded, bias = convnet.fold_batchnorm(w, gamma, beta, mean, var, 1e-5)
    assert folded.shape == (3, 3, C, K)
    assert np.allclose(convnet.reference_conv2d_nhwc(x, folded, bias, 1, 1), bn, rtol=1e-12, atol=1e-12)
    kind = "float16"
    hx, hw, hb = (dtypes.to_storage(a.astype(np.float32), kind) for a in (x, folded, bias))
    out = emu.host_array(_nan(bn.shape, kind))
    convnet.conv2d_nhwc(emu.host_array(hx), emu.host_array(hw), emu.host_array(hb), out, padding=1)
    assert_close(emu.to_numpy(out), bn, 0.01, 0.05, "folded conv on the GPU kernel")


def test_pooling(emu):
    from kernels import convnet

    rng = np.random.default_rng(8)
    H, T = emu.host_array, emu.to_numpy
    x = _rand(rng, (2, 7, 6, 5), "bfloat16")
    got = convnet.maxpool2d_nhwc(H(x), H(_nan((2, 4, 3, 5), "bfloat16")))
    assert np.array_equal(dtypes.to_float64(T(got)), convnet.reference_maxpool_nhwc(x))
    got = convnet.avgpool_nhwc(H(x), H(_nan((2, 5), "bfloat16")))
    assert_close(T(got), dtypes.to_float64(x).mean(axis=(1, 2)), 2**-7, 2**-8, "avgpool")


def test_resnet_small_forward_matches_reference(emu):
    from kernels.models import resnet

    cfg = resnet.ResNetConfig(name="tiny", blocks=(2, 1), widths=(8, 16), stem=8, image=20, classes=16)
    svc = resnet.ResNetService(cfg, batch_sizes=(1, 2), seed=3, arrays=_common.EmulatorArrays(3))
    got = svc.arrays.to_host(svc.forward(2, None))
    ref = resnet.reference_forward(svc, 2)
    assert np.abs(ref).max() > 0.05
    assert_close(got, ref, 0.02, 0.02 * np.abs(ref).max(), "logits")
    one = svc.arrays.to_host(svc.forward(1, None))
    assert_close(one, ref[:1], 0.02, 0.02 * np.abs(ref).max(), "batch 1")


def test_resnet50_real_shapes_launches_and_flops(recorder):
    from kernels.models import resnet

    cfg = resnet.RESNET50
    assert cfg.param_count() == 25_557_032
    svc = resnet.ResNetService(cfg, batch_sizes=(1, 8), arrays=FakeArrays(0))
    out = svc.forward(8, STREAM)
    assert out.shape == (8, 1000)
    names = [launch[0].split("<")[0] for launch in recorder]
    assert names.count("conv_igemm") == 54 and names[1] == "maxpool_nhwc" and names[-2] == "avgpool_nhwc"
    assert all(launch[5] is STREAM for launch in recorder)
    conv_flops = sum(2.0 * np.prod([int(v) for v in a[5:6] + a[8:12] + a[12:14]])
                     for name, _, _, a, _, _ in recorder if name.startswith("conv_igemm"))
    cost = svc.cost(8)
    assert math.isclose(conv_flops, cost.flops, rel_tol=1e-12)
    assert 4.08e9 < cost.flops / 2 / 8 < 4.10e9          # 4.09 GMAC per image
    stem = recorder[0]
    assert stem[1] == (math.ceil(8 * 112 * 112 / 64), 1) and int(stem[3][-2]) == 0   # 3 channels: element path


# ---- BERT -------------------------------------------------------------------------------------------


def test_bert_small_forward_matches_reference(emu):
    from kernels.models import bert

    cfg = bert.BertConfig(name="tiny", hidden=128, n_layers=2, n_heads=2, intermediate=256, vocab=100,
                          max_positions=32, seq_len=16)
    svc = bert.BertService(cfg, batch_sizes=(1, 2), seed=4, arrays=_common.EmulatorArrays(4))
    pooled = svc.arrays.to_host(svc.forward(2, None))
    ref_pooled, ref_hidden = bert.reference_forward(svc, 2)
    assert_close(svc.arrays.to_host(svc.hidden_states)[:32], ref_hidden, 0.02, 0.05, "hidden states")
    assert_close(pooled, ref_pooled, 0.02, 0.02, "pooled")


def test_bert_base_real_shapes_launches_and_flops(recorder):
    from kernels.models import bert

    cfg = bert.BERT_BASE
    assert cfg.param_count() == 109_482_240
    svc = bert.BertService(dataclasses.replace(cfg, n_layers=2), batch_sizes=(1, 16), arrays=FakeArrays(0))
    out = svc.forward(16, STREAM)
    assert out.shape == (16, 768)
    names = [launch[0].split("<")[0] for launch in recorder]
    per_layer = ["wmma_gemm", "bias_act", "flash_attn_fwd_f16_d64", "wmma_gemm", "residual_add", "layernorm_fwd",
                 "wmma_gemm", "bias_act", "wmma_gemm", "residual_add", "layernorm_fwd"]
    assert names == ["embedding_sum", "layernorm_fwd", *per_layer * 2, "embedding_gather", "wmma_gemm", "bias_act"]
    assert all(launch[5] is STREAM for launch in recorder)
    attention = [launch for launch in recorder if launch[0].startswith("flash")]
    assert attention[0][1] == (2, 12, 16)     # 128 queries in tiles of 64, 12 heads, 16 sequences
    cost = svc.cost(16)
    assert math.isclose(gemm_flops(recorder), cost.flops - 2 * 4.0 * 16 * 128 * 128 * 768, rel_tol=1e-12)


# ---- training ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind,S,tol", [("float32", 80, 2e-5), ("bfloat16", 40, 0.03)])
def test_training_attention_forward_and_backward(emu, kind, S, tol):
    from kernels import training as tr

    rng = np.random.default_rng(9)
    H, T = emu.host_array, emu.to_numpy
    B, heads = 2 if S < 64 else 1, 2
    d = heads * 64
    qkv, grad_out = _rand(rng, (B * S, 3 * d), kind), _rand(rng, (B * S, d), kind)
    out, lse = H(_nan((B * S, d), kind)), H(np.full((B, heads, S), np.nan, np.float32))
    tr.attention_forward(H(qkv), out, lse, batch=B, n_heads=heads)
    split = [dtypes.to_float64(x).reshape(B, S, heads, 64).transpose(0, 2, 1, 3) for x in np.split(qkv, 3, axis=1)]
    ref_out, dq, dk, dv = tr.reference_attention_backward(*split, grad_out.reshape(B, S, heads, 64)
                                                          .transpose(0, 2, 1, 3))
    merge = lambda x: x.transpose(0, 2, 1, 3).reshape(B * S, d)   # noqa: E731
    assert_close(T(out), merge(ref_out), tol, tol, "out")
    scores = np.einsum("bhqd,bhkd->bhqk", split[0], split[1]) / 8.0
    scores = np.where(np.triu(np.ones((S, S), bool), 1), -np.inf, scores)
    ref_lse = np.log(np.exp(scores).sum(-1)) / np.log(2.0)
    assert_close(T(lse), ref_lse, tol, tol, "lse")
    grad_qkv = H(_nan((B * S, 3 * d), kind))
    tr.attention_backward(H(qkv), H(dtypes.to_storage(T(out), kind) if kind == "float32" else T(out)), lse,
                          H(grad_out), H(np.full((B, heads, S), np.nan, np.float32)), grad_qkv, batch=B, n_heads=heads)
    got = np.split(dtypes.to_float64(T(grad_qkv)), 3, axis=1)
    scale = max(np.abs(dq).max(), np.abs(dk).max(), np.abs(dv).max())
    for name, g, ref in zip("qkv", got, (dq, dk, dv)):
        assert_close(g, merge(ref), tol, tol * scale, f"d{name}")


def test_training_kernels_against_references(emu):
    from kernels import training as tr

    rng = np.random.default_rng(10)
    H, T = emu.host_array, emu.to_numpy
    rows, cols = 37, 100
    x, w = _rand(rng, (rows, cols), "bfloat16", 2.0, 1.0), _rand(rng, (cols,), "bfloat16", 0.5, 1.0)
    dy, dres = _rand(rng, (rows, cols)), _rand(rng, (rows, cols))
    hdres, dw, db = H(dres), H(_nan((cols,), "float32")), H(_nan((cols,), "float32"))
    tr.layernorm_backward(H(x), H(w), H(dy), hdres, H(np.zeros((rows, 2), np.float32)), dw, db, residual_grad=hdres)
    ref_dx, ref_dw, ref_db = tr.reference_layernorm_backward(x, w, dy)
    assert_close(T(hdres), ref_dx + dres, 1e-4, 1e-4, "layernorm dx")
    assert_close(T(dw), ref_dw, 1e-4, 1e-4, "layernorm dw")
    assert_close(T(db), ref_db, 1e-5, 1e-5, "layernorm db")
    assert_close(T(tr.colsum(H(x), H(_nan((cols,), "float32")))), dtypes.to_float64(x).sum(0), 1e-5, 1e-4, "colsum")

    chunks, chunk, vocab = 3, 16, 40
    logits = _rand(rng, (rows, chunks * chunk), "bfloat16", 3.0)
    targets = rng.integers(0, vocab, rows).astype(np.int32)
    stored = H(np.ascontiguousarray(logits.reshape(rows, chunks, chunk).transpose(1, 0, 2)))
    loss = tr.cross_entropy(stored, H(targets), H(_nan((rows,), "float32")), vocab=vocab, scale=0.5)
    ref_loss, ref_grad = tr.reference_cross_entropy(logits[:, :vocab], targets)
    assert_close(T(loss), ref_loss, 1e-5, 1e-5, "loss")
    grad = T(stored).transpose(1, 0, 2).reshape(rows, chunks * chunk)
    assert_close(grad[:, :vocab], 0.5 * ref_grad, 2**-8, 2**-12, "dlogits")
    assert not dtypes.to_float64(grad[:, vocab:]).any()                    # the padding's gradient is 0

    ids = rng.integers(0, 6, 20)
    g = _rand(rng, (20, 8))
    out0 = _rand(rng, (7, 8))
    out = H(out0)
    tr.segment_sum_rows(H(g), tuple(H(a) for a in tr.embedding_groups(ids)), out, accumulate=True)
    ref = dtypes.to_float64(out0)
    np.add.at(ref, ids, dtypes.to_float64(g))
    assert_close(T(out), ref, 1e-6, 1e-6, "embedding gradient")

    parts, res, bias = _rand(rng, (3, 5, 12)), _rand(rng, (5, 12), "bfloat16"), _rand(rng, (12,), "bfloat16")
    got = tr.splitk_reduce(H(parts), H(_nan((5, 12), "bfloat16")), bias=H(bias), residual=H(res))
    ref = parts[0] + parts[1] + parts[2] + dtypes.to_float64(bias) + dtypes.to_float64(res)
    assert_close(T(got), ref, 2**-8, 2**-8, "splitk_reduce")
    wide = _rand(rng, (6, 30), "bfloat16")
    assert np.array_equal(T(tr.copy_cols(H(wide)[:, 7:20], H(_nan((6, 13), "bfloat16")))), wide[:, 7:20])
    f = _rand(rng, (1001,))
    assert np.array_equal(T(tr.cast_f32(H(f), H(_nan((1001,), "bfloat16")))), dtypes.to_bf16_bits(f))


def _tiny_gpt2(kind, **kw):
    from kernels.models import gpt2

    cfg = gpt2.GPT2Config(name="tiny", n_layers=kw.pop("n_layers", 2), hidden=64, n_heads=1, vocab=100,
                          max_positions=64, seq_len=40, micro_batch=2, vocab_chunk=32, gemm_max_k=64, dtype=kind,
                          lr=1e-2)
    return gpt2.GPT2TrainingJob(cfg, seed=11, arrays=kw.pop("arrays", _common.EmulatorArrays(11)))


def test_gpt2_reference_gradients_match_finite_differences():
    from kernels.models import gpt2

    cfg = gpt2.GPT2Config(name="fd", n_layers=1, hidden=64, n_heads=1, vocab=20, max_positions=8, seq_len=5,
                          micro_batch=2, vocab_chunk=8, gemm_max_k=64)
    rng = np.random.default_rng(12)
    w = {}
    for name, shape in cfg.param_shapes():                       # LayerNorm weights near 1, the rest near 0
        w[name] = rng.standard_normal(shape) * (0.3 if len(shape) == 2 else 0.1) + (len(shape) == 1 and
                                                                                    name.endswith(".w"))
    ids, targets = rng.integers(0, 20, 10), rng.integers(0, 20, 10)
    _, grads = gpt2.reference_step(cfg, w, ids, targets)
    for name, index in [("wte", (ids[3], 5)), ("wpe", (2, 7)), ("h0.attn.w", (3, 100)), ("h0.attn.b", (130,)),
                        ("h0.proj.w", (1, 2)), ("h0.ln1.w", (4,)), ("h0.ln2.b", (9,)), ("h0.fc.w", (5, 200)),
                        ("h0.mlp_proj.b", (3,)), ("lnf.w", (60,)), ("wte", (7, 1))]:
        eps = 1e-6
        w[name][index] += eps
        up, _ = gpt2.reference_step(cfg, w, ids, targets)
        w[name][index] -= 2 * eps
        down, _ = gpt2.reference_step(cfg, w, ids, targets)
        w[name][index] += eps
        assert math.isclose(grads[name][index], (up - down) / (2 * eps), rel_tol=1e-4, abs_tol=1e-8), name


@pytest.mark.parametrize("kind,n_layers,tol", [("float32", 2, 1e-4), ("bfloat16", 1, 0.03)])
def test_gpt2_step_gradients_match_the_reference(emu, kind, n_layers, tol):
    """Every GEMM split (K of 64 at most: d 64 whole, 4d in 4 slices, 3d in 3, the 80 tokens in 2)."""
    from kernels.models import gpt2
    from kernels.optim import reference_adam

    job = _tiny_gpt2(kind, n_layers=n_layers)
    a = job.arrays
    loss, ref = gpt2.reference_loss_and_grads(job)
    job.forward()
    assert math.isclose(job.loss(), loss, rel_tol=tol)
    job.backward()
    for name, g in job.grads.items():
        got = a.to_host(g)
        err = np.linalg.norm(got - ref[name]) / max(np.linalg.norm(ref[name]), 1e-12)
        assert err < tol, f"{name}: relative error {err:.2g}"
    before = a.to_host(job.params["h0.fc.w"])
    job.update()
    expected, _, _ = reference_adam(before, a.to_host(job.grads["h0.fc.w"]), np.zeros_like(before),
                                    np.zeros_like(before), 1, lr=1e-2, beta1=0.9, beta2=0.95)
    assert_close(a.to_host(job.params["h0.fc.w"]), expected, 1e-6, 1e-7, "Adam")
    assert np.array_equal(a.to_host(job.compute["h0.fc.w"]), dtypes.to_storage(a.to_host(job.params["h0.fc.w"]), kind))


def test_gpt2_small_real_shapes_every_gemm_reduction_is_short(recorder):
    from kernels.models import gpt2

    assert gpt2.GPT2_SMALL.param_count() == 124_439_808
    cfg = dataclasses.replace(gpt2.GPT2_SMALL, n_layers=2)
    job = gpt2.GPT2TrainingJob(cfg, stream=STREAM, arrays=FakeArrays(0))
    Recorder.log.clear()
    job.step()
    assert all(launch[5] is STREAM for launch in recorder)
    gemms = [launch for launch in recorder if launch[0].startswith("wmma_gemm")]
    assert max(int(a[5]) for _, _, _, a, _, _ in gemms) <= 2048           # K of every GEMM launch
    pairs = 1024 * 1025 / 2
    assert math.isclose(gemm_flops(recorder), job.cost().flops - 2 * 18.0 * 4 * 12 * 64 * pairs, rel_tol=1e-12)
    names = [launch[0].split("<")[0] for launch in recorder]
    assert names.count("adam_step_f32") == 1 and names.count("attn_bwd_dq") == 2
    attention = [launch for launch in recorder if launch[0].startswith("attn_fwd_train")]
    assert attention[0][1] == (16, 12, 4) and attention[0][4] > 48 * 1024
    with pytest.raises(ValueError, match="vocab_chunk"):
        gpt2.GPT2Config(vocab_chunk=4096)


# ---- CUDA graphs (the plumbing; the GPU tier replays them) -------------------------------------------


class CaptureStream(_Stream):
    """Records stream capture: the launches between begin_capture and end_capture are the graph's."""

    def __init__(self):
        self.calls = []

    def begin_capture(self):
        self.calls.append("begin")
        self.mark = len(Recorder.log)

    def end_capture(self):
        self.calls.append("end")
        return CaptureStream.Graph(Recorder.log[self.mark:])

    def synchronize(self):
        self.calls.append("sync")

    class Graph:
        def __init__(self, launches):
            self.launches, self.launched_on = list(launches), []

        def upload(self, stream):
            pass

        def launch(self, stream=None):
            self.launched_on.append(stream)


def _signature(launch):
    import cupy

    name, grid, block, args, shared, _ = launch
    return name, grid, block, shared, tuple((a.data.ptr, a.shape) if isinstance(a, cupy.ndarray) else a.item()
                                            for a in args)


def test_capture_records_exactly_the_eager_request_per_batch_size(recorder):
    from kernels.models import llama

    class DeviceFakes(FakeArrays):
        emulated = False

    svc = llama.LlamaService(llama.LLAMA_3_2_1B.with_layers(2), batch_sizes=(1, 4), arrays=DeviceFakes(0))
    s = CaptureStream()
    svc.capture(s)
    assert s.calls == ["sync", "begin", "end", "sync"] * 2
    per_batch = len(recorder) // 4               # eager, captured; for batch 1, then batch 4
    for b, first in ((1, 0), (4, 2 * per_batch)):
        eager, captured = recorder[first:first + per_batch], recorder[first + per_batch:first + 2 * per_batch]
        assert [_signature(x) for x in eager] == [_signature(x) for x in captured]
        graph, out = svc._graphs[("forward", b)]
        assert graph.launches == captured and out.shape == (b, llama.LLAMA_3_2_1B.vocab)
    assert svc.replay(4, s) is svc._graphs[("forward", 4)][1]
    assert svc._graphs[("forward", 4)][0].launched_on == [s]
    with pytest.raises(KeyError, match="capture first"):
        svc.replay_prefill(8, s)
