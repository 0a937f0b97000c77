"""GPU tier of the kernels package.

Every registry case runs at its 'small' size on fresh random inputs (an RNG seeded per
test from the test's id), with every output poisoned with NaN first, on a non-null
stream; the result must match the float64 reference within the case's tolerance and have
every element written. Further tests cover the SGEMM tile/transpose variants, the
vectorized kernels' fallback paths, strided attention views, the stream arguments, the
lazy construction through the current ``cupy.RawKernel``/``RawModule``, bitwise-identical
results under lithos' global opt-in, and the workload drivers.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest

import kernels
from kernels import dtypes, registry

pytestmark = pytest.mark.gpu


@pytest.fixture
def rng(request):
    """Seeded per test (from its node id): reproducible, different across tests."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture
def stream():
    import cupy

    s = cupy.cuda.Stream(non_blocking=True)
    yield s
    s.synchronize()


def _host(a):
    return registry.host(a)


def _randn(rng, shape, kind="float32", scale=1.0):
    """Random device data, ready for use on any stream (generated on the current stream)."""
    import cupy

    x = registry.randn(rng, shape, kind, scale)
    cupy.cuda.get_current_stream().synchronize()
    return x


def assert_close(got, ref, rtol, atol, what=""):
    got = _host(got) if not isinstance(got, np.ndarray) else dtypes.to_float64(got)
    assert got.shape == np.shape(ref), what
    assert np.isfinite(got).all(), f"{what}: {int((~np.isfinite(got)).sum())} elements unwritten or not finite"
    err = np.abs(got - ref)
    bad = err > atol + rtol * np.abs(ref)
    assert not bad.any(), f"{what}: {int(bad.sum())}/{got.size} out of tolerance, max error {err.max():.3g}"


# ---- every registry case ---------------------------------------------------------------------


@pytest.mark.parametrize("name", registry.case_names())
def test_registry_case_small(name, rng, stream):
    case = registry.get_case(name)
    prep = case.make(rng, "small")
    registry.poison(prep)
    for arr in prep.poison:
        assert np.isnan(_host(arr)).all()
    result = prep.run(stream)
    stream.synchronize()
    assert result is prep.outputs[0]
    registry.check(prep)
    assert prep.flops >= 0 and prep.bytes > 0


# ---- variants and fallback paths ---------------------------------------------------------------


@pytest.mark.parametrize("tile", ["64x64", "128x128"])
@pytest.mark.parametrize("ta,tb", [(False, False), (False, True), (True, False), (True, True)])
def test_sgemm_tiles_and_transposes(tile, ta, tb, rng, stream):
    from kernels.ops import gemm, reference_gemm

    M, N, K = 257, 131, 67
    a = _randn(rng, (K, M) if ta else (M, K))
    b = _randn(rng, (N, K) if tb else (K, N))
    out = gemm(a, b, trans_a=ta, trans_b=tb, tile=tile, alpha=0.5, stream=stream)
    stream.synchronize()
    assert_close(out, reference_gemm(_host(a), _host(b), trans_a=ta, trans_b=tb, alpha=0.5), 1e-4, 1e-4)


@pytest.mark.parametrize("ta,tb", [(False, False), (True, False), (False, True)])
def test_split_k_sgemm_is_close_and_the_same_bits_every_run(ta, tb, rng, stream):
    import cupy

    from kernels.ops import gemm, reference_gemm

    M, N, K = 257, 131, 4099
    a = _randn(rng, (K, M) if ta else (M, K))
    b = _randn(rng, (N, K) if tb else (K, N))
    ref = reference_gemm(_host(a), _host(b), trans_a=ta, trans_b=tb, alpha=0.5)
    for split_k in (2, 3):
        runs = []
        for _ in range(2):
            out = cupy.full((M, N), cupy.nan, cupy.float32)   # poisoned
            gemm(a, b, out=out, trans_a=ta, trans_b=tb, alpha=0.5, split_k=split_k, stream=stream)
            stream.synchronize()
            runs.append(_host(out))
        assert np.array_equal(runs[0], runs[1]), f"split_k={split_k} not deterministic"
        assert_close(runs[0], ref, 1e-4, 1e-4 * np.sqrt(K))


@pytest.mark.parametrize("kind", ["float16", "bfloat16"])
def test_tensor_core_gemm_transposed_operands(kind, rng, stream):
    from kernels.ops import gemm, reference_gemm

    a, b = _randn(rng, (48, 72), kind), _randn(rng, (136, 48), kind)
    out = gemm(a, b, trans_a=True, trans_b=True, stream=stream)
    stream.synchronize()
    u = dtypes.unit_roundoff(kind)
    ref = reference_gemm(_host(a), _host(b), trans_a=True, trans_b=True)
    assert_close(out, ref, 4 * u, 4 * u * 7)


