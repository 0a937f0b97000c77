"""Workload drivers built from the kernels: the tenants of lithos' experiments.

- `InferenceService`: a latency-critical service. Each request is one forward pass
  (prefill) of a pre-LayerNorm transformer decoder stack over ``batch x seq_len`` tokens;
  requests arrive as a seeded Poisson process; the latency of a request is host wall
  clock from its arrival to its completion (after a stream synchronization), so queueing
  behind earlier requests counts.
- `TrainingJob`: a throughput job. Forward and backward of a residual GELU-MLP stack on a
  large fixed batch with an MSE loss, then an Adam (or SGD) step; every GEMM is a long
  kernel (275 GFLOP each at the defaults: an estimated 5-10 ms on an H100).
- `BatchInference`: a best-effort job. The decoder stack of the service at a large batch,
  back to back.

Every driver issues all its GPU work (set-up included) on one stream: the one it was
given, or a new non-blocking stream of its own, never the null stream.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np

from kernels import dtypes
from kernels._compile import as_cupy_stream, cdiv
from kernels.attention import attention, reference_attention
from kernels.elementwise import gelu, gelu_backward, mse_grad, reference_gelu, reference_gelu_backward, residual_add
from kernels.gemm import gemm
from kernels.norm import layernorm, reference_layernorm
from kernels.optim import adam_step, sgd_step


def _own_stream(stream: Any) -> Any:
    """The CuPy stream for ``stream``; a new non-blocking one when None."""
    import cupy

    if stream is None:
        return cupy.cuda.Stream(non_blocking=True)
    s = as_cupy_stream(stream)
    if s.ptr == 0:
        raise ValueError("workloads never run on the null stream; pass a stream of your own (or None)")
    return s


def _randn(rng: np.random.Generator, shape: tuple[int, ...], kind: str, scale: float = 1.0, shift: float = 0.0) -> Any:
    from kernels.registry import randn

    if shift == 0.0:
        return randn(rng, shape, kind, scale)
    x = randn(rng, shape, dtypes.FLOAT32, scale)
    x += np.float32(shift)
    return _cast(x, kind)


def _cast(x: Any, kind: str) -> Any:
    import cupy

    if kind == dtypes.FLOAT32:
        return x
    if kind == dtypes.FLOAT16:
        return x.astype(cupy.float16)
    u = x.view(cupy.uint32).astype(cupy.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(cupy.uint16)


def _run_steps(step: Any, stream: Any, iters: int | None, duration_s: float | None) -> tuple[int, float]:
    """Call ``step(stream)`` and synchronize, ``iters`` times or for ``duration_s`` seconds;
    returns (steps run, seconds).

    Raises
    ------
    ValueError
        Unless exactly one of ``iters`` and ``duration_s`` is given.
    """
    if (iters is None) == (duration_s is None):
        raise ValueError("give exactly one of iters and duration_s")
    t0 = time.perf_counter()
    n = 0
    while (iters is not None and n < iters) or (duration_s is not None and time.perf_counter() - t0 < duration_s):
        step(stream)
        stream.synchronize()
        n += 1
    return n, time.perf_counter() - t0


def latency_summary(latencies_ms: Any) -> dict[str, float]:
    """Count, mean, p50, p90, p99 and max of latencies (ms)."""
    lat = np.asarray(latencies_ms, dtype=np.float64)
    if lat.size == 0:
        return {"count": 0}
    return {"count": int(lat.size), "mean": float(lat.mean()), "p50": float(np.percentile(lat, 50)),
            "p90": float(np.percentile(lat, 90)), "p99": float(np.percentile(lat, 99)), "max": float(lat.max())}


# ---- transformer decoder stack ------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
    """Shape of the decoder stack.

    Attributes
    ----------
    d_model : int
        Model width (a multiple of ``n_heads``; head_dim = d_model / n_heads must be 64 or 128).
    n_heads : int
    n_layers : int
    seq_len : int
        Tokens per sequence (prompt length of a request).
    ffn_mult : int
        MLP hidden width = ffn_mult * d_model.
    dtype : str
        ``"float16"``, ``"bfloat16"`` or ``"float32"`` (weights and activations).
    eps : float
        LayerNorm epsilon.
    """

    d_model: int = 1024
    n_heads: int = 16
    n_layers: int = 4
    seq_len: int = 128
    ffn_mult: int = 4
    dtype: str = dtypes.FLOAT16
    eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads or self.d_model // self.n_heads not in (64, 128):
            raise ValueError(f"d_model / n_heads must be 64 or 128, got {self.d_model} / {self.n_heads}")
        if self.dtype not in dtypes.CTYPE:
            raise ValueError(f"dtype must be one of {sorted(dtypes.CTYPE)}, got {self.dtype!r}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def flops_per_token(self) -> float:
        """GEMM FLOPs per token (attention excluded): 2 * params of the linear layers."""
        d, f = self.d_model, self.ffn_mult * self.d_model
        return 2.0 * self.n_layers * (3 * d * d + d * d + 2 * d * f)


class DecoderStack:
    """Pre-LayerNorm decoder blocks (causal multi-head self-attention, GELU MLP), forward only.

    ``x -> x + W_o attn(LN1(x) W_qkv) + b_o -> x + W_2 gelu(LN2(x) W_1) + b_2`` per layer.

    Parameters
    ----------
    config : DecoderConfig
    max_batch : int
        Largest batch (sequences) a forward pass takes; the workspace is sized for it.
    seed : int
        Seed of the random weights.
    stream : cupy stream or None
        Stream for the set-up work.
    """

    def __init__(self, config: DecoderConfig, max_batch: int, seed: int = 0, stream: Any = None):
        import cupy

        self.config = config
        self.max_batch = int(max_batch)
        c, kind = config, config.dtype
        d, f = c.d_model, c.ffn_mult * c.d_model
        rows = self.max_batch * c.seq_len
        rng = np.random.default_rng(seed)
        s = _own_stream(stream)
        with s:
            self.layers = []
            for _ in range(c.n_layers):
                self.layers.append({
                    "ln1_w": _randn(rng, (d,), kind, 0.1, 1.0), "ln1_b": _randn(rng, (d,), kind, 0.1),
                    "w_qkv": _randn(rng, (d, 3 * d), kind, d**-0.5),
                    "w_o": _randn(rng, (d, d), kind, d**-0.5), "b_o": _randn(rng, (d,), kind, 0.1),
                    "ln2_w": _randn(rng, (d,), kind, 0.1, 1.0), "ln2_b": _randn(rng, (d,), kind, 0.1),
                    "w_1": _randn(rng, (d, f), kind, d**-0.5),
                    "w_2": _randn(rng, (f, d), kind, f**-0.5), "b_2": _randn(rng, (d,), kind, 0.1),
                })
            dt = dtypes.numpy_dtype(kind)
            self._ws = {name: cupy.empty((rows, width), dtype=dt) for name, width in
                        (("x", d), ("h", d), ("qkv", 3 * d), ("attn", d), ("proj", d), ("u", f))}
        s.synchronize()

    def random_input(self, rng: np.random.Generator, batch: int, stream: Any) -> Any:
        """A random (batch * seq_len, d_model) activation on ``stream``."""
        with as_cupy_stream(stream):
            return _randn(rng, (batch * self.config.seq_len, self.config.d_model), self.config.dtype)

    def forward(self, x: Any, batch: int, stream: Any) -> Any:
        """Run the stack on ``x`` ((batch * seq_len, d_model)); returns a workspace view.

        The result is overwritten by the next call; ``x`` is not modified.
        """
        c = self.config
        if not 1 <= batch <= self.max_batch:
            raise ValueError(f"batch must be in 1..{self.max_batch}, got {batch}")
        T, S, H, Dh = batch * c.seq_len, c.seq_len, c.n_heads, c.head_dim
        if tuple(x.shape) != (T, c.d_model):
            raise ValueError(f"x has shape {tuple(x.shape)}; expected ({T}, {c.d_model})")
        ws = {k: v[:T] for k, v in self._ws.items()}
        qkv5 = ws["qkv"].reshape(batch, S, 3, H, Dh)
        q, k, v = (qkv5[:, :, i].transpose(0, 2, 1, 3) for i in range(3))   # (batch, H, S, Dh) views
        attn_out = ws["attn"].reshape(batch, S, H, Dh).transpose(0, 2, 1, 3)
        resid = x
        for p in self.layers:
            layernorm(resid, p["ln1_w"], p["ln1_b"], c.eps, out=ws["h"], stream=stream)
            gemm(ws["h"], p["w_qkv"], out=ws["qkv"], stream=stream)
            attention(q, k, v, causal=True, out=attn_out, stream=stream)
            gemm(ws["attn"], p["w_o"], out=ws["proj"], stream=stream)
            residual_add(ws["proj"], resid, bias=p["b_o"], out=ws["x"], stream=stream)
            resid = ws["x"]
            layernorm(resid, p["ln2_w"], p["ln2_b"], c.eps, out=ws["h"], stream=stream)
            gemm(ws["h"], p["w_1"], out=ws["u"], stream=stream)
            gelu(ws["u"], out=ws["u"], stream=stream)
            gemm(ws["u"], p["w_2"], out=ws["proj"], stream=stream)
            residual_add(ws["proj"], resid, bias=p["b_2"], out=resid, stream=stream)
        return resid


def reference_decoder_forward(layers: list[dict[str, np.ndarray]], x: np.ndarray, config: DecoderConfig,
                              batch: int) -> np.ndarray:
    """float64 forward pass of `DecoderStack` from host copies of its weights and input.

    Parameters
    ----------
    layers : list of dict
        Per layer, the host arrays of ``DecoderStack.layers`` (bfloat16 as uint16 bits).
    x : numpy.ndarray
        (batch * seq_len, d_model) input.
    config : DecoderConfig
    batch : int

    Returns
    -------
    numpy.ndarray
        (batch * seq_len, d_model), float64.
    """
    c = config
    S, H, Dh, T = c.seq_len, c.n_heads, c.head_dim, batch * c.seq_len
    f64 = dtypes.to_float64
    r = f64(x)
    for p in layers:
        h = reference_layernorm(r, p["ln1_w"], p["ln1_b"], c.eps)
        qkv = (h @ f64(p["w_qkv"])).reshape(batch, S, 3, H, Dh)
        q, k, v = (qkv[:, :, i].transpose(0, 2, 1, 3) for i in range(3))
        o = reference_attention(q, k, v, causal=True).transpose(0, 2, 1, 3).reshape(T, c.d_model)
        r = r + o @ f64(p["w_o"]) + f64(p["b_o"])
        h = reference_layernorm(r, p["ln2_w"], p["ln2_b"], c.eps)
        r = r + reference_gelu(h @ f64(p["w_1"])) @ f64(p["w_2"]) + f64(p["b_2"])
    return r


class InferenceService:
    """A latency-critical inference service: Poisson arrivals, one forward pass per request.

    Parameters
    ----------
    config : DecoderConfig
        The model (defaults: d_model 1024, 16 heads, 4 layers, 128-token prompts, fp16;
        13 GFLOP of GEMMs per sequence, sized for roughly 0.3-1 ms per request on an H100:
        an estimate, not yet measured).
    batch : int or (int, int)
        Sequences per request, or an inclusive range drawn uniformly per request (1-8).
    rate_hz : float
        Mean request arrival rate.
    seed : int
        Seeds the weights, the inputs, the arrival times and the batch draws.
    stream : cupy stream, object with ``__cuda_stream__``, or None
        Default stream for set-up and requests; a new non-blocking stream when None.
    graphs : bool
        Replay each request as a CUDA graph captured once per batch size by `warmup`, as
        inference servers do (one launch instead of one per kernel); False issues every
        kernel of a request from Python.
    """

    def __init__(self, config: DecoderConfig | None = None, batch: int | tuple[int, int] = (1, 8),
                 rate_hz: float = 200.0, seed: int = 0, stream: Any = None, graphs: bool = False):
        self.config = config or DecoderConfig()
        self.batch_range = (batch, batch) if isinstance(batch, int) else (int(batch[0]), int(batch[1]))
        if not 1 <= self.batch_range[0] <= self.batch_range[1]:
            raise ValueError(f"batch must be >= 1 (or a range lo <= hi), got {batch!r}")
        if rate_hz <= 0:
            raise ValueError(f"rate_hz must be positive, got {rate_hz}")
        self.rate_hz = float(rate_hz)
        self.seed = seed
        self.stream = _own_stream(stream)
        self.model = DecoderStack(self.config, self.batch_range[1], seed, self.stream)
        rng = np.random.default_rng(seed + 1)
        self._inputs = [self.model.random_input(rng, self.batch_range[1], self.stream) for _ in range(4)]
        self.stream.synchronize()
        self.graphs = bool(graphs)
        self._graphs: dict[int, Any] = {}  # batch -> captured graph (and its output view)
        #: (arrival, start, end, batch) of each request of the last `run`, perf_counter seconds.
        self.records: list[tuple[float, float, float, int]] = []

    def request(self, batch: int, stream: Any = None, which: int = 0) -> Any:
        """Issue one request's forward pass (no synchronization); returns the output view.

        With `graphs`, the request is the replay of its batch size's graph (captured by
        `warmup`; its input is the first of the service's inputs), else its kernels one by one.
        """
        s = self.stream if stream is None else as_cupy_stream(stream)
        if self.graphs:
            graph, out = self._graphs[batch]
            graph.launch(stream=s)
            return out
        x = self._inputs[which % len(self._inputs)][: batch * self.config.seq_len]
        return self.model.forward(x, batch, s)

    def eager_request(self, batch: int, stream: Any = None, which: int = 0) -> Any:
        """One request's kernels issued one by one, whatever `graphs` says."""
        s = self.stream if stream is None else as_cupy_stream(stream)
        x = self._inputs[which % len(self._inputs)][: batch * self.config.seq_len]
        return self.model.forward(x, batch, s)

    def capture(self) -> None:
        """Capture one request of every batch size of the range as a CUDA graph (on a
        capture stream of its own, after the set-up work on the service's stream)."""
        import cupy

        lo, hi = self.batch_range
        capture = cupy.cuda.Stream(non_blocking=True)
        self.stream.synchronize()
        for batch in range(lo, hi + 1):
            with capture:
                capture.begin_capture()
                out = self.eager_request(batch, capture, 0)
                self._graphs[batch] = (capture.end_capture(), out)
        capture.synchronize()

    def warmup(self, stream: Any = None, n: int = 3) -> None:
        """Build the kernels, run ``n`` requests of every batch in the range and, with
        `graphs`, capture each batch size's graph and replay it ``n`` times.

        Every batch size, not just the largest: kernel variants and their first launches
        depend on the shapes, and one built during a measurement delays every request
        queued behind it.
        """
        s = self.stream if stream is None else as_cupy_stream(stream)
        lo, hi = self.batch_range
        for i in range(n):
            for batch in range(lo, hi + 1):
                self.eager_request(batch, s, i)
        s.synchronize()
        if self.graphs:
            self.capture()
            for _ in range(n):
                for batch in range(lo, hi + 1):
                    self.request(batch, s)
            s.synchronize()

    def run(self, duration_s: float, stream: Any = None, max_requests: int | None = None) -> np.ndarray:
        """Serve requests arriving over ``duration_s`` seconds; returns their latencies (ms).

        Arrivals are a Poisson process of rate `rate_hz` starting now. A request starts at
        its arrival, or when the previous one completes if that is later; it completes when
        ``stream.synchronize()`` returns.
        """
        s = self.stream if stream is None else as_cupy_stream(stream)
        rng = np.random.default_rng(self.seed + 2)
        lo, hi = self.batch_range
        self.records = []
        t0 = time.perf_counter()
        arrival = t0 + rng.exponential(1.0 / self.rate_hz)
        while arrival < t0 + duration_s and (max_requests is None or len(self.records) < max_requests):
            wait = arrival - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            batch = int(rng.integers(lo, hi + 1))
            start = time.perf_counter()
            self.request(batch, s, len(self.records))
            s.synchronize()
            end = time.perf_counter()
            self.records.append((arrival, start, end, batch))
            arrival += rng.exponential(1.0 / self.rate_hz)
        return np.array([(end - arr) * 1e3 for arr, _, end, _ in self.records])


