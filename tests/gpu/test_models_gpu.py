"""GPU tier of the model workloads (`kernels.models`) and their kernels.

- each inference service at its real width (a few layers for the transformers, the whole
  ResNet-50) replays a captured CUDA graph with the same bits as its eager run, for every
  batch size, and its output matches the float64 reference of the model;
- the LLM decode step graph advances the positions on the device like the eager step;
- the new kernels match their references at real shapes (tensor-core fragment layouts,
  ``cp.async``, shared memory above 48 KB: what the CPU emulator does not model);
- the GPT-2 training step's gradients match the NumPy reference on a small model, and
  the step reduces the loss at GPT-2-small width.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from kernels import dtypes

pytestmark = pytest.mark.gpu


@pytest.fixture
def stream():
    import cupy

    s = cupy.cuda.Stream(non_blocking=True)
    yield s
    s.synchronize()


def _done(x, stream):
    """``x`` once ``stream``'s work is done (host reads run on another stream)."""
    stream.synchronize()
    return x


def _bits(x) -> np.ndarray:
    import cupy

    return cupy.asnumpy(x).view(np.uint8)


def _host(x, kind=None) -> np.ndarray:
    import cupy

    return dtypes.to_float64(cupy.asnumpy(x), kind)


def assert_close(got, ref, rtol, atol, what=""):
    got = np.asarray(got, np.float64)
    assert got.shape == np.shape(ref), what
    assert np.isfinite(got).all(), f"{what}: {int((~np.isfinite(got)).sum())} elements not finite"
    err = np.abs(got - ref)
    bad = err > atol + rtol * np.abs(ref)
    assert not bad.any(), f"{what}: {int(bad.sum())}/{got.size} out of tolerance, max error {err.max():.3g}"


def _eager_and_replay(service, batch, stream, reset):
    """(eager output bits, replayed output bits), each run from the state ``reset()`` sets."""
    reset()
    eager = _bits(_done(service.forward(batch, stream), stream))
    reset()
    return eager, _bits(_done(service.replay(batch, stream), stream))


# ---- Llama ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["LLAMA_3_2_1B", "LLAMA_3_1_8B"])
def test_llama_graph_replay_is_bitwise_the_eager_step(model, stream):
    from kernels.models import llama

    cfg = getattr(llama, model).with_layers(2)
    svc = llama.LlamaService(cfg, batch_sizes=(1, 4, 16, 32), max_seq_len=1024, context=512, seed=1)
    svc.capture(stream)
    start = svc.start_positions
    tokens = np.random.default_rng(2).integers(0, cfg.vocab, 32)
    for b in svc.batch_sizes:
        def reset(b=b):
            svc.set_positions(start[:b], tokens[:b], stream)

        eager, replayed = _eager_and_replay(svc, b, stream, reset)
        assert np.array_equal(eager, replayed), f"batch {b}"
        assert np.isfinite(_host(svc.logits[:b])).all()
    # three steps of generation: the graph moves positions and feeds tokens back like the eager steps
    runs = []
    for issue in (svc.forward, svc.replay):
        svc.set_positions(start, tokens, stream)
        for _ in range(3):
            issue(32, stream)
        stream.synchronize()
        runs.append((_bits(svc.tokens), _bits(svc.positions), _bits(svc.logits)))
    assert all(np.array_equal(x, y) for x, y in zip(*runs))
    assert np.array_equal(_host(svc.positions), start + 3)


def test_llama_prefill_and_decode_match_the_reference(stream):
    """Llama-3.2-1B's width, two layers (the 8B's head dim 128 is covered by the kernel tests)."""
    from kernels.models import llama

    cfg = llama.LLAMA_3_2_1B.with_layers(2)
    svc = llama.LlamaService(cfg, batch_sizes=(1, 2), max_seq_len=256, context=64, seed=3)
    prompt = _host(svc.prompt)[:17].astype(np.int64)
    ref = llama.reference_logits(svc, prompt)
    got = _host(_done(svc.prefill(16, stream, slot=1), stream))
    assert_close(got[0], ref[15], 0.05, 0.15, "prefill")
    svc.set_positions([5, 16], [0, prompt[16]], stream)
    step = _host(_done(svc.forward(2, stream), stream))
    assert_close(step[1], ref[16], 0.05, 0.15, "decode after the prefill")
    svc.capture_prefill(16, stream, slot=1)
    eager = _bits(_done(svc.prefill(16, stream, slot=1), stream))
    assert np.array_equal(eager, _bits(_done(svc.replay_prefill(16, stream, slot=1), stream)))