@pytest.mark.parametrize("kind", ["float32", "float16", "bfloat16"])
def test_vector_kernels_on_misaligned_and_ragged_inputs(kind, rng, stream):
    from kernels import ops

    u = dtypes.unit_roundoff(kind)
    tol = (2e-5, 2e-6) if kind == "float32" else (4 * u, 0.4 * u)
    x = _randn(rng, (100_003,), kind, 2.0)
    view = x[1:]                                        # not 16-byte aligned: element-wise path
    g = ops.gelu(view, stream=stream)
    stream.synchronize()
    assert_close(g, ops.reference_gelu(_host(view)), *tol, "gelu misaligned")
    rows, cols = 33, 1001                               # bias with cols % vector width != 0
    a, r = _randn(rng, (rows, cols), kind), _randn(rng, (rows, cols), kind)
    bias = _randn(rng, (cols,), kind)
    y = ops.residual_add(a, r, bias=bias, stream=stream)
    stream.synchronize()
    assert_close(y, ops.reference_residual_add(_host(a), _host(r), _host(bias)), 4 * u, 4 * u, "residual")
    if kind == "float32":
        s = ops.reduce_sum(view, stream=stream)
        stream.synchronize()
        assert_close(s, ops.reference_sum(_host(view)), 1e-5, 1e-6 * view.size, "sum misaligned")


def test_attention_on_heads_split_from_a_fused_projection(rng, stream):
    import cupy

    from kernels.ops import attention, reference_attention

    B, S, H, D = 2, 150, 4, 64
    qkv = _randn(rng, (B, S, 3, H, D), "float16")
    q, k, v = (qkv[:, :, i].transpose(0, 2, 1, 3) for i in range(3))
    with stream:
        out = cupy.empty((B, S, H, D), cupy.float16)
        out.fill(np.nan)
    attention(q, k, v, causal=True, out=out.transpose(0, 2, 1, 3), stream=stream)
    stream.synchronize()
    host = _host(qkv)
    ref = reference_attention(*(host[:, :, i].transpose(0, 2, 1, 3) for i in range(3)), causal=True)
    assert_close(out, ref.transpose(0, 2, 1, 3), 2e-3, 4e-3)


def test_reduction_with_three_passes(rng, stream):
    from kernels.ops import reduce_max, reduce_sum

    n = 4096 * 4096 + 12_345
    x = _randn(rng, (n,))
    host = _host(x)
    total = reduce_sum(x, stream=stream)
    peak = reduce_max(x, stream=stream)
    stream.synchronize()
    assert abs(float(total) - host.sum()) <= 1e-6 * n
    assert float(peak) == host.max()


# ---- streams and kernel construction -------------------------------------------------------------


def test_stream_arguments(rng):
    import cupy

    from kernels.ops import gemm, reference_gemm

    class Foreign:
        """A stream from another library: only the CUDA stream protocol."""

        def __init__(self, s):
            self._s = s

        def __cuda_stream__(self):
            return (0, self._s.ptr)

    s = cupy.cuda.Stream(non_blocking=True)
    a, b = _randn(rng, (70, 50)), _randn(rng, (50, 90))
    ref = reference_gemm(_host(a), _host(b))
    out = gemm(a, b, stream=Foreign(s))
    s.synchronize()
    assert_close(out, ref, 1e-4, 1e-4, "__cuda_stream__")
    with s:
        out2 = gemm(a, b)          # None: CuPy's current stream
    s.synchronize()
    assert_close(out2, ref, 1e-4, 1e-4, "current stream")


def test_kernels_are_built_through_the_current_cupy_classes(monkeypatch, rng, stream):
    import cupy

    from kernels.ops import gemm, layernorm

    made = {"kernel": 0, "module": 0}

    class CountingKernel(cupy.RawKernel):
        def __init__(self, *args, **kwargs):
            made["kernel"] += 1
            super().__init__(*args, **kwargs)

    class CountingModule(cupy.RawModule):
        def __init__(self, *args, **kwargs):
            made["module"] += 1
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(cupy, "RawKernel", CountingKernel)
    monkeypatch.setattr(cupy, "RawModule", CountingModule)
    kernels.reset_cache()
    try:
        a = _randn(rng, (64, 64))
        gemm(a, a, stream=stream)
        w = _randn(rng, (64,))
        layernorm(a, w, w, stream=stream)
        stream.synchronize()
        assert made == {"kernel": 1, "module": 1}
        gemm(a, a, stream=stream)
        assert made["kernel"] == 1     # cached
    finally:
        kernels.reset_cache()


def _run_case(name, seed, stream):
    prep = registry.get_case(name).make(np.random.default_rng(seed), "small")
    registry.poison(prep)
    prep.run(stream)
    stream.synchronize()
    return [registry.host(o) for o in prep.outputs]


