"""Model-shaped workloads built from the package's kernels.

- `kernels.models.llama`: Llama-3.2-1B / Llama-3.1-8B decode steps over a KV cache
  (continuous batching, each sequence at its own position) and prefills.
- `kernels.models.resnet`: ResNet-50 inference, NHWC fp16 on tensor cores, batch norm
  folded into the convolutions.
- `kernels.models.bert`: BERT-base encoder inference at sequence 128.
- `kernels.models.gpt2`: a GPT-2-small-shaped training step (bf16 tensor-core GEMMs with
  fp32 accumulation, fp32 master weights, Adam), a best-effort job.

Every inference service issues one request with ``forward(batch_size, stream)`` (eager,
launched from Python), captures one request per batch size as a CUDA graph with
``capture(stream)`` and launches it with ``replay(batch_size, stream)``, and gives the
request's FLOPs and minimum DRAM bytes with ``cost(batch_size)``::

    import cupy
    from kernels.models import llama

    stream = cupy.cuda.Stream(non_blocking=True)
    svc = llama.LlamaService(llama.LLAMA_3_2_1B, batch_sizes=(1, 4, 16, 32))
    logits = svc.forward(4, stream)      # one decode step of sequences 0..3, eagerly
    svc.capture(stream)                  # a graph per batch size
    logits = svc.replay(16, stream)      # one decode step of sequences 0..15, as a graph
    flops, nbytes = svc.cost(16).flops, svc.cost(16).bytes

Weights are random, drawn from a seed at construction; nothing is downloaded. Requests
never run on the default stream. Importing these modules needs no GPU; passing
``arrays=EmulatorArrays(seed)`` keeps a small model in host memory for the CPU emulator
(`kernels._emulator`).
"""

from kernels.models._common import Cost, DeviceArrays, EmulatorArrays, GraphedService

__all__ = ["Cost", "DeviceArrays", "EmulatorArrays", "GraphedService"]