class BatchInference:
    """Best-effort batch inference: the decoder stack at a large batch, back to back.

    Parameters
    ----------
    config : DecoderConfig
        The model (the service's by default).
    batch : int
        Sequences per forward pass (64 x 128 tokens, 0.8 TFLOP of GEMMs: several ms per
        pass on an H100, estimated).
    seed : int
    stream : cupy stream, object with ``__cuda_stream__``, or None
        A new non-blocking stream when None.
    """

    def __init__(self, config: DecoderConfig | None = None, batch: int = 64, seed: int = 0, stream: Any = None):
        self.config = config or DecoderConfig()
        self.batch = int(batch)
        self.stream = _own_stream(stream)
        self.model = DecoderStack(self.config, self.batch, seed, self.stream)
        self._x = self.model.random_input(np.random.default_rng(seed + 1), self.batch, self.stream)
        self.stream.synchronize()

    def step(self, stream: Any = None) -> Any:
        """Issue one forward pass (no synchronization); returns the output view."""
        s = self.stream if stream is None else as_cupy_stream(stream)
        return self.model.forward(self._x, self.batch, s)

    def run(self, iters: int | None = None, duration_s: float | None = None, stream: Any = None) -> dict[str, float]:
        """Run ``iters`` passes, or as many as fit in ``duration_s``; synchronizes after each.

        Returns
        -------
        dict
            ``iters``, ``seconds``, ``iters_per_s``, ``tokens_per_s``, ``tflops``.
        """
        s = self.stream if stream is None else as_cupy_stream(stream)
        n, secs = _run_steps(self.step, s, iters, duration_s)
        tokens = n * self.batch * self.config.seq_len
        return {"iters": n, "seconds": secs, "iters_per_s": n / secs, "tokens_per_s": tokens / secs,
                "tflops": tokens * self.config.flops_per_token() / secs / 1e12}


