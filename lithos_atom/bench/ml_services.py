"""The inference services and best-effort jobs the ML benchmarks run, by name.

Inference services (`SERVICES`; `MLColocationConfig.lc_service` picks one):

- ``decoder``: `kernels.workloads.InferenceService`, a 4-layer d_model 1024 decoder stack
  over 128-token prompts (the bench's first service; batches of `MLColocationConfig.lc_batch`);
- ``llama-1b`` / ``llama-8b``: a decode step of Llama-3.2-1B / Llama-3.1-8B
  (`kernels.models.llama`) over a KV cache, continuous batching: a request of batch b is one
  step of the sequences in slots 0..b-1, each at its own position;
- ``llama-1b-prefill``: Llama-3.2-1B's prefill; a request's "batch" is its prompt length
  in tokens (one prompt into cache slot 0);
- ``resnet50``: ResNet-50 (`kernels.models.resnet`), a batch of 224x224 images;
- ``bert-base``: BERT-base (`kernels.models.bert`), a batch of 128-token sequences.

Every model's weights and inputs are random, drawn from the seed at start-up (nothing is
downloaded): the kernels, their shapes and their memory traffic are the model's, the
outputs are meaningless. A model service replays a CUDA graph per batch size
(``graphs=True``, captured by `ServedModel.warmup`), or launches its kernels from Python.

Best-effort jobs (`BE_JOBS`): ``training`` (an MLP, `kernels.workloads.TrainingJob`),
``batch_inference`` (the decoder stack at a large batch) and ``gpt2_training`` (a
GPT-2-small training step, `kernels.models.gpt2`: bf16 tensor-core GEMMs, fp32 Adam,
reductions over more than ``gemm_max_k`` split so that every block stays short).

Sizes: ``"default"`` and ``"long"`` are the published shapes; ``"small"`` keeps the widths
and cuts the depth (2 layers, one block per ResNet stage, GPT-2 on 2 x 256 tokens), a quick
smoke run. Nothing here imports `kernels` until a model is built.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

#: The inference services, by name (see the module docstring).
SERVICES: tuple[str, ...] = ("decoder", "llama-1b", "llama-1b-prefill", "llama-8b", "resnet50", "bert-base")

#: The services built from `kernels.models` (all but the decoder).
MODEL_SERVICES: tuple[str, ...] = SERVICES[1:]

#: The best-effort jobs, by name.
BE_JOBS: tuple[str, ...] = ("training", "batch_inference", "gpt2_training")

#: Each model service's request sizes served by default: the decode batches of continuous
#: batching, prompt lengths for the prefill, images or sequences per request.
DEFAULT_BATCH_SIZES: dict[str, tuple[int, ...]] = {
    "llama-1b": (1, 4, 16, 32),
    "llama-8b": (1, 4, 16, 32),
    "llama-1b-prefill": (128, 256, 512, 1024),
    "resnet50": (1, 2, 4, 8, 16, 32),
    "bert-base": (1, 2, 4, 8, 16, 32),
}

#: What a request's "batch" counts, per service.
BATCH_UNITS: dict[str, str] = {"decoder": "sequences", "llama-1b": "sequences", "llama-8b": "sequences",
                               "llama-1b-prefill": "prompt tokens", "resnet50": "images", "bert-base": "sequences"}

#: GEMM reductions of the GPT-2 job with ``gemm_max_k=None``: one launch each, unsplit.
UNSPLIT_K = 1 << 30


def default_batch_sizes(service: str, lc_batch: tuple[int, int]) -> tuple[int, ...]:
    """The request sizes ``service`` serves unless told otherwise: the decoder's are every
    batch of the range ``lc_batch``, the models' `DEFAULT_BATCH_SIZES`."""
    if service == "decoder":
        return tuple(range(lc_batch[0], lc_batch[1] + 1))
    return DEFAULT_BATCH_SIZES[service]


def model_config(service: str, size: str) -> Any:
    """The model shape of ``service`` at workload ``size`` (a config dataclass of
    `kernels.models`), or None for the decoder (sized by `MLColocationConfig.workload_sizes`)."""
    if service == "decoder":
        return None
    small = size == "small"
    if service.startswith("llama"):
        from kernels.models import llama

        cfg = llama.LLAMA_3_1_8B if service == "llama-8b" else llama.LLAMA_3_2_1B
        return cfg.with_layers(2) if small else cfg
    if service == "resnet50":
        from kernels.models import resnet

        return dataclasses.replace(resnet.RESNET50, name="ResNet-50 (1 block per stage)", blocks=(1, 1, 1, 1)) \
            if small else resnet.RESNET50
    if service == "bert-base":
        from kernels.models import bert

        return dataclasses.replace(bert.BERT_BASE, name="BERT-base (2 layers)", n_layers=2) if small \
            else bert.BERT_BASE
    raise ValueError(f"unknown inference service {service!r}; choose from {list(SERVICES)}")


