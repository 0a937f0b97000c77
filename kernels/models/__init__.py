"""Model-shaped workloads built from the package's kernels.

- `kernels.models.llama`: Llama 3.2 1B / 3.1 8B decode steps over a KV cache (continuous
  batching) and prefills.
- `kernels.models.resnet`: ResNet-50 inference, batch norm folded into the convolutions.
- `kernels.models.bert`: BERT-base encoder inference at sequence 128.
- `kernels.models.gpt2`: a GPT-2-small-shaped training step (bf16 tensor-core GEMMs with
  fp32 accumulation, fp32 master weights, Adam), a best-effort job.

Every inference service issues one request with ``forward(batch_size, stream)`` and can
capture it per batch size as a CUDA graph (``capture``, ``replay``); ``cost(batch_size)``
gives its FLOPs and minimum bytes. Weights are random, drawn from a seed at construction;
nothing is downloaded. Importing these modules needs no GPU.
"""