# ---- training -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class MLPConfig:
    """Shape of the training job.

    Attributes
    ----------
    d_model : int
        Width of the residual stream.
    hidden : int
        Width of each MLP's hidden layer.
    batch : int
        Rows of the (fixed, synthetic) training batch.
    n_layers : int
        Residual MLP blocks ``x + W2 gelu(W1 x)``.
    optimizer : str
        ``"adam"`` or ``"sgd"``.
    lr : float
    gemm_max_k : int or None
        GEMMs whose reduction is longer than this run split-K (`kernels.gemm.gemm`'s
        ``split_k``, deterministic) in slices of at most this, so no block of the step
        multiplies over more of K. A GPU cannot preempt a running block, so this bounds how
        long the job holds SMs it has borrowed. None: every GEMM unsplit (the weight
        gradients reduce over ``batch``, the down projection and the input gradient over
        ``hidden``, the others over ``d_model``).
    """

    d_model: int = 2048
    hidden: int = 8192
    batch: int = 8192
    n_layers: int = 2
    optimizer: str = "adam"
    lr: float = 1e-3
    gemm_max_k: int | None = None

    def __post_init__(self) -> None:
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer must be 'adam' or 'sgd', got {self.optimizer!r}")
        if self.gemm_max_k is not None and (isinstance(self.gemm_max_k, bool) or not isinstance(self.gemm_max_k, int)
                                            or self.gemm_max_k < 1):
            raise ValueError(f"MLPConfig.gemm_max_k must be None or an int >= 1, got {self.gemm_max_k!r}")

    def split_k(self, K: int) -> int:
        """The K-slices of a GEMM of this job that reduces over ``K`` (1: unsplit)."""
        return 1 if self.gemm_max_k is None else cdiv(K, self.gemm_max_k)

    def flops_per_step(self) -> float:
        """GEMM FLOPs of one step: per layer 2 forward and 4 backward GEMMs of ``2 B d F``
        each, less the input gradient of the first layer (not needed)."""
        return (6 * self.n_layers - 1) * 2.0 * self.batch * self.d_model * self.hidden