def test_gqa_decode_attention_at_llama_8b_heads(stream):
    import cupy

    from kernels import registry
    from kernels import transformer as tr

    rng = np.random.default_rng(4)
    B, H, Hkv, D, max_seq, chunk = 5, 32, 8, 128, 700, 128
    k = registry.randn(rng, (B, Hkv, max_seq, D), dtypes.BFLOAT16)
    v = registry.randn(rng, (B, Hkv, max_seq, D), dtypes.BFLOAT16)
    q = registry.randn(rng, (B, H * D), dtypes.BFLOAT16)
    positions = np.array([0, 127, 128, 699, 350], np.int32)
    slots = np.array([4, 2, 0, 1, 3], np.int32)
    splits = tr.decode_splits(max_seq, chunk)
    out = cupy.empty((B, H * D), np.uint16)
    device_positions, device_slots = cupy.asarray(positions), cupy.asarray(slots)
    cupy.cuda.get_current_stream().synchronize()      # inputs made on the current stream
    tr.gqa_decode_attention(q, k, v, device_positions, device_slots, out, n_heads=H, chunk=chunk,
                            partial_ml=cupy.empty(B * H * splits * 2, np.float32),
                            partial_acc=cupy.empty(B * H * splits * D, np.float32), stream=stream)
    stream.synchronize()
    ref = tr.reference_gqa_decode(cupy.asnumpy(q).reshape(B, H, D), cupy.asnumpy(k), cupy.asnumpy(v), positions, slots)
    assert_close(_host(out, dtypes.BFLOAT16).reshape(B, H, D), ref, 2**-6, 2**-6, "decode attention")


# ---- ResNet-50 --------------------------------------------------------------------------------------


def test_resnet50_graph_replay_is_bitwise_the_eager_pass_and_matches_the_reference(stream):
    from kernels.models import resnet

    svc = resnet.ResNetService(resnet.RESNET50, batch_sizes=(1, 8, 32), seed=5)
    svc.capture(stream)
    for b in svc.batch_sizes:
        eager, replayed = _eager_and_replay(svc, b, stream, lambda: None)
        assert np.array_equal(eager, replayed), f"batch {b}"
    got = _host(_done(svc.forward(1, stream), stream))
    ref = resnet.reference_forward(svc, 1)
    assert np.isfinite(ref).all() and np.abs(ref).max() > 0.1
    assert_close(got, ref, 0.05, 0.05 * np.abs(ref).max(), "logits")


@pytest.mark.parametrize("shape", [(2, 14, 14, 256, 256, 3, 1, 1), (3, 56, 56, 64, 256, 1, 1, 0),
                                   (2, 224, 224, 3, 64, 7, 2, 3), (4, 28, 28, 512, 1000, 1, 2, 0)])
def test_conv2d_nhwc_at_resnet_shapes(shape, stream):
    import cupy

    from kernels import convnet, registry

    N, H, W, C, K, R, stride, pad = shape
    rng = np.random.default_rng(6)
    x = registry.randn(rng, (N, H, W, C), dtypes.FLOAT16)
    w = registry.randn(rng, (R, R, C, K), dtypes.FLOAT16, (2.0 / (C * R * R)) ** 0.5)
    b = registry.randn(rng, (K,), dtypes.FLOAT16)
    P, Q = convnet.conv_output_hw(H, W, (R, R), stride, pad)
    res = registry.randn(rng, (N, P, Q, K), dtypes.FLOAT16)
    out = cupy.full((N, P, Q, K), np.nan, np.float16)
    cupy.cuda.get_current_stream().synchronize()
    convnet.conv2d_nhwc(x, w, b, out, stride=stride, padding=pad, residual=res, relu=True, stream=stream)
    stream.synchronize()
    ref = convnet.reference_conv2d_nhwc(*(cupy.asnumpy(t) for t in (x, w, b)), stride, pad, cupy.asnumpy(res), True)
    assert_close(_host(out), ref, 2**-9, 2**-8 * 4, "conv")


# ---- BERT -------------------------------------------------------------------------------------------


def test_bert_graph_replay_is_bitwise_the_eager_pass_and_matches_the_reference(stream):
    from kernels.models import bert

    svc = bert.BertService(dataclasses.replace(bert.BERT_BASE, n_layers=2), batch_sizes=(1, 8, 32), seed=7)
    svc.capture(stream)
    for b in svc.batch_sizes:
        pooled = _bits(_done(svc.forward(b, stream), stream))
        hidden = _bits(svc.hidden_states[:b * 128])
        with stream:
            svc.hidden_states.fill(0)   # the replay must write them again
        assert np.array_equal(pooled, _bits(_done(svc.replay(b, stream), stream))), f"batch {b}"
        assert np.array_equal(hidden, _bits(svc.hidden_states[:b * 128])), f"batch {b}"
    pooled = _host(_done(svc.forward(2, stream), stream))
    ref_pooled, ref_hidden = bert.reference_forward(svc, 2)
    assert_close(_host(svc.hidden_states[:256]), ref_hidden, 0.02, 0.05, "hidden states")
    assert_close(pooled, ref_pooled, 0.02, 0.02, "pooled")


# ---- GPT-2 training ------------------------------------------------------------------------------------