@pytest.mark.parametrize("name", registry.case_names())
def test_registry_case_bitwise_identical_under_lithos_opt_in(name, stream):
    lithos = pytest.importorskip("lithos")
    seed = zlib.crc32(name.encode())
    plain = _run_case(name, seed, stream)
    kernels.reset_cache()
    lithos.set_atomizer(lithos.Atomizer(atom_blocks=5, strict=True))
    try:
        atomized = _run_case(name, seed, stream)
    finally:
        lithos.set_atomizer(None)
        kernels.reset_cache()
    for p, a in zip(plain, atomized):
        assert np.array_equal(p, a, equal_nan=True), name


# ---- workloads -------------------------------------------------------------------------------------


def _layers_to_host(stack):
    import cupy

    return [{k: cupy.asnumpy(v) for k, v in p.items()} for p in stack.layers]


@pytest.mark.parametrize("kind,rtol,atol", [("float32", 1e-4, 1e-3), ("float16", 2e-2, 4e-2)])
def test_decoder_forward_matches_reference(kind, rtol, atol, stream):
    import cupy

    from kernels import workloads

    cfg = workloads.DecoderConfig(d_model=256, n_heads=4, n_layers=2, seq_len=64, dtype=kind)
    stack = workloads.DecoderStack(cfg, max_batch=3, seed=5, stream=stream)
    x = stack.random_input(np.random.default_rng(6), 3, stream)
    out = stack.forward(x, 3, stream)
    stream.synchronize()
    ref = workloads.reference_decoder_forward(_layers_to_host(stack), cupy.asnumpy(x), cfg, 3)
    assert_close(out, ref, rtol, atol, "decoder")


def test_inference_service_serves_poisson_requests():
    from kernels import workloads

    cfg = workloads.DecoderConfig(d_model=256, n_heads=4, n_layers=2, seq_len=64)
    svc = workloads.InferenceService(cfg, batch=(1, 4), rate_hz=300.0, seed=3)
    assert svc.stream.ptr != 0
    svc.warmup()
    lat = svc.run(0.5)
    assert len(lat) >= 20 and np.isfinite(lat).all() and (lat > 0).all()
    assert len(svc.records) == len(lat)
    assert all(1 <= b <= 4 for *_, b in svc.records)
    assert all(arr <= start + 1e-3 and start <= end for arr, start, end, _ in svc.records)
    summary = workloads.latency_summary(lat)
    assert summary["p50"] <= summary["p99"] <= summary["max"]
    again = workloads.InferenceService(cfg, batch=(1, 4), rate_hz=300.0, seed=3)
    again.run(0.2)
    assert [r[3] for r in again.records] == [r[3] for r in svc.records[: len(again.records)]]  # seeded


@pytest.mark.parametrize("gemm_max_k", [None, 64])   # 64: the backward GEMMs in 3 and 4 K-slices
def test_training_job_gradients_and_progress(gemm_max_k):
    import cupy

    from kernels import workloads

    cfg = workloads.MLPConfig(d_model=64, hidden=192, batch=256, n_layers=2, optimizer="adam", lr=3e-3,
                              gemm_max_k=gemm_max_k)
    job = workloads.TrainingJob(cfg, seed=1)
    host = lambda arrs: [cupy.asnumpy(a) for a in arrs]  # noqa: E731
    w1, w2, x0, target = host(job.w1), host(job.w2), cupy.asnumpy(job.xs[0]), cupy.asnumpy(job.target)
    job.forward()
    job.backward()
    job.stream.synchronize()
    loss0, grads = workloads.reference_mlp_gradients(w1, w2, x0, target)
    for i, (got, ref) in enumerate(zip(job.grads, grads)):
        assert_close(got, ref, 1e-3, 1e-3 * np.abs(ref).max(), f"gradient {i}")
    assert job.loss() == pytest.approx(loss0, rel=1e-4)
    stats = job.run(iters=30)
    assert stats["iters"] == 30 and stats["iters_per_s"] > 0
    assert job.loss() < 0.9 * loss0
    sgd = workloads.TrainingJob(workloads.MLPConfig(d_model=64, hidden=128, batch=128, optimizer="sgd", lr=1.0), seed=2)
    before = sgd.loss()
    sgd.run(iters=5)
    assert sgd.loss() < before


def test_batch_inference_runs():
    from kernels import workloads

    cfg = workloads.DecoderConfig(d_model=256, n_heads=4, n_layers=2, seq_len=64)
    job = workloads.BatchInference(cfg, batch=8, seed=4)
    stats = job.run(iters=3)
    assert stats["iters"] == 3 and stats["tokens_per_s"] > 0 and stats["tflops"] > 0
    out = job.step()
    job.stream.synchronize()
    assert np.isfinite(_host(out)).all()
