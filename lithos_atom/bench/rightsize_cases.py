"""The launches that right-sizing is profiled and reported on.

Two families, each a `ProfileCase` with a key, a ``launch(stream)`` on a lithos partition
stream, and what the DVFS policy needs (bytes moved, whether the registry calls it
memory-bound):

- the `kernels.registry` cases (``case:<name>@<size>``);
- the kernels of one layer of the inference service's decoder stack
  (``inference:b<batch>:<op>``; every layer has the same shapes), in the order a request
  runs them, and ``inference:b<batch>:request``, the whole forward pass of a request;
- the whole request of each model service of `lithos_atom.bench.ml_services` at each of
  its batch sizes (``service:<name>:b<batch>:request``), as it is served: its CUDA graph
  replayed (or its kernels launched from Python).

On the simulated device `sim_cases` gives `SimKernel` launches instead, and
`sim_service_cases` a model service's requests as the simulated device models them
(SIMULATED: their latencies are the simulator's model, not measurements).

Building a GPU case allocates its inputs on the device; `ProfileCase.release` drops them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from lithos_atom.bench import ml_services
from lithos_sched.sim_kernel import SimKernel

#: Ops of one decoder layer, in the order `DecoderStack.forward` runs them.
DECODER_OPS = ("ln1", "qkv_gemm", "attention", "out_gemm", "residual1", "ln2", "ffn1_gemm", "gelu", "ffn2_gemm",
               "residual2")


@dataclasses.dataclass
class ProfileCase:
    """One launch to profile.

    Attributes
    ----------
    key : str
        Profile key.
    launch : callable
        ``launch(stream)``: issue one run on a lithos partition stream (no synchronization).
    bytes : float
        Minimum DRAM traffic of one run (0 when unknown).
    flops : float
        Work of one run (0 when unknown).
    bound : str
        ``"memory"``, ``"tensor"``, ``"simt"``, or ``"mixed"`` for a whole request.
    per_request : int
        How many times a request of the inference service runs it (layers), 1 otherwise.
    release : callable
        Drops the case's device arrays.
    """

    key: str
    launch: Callable[[Any], Any]
    bytes: float = 0.0
    flops: float = 0.0
    bound: str = "simt"
    per_request: int = 1
    release: Callable[[], None] = lambda: None


def registry_case(name: str, size: str = "bench", seed: int = 0) -> ProfileCase:
    """A `kernels.registry` case built at ``size`` (needs a GPU)."""
    from kernels import registry

    case = registry.get_case(name)
    prep = case.make(np.random.default_rng(seed), size)
    holder = {"prep": prep}

    def launch(stream: Any) -> None:
        holder["prep"].run(stream.cupy)

    def release() -> None:
        holder.clear()

    return ProfileCase(f"case:{name}@{size}", launch, float(prep.bytes), float(prep.flops), case.bound, 1, release)


def inference_cases(batch: int, seed: int = 0) -> list[ProfileCase]:
    """The kernels of one decoder layer of the default `InferenceService` at ``batch``
    sequences, then the whole request (needs a GPU)."""
    import cupy

    from kernels import dtypes
    from kernels.attention import attention
    from kernels.elementwise import gelu, residual_add
    from kernels.gemm import gemm
    from kernels.norm import layernorm
    from kernels.workloads import DecoderConfig, DecoderStack

    c = DecoderConfig()
    setup = cupy.cuda.Stream(non_blocking=True)
    model = DecoderStack(c, batch, seed, setup)
    x = model.random_input(np.random.default_rng(seed + 1), batch, setup)
    setup.synchronize()
    T, S, H, Dh, d, f = batch * c.seq_len, c.seq_len, c.n_heads, c.head_dim, c.d_model, c.ffn_mult * c.d_model
    ws = {k: v[:T] for k, v in model._ws.items()}
    qkv5 = ws["qkv"].reshape(batch, S, 3, H, Dh)
    q, k, v = (qkv5[:, :, i].transpose(0, 2, 1, 3) for i in range(3))
    attn_out = ws["attn"].reshape(batch, S, H, Dh).transpose(0, 2, 1, 3)
    p = model.layers[0]
    item = np.dtype(dtypes.numpy_dtype(c.dtype)).itemsize
    ops: dict[str, tuple[Callable[[Any], Any], float, float, str]] = {
        "ln1": (lambda s: layernorm(x, p["ln1_w"], p["ln1_b"], c.eps, out=ws["h"], stream=s.cupy),
                2 * T * d * item, 8 * T * d, "memory"),
        "qkv_gemm": (lambda s: gemm(ws["h"], p["w_qkv"], out=ws["qkv"], stream=s.cupy),
                     (T * d + d * 3 * d + T * 3 * d) * item, 2 * T * d * 3 * d, "tensor"),
        "attention": (lambda s: attention(q, k, v, causal=True, out=attn_out, stream=s.cupy),
                      4 * T * d * item, 2 * batch * H * S * S * Dh, "simt"),
        "out_gemm": (lambda s: gemm(ws["attn"], p["w_o"], out=ws["proj"], stream=s.cupy),
                     (2 * T * d + d * d) * item, 2 * T * d * d, "tensor"),
        "residual1": (lambda s: residual_add(ws["proj"], x, bias=p["b_o"], out=ws["x"], stream=s.cupy),
                      3 * T * d * item, 2 * T * d, "memory"),
        "ln2": (lambda s: layernorm(ws["x"], p["ln2_w"], p["ln2_b"], c.eps, out=ws["h"], stream=s.cupy),
                2 * T * d * item, 8 * T * d, "memory"),
        "ffn1_gemm": (lambda s: gemm(ws["h"], p["w_1"], out=ws["u"], stream=s.cupy),
                      (T * d + d * f + T * f) * item, 2 * T * d * f, "tensor"),
        "gelu": (lambda s: gelu(ws["u"], out=ws["u"], stream=s.cupy), 2 * T * f * item, 8 * T * f, "memory"),
        "ffn2_gemm": (lambda s: gemm(ws["u"], p["w_2"], out=ws["proj"], stream=s.cupy),
                      (T * f + f * d + T * d) * item, 2 * T * f * d, "tensor"),
        "residual2": (lambda s: residual_add(ws["proj"], ws["x"], bias=p["b_2"], out=ws["h"], stream=s.cupy),
                      3 * T * d * item, 2 * T * d, "memory"),
    }
    holder: dict[str, Any] = {"model": model, "x": x}

    def release() -> None:
        holder.clear()

    cases = [ProfileCase(f"inference:b{batch}:{name}", fn, float(nbytes), float(flops), bound, c.n_layers, release)
             for name, (fn, nbytes, flops, bound) in ((n, ops[n]) for n in DECODER_OPS)]
    total_bytes = sum(cs.bytes for cs in cases) * c.n_layers
    total_flops = sum(cs.flops for cs in cases) * c.n_layers
    cases.append(ProfileCase(f"inference:b{batch}:request", lambda s: model.forward(x, batch, s.cupy),
                             total_bytes, total_flops, "mixed", 1, release))
    return cases


def request_key(service: str, batch: int) -> str:
    """The profile key of a whole request of ``service`` at ``batch``."""
    return f"inference:b{batch}:request" if service == "decoder" else f"service:{service}:b{batch}:request"


def served_request_case(service: str, served: Any, batch: int, release: Callable[[], None] = lambda: None
                        ) -> ProfileCase:
    """A whole request of a built model service (`ml_services.ServedModel`, warmed up) at ``batch``."""
    cost = served.cost(batch)
    return ProfileCase(request_key(service, batch), lambda s: served.request(batch, s.cupy), float(cost.bytes),
                       float(cost.flops), "mixed", 1, release)


def service_cases(service: str, size: str = "default", batch_sizes: tuple[int, ...] | None = None, seed: int = 0,
                  graphs: bool = True) -> list[ProfileCase]:
    """A whole request of model service ``service`` at each of its batch sizes (needs a GPU).

    The service is built (random weights), warmed up and, with ``graphs``, its graphs
    captured once; every case's `ProfileCase.release` drops it.
    """
    import cupy

    sizes = tuple(batch_sizes or ml_services.DEFAULT_BATCH_SIZES[service])
    setup = cupy.cuda.Stream(non_blocking=True)
    holder = {"served": ml_services.build_service(service, size, sizes, seed, setup, graphs)}
    holder["served"].warmup(setup, n=1)
    served = holder["served"]

    def release() -> None:
        holder.clear()

    return [served_request_case(service, served, b, release) for b in sizes]


def sim_service_cases(service: str, num_sms: int, size: str = "default", batch_sizes: tuple[int, ...] | None = None,
                      cost: Any = None) -> list[ProfileCase]:
    """SIMULATED: a whole request of model service ``service`` at each of its batch sizes,
    its kernels as the simulated device models them (`sim_models.service_kernels`;
    ``cost``: the `SimCostModel`, the default's when None)."""
    from lithos_atom.bench.sim_kernels import KernelModel, SimCostModel
    from lithos_atom.bench.sim_models import service_kernels, service_work

    sizes = tuple(batch_sizes or ml_services.DEFAULT_BATCH_SIZES[service])
    kernels = service_kernels(KernelModel(cost or SimCostModel(), num_sms), service, size, sizes)
    works = service_work(service, size, tuple(sorted(sizes)))

    def launch(stream: Any, ks: list[Any]) -> None:
        for k in ks:
            stream.launch(k)

    return [ProfileCase(request_key(service, b), lambda s, ks=kernels[b]: launch(s, ks),
                        sum(w.bytes for _, w in works[b]), sum(w.flops for _, w in works[b]), "mixed")
            for b in sizes]


def sim_cases(num_tpcs: int) -> Iterator[ProfileCase]:
    """SIMULATED stand-ins: `SimKernel` launches of grids that fill a device of
    ``num_tpcs`` TPCs many times, a few times, about once, and only partly."""
    sms = 2 * num_tpcs
    shapes = {
        "sim:many_waves": SimKernel("many_waves", grid_blocks=sms * 40, block_us=20.0, blocks_per_sm=2),
        "sim:three_waves": SimKernel("three_waves", grid_blocks=sms * 3, block_us=100.0),
        "sim:one_wave_plus": SimKernel("one_wave_plus", grid_blocks=sms + sms // 8, block_us=200.0),
        "sim:small_grid": SimKernel("small_grid", grid_blocks=max(1, sms // 3), block_us=50.0),
        "sim:tiny_grid": SimKernel("tiny_grid", grid_blocks=8, block_us=30.0),
    }
    for key, kernel in shapes.items():
        yield ProfileCase(key, lambda s, k=kernel: s.launch(k), bound="simt")