def test_gpt2_step_gradients_match_the_reference_on_a_small_model(stream):
    from kernels.models import gpt2

    cfg = gpt2.GPT2Config(name="small", n_layers=2, hidden=128, n_heads=2, vocab=1000, max_positions=256,
                          seq_len=200, micro_batch=2, vocab_chunk=256, gemm_max_k=256)
    job = gpt2.GPT2TrainingJob(cfg, seed=8, stream=stream)
    loss, ref = gpt2.reference_loss_and_grads(job)
    job.forward()
    assert abs(job.loss() - loss) < 0.01 * loss
    job.backward()
    stream.synchronize()
    for name, g in job.grads.items():
        got = _host(g)
        err = np.linalg.norm(got - ref[name]) / max(np.linalg.norm(ref[name]), 1e-12)
        assert err < 0.05, f"{name}: relative error {err:.2g}"


def test_training_attention_at_gpt2_sequence_length(stream):
    import cupy

    from kernels import registry
    from kernels import training as tr

    rng = np.random.default_rng(9)
    B, S, H = 1, 1024, 2
    d = 64 * H
    qkv = registry.randn(rng, (B * S, 3 * d), dtypes.BFLOAT16)
    grad_out = registry.randn(rng, (B * S, d), dtypes.BFLOAT16)
    out, lse = cupy.empty((B * S, d), np.uint16), cupy.empty((B, H, S), np.float32)
    grad_qkv = cupy.empty_like(qkv)
    cupy.cuda.get_current_stream().synchronize()
    tr.attention_forward(qkv, out, lse, batch=B, n_heads=H, stream=stream)
    tr.attention_backward(qkv, out, lse, grad_out, cupy.empty((B, H, S), np.float32), grad_qkv, batch=B, n_heads=H,
                          stream=stream)
    stream.synchronize()
    q, k, v = (_host(t, dtypes.BFLOAT16).reshape(B, S, H, 64).transpose(0, 2, 1, 3)
               for t in cupy.split(qkv, 3, axis=1))
    ref_out, dq, dk, dv = tr.reference_attention_backward(
        q, k, v, _host(grad_out, dtypes.BFLOAT16).reshape(B, S, H, 64).transpose(0, 2, 1, 3))
    merge = lambda x: x.transpose(0, 2, 1, 3).reshape(B * S, d)   # noqa: E731
    assert_close(_host(out, dtypes.BFLOAT16), merge(ref_out), 0.02, 0.02, "out")
    got = np.split(_host(grad_qkv, dtypes.BFLOAT16), 3, axis=1)
    for name, g, ref in zip("qkv", got, (dq, dk, dv)):
        assert_close(g, merge(ref), 0.03, 0.03 * np.abs(ref).max(), f"d{name}")


def test_gpt2_small_training_reduces_the_loss():
    from kernels.models import gpt2

    job = gpt2.GPT2TrainingJob(dataclasses.replace(gpt2.GPT2_SMALL, n_layers=2, lr=1e-3), seed=10)
    losses = []
    for _ in range(6):
        job.step()
        losses.append(job.loss())
    assert all(np.isfinite(losses))
    assert abs(losses[0] - np.log(50257)) < 1.0        # random init: about uniform over the vocabulary
    assert losses[-1] < losses[0] - 0.5, losses
    stats = job.run(iters=2)
    assert stats["iters"] == 2 and stats["tflops"] > 0


# ---- under lithos' opt-in ----------------------------------------------------------------------------


def _plain_and_atomized(run):
    """``run()``'s host results with launches as written, then split into atoms by lithos (strict)."""
    import kernels

    lithos = pytest.importorskip("lithos")
    kernels.reset_cache()
    plain = run()
    kernels.reset_cache()
    lithos.set_atomizer(lithos.Atomizer(atom_blocks=5, strict=True))
    try:
        atomized = run()
    finally:
        lithos.set_atomizer(None)
        kernels.reset_cache()
    return plain, atomized


def test_every_model_computes_the_same_bits_when_atomized(stream):
    from kernels.models import bert, gpt2, llama, resnet

    svc = llama.LlamaService(llama.LLAMA_3_2_1B.with_layers(1), batch_sizes=(4,), max_seq_len=512, context=256,
                             seed=11)
    net = resnet.ResNetService(resnet.RESNET50, batch_sizes=(2,), seed=12)
    enc = bert.BertService(dataclasses.replace(bert.BERT_BASE, n_layers=1), batch_sizes=(2,), seed=13)
    cfg = gpt2.GPT2Config(name="small", n_layers=1, hidden=128, n_heads=2, vocab=1000, max_positions=256,
                          seq_len=200, micro_batch=2, vocab_chunk=256, gemm_max_k=256)

    def run():
        svc.set_positions(svc.start_positions, np.arange(4), stream)
        out = [_bits(_done(svc.forward(4, stream), stream)), _bits(svc.tokens), _bits(svc.positions)]
        out.append(_bits(_done(svc.prefill(40, stream, slot=2), stream)))
        out.append(_bits(_done(net.forward(2, stream), stream)))
        out.append(_bits(_done(enc.forward(2, stream), stream)))
        job = gpt2.GPT2TrainingJob(cfg, seed=14, stream=stream)
        job.step()
        stream.synchronize()
        return out + [_bits(job._grads), _bits(job._master), _bits(job._compute)]

    plain, atomized = _plain_and_atomized(run)
    for i, (p, a) in enumerate(zip(plain, atomized)):
        assert np.array_equal(p, a), f"result {i}"