class TrainingJob:
    """Training of a residual GELU-MLP stack (fp32) on a fixed batch, MSE loss.

    Forward: ``u = x W1``, ``h = gelu(u)``, ``x' = x + h W2`` per layer. Backward, with
    ``g = dL/dx'``: ``dW2 = h^T g``, ``du = gelu'(u) * (g W2^T)``, ``dW1 = x^T du``,
    ``dL/dx = g + du W1^T``; transposed operands are read in place by the SGEMM.

    Parameters
    ----------
    config : MLPConfig
        Defaults: d_model 2048, hidden 8192, batch 8192, 2 layers, Adam: each of the 11
        GEMMs of a step is 275 GFLOP (several ms on an H100).
    seed : int
    stream : cupy stream, object with ``__cuda_stream__``, or None
        A new non-blocking stream when None.
    """

    def __init__(self, config: MLPConfig | None = None, seed: int = 0, stream: Any = None):
        import cupy

        self.config = c = config or MLPConfig()
        self.stream = s = _own_stream(stream)
        self.steps = 0
        rng = np.random.default_rng(seed)
        B, d, F, L = c.batch, c.d_model, c.hidden, c.n_layers
        f32 = dtypes.FLOAT32
        with s:
            self.w1 = [_randn(rng, (d, F), f32, d**-0.5) for _ in range(L)]
            self.w2 = [_randn(rng, (F, d), f32, 0.5 * F**-0.5) for _ in range(L)]
            self.params = [*self.w1, *self.w2]
            self.grads = [cupy.empty_like(p) for p in self.params]
            self.adam_m = [cupy.zeros_like(p) for p in self.params] if c.optimizer == "adam" else []
            self.adam_v = [cupy.zeros_like(p) for p in self.params] if c.optimizer == "adam" else []
            self.xs = [_randn(rng, (B, d), f32)] + [cupy.empty((B, d), cupy.float32) for _ in range(L)]
            self.target = _randn(rng, (B, d), f32)
            self.us = [cupy.empty((B, F), cupy.float32) for _ in range(L)]
            self.hs = [cupy.empty((B, F), cupy.float32) for _ in range(L)]
            self._y = cupy.empty((B, d), cupy.float32)
            self._g = cupy.empty((B, d), cupy.float32)
            self._dh = cupy.empty((B, F), cupy.float32)
        s.synchronize()

    def _s(self, stream: Any) -> Any:
        return self.stream if stream is None else as_cupy_stream(stream)

    def _gemm(self, a: Any, b: Any, out: Any, s: Any, trans_a: bool = False, trans_b: bool = False) -> None:
        K = a.shape[0] if trans_a else a.shape[1]
        gemm(a, b, out=out, trans_a=trans_a, trans_b=trans_b, split_k=self.config.split_k(K), stream=s)

    def forward(self, stream: Any = None) -> Any:
        """Forward pass; returns the output activations."""
        s = self._s(stream)
        for layer in range(self.config.n_layers):
            self._gemm(self.xs[layer], self.w1[layer], self.us[layer], s)
            gelu(self.us[layer], out=self.hs[layer], stream=s)
            self._gemm(self.hs[layer], self.w2[layer], self._y, s)
            residual_add(self._y, self.xs[layer], out=self.xs[layer + 1], stream=s)
        return self.xs[-1]

    def backward(self, stream: Any = None) -> None:
        """Backward pass into `grads` (W1 gradients first, then W2's)."""
        s = self._s(stream)
        L = self.config.n_layers
        g = mse_grad(self.xs[-1], self.target, out=self._g, stream=s)
        for layer in reversed(range(L)):
            self._gemm(self.hs[layer], g, self.grads[L + layer], s, trans_a=True)     # dW2 = h^T g
            self._gemm(g, self.w2[layer], self._dh, s, trans_b=True)                  # dh = g W2^T
            gelu_backward(self.us[layer], self._dh, out=self._dh, stream=s)           # du
            self._gemm(self.xs[layer], self._dh, self.grads[layer], s, trans_a=True)  # dW1 = x^T du
            if layer > 0:
                self._gemm(self._dh, self.w1[layer], self._y, s, trans_b=True)         # du W1^T
                residual_add(self._y, g, out=g, stream=s)                                   # dL/dx

    def update(self, stream: Any = None) -> None:
        """One optimizer step on every weight."""
        s = self._s(stream)
        c = self.config
        self.steps += 1
        for i, (p, g) in enumerate(zip(self.params, self.grads)):
            if c.optimizer == "adam":
                adam_step(p, g, self.adam_m[i], self.adam_v[i], self.steps, lr=c.lr, stream=s)
            else:
                sgd_step(p, g, c.lr, stream=s)

    def step(self, stream: Any = None) -> None:
        """Forward, backward and update (no synchronization)."""
        self.forward(stream)
        self.backward(stream)
        self.update(stream)

    def loss(self, stream: Any = None) -> float:
        """Mean squared error of the current forward output (runs a forward pass; synchronizes)."""
        s = self._s(stream)
        out = self.forward(s)
        with s:
            value = float(((out - self.target) ** 2).mean())
        return value

    def run(self, iters: int | None = None, duration_s: float | None = None, stream: Any = None) -> dict[str, float]:
        """Run ``iters`` steps, or as many as fit in ``duration_s``; synchronizes after each.

        Returns
        -------
        dict
            ``iters``, ``seconds``, ``iters_per_s``, ``tflops``.
        """
        n, secs = _run_steps(self.step, self._s(stream), iters, duration_s)
        return {"iters": n, "seconds": secs, "iters_per_s": n / secs,
                "tflops": n * self.config.flops_per_step() / secs / 1e12}


