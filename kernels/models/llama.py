"""A Llama-architecture LLM serving decode steps over a KV cache, and its prefill.

Shapes (`LLAMA_3_2_1B`, `LLAMA_3_1_8B`) are those of the published models' Hugging Face
``config.json`` (``meta-llama/Llama-3.2-1B``, ``meta-llama/Llama-3.1-8B``): hidden size,
layers, query and KV heads, head dim, MLP width, vocabulary, RoPE base and Llama 3 RoPE
scaling, RMSNorm epsilon, tied or untied LM head. The weights are random (a seeded normal
draw at construction, nothing is downloaded), so the tokens generated are meaningless; the
kernels, their shapes and their memory traffic are the model's. `LlamaConfig.n_layers` may
be lowered (`LlamaConfig.with_layers`) to run a few layers at the real width.

One layer, for the n tokens of a request (``x`` the residual stream, weights ``[in, out]``)::

    h = rmsnorm(x) ; qkv = h @ W_qkv                          # fused q, k, v projections
    rope_kv_append(qkv)                                       # RoPE; k, v into the KV cache
    a = attention(q, cache)                                   # GQA: 4 query heads per KV head
    x = x + a @ W_o
    h = rmsnorm(x) ; x = x + swiglu(h @ W_gate_up) @ W_down   # fused gate and up projections

then ``logits = rmsnorm(x) @ W_lm`` (fp32) and the next token is their argmax. All GEMMs
are the fp16/bf16 tensor-core GEMM of `kernels.gemm` with fp32 accumulation.

`LlamaService` holds a KV cache of ``max_batch`` slots (sequence slots of continuous
batching) x ``max_seq_len`` positions. A decode step (`LlamaService.forward`) runs the
sequences of slots ``0..batch-1``, each at its own position (device arrays, so the step
is capturable as a CUDA graph), writes each sequence's next token as its next input and
moves it one position on (a sequence reaching the end of the cache starts over at its
start position). A prefill (`LlamaService.prefill`) runs a prompt of a given length
through the model into one slot's cache and samples its first token.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from kernels import dtypes
from kernels.attention import attention
from kernels.elementwise import residual_add
from kernels.gemm import gemm
from kernels.models._common import Cost, DeviceArrays, GraphedService, check_batch_sizes, item
from kernels.norm import rmsnorm
from kernels.transformer import (
    advance_positions,
    argmax_rows,
    decode_splits,
    embedding_gather,
    gqa_decode_attention,
    rope_inv_freq,
    rope_kv_append,
    swiglu,
)


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """Shape of a Llama-architecture decoder.

    Attributes
    ----------
    name : str
    hidden : int
        Width of the residual stream.
    n_layers : int
    n_heads, n_kv_heads : int
        Query heads and key/value heads (grouped-query attention: n_heads / n_kv_heads
        query heads share a KV head, at most 8).
    head_dim : int
        64 or 128 (the prefill's attention kernel).
    mlp_hidden : int
        Width of the SwiGLU MLP.
    vocab : int
    tie_embeddings : bool
        The LM head is the transposed token embedding (one (hidden, vocab) array serves both).
    rope_theta : float
    rope_scaling : tuple of (str, float) pairs, optional
        Llama 3's RoPE scaling (`kernels.transformer.rope_inv_freq`).
    norm_eps : float
        RMSNorm epsilon.
    dtype : str
        ``"bfloat16"`` or ``"float16"``: weights, activations and the KV cache.
    """

    name: str
    hidden: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    mlp_hidden: int
    vocab: int
    tie_embeddings: bool
    rope_theta: float = 500000.0
    rope_scaling: tuple[tuple[str, float], ...] | None = None
    norm_eps: float = 1e-5
    dtype: str = dtypes.BFLOAT16

    def __post_init__(self) -> None:
        if self.dtype not in (dtypes.FLOAT16, dtypes.BFLOAT16):
            raise ValueError(f"LlamaConfig.dtype must be float16 or bfloat16, got {self.dtype!r}")
        if self.n_heads % self.n_kv_heads or not 1 <= self.n_heads // self.n_kv_heads <= 8:
            raise ValueError(f"LlamaConfig: n_heads ({self.n_heads}) must be 1 to 8 times n_kv_heads "
                             f"({self.n_kv_heads})")
        if self.head_dim not in (64, 128):
            raise ValueError(f"LlamaConfig.head_dim must be 64 or 128, got {self.head_dim}")
        if self.n_layers < 1:
            raise ValueError(f"LlamaConfig.n_layers must be >= 1, got {self.n_layers}")

    def with_layers(self, n_layers: int) -> LlamaConfig:
        """The same model with ``n_layers`` layers (a short stack at the real width)."""
        return dataclasses.replace(self, name=f"{self.name} ({n_layers} layers)", n_layers=n_layers)

    @property
    def qkv_width(self) -> int:
        """Columns of the fused QKV projection."""
        return (self.n_heads + 2 * self.n_kv_heads) * self.head_dim

    def layer_linear_params(self) -> int:
        """Weights of one layer's projections (q, k, v, o, gate, up, down)."""
        return self.hidden * self.qkv_width + self.n_heads * self.head_dim * self.hidden + \
            3 * self.hidden * self.mlp_hidden

    def param_count(self) -> int:
        """Parameters of the model (the published count for the full shapes)."""
        embeddings = self.vocab * self.hidden * (1 if self.tie_embeddings else 2)
        norms = (2 * self.n_layers + 1) * self.hidden
        return self.n_layers * self.layer_linear_params() + embeddings + norms


_LLAMA3_ROPE = (("factor", 32.0), ("low_freq_factor", 1.0), ("high_freq_factor", 4.0),
                ("original_max_position_embeddings", 8192.0))

#: meta-llama/Llama-3.2-1B (config.json): 1,235,814,400 parameters.
LLAMA_3_2_1B = LlamaConfig(name="Llama-3.2-1B", hidden=2048, n_layers=16, n_heads=32, n_kv_heads=8, head_dim=64,
                           mlp_hidden=8192, vocab=128256, tie_embeddings=True, rope_scaling=_LLAMA3_ROPE)

#: meta-llama/Llama-3.1-8B (config.json): 8,030,261,248 parameters.
LLAMA_3_1_8B = LlamaConfig(name="Llama-3.1-8B", hidden=4096, n_layers=32, n_heads=32, n_kv_heads=8, head_dim=128,
                           mlp_hidden=14336, vocab=128256, tie_embeddings=False,
                           rope_scaling=(("factor", 8.0), *_LLAMA3_ROPE[1:]))


class LlamaService(GraphedService):
    """Decode steps with a KV cache (continuous batching) and prefills of a Llama model.

    Parameters
    ----------
    config : LlamaConfig
    batch_sizes : sequence of int
        Decode batch sizes (sequences per step) served; the cache has a slot for each
        sequence of the largest.
    max_seq_len : int
        Positions per cache slot.
    context : int
        Mean start position of the sequences: slot b starts at
        ``context // 2 + b * context // max_batch`` (below ``max_seq_len``), so the
        sequences of a batch sit at different positions.
    max_prompt : int, optional
        Longest prefill (``max_seq_len`` when None).
    chunk : int
        Keys per block of the decode attention.
    seed : int
        Seeds the weights, the prompt tokens and the first input tokens.
    arrays : DeviceArrays, optional
        Where the arrays live (the GPU by default; `EmulatorArrays` for CPU tests).

    Attributes
    ----------
    tokens, positions : cupy.ndarray
        (max_batch,) int32: each slot's next input token and its position.
    prompt : cupy.ndarray
        (max_prompt,) int32: the prefill's prompt tokens (random; see `set_prompt`).
    logits : cupy.ndarray
        (max_batch, vocab) float32: the last step's logits (a prefill writes its slot's row).
    k_cache, v_cache : list of cupy.ndarray
        Per layer, (max_batch, n_kv_heads, max_seq_len, head_dim).
    """

    def __init__(self, config: LlamaConfig, batch_sizes: Sequence[int] = (1, 4, 16, 32), *,
                 max_seq_len: int = 2048, context: int = 1024, max_prompt: int | None = None, chunk: int = 128,
                 seed: int = 0, arrays: DeviceArrays | None = None):
        super().__init__()
        c = self.config = config
        self.batch_sizes = check_batch_sizes(batch_sizes)
        self.max_batch = B = self.batch_sizes[-1]
        self.max_seq_len, self.chunk = int(max_seq_len), int(chunk)
        self.max_prompt = self.max_seq_len if max_prompt is None else int(max_prompt)
        if not 1 <= self.max_prompt <= self.max_seq_len:
            raise ValueError(f"max_prompt must be in 1..max_seq_len ({self.max_seq_len}), got {self.max_prompt}")
        start = np.minimum(context // 2 + np.arange(B) * context // B, self.max_seq_len - 1).astype(np.int32)
        self.start_positions = start
        self.arrays = a = arrays or DeviceArrays(seed)
        kind, d, qd = c.dtype, c.hidden, c.n_heads * c.head_dim

        def linear(n_in: int, n_out: int) -> Any:
            return a.store(a.normal((n_in, n_out), n_in**-0.5), kind)

        def norm() -> Any:
            return a.store(a.normal((d,), 0.1, 1.0), kind)

        self.layers = [{"attn_norm": norm(), "w_qkv": linear(d, c.qkv_width), "w_o": linear(qd, d),
                        "mlp_norm": norm(), "w_gate_up": linear(d, 2 * c.mlp_hidden),
                        "w_down": linear(c.mlp_hidden, d)} for _ in range(c.n_layers)]
        self.final_norm = norm()
        self.lm_head = linear(d, c.vocab)
        self.embedding = self.lm_head if c.tie_embeddings else a.store(a.normal((c.vocab, d)), kind)
        scaling = None if c.rope_scaling is None else dict(c.rope_scaling)
        self.inv_freq = a.asarray(rope_inv_freq(c.head_dim, c.rope_theta, scaling).astype(np.float32))

        dt = dtypes.numpy_dtype(kind)
        cache_shape = (B, c.n_kv_heads, self.max_seq_len, c.head_dim)
        self.k_cache = [a.zeros(cache_shape, dt) for _ in range(c.n_layers)]
        self.v_cache = [a.zeros(cache_shape, dt) for _ in range(c.n_layers)]
        rows = max(B, self.max_prompt)
        self._ws = {name: a.empty((rows, width), dt) for name, width in
                    (("x", d), ("h", d), ("qkv", c.qkv_width), ("attn", qd), ("proj", d),
                     ("gate_up", 2 * c.mlp_hidden), ("act", c.mlp_hidden))}
        splits = decode_splits(self.max_seq_len, self.chunk)
        self._partial_ml = a.empty((B * c.n_heads * splits * 2,), np.float32)
        self._partial_acc = a.empty((B * c.n_heads * splits * c.head_dim,), np.float32)
        self.logits = a.empty((B, c.vocab), np.float32)
        self.slots = a.asarray(np.arange(B, dtype=np.int32))
        self.prompt_positions = a.asarray(np.arange(self.max_prompt, dtype=np.int32))
        self._start = a.asarray(start)
        self.positions = a.asarray(start)
        self.tokens = a.integers(c.vocab, (B,))
        self.prompt = a.integers(c.vocab, (self.max_prompt,))
        a.synchronize()

    # ---- state ---------------------------------------------------------------------------------

    def set_positions(self, positions: Sequence[int], tokens: Sequence[int] | None = None, stream: Any = None) -> None:
        """Set the positions (and input tokens) of slots ``0..len(positions)-1``.

        Raises
        ------
        ValueError
            For a position outside ``0..max_seq_len-1`` or a token outside the vocabulary.
        """
        pos = np.asarray(positions, np.int32)
        if pos.ndim != 1 or not 1 <= pos.size <= self.max_batch or pos.min() < 0 or pos.max() >= self.max_seq_len:
            raise ValueError(f"positions must be 1 to {self.max_batch} values in 0..{self.max_seq_len - 1}")
        tok = None if tokens is None else np.asarray(tokens, np.int32)
        if tok is not None and (tok.shape != pos.shape or tok.min() < 0 or tok.max() >= self.config.vocab):
            raise ValueError(f"tokens must be {pos.size} ids in 0..{self.config.vocab - 1}")
        s = self.arrays.stream(stream)
        self.arrays.write(self.positions[:pos.size], pos, s)
        if tok is not None:
            self.arrays.write(self.tokens[:pos.size], tok, s)

    def set_prompt(self, tokens: Sequence[int], stream: Any = None) -> None:
        """Set the first ``len(tokens)`` prompt tokens of the prefill."""
        tok = np.asarray(tokens, np.int32)
        if tok.ndim != 1 or not 1 <= tok.size <= self.max_prompt or tok.min() < 0 or tok.max() >= self.config.vocab:
            raise ValueError(f"tokens must be 1 to {self.max_prompt} ids in 0..{self.config.vocab - 1}")
        self.arrays.write(self.prompt[:tok.size], tok, self.arrays.stream(stream))

    # ---- requests --------------------------------------------------------------------------------

    def forward(self, batch_size: int, stream: Any) -> Any:
        """One decode step of the sequences in slots ``0..batch_size-1``.

        Returns
        -------
        cupy.ndarray
            (batch_size, vocab) float32 logits (a view of `logits`). `tokens` then holds
            each sequence's next token and `positions` its next position.
        """
        B = self.check_batch(batch_size)
        s = self.arrays.stream(stream)
        c = self.config
        x = self._ws["x"][:B]
        embedding_gather(self.tokens[:B], self.embedding, x, transposed=c.tie_embeddings, stream=s)
        for layer in range(c.n_layers):
            self._layer(layer, B, None, s)
        h = self._ws["h"][:B]
        rmsnorm(x, self.final_norm, c.norm_eps, out=h, stream=s)
        gemm(h, self.lm_head, out=self.logits[:B], stream=s)
        argmax_rows(self.logits[:B], self.tokens, stream=s)
        advance_positions(self.positions, self._start, B, self.max_seq_len, stream=s)
        return self.logits[:B]

    def prefill(self, length: int, stream: Any, slot: int = 0) -> Any:
        """Run the first ``length`` tokens of `prompt` into cache slot ``slot`` (positions 0..length-1).

        Returns
        -------
        cupy.ndarray
            (1, vocab) float32 logits of the last prompt token (row ``slot`` of `logits`);
            ``tokens[slot]`` becomes their argmax. The slot's position is left to the
            caller (`set_positions`).
        """
        if not 1 <= length <= self.max_prompt or not 0 <= slot < self.max_batch:
            raise ValueError(f"length must be in 1..{self.max_prompt} and slot in 0..{self.max_batch - 1}, "
                             f"got {length}, {slot}")
        s = self.arrays.stream(stream)
        c = self.config
        x = self._ws["x"][:length]
        embedding_gather(self.prompt[:length], self.embedding, x, transposed=c.tie_embeddings, stream=s)
        for layer in range(c.n_layers):
            self._layer(layer, length, slot, s)
        h, logits = self._ws["h"][:1], self.logits[slot:slot + 1]
        rmsnorm(x[length - 1:], self.final_norm, c.norm_eps, out=h, stream=s)
        gemm(h, self.lm_head, out=logits, stream=s)
        argmax_rows(logits, self.tokens[slot:slot + 1], stream=s)
        return logits

    def capture_prefill(self, length: int, stream: Any, slot: int = 0) -> None:
        """Capture `prefill` of ``length`` into ``slot`` as a CUDA graph (after one eager run)."""
        self.capture_call(("prefill", length, slot), lambda s: self.prefill(length, s, slot), stream)

    def replay_prefill(self, length: int, stream: Any, slot: int = 0) -> Any:
        """Launch the captured prefill of ``length`` into ``slot``; returns its logits."""
        return self.replay_call(("prefill", length, slot), stream)

    def _layer(self, layer: int, n: int, prefill_slot: int | None, s: Any) -> None:
        """One layer over n tokens: a decode step's n sequences, or a prompt of n into ``prefill_slot``."""
        c, p = self.config, self.layers[layer]
        ws = {k: v[:n] for k, v in self._ws.items()}
        x, h, qkv = ws["x"], ws["h"], ws["qkv"]
        kc, vc = self.k_cache[layer], self.v_cache[layer]
        rmsnorm(x, p["attn_norm"], c.norm_eps, out=h, stream=s)
        gemm(h, p["w_qkv"], out=qkv, stream=s)
        if prefill_slot is None:
            rope_kv_append(qkv, self.positions, self.slots, self.inv_freq, kc, vc, c.n_heads, stream=s)
            gqa_decode_attention(qkv, kc, vc, self.positions, self.slots, ws["attn"], n_heads=c.n_heads,
                                 chunk=self.chunk, partial_ml=self._partial_ml, partial_acc=self._partial_acc,
                                 stream=s)
        else:
            rope_kv_append(qkv, self.prompt_positions, self.slots[prefill_slot:], self.inv_freq, kc, vc, c.n_heads,
                           slot_step=0, stream=s)
            q, k, v, out = self._prefill_views(qkv, kc[prefill_slot], vc[prefill_slot], ws["attn"])
            attention(q, k, v, causal=True, out=out, stream=s)
        gemm(ws["attn"], p["w_o"], out=ws["proj"], stream=s)
        residual_add(ws["proj"], x, out=x, stream=s)
        rmsnorm(x, p["mlp_norm"], c.norm_eps, out=h, stream=s)
        gemm(h, p["w_gate_up"], out=ws["gate_up"], stream=s)
        swiglu(ws["gate_up"], ws["act"], stream=s)
        gemm(ws["act"], p["w_down"], out=ws["proj"], stream=s)
        residual_add(ws["proj"], x, out=x, stream=s)

    def _prefill_views(self, qkv: Any, k_slot: Any, v_slot: Any, attn: Any) -> tuple[Any, Any, Any, Any]:
        """(kv_heads, group, n, head_dim) views for the prompt's causal attention.

        The group of query heads sharing a KV head is the second axis; the keys and values
        (the slot's cache, just written) repeat over it with stride 0, so the ordinary
        attention kernel computes grouped-query attention without copying.
        """
        from cupy.lib.stride_tricks import as_strided

        c = self.config
        n, G, D, e = qkv.shape[0], c.n_heads // c.n_kv_heads, c.head_dim, qkv.dtype.itemsize
        shape = (c.n_kv_heads, G, n, D)
        q = as_strided(qkv, shape, (G * D * e, D * e, qkv.strides[0], e))
        k, v = (as_strided(t, shape, (self.max_seq_len * D * e, 0, D * e, e)) for t in (k_slot, v_slot))
        out = as_strided(attn, shape, (G * D * e, D * e, attn.strides[0], e))
        return q, k, v, out

    # ---- costs ----------------------------------------------------------------------------------------

    def cost(self, batch_size: int, positions: Sequence[int] | None = None) -> Cost:
        """FLOPs and minimum bytes of one decode step.

        Parameters
        ----------
        batch_size : int
        positions : sequence of int, optional
            Each sequence's position (`start_positions` by default; the step attends to
            ``position + 1`` keys).
        """
        B = self.check_batch(batch_size)
        c, e = self.config, item(self.config.dtype)
        keys = np.asarray(self.start_positions[:B] if positions is None else positions, np.float64) + 1
        if keys.shape != (B,):
            raise ValueError(f"positions must have {B} values")
        kv_row = c.n_kv_heads * c.head_dim
        flops = 2.0 * B * (c.n_layers * c.layer_linear_params() + c.hidden * c.vocab) \
            + c.n_layers * 4.0 * c.n_heads * c.head_dim * keys.sum()
        weights = (c.n_layers * c.layer_linear_params() + c.hidden * c.vocab + (2 * c.n_layers + 1) * c.hidden) * e
        kv = c.n_layers * 2.0 * kv_row * e * (keys.sum() + B)        # read keys 0..p, write position p
        activations = c.n_layers * B * self._layer_activations() * e
        io = B * (c.hidden * e + c.vocab * 4 + 8)                     # embedding rows, logits, token + position
        return Cost(flops, weights + kv + activations + io)

    def prefill_cost(self, length: int) -> Cost:
        """FLOPs and minimum bytes of a prefill of ``length`` tokens (the LM head on the last one)."""
        c, e = self.config, item(self.config.dtype)
        flops = 2.0 * length * c.n_layers * c.layer_linear_params() + 2.0 * c.hidden * c.vocab \
            + c.n_layers * 4.0 * c.n_heads * c.head_dim * length * (length + 1) / 2
        weights = (c.n_layers * c.layer_linear_params() + c.hidden * c.vocab + (2 * c.n_layers + 1) * c.hidden) * e
        kv = c.n_layers * 2.0 * c.n_kv_heads * c.head_dim * e * length
        activations = c.n_layers * length * self._layer_activations() * e
        return Cost(flops, weights + kv + activations + length * (c.hidden * e + 4) + c.vocab * 4)

    def _layer_activations(self) -> int:
        """Elements one token moves through a layer's kernels besides weights and KV cache.

        Every intermediate (two normalized copies, qkv, the attention output, two projection
        outputs, gate_up, the SwiGLU output) is written once and read once; the residual
        stream is read by two norms and two adds and written by the two adds.
        """
        c = self.config
        intermediates = 2 * c.hidden + c.qkv_width + c.n_heads * c.head_dim + 2 * c.hidden + 3 * c.mlp_hidden
        return 2 * intermediates + 6 * c.hidden


def reference_logits(service: LlamaService, tokens: Sequence[int]) -> np.ndarray:
    """float64 logits at every position of one sequence, from host copies of ``service``'s weights.

    Parameters
    ----------
    service : LlamaService
    tokens : sequence of int
        The sequence, from position 0.

    Returns
    -------
    numpy.ndarray
        (len(tokens), vocab): row t predicts token t + 1.
    """
    from kernels.attention import reference_attention
    from kernels.norm import reference_rmsnorm
    from kernels.transformer import reference_rope, reference_swiglu

    c = service.config
    H, Hkv, D, eps = c.n_heads, c.n_kv_heads, c.head_dim, c.norm_eps

    def host(x: Any) -> np.ndarray:
        return dtypes.to_float64(service.arrays.to_host(x), c.dtype)

    ids = np.asarray(tokens)
    n, pos = ids.size, np.arange(ids.size)
    table = host(service.embedding)
    x = table[:, ids].T if c.tie_embeddings else table[ids]
    inv = rope_inv_freq(D, c.rope_theta, None if c.rope_scaling is None else dict(c.rope_scaling))
    for p in service.layers:
        qkv = reference_rmsnorm(x, host(p["attn_norm"]), eps) @ host(p["w_qkv"])
        q = reference_rope(qkv[:, :H * D].reshape(n, H, D), pos, inv)
        k = reference_rope(qkv[:, H * D:(H + Hkv) * D].reshape(n, Hkv, D), pos, inv)
        v = qkv[:, (H + Hkv) * D:].reshape(n, Hkv, D)
        k, v = (np.repeat(t, H // Hkv, axis=1).transpose(1, 0, 2)[None] for t in (k, v))
        o = reference_attention(q.transpose(1, 0, 2)[None], k, v, causal=True)[0]
        x = x + o.transpose(1, 0, 2).reshape(n, H * D) @ host(p["w_o"])
        h = reference_rmsnorm(x, host(p["mlp_norm"]), eps)
        x = x + reference_swiglu(h @ host(p["w_gate_up"])) @ host(p["w_down"])
    return reference_rmsnorm(x, host(service.final_norm), eps) @ host(service.lm_head)