def gpt2_config(size: str, gemm_max_k: int | None) -> Any:
    """The GPT-2 training job's `GPT2Config` at ``size``; ``gemm_max_k`` None runs every
    GEMM unsplit."""
    from kernels.models import gpt2

    base = gpt2.GPT2_SMALL
    if size == "small":
        base = dataclasses.replace(base, name="GPT-2 small (2 layers, 2 x 256 tokens)", n_layers=2, seq_len=256,
                                   micro_batch=2)
    max_k = UNSPLIT_K if gemm_max_k is None else int(gemm_max_k)
    return dataclasses.replace(base, gemm_max_k=max_k, vocab_chunk=min(base.vocab_chunk, max_k // 8 * 8 or 8))


class ServedModel:
    """A `kernels.models` service driven the way the bench drives `InferenceService`.

    Parameters
    ----------
    model : GraphedService
        The model (`LlamaService`, `ResNetService` or `BertService`).
    batch_sizes : sequence of int
        Request sizes served (for a prefill, prompt lengths).
    graphs : bool
        `request` replays the batch size's CUDA graph (captured by `warmup`); False issues
        the kernels from Python.
    prefill : bool
        Requests are prefills of a prompt of "batch" tokens into cache slot 0 (a
        `LlamaService`), not forward passes or decode steps.
    """

    def __init__(self, model: Any, batch_sizes: Sequence[int], graphs: bool, prefill: bool = False):
        self.model = model
        self.batch_sizes = tuple(batch_sizes)
        self.graphs = bool(graphs)
        self.prefill = prefill

    def eager_request(self, batch: int, stream: Any, which: int = 0) -> Any:
        """One request's kernels issued from Python (no synchronization); its output view.
        The inputs are the model's own (``which`` is accepted for `InferenceService`'s
        signature and ignored)."""
        if self.prefill:
            return self.model.prefill(batch, stream)
        return self.model.forward(batch, stream)

    def request(self, batch: int, stream: Any, which: int = 0) -> Any:
        """One request (no synchronization): its graph's replay with `graphs`, else
        `eager_request`; returns its output view."""
        if not self.graphs:
            return self.eager_request(batch, stream, which)
        if self.prefill:
            return self.model.replay_prefill(batch, stream)
        return self.model.replay(batch, stream)

    def warmup(self, stream: Any, n: int = 3) -> None:
        """Run ``n`` requests of every batch size eagerly and, with `graphs`, capture each
        size's graph (on a capture stream of its own) and replay it ``n`` times.

        Every size, not just the largest: kernel variants and their first launches depend
        on the shapes, and one built during a measurement delays every request queued
        behind it.
        """
        import cupy

        for _ in range(n):
            for b in self.batch_sizes:
                self.eager_request(b, stream)
        stream.synchronize()
        if not self.graphs:
            return
        capture = cupy.cuda.Stream(non_blocking=True)
        for b in self.batch_sizes:
            if self.prefill:
                self.model.capture_prefill(b, capture)
            else:
                self.model.capture(capture, [b])
        for _ in range(n):
            for b in self.batch_sizes:
                self.request(b, stream)
        stream.synchronize()

    def cost(self, batch: int) -> Any:
        """FLOPs and minimum bytes of one request (`kernels.models.Cost`)."""
        return self.model.prefill_cost(batch) if self.prefill else self.model.cost(batch)


def build_model(service: str, size: str, batch_sizes: Sequence[int], seed: int, arrays: Any = None) -> Any:
    """The `kernels.models` service of ``service`` (not the decoder) serving ``batch_sizes``,
    its weights drawn from ``seed`` (on the GPU unless ``arrays`` says otherwise).

    For the prefill, ``batch_sizes`` are prompt lengths: one cache slot holds the longest.
    """
    cfg = model_config(service, size)
    sizes = tuple(batch_sizes)
    if service.startswith("llama"):
        from kernels.models import llama

        if service == "llama-1b-prefill":
            longest = max(sizes)
            return llama.LlamaService(cfg, (1,), max_seq_len=longest, context=longest, max_prompt=longest,
                                      seed=seed, arrays=arrays)
        return llama.LlamaService(cfg, sizes, seed=seed, arrays=arrays)
    if service == "resnet50":
        from kernels.models import resnet

        return resnet.ResNetService(cfg, sizes, seed=seed, arrays=arrays)
    from kernels.models import bert

    return bert.BertService(cfg, sizes, seed=seed, arrays=arrays)


def build_service(service: str, size: str, batch_sizes: Sequence[int], seed: int, stream: Any, graphs: bool,
                  decoder: Any = None, rate_hz: float = 100.0) -> Any:
    """The inference service ``service`` on the GPU, set up on ``stream``.

    Parameters
    ----------
    service : str
        One of `SERVICES`.
    size : str
        Workload size (``"default"``, ``"long"``, ``"small"``).
    batch_sizes : sequence of int
        Request sizes it serves.
    seed : int
    stream : cupy stream
    graphs : bool
        Replay a CUDA graph per batch size (after `warmup`), or launch from Python.
    decoder : DecoderConfig, optional
        The decoder's shape (``service="decoder"`` only).
    rate_hz : float
        The decoder's nominal arrival rate (it keeps one; the bench draws arrivals itself).

    Returns
    -------
    InferenceService or ServedModel
        Either way ``request(batch, stream, which)``, ``eager_request`` and ``warmup``.
    """
    if service == "decoder":
        from kernels.workloads import InferenceService

        return InferenceService(decoder, batch=(min(batch_sizes), max(batch_sizes)), rate_hz=rate_hz, seed=seed,
                                stream=stream, graphs=graphs)
    model = build_model(service, size, batch_sizes, seed)
    return ServedModel(model, batch_sizes, graphs, prefill=service == "llama-1b-prefill")


def build_gpt2_job(size: str, gemm_max_k: int | None, seed: int, stream: Any, arrays: Any = None) -> Any:
    """The GPT-2 training job at ``size`` (`kernels.models.gpt2.GPT2TrainingJob`), set up on ``stream``."""
    from kernels.models import gpt2

    return gpt2.GPT2TrainingJob(gpt2_config(size, gemm_max_k), seed=seed, stream=stream, arrays=arrays)
