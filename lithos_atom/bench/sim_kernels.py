"""The simulated device's kernels: a cost model and the `SimKernel`s of the ML workloads.

Each ML kernel of a request, training step or batch-inference pass becomes a `SimKernel`
with its real grid (128x128 GEMM tiles, 64-query attention tiles, one block per norm row,
1024 elements per elementwise block) and a per-block duration from a cost model
(`SimCostModel`: the H100 rates measured by ``python -m kernels.bench``). Grids of many
waves are coarsened (fewer, longer blocks; the same work) to keep the simulation fast.
`KernelModel` writes out the decoder stack's and the MLP training job's kernels and turns a
recorded launch of a `kernels.models` model into one (`KernelModel.recorded`). A block's
duration does not depend on the partition it runs on: how DRAM bandwidth saturates as
SMs are added is not modeled.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from lithos_sched.sim_kernel import SimKernel


@dataclasses.dataclass(frozen=True)
class SimCostModel:
    """Per-kernel-class rates of the whole device (H100 figures of ``kernels.bench``).

    Attributes
    ----------
    tensor_tflops : float
        fp16/bf16 tensor-core GEMM.
    simt_tflops : float
        fp32 SGEMM.
    attention_tflops : float
        Fused attention (causal, fp16).
    memory_gbps : float
        Memory-bound kernels (norms, elementwise, optimizer).
    sm_memory_gbps : float
        DRAM bandwidth the blocks of one SM reach when few SMs share it (a small grid:
        a decode step's GEMMs): about 2.5x an SM's share of `memory_gbps`, an estimate
        (``kernels.bench`` times whole kernels, not one SM's).
    min_block_us : float
        Shortest block (launch and tail effects of tiny kernels).
    max_waves : int
        Grids of more waves are coarsened to this many.
    """

    tensor_tflops: float = 255.0
    simt_tflops: float = 31.0
    attention_tflops: float = 22.0
    memory_gbps: float = 2800.0
    sm_memory_gbps: float = 50.0
    min_block_us: float = 3.0
    max_waves: int = 12

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise ValueError(f"SimCostModel.{f.name} must be > 0, got {v!r}")


class KernelModel:
    """Turns kernel shapes into `SimKernel`s for a device of ``num_sms`` SMs."""

    def __init__(self, cost: SimCostModel, num_sms: int):
        self.cost, self.num_sms = cost, num_sms

    def _per_sm_us(self, tflops: float) -> float:
        """FLOP per microsecond of one SM."""
        return tflops * 1e12 / self.num_sms / 1e6

    def kernel(self, name: str, blocks: int, blocks_per_sm: int, block_us: float, max_waves: int | None = None) -> Any:
        """A `SimKernel`; grids of more than ``max_waves`` (default ``cost.max_waves``) waves
        are coarsened into that many waves of longer blocks."""
        blocks = max(1, int(blocks))
        limit = (max_waves or self.cost.max_waves) * blocks_per_sm * self.num_sms
        if blocks > limit:
            factor = math.ceil(blocks / limit)
            coarse = math.ceil(blocks / factor)
            block_us *= blocks / coarse
            blocks = coarse
        return SimKernel(name, blocks, max(self.cost.min_block_us, float(block_us)), blocks_per_sm=blocks_per_sm)

    def gemm(self, name: str, m: int, n: int, k: int, tensor: bool) -> Any:
        """128x128 output tiles, two resident blocks per SM."""
        tiles = math.ceil(m / 128) * math.ceil(n / 128)
        rate = self._per_sm_us(self.cost.tensor_tflops if tensor else self.cost.simt_tflops) / 2
        return self.kernel(name, tiles, 2, 2.0 * 128 * 128 * k / rate)

    def attention(self, batch: int, heads: int, seq: int, head_dim: int) -> Any:
        """Causal attention: 64-query tiles per (head, sequence), four blocks per SM."""
        blocks = math.ceil(seq / 64) * heads * batch
        flops = 4.0 * 64 * seq * head_dim * 0.5
        return self.kernel("attention", blocks, 4, flops / (self._per_sm_us(self.cost.attention_tflops) / 4))

    def memory(self, name: str, blocks: int, nbytes: float) -> Any:
        """A memory-bound kernel moving ``nbytes`` over ``blocks`` blocks.

        Modeled as two blocks per SM and coarsened to one wave: the real blocks are short
        (microseconds), and simulating every one of them would dominate the run time.
        """
        per_sm_bytes_us = self.cost.memory_gbps * 1e9 / self.num_sms / 1e6
        return self.kernel(name, blocks, 2, nbytes / blocks / (per_sm_bytes_us / 2), max_waves=1)

    def elementwise(self, name: str, n: int, bytes_per_elem: float) -> Any:
        """1024 elements per block."""
        return self.memory(name, math.ceil(n / 1024), n * bytes_per_elem)

    def decoder(self, dec: Any, batch: int) -> list[Any]:
        """The kernels of one `DecoderStack.forward` at ``batch`` sequences."""
        from kernels import dtypes

        e = dtypes.numpy_dtype(dec.dtype).itemsize
        tensor = dec.dtype != dtypes.FLOAT32
        t, d, f = batch * dec.seq_len, dec.d_model, dec.ffn_mult * dec.d_model
        per_layer = [
            self.memory("layernorm", t, 2.0 * t * d * e),
            self.gemm("gemm_qkv", t, 3 * d, d, tensor),
            self.attention(batch, dec.n_heads, dec.seq_len, dec.head_dim),
            self.gemm("gemm_o", t, d, d, tensor),
            self.elementwise("residual_add", t * d, 3.0 * e),
            self.memory("layernorm", t, 2.0 * t * d * e),
            self.gemm("gemm_up", t, f, d, tensor),
            self.elementwise("gelu", t * f, 2.0 * e),
            self.gemm("gemm_down", t, d, f, tensor),
            self.elementwise("residual_add", t * d, 3.0 * e),
        ]
        return per_layer * dec.n_layers

    def split_k_gemm(self, name: str, m: int, n: int, k: int, splits: int) -> list[Any]:
        """An fp32 GEMM as `kernels.gemm.gemm` runs it with ``split_k=splits``: one SGEMM
        per K-slice into a workspace, then the ordered sum of the slices."""
        if splits == 1:
            return [self.gemm(name, m, n, k, False)]
        slices = [self.gemm(name, m, n, (i + 1) * k // splits - i * k // splits, False) for i in range(splits)]
        return [*slices, self.elementwise("splitk_sum", m * n, 4.0 * (splits + 1))]

    def training_step(self, mlp: Any) -> list[Any]:
        """The kernels of one `TrainingJob.step` (fp32 SGEMM, split-K as `MLPConfig.split_k`
        says, Adam or SGD)."""
        b, d, f = mlp.batch, mlp.d_model, mlp.hidden

        def gemm(name: str, m: int, n: int, k: int) -> list[Any]:
            return self.split_k_gemm(name, m, n, k, mlp.split_k(k))

        ks: list[Any] = []
        for _ in range(mlp.n_layers):
            ks += [*gemm("sgemm_up", b, f, d), self.elementwise("gelu", b * f, 8.0),
                   *gemm("sgemm_down", b, d, f), self.elementwise("residual_add", b * d, 12.0)]
        ks.append(self.elementwise("mse_grad", b * d, 12.0))
        for layer in reversed(range(mlp.n_layers)):
            ks += [*gemm("sgemm_dw2", f, d, b), *gemm("sgemm_dh", b, f, d),
                   self.elementwise("gelu_backward", b * f, 12.0), *gemm("sgemm_dw1", d, f, b)]
            if layer > 0:
                ks += [*gemm("sgemm_dx", b, d, f), self.elementwise("residual_add", b * d, 12.0)]
        per_param = 28.0 if mlp.optimizer == "adam" else 12.0
        ks += [self.elementwise(mlp.optimizer, d * f, per_param) for _ in range(2 * mlp.n_layers)]
        return ks

    def recorded(self, name: str, work: Any) -> Any:
        """The `SimKernel` of a recorded launch of ``work`` (`model_launches.Work`).

        Two blocks per SM for GEMMs, convolutions and memory-bound kernels, four for
        attention (as `gemm` and `attention`); a block's time is the larger of its FLOPs
        at its share of the kind's rate and its bytes at its share of the bandwidth (of
        the device, split over the blocks running at once, at most `sm_memory_gbps` per
        SM). Memory-bound grids are coarsened to one wave (see `memory`).
        """
        per_sm = 4 if work.kind == "attention" else 2
        slots = self.num_sms * per_sm
        rate = {"tensor": self.cost.tensor_tflops, "attention": self.cost.attention_tflops}.get(work.kind)
        flop_us = work.flops / work.blocks / (rate * 1e6 / slots) if rate else 0.0
        bandwidth = min(self.cost.sm_memory_gbps * 1e3 / per_sm, self.cost.memory_gbps * 1e3 / min(work.blocks, slots))
        block_us = max(flop_us, work.bytes / work.blocks / bandwidth)
        return self.kernel(name, work.blocks, per_sm, block_us, max_waves=1 if work.kind == "memory" else None)
