"""BERT-base encoder inference at sequence length 128 (the classic serving shape).

The shape (`BERT_BASE`) is that of Devlin et al. 2019's BERT-base (``bert-base-uncased``'s
``config.json``): 12 post-LayerNorm layers of hidden size 768, 12 heads of 64, an MLP of
3072 with erf GELU, a 30,522-token vocabulary, 512 learned positions and 2 token types,
LayerNorm epsilon 1e-12, and the tanh pooler over the first ([CLS]) token: 109,482,240
parameters. Weights and input tokens are random (seeded at construction, nothing is
downloaded); every sequence is a full 128 tokens (no padding mask), its first half token
type 0 and its second half type 1 (a sentence pair).

One layer over the batch's ``tokens = batch * 128`` rows (weights ``[in, out]``)::

    qkv = x @ W_qkv + b_qkv ; a = attention(q, k, v)           # bidirectional, per sequence
    x = layernorm(x + a @ W_o + b_o)
    x = layernorm(x + gelu(x @ W_1 + b_1) @ W_2 + b_2)

after ``x = layernorm(word[ids] + position + type)``; the output is the pooler's
``tanh(x[CLS] @ W_p + b_p)``. GEMMs run on tensor cores (`kernels.gemm`, fp32
accumulation), attention is `kernels.attention`'s fused kernel.
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
from kernels.norm import layernorm
from kernels.transformer import bias_act, embedding_gather, embedding_sum


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """Shape of a BERT encoder.

    Attributes
    ----------
    name : str
    hidden : int
    n_layers : int
    n_heads : int
        hidden / n_heads must be 64 or 128.
    intermediate : int
        MLP width.
    vocab, max_positions, type_vocab : int
        Rows of the word, position and token-type embeddings.
    seq_len : int
        Tokens per sequence served.
    eps : float
        LayerNorm epsilon.
    dtype : str
        ``"float16"`` or ``"bfloat16"``.
    """

    name: str = "BERT-base"
    hidden: int = 768
    n_layers: int = 12
    n_heads: int = 12
    intermediate: int = 3072
    vocab: int = 30522
    max_positions: int = 512
    type_vocab: int = 2
    seq_len: int = 128
    eps: float = 1e-12
    dtype: str = dtypes.FLOAT16

    def __post_init__(self) -> None:
        if self.hidden % self.n_heads or self.hidden // self.n_heads not in (64, 128):
            raise ValueError(f"BertConfig: hidden / n_heads must be 64 or 128, got {self.hidden} / {self.n_heads}")
        if not 1 <= self.seq_len <= self.max_positions:
            raise ValueError(f"BertConfig.seq_len must be in 1..{self.max_positions}, got {self.seq_len}")
        if self.dtype not in (dtypes.FLOAT16, dtypes.BFLOAT16):
            raise ValueError(f"BertConfig.dtype must be float16 or bfloat16, got {self.dtype!r}")

    def layer_params(self) -> int:
        """Parameters of one layer (projections, their biases, two LayerNorms)."""
        d, f = self.hidden, self.intermediate
        return 4 * d * d + 2 * d * f + 3 * d + d + f + d + 4 * d

    def param_count(self) -> int:
        """Parameters, pooler included (the published 109,482,240 for BERT-base)."""
        d = self.hidden
        embeddings = (self.vocab + self.max_positions + self.type_vocab) * d + 2 * d
        return embeddings + self.n_layers * self.layer_params() + d * d + d


#: BERT-base (uncased): 109,482,240 parameters.
BERT_BASE = BertConfig()


class BertService(GraphedService):
    """BERT encoder inference: one request = one forward pass over a batch of sequences.

    Parameters
    ----------
    config : BertConfig
    batch_sizes : sequence of int
        Sequences per request served.
    seed : int
        Seeds the weights and the input tokens.
    arrays : DeviceArrays, optional
        Where the arrays live (the GPU by default; `EmulatorArrays` for CPU tests).

    Attributes
    ----------
    token_ids, type_ids : cupy.ndarray
        (max_batch * seq_len,) int32 inputs (a request of b uses the first b sequences).
    hidden_states : cupy.ndarray
        (max_batch * seq_len, hidden): the last request's final hidden states (rows of its
        batch).
    """

    def __init__(self, config: BertConfig = BERT_BASE, batch_sizes: Sequence[int] = (1, 2, 4, 8, 16, 32), *,
                 seed: int = 0, arrays: DeviceArrays | None = None):
        super().__init__()
        c = self.config = config
        self.batch_sizes = check_batch_sizes(batch_sizes)
        B, S, d, f, kind = self.batch_sizes[-1], c.seq_len, c.hidden, c.intermediate, c.dtype
        self.arrays = a = arrays or DeviceArrays(seed)

        def linear(n_in: int, n_out: int) -> tuple[Any, Any]:
            return a.store(a.normal((n_in, n_out), n_in**-0.5), kind), a.store(a.normal((n_out,), 0.02), kind)

        def norm() -> tuple[Any, Any]:
            return a.store(a.normal((d,), 0.05, 1.0), kind), a.store(a.normal((d,), 0.02), kind)

        self.word, self.position, self.token_type = (a.store(a.normal((n, d)), kind)
                                                     for n in (c.vocab, c.max_positions, c.type_vocab))
        self.embedding_norm = norm()
        self.layers = [{"qkv": linear(d, 3 * d), "o": linear(d, d), "norm1": norm(), "mlp1": linear(d, f),
                        "mlp2": linear(f, d), "norm2": norm()} for _ in range(c.n_layers)]
        self.pooler = linear(d, d)
        self.token_ids = a.integers(c.vocab, (B * S,))
        self.type_ids = a.asarray(np.tile(np.arange(S) >= S // 2, B).astype(np.int32))
        self._cls_rows = a.asarray(np.arange(B, dtype=np.int32) * S)
        dt = dtypes.numpy_dtype(kind)
        self._ws = {name: a.empty((B * S, width), dt) for name, width in
                    (("x", d), ("sum", d), ("qkv", 3 * d), ("attn", d), ("proj", d), ("mlp", f))}
        self.hidden_states = self._ws["x"]
        self._cls, self._pooled = a.empty((B, d), dt), a.empty((B, d), dt)
        a.synchronize()

    def forward(self, batch_size: int, stream: Any) -> Any:
        """One forward pass over the first ``batch_size`` sequences.

        Returns
        -------
        cupy.ndarray
            (batch_size, hidden): the pooler's output (a workspace view); the final
            hidden states are in `hidden_states`.
        """
        B = self.check_batch(batch_size)
        s = self.arrays.stream(stream)
        c = self.config
        S, H, D, T = c.seq_len, c.n_heads, c.hidden // c.n_heads, B * c.seq_len
        ws = {k: v[:T] for k, v in self._ws.items()}
        x, tmp, qkv, proj = ws["x"], ws["sum"], ws["qkv"], ws["proj"]
        qkv5 = qkv.reshape(B, S, 3, H, D)
        q, k, v = (qkv5[:, :, i].transpose(0, 2, 1, 3) for i in range(3))   # (B, H, S, D) views
        attn_heads = ws["attn"].reshape(B, S, H, D).transpose(0, 2, 1, 3)
        embedding_sum(self.token_ids[:T], self.word, self.position, tmp, seq_len=S, type_ids=self.type_ids[:T],
                      type_table=self.token_type, stream=s)
        layernorm(tmp, *self.embedding_norm, c.eps, out=x, stream=s)
        for p in self.layers:
            gemm(x, p["qkv"][0], out=qkv, stream=s)
            bias_act(qkv, p["qkv"][1], qkv, stream=s)
            attention(q, k, v, out=attn_heads, stream=s)
            gemm(ws["attn"], p["o"][0], out=proj, stream=s)
            residual_add(proj, x, bias=p["o"][1], out=tmp, stream=s)
            layernorm(tmp, *p["norm1"], c.eps, out=x, stream=s)
            gemm(x, p["mlp1"][0], out=ws["mlp"], stream=s)
            bias_act(ws["mlp"], p["mlp1"][1], ws["mlp"], "gelu", stream=s)
            gemm(ws["mlp"], p["mlp2"][0], out=proj, stream=s)
            residual_add(proj, x, bias=p["mlp2"][1], out=tmp, stream=s)
            layernorm(tmp, *p["norm2"], c.eps, out=x, stream=s)
        cls, pooled = self._cls[:B], self._pooled[:B]
        embedding_gather(self._cls_rows[:B], x, cls, stream=s)
        gemm(cls, self.pooler[0], out=pooled, stream=s)
        return bias_act(pooled, self.pooler[1], pooled, "tanh", stream=s)

    def cost(self, batch_size: int) -> Cost:
        """FLOPs of the GEMMs and attention; bytes: every weight read once, each kernel's
        activations read and written once."""
        B = self.check_batch(batch_size)
        c = self.config
        d, f, S, T, e = c.hidden, c.intermediate, c.seq_len, B * c.seq_len, item(c.dtype)
        flops = 2.0 * T * c.n_layers * (4 * d * d + 2 * d * f) + c.n_layers * 4.0 * B * S * S * d + 2.0 * B * d * d
        per_token = (
            4 * d            # embedding sum: three rows read, one written
            + 2 * d          # its layernorm
            + c.n_layers * (
                4 * d        # qkv GEMM, its bias
                + 2 * 3 * d  # bias (in place)
                + 4 * d      # attention: q, k, v read, output written
                + 2 * d      # output projection
                + 3 * d      # residual add
                + 2 * d      # layernorm
                + d + f      # MLP up
                + 2 * f      # bias + GELU (in place)
                + f + d      # MLP down
                + 3 * d      # residual add
                + 2 * d))    # layernorm
        weights = c.param_count() - (c.vocab + c.max_positions + c.type_vocab) * d
        pooler = 6 * d   # [CLS] row gathered, through the GEMM, bias and tanh
        return Cost(flops, (weights + T * per_token + B * pooler) * e + T * 8)


def reference_forward(service: BertService, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """float64 (pooled output, final hidden states) of the first ``batch_size`` sequences, from
    host copies of ``service``'s weights and inputs."""
    from kernels.attention import reference_attention
    from kernels.norm import reference_layernorm
    from kernels.transformer import reference_bias_act

    c = service.config
    a = service.arrays
    S, H, D, T = c.seq_len, c.n_heads, c.hidden // c.n_heads, batch_size * c.seq_len

    def host(x: Any) -> np.ndarray:
        return dtypes.to_float64(a.to_host(x), c.dtype)

    ids, types = a.to_host(service.token_ids)[:T], a.to_host(service.type_ids)[:T]
    x = host(service.word)[ids] + host(service.position)[np.arange(T) % S] + host(service.token_type)[types]
    x = reference_layernorm(x, *(host(t) for t in service.embedding_norm), c.eps)
    for p in service.layers:
        w = {k: tuple(host(t) for t in v) for k, v in p.items()}
        qkv = (x @ w["qkv"][0] + w["qkv"][1]).reshape(batch_size, S, 3, H, D)
        q, k, v = (qkv[:, :, i].transpose(0, 2, 1, 3) for i in range(3))
        attn = reference_attention(q, k, v).transpose(0, 2, 1, 3).reshape(T, c.hidden)
        x = reference_layernorm(x + attn @ w["o"][0] + w["o"][1], *w["norm1"], c.eps)
        h = reference_bias_act(x @ w["mlp1"][0], w["mlp1"][1], "gelu")
        x = reference_layernorm(x + h @ w["mlp2"][0] + w["mlp2"][1], *w["norm2"], c.eps)
    wp, bp = (host(t) for t in service.pooler)
    return np.tanh(x[::S] @ wp + bp), x