def reference_mlp_gradients(w1: list[np.ndarray], w2: list[np.ndarray], x: np.ndarray,
                            target: np.ndarray) -> tuple[float, list[np.ndarray]]:
    """float64 MSE loss and weight gradients of `TrainingJob`'s model, from host copies.

    Returns
    -------
    tuple
        ``(loss, [dW1 of each layer..., dW2 of each layer...])``, the order of
        ``TrainingJob.grads``.
    """
    xs, us, hs = [np.asarray(x, np.float64)], [], []
    for a, b in zip(w1, w2):
        us.append(xs[-1] @ np.asarray(a, np.float64))
        hs.append(reference_gelu(us[-1]))
        xs.append(xs[-1] + hs[-1] @ np.asarray(b, np.float64))
    diff = xs[-1] - np.asarray(target, np.float64)
    g = 2.0 * diff / diff.size
    d1: list[np.ndarray] = [np.empty(0)] * len(w1)
    d2: list[np.ndarray] = [np.empty(0)] * len(w1)
    for layer in reversed(range(len(w1))):
        d2[layer] = hs[layer].T @ g
        du = reference_gelu_backward(us[layer], g @ np.asarray(w2[layer], np.float64).T)
        d1[layer] = xs[layer].T @ du
        g = g + du @ np.asarray(w1[layer], np.float64).T
    return float(np.mean(diff**2)), [*d1, *d2]
