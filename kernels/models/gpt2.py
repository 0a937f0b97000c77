"""A GPT-2-small-shaped training step: a best-effort tenant that looks like training.

The shape (`GPT2_SMALL`) is GPT-2 small's (Radford et al. 2019; Hugging Face ``gpt2``
``config.json``): 12 pre-LayerNorm layers of hidden size 768, 12 heads of 64, an MLP of
3072 with the tanh GELU, 1024 learned positions, a 50,257-token vocabulary whose embedding
is tied to the LM head (124,439,808 parameters). The LM head's vocabulary is padded to
whole chunks of ``vocab_chunk`` columns (25 x 2048 = 51,200; the padding columns are masked
out of the loss, as nanoGPT pads to 50,304). A step trains on a fixed micro-batch of
``micro_batch`` random sequences of ``seq_len`` tokens (the next token as target, cross
entropy): forward, backward, then Adam on fp32 master weights. Weights follow GPT-2's
initialization (normal, std 0.02, residual projections scaled by 1/sqrt(2 n_layers)),
drawn from the seed at construction; nothing is downloaded.

Mixed precision as in ``torch.autocast(bfloat16)`` with fp32 masters: the GEMMs take
bf16 operands (compute copies of the masters, cast after each update, with the transposed
copies the backward GEMMs need) on tensor cores (`kernels.gemm`) with fp32 accumulation;
activations are bf16; weight gradients, LayerNorm backward and the residual stream's
gradient are fp32. ``dtype="float32"`` runs every GEMM in fp32 (SIMT), for tests.

A GEMM reducing over K > ``gemm_max_k`` (2048) is split into K-slices of at most that:
each slice a GEMM of its own into an fp32 workspace, then the slices summed in order
(`kernels.training.splitk_reduce`, with the bias and residual add fused), so no block of
the step multiplies over more than ``gemm_max_k`` (a block cannot be preempted: shorter
blocks give a scheduler such as lithos' the SMs back sooner). That splits the MLP's down
projection (K = 3072), the input gradients of the QKV and MLP up projections (2304,
3072), every weight gradient (K = micro_batch * seq_len tokens) and the LM head's input
gradient, which sums its vocabulary chunks (the logits live as (chunks, tokens, chunk),
vocabulary-parallel as in Megatron-LM, so each chunk is a contiguous K-slice).
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import numpy as np

from kernels import dtypes
from kernels._compile import cdiv
from kernels.elementwise import gelu, gelu_backward, residual_add
from kernels.gemm import gemm, transpose
from kernels.models._common import Cost, DeviceArrays, item
from kernels.norm import layernorm
from kernels.optim import adam_step
from kernels.training import (
    attention_backward,
    attention_forward,
    cast_f32,
    colsum,
    copy_cols,
    cross_entropy,
    embedding_groups,
    layernorm_backward,
    segment_sum_rows,
    splitk_reduce,
)
from kernels.transformer import bias_act, embedding_sum

#: Weight matrices of a layer, (rows, cols) as multiples of the hidden size, and whether the
#: backward needs their transposed copy.
_LAYER_PARAMS = (("ln1.w", None), ("ln1.b", None), ("attn.w", (1, 3)), ("attn.b", None), ("proj.w", (1, 1)),
                 ("proj.b", None), ("ln2.w", None), ("ln2.b", None), ("fc.w", (1, 4)), ("fc.b", None),
                 ("mlp_proj.w", (4, 1)), ("mlp_proj.b", None))


@dataclasses.dataclass(frozen=True)
class GPT2Config:
    """Shape and optimizer of the training job.

    Attributes
    ----------
    name : str
    n_layers, hidden, n_heads : int
        hidden = 64 * n_heads (the attention kernels' head dim).
    vocab, max_positions : int
    seq_len, micro_batch : int
        Tokens per sequence and sequences per step.
    vocab_chunk : int
        Columns per LM-head chunk (a multiple of 8, at most ``gemm_max_k``).
    gemm_max_k : int
        Longest reduction of one GEMM launch; longer ones are split.
    eps : float
        LayerNorm epsilon.
    dtype : str
        ``"bfloat16"`` (compute copies and activations) or ``"float32"``.
    lr, beta1, beta2, adam_eps : float
        Adam.
    """

    name: str = "GPT-2 small"
    n_layers: int = 12
    hidden: int = 768
    n_heads: int = 12
    vocab: int = 50257
    max_positions: int = 1024
    seq_len: int = 1024
    micro_batch: int = 4
    vocab_chunk: int = 2048
    gemm_max_k: int = 2048
    eps: float = 1e-5
    dtype: str = dtypes.BFLOAT16
    lr: float = 6e-4
    beta1: float = 0.9
    beta2: float = 0.95
    adam_eps: float = 1e-8

    def __post_init__(self) -> None:
        if self.hidden != 64 * self.n_heads:
            raise ValueError(f"GPT2Config.hidden must be 64 * n_heads, got {self.hidden} and {self.n_heads}")
        if not 1 <= self.seq_len <= self.max_positions or self.micro_batch < 1:
            raise ValueError(f"GPT2Config: seq_len must be in 1..{self.max_positions} and micro_batch >= 1")
        if self.vocab_chunk % 8 or not 8 <= self.vocab_chunk <= self.gemm_max_k:
            raise ValueError(f"GPT2Config.vocab_chunk must be a multiple of 8 up to gemm_max_k ({self.gemm_max_k}), "
                             f"got {self.vocab_chunk}")
        if self.dtype not in (dtypes.FLOAT32, dtypes.BFLOAT16):
            raise ValueError(f"GPT2Config.dtype must be bfloat16 or float32, got {self.dtype!r}")

    @property
    def tokens(self) -> int:
        """Tokens per step."""
        return self.micro_batch * self.seq_len

    @property
    def chunks(self) -> int:
        """LM-head vocabulary chunks."""
        return cdiv(self.vocab, self.vocab_chunk)

    @property
    def padded_vocab(self) -> int:
        """Rows of the (tied) token embedding: the vocabulary padded to whole chunks."""
        return self.chunks * self.vocab_chunk

    def splits(self, k: int) -> int:
        """K-slices of a GEMM reducing over ``k``."""
        return cdiv(k, self.gemm_max_k)

    def param_shapes(self, vocab: int | None = None) -> list[tuple[str, tuple[int, ...]]]:
        """(name, shape) of every parameter; the embedding has ``vocab`` rows (`padded_vocab`)."""
        d = self.hidden
        shapes = [("wte", (vocab or self.padded_vocab, d)), ("wpe", (self.max_positions, d))]
        for layer in range(self.n_layers):
            for name, mat in _LAYER_PARAMS:
                if mat is not None:
                    shape: tuple[int, ...] = (mat[0] * d, mat[1] * d)
                else:
                    shape = ({"attn": 3, "fc": 4}.get(name.split(".")[0], 1) * d,)
                shapes.append((f"h{layer}.{name}", shape))
        return shapes + [("lnf.w", (d,)), ("lnf.b", (d,))]

    def param_count(self) -> int:
        """Parameters with the unpadded vocabulary (124,439,808 for GPT-2 small)."""
        return sum(math.prod(shape) for _, shape in self.param_shapes(self.vocab))


#: GPT-2 small (124M), sequences of 1024, a micro-batch of 4.
GPT2_SMALL = GPT2Config()


class FlatParams:
    """Offsets of named parameters in one flat buffer (each start aligned to 64 elements).

    The fp32 masters, their gradients, the Adam moments and the compute copies are flat
    buffers of this layout, so the optimizer and the cast run as one launch each.
    """

    def __init__(self, shapes: list[tuple[str, tuple[int, ...]]]):
        self.shapes = dict(shapes)
        self.offsets: dict[str, int] = {}
        size = 0
        for name, shape in shapes:
            self.offsets[name] = size
            size += cdiv(math.prod(shape), 64) * 64
        self.size = size

    def views(self, flat: Any) -> dict[str, Any]:
        """Name -> the parameter's view of ``flat``."""
        return {name: flat[o:o + math.prod(self.shapes[name])].reshape(self.shapes[name])
                for name, o in self.offsets.items()}


class GPT2TrainingJob:
    """Training steps of a GPT-2-shaped transformer on a fixed random micro-batch.

    Parameters
    ----------
    config : GPT2Config
    seed : int
        Seeds the weights and the data.
    stream : cupy stream, object with ``__cuda_stream__``, or None
        Where the job's work runs (a new non-blocking stream when None; never the default
        stream).
    arrays : DeviceArrays, optional
        Where the arrays live (the GPU by default; `EmulatorArrays` for CPU tests).

    Attributes
    ----------
    params, grads, compute : dict
        Name -> fp32 master, its fp32 gradient, its compute copy (``config.dtype``).
    inputs, targets : cupy.ndarray
        (tokens,) int32: the micro-batch.
    steps : int
        Optimizer steps taken.
    """

    def __init__(self, config: GPT2Config = GPT2_SMALL, *, seed: int = 0, stream: Any = None,
                 arrays: DeviceArrays | None = None):
        c = self.config = config
        self.arrays = a = arrays or DeviceArrays(seed)
        self.stream = a.own_stream(stream)
        self.steps = 0
        B, S, T, d, f, kind = c.micro_batch, c.seq_len, c.tokens, c.hidden, 4 * c.hidden, c.dtype
        dt = dtypes.numpy_dtype(kind)
        self.layout = FlatParams(c.param_shapes())
        self._master, self._grads = self._init_master(), a.zeros((self.layout.size,), np.float32)
        self._m, self._v = a.zeros((self.layout.size,), np.float32), a.zeros((self.layout.size,), np.float32)
        self._compute = a.empty((self.layout.size,), dt)
        self.params, self.grads = self.layout.views(self._master), self.layout.views(self._grads)
        self.compute = self.layout.views(self._compute)
        self.transposed = {f"h{layer}.{name}": a.empty((mat[1] * d, mat[0] * d), dt)
                           for layer in range(c.n_layers) for name, mat in _LAYER_PARAMS if mat is not None}
        self.lm_head = a.empty((c.chunks, d, c.vocab_chunk), dt)

        ids = np.random.default_rng(seed + 1).integers(0, c.vocab, (B, S + 1))
        self.inputs = a.asarray(ids[:, :-1].reshape(-1).astype(np.int32))
        self.targets = a.asarray(ids[:, 1:].reshape(-1).astype(np.int32))
        self._token_groups = tuple(a.asarray(g) for g in embedding_groups(ids[:, :-1]))
        self._position_groups = tuple(a.asarray(g) for g in embedding_groups(np.tile(np.arange(S), B)))

        def acts(width: int) -> list[Any]:
            return [a.empty((T, width), dt) for _ in range(c.n_layers)]

        self._x = [a.empty((T, d), dt) for _ in range(c.n_layers + 1)]   # the residual stream into each layer
        self._h1, self._qkv, self._attn, self._x_mid = acts(d), acts(3 * d), acts(d), acts(d)
        self._h2, self._u, self._g = acts(d), acts(f), acts(f)
        self._lse = [a.empty((B, c.n_heads, S), np.float32) for _ in range(c.n_layers)]
        self._hf = a.empty((T, d), dt)
        self._logits = a.empty((c.chunks, T, c.vocab_chunk), dt)
        self._loss = a.empty((T,), np.float32)
        self._dx, self._dh = a.empty((T, d), np.float32), a.empty((T, d), np.float32)
        self._dx_c, self._dattn, self._dqkv = a.empty((T, d), dt), a.empty((T, d), dt), a.empty((T, 3 * d), dt)
        self._dg, self._du = a.empty((T, f), dt), a.empty((T, f), dt)
        self._dot, self._stats = a.empty((B, c.n_heads, S), np.float32), a.empty((T, 2), np.float32)
        cols, rows, partials = self._scratch_sizes()
        self._cols, self._rows = a.empty((max(cols, 1),), dt), a.empty((rows,), dt)
        self._partials = a.empty((partials,), np.float32)
        a.synchronize()                                 # the set-up above ran on the current stream
        self._refresh_compute_copies(self.stream)
        if self.stream is not None:
            self.stream.synchronize()

    def _init_master(self) -> Any:
        """GPT-2's initialization in one flat fp32 buffer (LayerNorm weights 1, biases 0)."""
        c, a = self.config, self.arrays
        flat = a.zeros((self.layout.size,), np.float32)
        for name, view in self.layout.views(flat).items():
            if name.endswith(("ln1.w", "ln2.w", "lnf.w")):
                a.assign(view, 1.0)
            elif view.ndim == 2:
                std = 0.01 if name == "wpe" else 0.02
                if name.endswith(("proj.w", "mlp_proj.w")):
                    std /= math.sqrt(2 * c.n_layers)
                a.assign(view, a.normal(view.shape, std))
        return flat

    def _scratch_sizes(self) -> tuple[int, int, int]:
        """Elements of the split GEMMs' workspaces: column slices (`_mm`), transposed row slices
        (`_mm_tn`) and fp32 partial products."""
        c = self.config
        T, d, f, V = c.tokens, c.hidden, 4 * c.hidden, c.vocab_chunk
        mm = [(d, 3 * d), (d, d), (d, f), (f, d), (d, V), (d, f), (f, d), (d, d), (3 * d, d)]   # (K, N), M = T
        tn = [(d, 3 * d), (d, d), (d, f), (f, d), (V, d)]                                       # (M, N), K = T
        ks = cdiv(T, c.splits(T))
        cols = max([T * cdiv(k, c.splits(k)) for k, _ in mm if c.splits(k) > 1], default=0)
        partials = max([c.splits(k) * T * n for k, n in mm if c.splits(k) > 1]
                       + [c.splits(T) * m * n for m, n in tn if c.splits(T) > 1] + [c.chunks * T * d])
        return cols, max(m for m, _ in tn) * ks, partials

    # ---- GEMMs --------------------------------------------------------------------------------

    def _mm(self, a: Any, b: Any, out: Any, s: Any, *, bias: Any = None, residual: Any = None) -> Any:
        """``out = a @ b (+ bias) (+ residual)``; a longer K is split into column slices of ``a``."""
        M, K = a.shape
        N, splits = b.shape[1], self.config.splits(K)
        if splits == 1:
            gemm(a, b, out=out, stream=s)
            if residual is not None:
                residual_add(out, residual, bias=bias, out=out, stream=s)
            elif bias is not None:
                bias_act(out, bias, out, stream=s)
            return out
        partials = self._partials[:splits * M * N].reshape(splits, M, N)
        for i in range(splits):
            k0, k1 = i * K // splits, (i + 1) * K // splits
            a_i = copy_cols(a[:, k0:k1], self._cols[:M * (k1 - k0)].reshape(M, k1 - k0), stream=s)
            gemm(a_i, b[k0:k1], out=partials[i], stream=s)
        return splitk_reduce(partials, out, bias=bias, residual=residual, stream=s)

    def _mm_tn(self, a: Any, b: Any, out: Any, s: Any) -> Any:
        """``out (fp32) = a^T @ b`` for a (K, M), b (K, N): row slices of a transposed, then multiplied."""
        K, M = a.shape
        N, splits = b.shape[1], self.config.splits(K)
        partials = self._partials[:splits * M * N].reshape(splits, M, N)
        for i in range(splits):
            k0, k1 = i * K // splits, (i + 1) * K // splits
            a_t = transpose(a[k0:k1], out=self._rows[:M * (k1 - k0)].reshape(M, k1 - k0), stream=s)
            gemm(a_t, b[k0:k1], out=out if splits == 1 else partials[i], stream=s)
        return out if splits == 1 else splitk_reduce(partials, out, stream=s)

    # ---- the step -----------------------------------------------------------------------------

    def forward(self, stream: Any = None) -> None:
        """Forward pass and loss; the logits are replaced by the loss's gradient (no synchronization)."""
        c, s, w = self.config, self._s(stream), self.compute
        embedding_sum(self.inputs, w["wte"], w["wpe"], self._x[0], seq_len=c.seq_len, stream=s)
        for layer in range(c.n_layers):
            p = {name: w[f"h{layer}.{name}"] for name, _ in _LAYER_PARAMS}
            x, x_mid = self._x[layer], self._x_mid[layer]
            layernorm(x, p["ln1.w"], p["ln1.b"], c.eps, out=self._h1[layer], stream=s)
            self._mm(self._h1[layer], p["attn.w"], self._qkv[layer], s, bias=p["attn.b"])
            attention_forward(self._qkv[layer], self._attn[layer], self._lse[layer], batch=c.micro_batch,
                              n_heads=c.n_heads, stream=s)
            self._mm(self._attn[layer], p["proj.w"], x_mid, s, bias=p["proj.b"], residual=x)
            layernorm(x_mid, p["ln2.w"], p["ln2.b"], c.eps, out=self._h2[layer], stream=s)
            self._mm(self._h2[layer], p["fc.w"], self._u[layer], s, bias=p["fc.b"])
            gelu(self._u[layer], out=self._g[layer], stream=s)
            self._mm(self._g[layer], p["mlp_proj.w"], self._x[layer + 1], s, bias=p["mlp_proj.b"], residual=x_mid)
        layernorm(self._x[-1], w["lnf.w"], w["lnf.b"], c.eps, out=self._hf, stream=s)
        for chunk in range(c.chunks):
            self._mm(self._hf, self.lm_head[chunk], self._logits[chunk], s)
        cross_entropy(self._logits, self.targets, self._loss, vocab=c.vocab, scale=1.0 / c.tokens, stream=s)

    def backward(self, stream: Any = None) -> None:
        """Backward pass into `grads` (after `forward`; no synchronization)."""
        c, s, w, g, t = self.config, self._s(stream), self.compute, self.grads, self.transposed
        T, d, V = c.tokens, c.hidden, c.vocab_chunk
        dx, dh, dx_c = self._dx, self._dh, self._dx_c
        dlogits = self._logits
        for chunk in range(c.chunks):                      # tied embedding: the LM head's share
            self._mm_tn(dlogits[chunk], self._hf, g["wte"][chunk * V:(chunk + 1) * V], s)
        partials = self._partials[:c.chunks * T * d].reshape(c.chunks, T, d)
        for chunk in range(c.chunks):                      # d hf = sum over chunks of dlogits_c wte_c
            gemm(dlogits[chunk], w["wte"][chunk * V:(chunk + 1) * V], out=partials[chunk], stream=s)
        splitk_reduce(partials, dh, stream=s)
        layernorm_backward(self._x[-1], w["lnf.w"], dh, dx, self._stats, g["lnf.w"], g["lnf.b"], eps=c.eps,
                           stream=s)
        for layer in reversed(range(c.n_layers)):
            p = {name: w[f"h{layer}.{name}"] for name, _ in _LAYER_PARAMS}
            gp = {name: g[f"h{layer}.{name}"] for name, _ in _LAYER_PARAMS}
            tp = {name: t[f"h{layer}.{name}"] for name, m in _LAYER_PARAMS if m is not None}
            cast_f32(dx, dx_c, stream=s)
            self._mm_tn(self._g[layer], dx_c, gp["mlp_proj.w"], s)
            colsum(dx, gp["mlp_proj.b"], stream=s)
            self._mm(dx_c, tp["mlp_proj.w"], self._dg, s)
            gelu_backward(self._u[layer], self._dg, out=self._du, stream=s)
            self._mm_tn(self._h2[layer], self._du, gp["fc.w"], s)
            colsum(self._du, gp["fc.b"], stream=s)
            self._mm(self._du, tp["fc.w"], dh, s)
            layernorm_backward(self._x_mid[layer], p["ln2.w"], dh, dx, self._stats, gp["ln2.w"], gp["ln2.b"],
                               residual_grad=dx, eps=c.eps, stream=s)
            cast_f32(dx, dx_c, stream=s)
            self._mm_tn(self._attn[layer], dx_c, gp["proj.w"], s)
            colsum(dx, gp["proj.b"], stream=s)
            self._mm(dx_c, tp["proj.w"], self._dattn, s)
            attention_backward(self._qkv[layer], self._attn[layer], self._lse[layer], self._dattn, self._dot,
                               self._dqkv, batch=c.micro_batch, n_heads=c.n_heads, stream=s)
            self._mm_tn(self._h1[layer], self._dqkv, gp["attn.w"], s)
            colsum(self._dqkv, gp["attn.b"], stream=s)
            self._mm(self._dqkv, tp["attn.w"], dh, s)
            layernorm_backward(self._x[layer], p["ln1.w"], dh, dx, self._stats, gp["ln1.w"], gp["ln1.b"],
                               residual_grad=dx, eps=c.eps, stream=s)
        segment_sum_rows(dx, self._token_groups, g["wte"], accumulate=True, stream=s)
        segment_sum_rows(dx, self._position_groups, g["wpe"], accumulate=False, stream=s)

    def update(self, stream: Any = None) -> None:
        """One Adam step on every fp32 master (one launch), then fresh compute copies."""
        c, s = self.config, self._s(stream)
        self.steps += 1
        adam_step(self._master, self._grads, self._m, self._v, self.steps, lr=c.lr, beta1=c.beta1, beta2=c.beta2,
                  eps=c.adam_eps, stream=s)
        self._refresh_compute_copies(s)

    def _refresh_compute_copies(self, s: Any) -> None:
        """Cast the masters; transpose the weights the backward multiplies by, and the LM head's chunks."""
        c, w = self.config, self.compute
        cast_f32(self._master, self._compute, stream=s)
        for name, wt in self.transposed.items():
            transpose(w[name], out=wt, stream=s)
        V = c.vocab_chunk
        for chunk in range(c.chunks):
            transpose(w["wte"][chunk * V:(chunk + 1) * V], out=self.lm_head[chunk], stream=s)

    def step(self, stream: Any = None) -> None:
        """Forward, backward and update (no synchronization)."""
        self.forward(stream)
        self.backward(stream)
        self.update(stream)

    def loss(self) -> float:
        """Mean cross-entropy of the last forward pass (synchronizes the job's stream)."""
        if self.stream is not None:
            self.stream.synchronize()
        return float(self.arrays.to_host(self._loss).astype(np.float64).mean())

    def run(self, iters: int | None = None, duration_s: float | None = None, stream: Any = None) -> dict[str, float]:
        """Run ``iters`` steps, or as many as fit in ``duration_s``; synchronizes after each.

        Returns
        -------
        dict
            ``iters``, ``seconds``, ``iters_per_s``, ``tokens_per_s``, ``tflops`` (of `cost`).
        """
        if (iters is None) == (duration_s is None):
            raise ValueError("give exactly one of iters and duration_s")
        s = self._s(stream)
        t0, n = time.perf_counter(), 0
        while (iters is not None and n < iters) or (duration_s is not None and time.perf_counter() - t0 < duration_s):
            self.step(s)
            s.synchronize()
            n += 1
        secs = time.perf_counter() - t0
        return {"iters": n, "seconds": secs, "iters_per_s": n / secs, "tokens_per_s": n * self.config.tokens / secs,
                "tflops": n * self.cost().flops / secs / 1e12}

    def _s(self, stream: Any) -> Any:
        return self.stream if stream is None else self.arrays.stream(stream)

    # ---- cost ------------------------------------------------------------------------------------

    def cost(self) -> Cost:
        """FLOPs and minimum bytes of one step.

        FLOPs: the GEMMs (forward, then the input and weight gradients: 3x the forward's,
        over the padded vocabulary) and attention as these kernels execute it (causal
        pairs only; the backward's two kernels recompute the scores, 18 x 64 FLOPs per
        pair and head instead of the 12 x 64 a fused backward needs). Bytes: the optimizer
        (fp32 master, gradient, both moments read and written, the compute copy written),
        the weights read by the forward and the backward GEMMs and the transposed copies,
        each layer's saved activations written in the forward and read back in the
        backward, and the logits written, read by the loss, overwritten with their
        gradient and read by the two backward GEMMs.
        """
        c = self.config
        T, d, f, e = c.tokens, c.hidden, 4 * c.hidden, item(c.dtype)
        linear = c.n_layers * (3 * d * d + d * d + 2 * d * f)
        pairs = c.seq_len * (c.seq_len + 1) / 2
        flops = 3 * 2.0 * T * (linear + d * c.padded_vocab) + c.n_layers * 18.0 * c.micro_batch * c.n_heads * 64 * pairs
        params = self.layout.size
        saved = c.n_layers * T * (8 * d + 2 * f)          # x, h1, qkv, attn, x_mid, h2 (8 d); u, g (2 f)
        nbytes = params * (4 * 8 + e) + (linear + d * c.padded_vocab) * 4 * e + 2 * saved * e \
            + 5 * T * c.padded_vocab * e
        return Cost(flops, float(nbytes))


def reference_loss_and_grads(job: GPT2TrainingJob) -> tuple[float, dict[str, np.ndarray]]:
    """float64 loss and gradients of one step of ``job``'s model at its current compute copies.

    Returns
    -------
    tuple
        ``(mean loss, {parameter name: gradient})`` (`reference_step` on host copies of the
        job's compute weights and micro-batch).
    """
    a, kind = job.arrays, job.config.dtype
    weights = {name: dtypes.to_float64(a.to_host(v), kind) for name, v in job.compute.items()}
    return reference_step(job.config, weights, a.to_host(job.inputs), a.to_host(job.targets))


def reference_step(config: GPT2Config, w: dict[str, np.ndarray], ids: np.ndarray,
                   targets: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
    """float64 loss and gradients of the model: NumPy forward and a hand-written backward.

    Parameters
    ----------
    config : GPT2Config
    w : dict
        Parameter name -> float64 weights (`GPT2Config.param_shapes`).
    ids, targets : numpy.ndarray
        (tokens,) the micro-batch.

    Returns
    -------
    tuple
        ``(mean loss, {parameter name: gradient})``.
    """
    from kernels.attention import reference_attention
    from kernels.elementwise import reference_gelu, reference_gelu_backward
    from kernels.norm import reference_layernorm
    from kernels.training import reference_attention_backward, reference_cross_entropy, reference_layernorm_backward

    c = config
    B, S, T, H, eps = c.micro_batch, c.seq_len, c.tokens, c.n_heads, c.eps
    pos = np.tile(np.arange(S), B)

    def heads(x: np.ndarray) -> np.ndarray:        # (T, H * 64) -> (B, H, S, 64)
        return x.reshape(B, S, H, 64).transpose(0, 2, 1, 3)

    def merge(x: np.ndarray) -> np.ndarray:        # (B, H, S, 64) -> (T, H * 64)
        return x.transpose(0, 2, 1, 3).reshape(T, H * 64)

    x = w["wte"][ids] + w["wpe"][pos]
    saved = []
    for layer in range(c.n_layers):
        p = {name: w[f"h{layer}.{name}"] for name, _ in _LAYER_PARAMS}
        h1 = reference_layernorm(x, p["ln1.w"], p["ln1.b"], eps)
        q, k, v = np.split(h1 @ p["attn.w"] + p["attn.b"], 3, axis=1)
        att = merge(reference_attention(heads(q), heads(k), heads(v), causal=True))
        x_mid = x + att @ p["proj.w"] + p["proj.b"]
        h2 = reference_layernorm(x_mid, p["ln2.w"], p["ln2.b"], eps)
        u = h2 @ p["fc.w"] + p["fc.b"]
        saved.append((x, h1, (q, k, v), att, x_mid, h2, u))
        x = x_mid + reference_gelu(u) @ p["mlp_proj.w"] + p["mlp_proj.b"]
    hf = reference_layernorm(x, w["lnf.w"], w["lnf.b"], eps)
    loss, dlogits = reference_cross_entropy(hf @ w["wte"][:c.vocab].T, targets)
    dlogits /= T
    grads = {name: np.zeros(x.shape) for name, x in w.items()}
    grads["wte"][:c.vocab] = dlogits.T @ hf
    dx, grads["lnf.w"], grads["lnf.b"] = reference_layernorm_backward(x, w["lnf.w"], dlogits @ w["wte"][:c.vocab],
                                                                      eps)
    for layer in reversed(range(c.n_layers)):
        p = {name: w[f"h{layer}.{name}"] for name, _ in _LAYER_PARAMS}
        gp = {name: f"h{layer}.{name}" for name, _ in _LAYER_PARAMS}
        x_in, h1, (q, k, v), att, x_mid, h2, u = saved[layer]
        grads[gp["mlp_proj.w"]], grads[gp["mlp_proj.b"]] = reference_gelu(u).T @ dx, dx.sum(0)
        du = reference_gelu_backward(u, dx @ p["mlp_proj.w"].T)
        grads[gp["fc.w"]], grads[gp["fc.b"]] = h2.T @ du, du.sum(0)
        dh2, grads[gp["ln2.w"]], grads[gp["ln2.b"]] = reference_layernorm_backward(x_mid, p["ln2.w"],
                                                                                   du @ p["fc.w"].T, eps)
        dx = dx + dh2
        grads[gp["proj.w"]], grads[gp["proj.b"]] = att.T @ dx, dx.sum(0)
        _, dq, dk, dv = reference_attention_backward(heads(q), heads(k), heads(v), heads(dx @ p["proj.w"].T))
        dqkv = np.concatenate([merge(dq), merge(dk), merge(dv)], axis=1)
        grads[gp["attn.w"]], grads[gp["attn.b"]] = h1.T @ dqkv, dqkv.sum(0)
        dh1, grads[gp["ln1.w"]], grads[gp["ln1.b"]] = reference_layernorm_backward(x_in, p["ln1.w"],
                                                                                   dqkv @ p["attn.w"].T, eps)
        dx = dx + dh1
    np.add.at(grads["wte"], ids, dx)
    np.add.at(grads["wpe"], pos, dx)
    return float(loss.mean()), grads
