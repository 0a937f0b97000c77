"""ResNet-50 image classification, the way inference servers run it: NHWC, fp16 (or bf16) on
tensor cores, every batch norm folded into the convolution before it.

The shape (`RESNET50`) is torchvision's ``resnet50`` (ResNet v1.5, He et al. 2016 with the
stride on the 3x3 convolution): a 7x7/2 stem convolution to 64 channels and a 3x3/2 max
pool, four stages of (3, 4, 6, 3) bottleneck blocks of widths (64, 128, 256, 512)
expanded 4x, the first block of each stage with a 1x1 projection shortcut (stride 2 from
the second stage on), a global average pool and a 1000-class linear layer: 25,557,032
parameters before folding, 4.09 GMAC per 224x224 image. The weights and batch-norm
statistics are random (seeded at construction, nothing downloaded); the input images too.

One bottleneck block, each convolution with its batch norm folded in (`fold_batchnorm`)::

    a = relu(conv1x1(x)) ; b = relu(conv3x3(a, stride))
    y = relu(conv1x1(b) + shortcut)        # shortcut: x, or conv1x1(x, stride) (no ReLU)

each a `kernels.convnet.conv2d_nhwc` launch with the bias, residual and ReLU in its epilogue.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from kernels import dtypes
from kernels.convnet import avgpool_nhwc, conv2d_nhwc, conv_output_hw, fold_batchnorm, maxpool2d_nhwc
from kernels.models._common import Cost, DeviceArrays, GraphedService, check_batch_sizes, item


@dataclasses.dataclass(frozen=True)
class Conv:
    """One convolution of the network, its batch norm folded in (unless ``batchnorm`` is False:
    the classifier, whose bias is its own)."""

    name: str
    c_in: int
    c_out: int
    kernel: int
    stride: int
    padding: int
    relu: bool
    batchnorm: bool = True


@dataclasses.dataclass(frozen=True)
class Step:
    """One kernel of the forward pass: ``dst = op(src)`` between named buffers, shapes per image (H, W, C)."""

    op: str                      # "conv", "maxpool" or "avgpool"
    src: str
    dst: str
    in_shape: tuple[int, int, int]
    out_shape: tuple[int, int, int]
    conv: Conv | None = None
    residual: str | None = None  # buffer added before the ReLU


@dataclasses.dataclass(frozen=True)
class ResNetConfig:
    """Shape of a bottleneck ResNet.

    Attributes
    ----------
    name : str
    blocks : tuple of int
        Bottleneck blocks per stage.
    widths : tuple of int
        Inner width of each stage's blocks (their output is ``expansion`` times wider).
    stem : int
        Channels of the stem convolution.
    expansion : int
    image : int
        Input height and width.
    in_channels : int
    classes : int
    bn_eps : float
    dtype : str
        ``"float16"`` or ``"bfloat16"``.
    """

    name: str = "ResNet-50"
    blocks: tuple[int, ...] = (3, 4, 6, 3)
    widths: tuple[int, ...] = (64, 128, 256, 512)
    stem: int = 64
    expansion: int = 4
    image: int = 224
    in_channels: int = 3
    classes: int = 1000
    bn_eps: float = 1e-5
    dtype: str = dtypes.FLOAT16

    def __post_init__(self) -> None:
        if len(self.blocks) != len(self.widths) or min(self.blocks) < 1:
            raise ValueError(f"ResNetConfig: one width per stage and >= 1 block each, got {self.blocks}, "
                             f"{self.widths}")
        if self.dtype not in (dtypes.FLOAT16, dtypes.BFLOAT16):
            raise ValueError(f"ResNetConfig.dtype must be float16 or bfloat16, got {self.dtype!r}")

    def plan(self) -> list[Step]:
        """The forward pass, kernel by kernel.

        Buffers: ``image``; ``a`` and ``b`` alternate as the blocks' inputs and outputs;
        ``t1``, ``t2`` hold a block's inner activations (and the stem's output, the pooled
        features, the logits); ``sc`` a projection shortcut.
        """
        steps: list[Step] = []

        def step(op: str, src: str, dst: str, shape: tuple[int, int, int], conv: Conv | None = None,
                 residual: str | None = None) -> tuple[int, int, int]:
            if op == "conv":
                out = (*conv_output_hw(shape[0], shape[1], (conv.kernel, conv.kernel), conv.stride, conv.padding),
                       conv.c_out)
            elif op == "maxpool":
                out = (*conv_output_hw(shape[0], shape[1], (3, 3), 2, 1), shape[2])
            else:
                out = (1, 1, shape[2])
            steps.append(Step(op, src, dst, shape, out, conv, residual))
            return out

        shape = step("conv", "image", "t1", (self.image, self.image, self.in_channels),
                     Conv("stem", self.in_channels, self.stem, 7, 2, 3, relu=True))
        shape = step("maxpool", "t1", "a", shape)
        cur, other = "a", "b"
        for stage, (n, width) in enumerate(zip(self.blocks, self.widths)):
            for block in range(n):
                tag, stride, c_in = f"s{stage + 1}b{block + 1}", 2 if stage > 0 and block == 0 else 1, shape[2]
                inner = step("conv", cur, "t1", shape, Conv(f"{tag}.conv1", c_in, width, 1, 1, 0, relu=True))
                inner = step("conv", "t1", "t2", inner, Conv(f"{tag}.conv2", width, width, 3, stride, 1, relu=True))
                shortcut = cur
                if block == 0:
                    step("conv", cur, "sc", shape,
                         Conv(f"{tag}.shortcut", c_in, width * self.expansion, 1, stride, 0, relu=False))
                    shortcut = "sc"
                shape = step("conv", "t2", other, inner,
                             Conv(f"{tag}.conv3", width, width * self.expansion, 1, 1, 0, relu=True), shortcut)
                cur, other = other, cur
        shape = step("avgpool", cur, "t1", shape)
        step("conv", "t1", "t2", shape, Conv("fc", shape[2], self.classes, 1, 1, 0, relu=False, batchnorm=False))
        return steps

    def convs(self) -> list[Conv]:
        """Every convolution in execution order (the classifier as a 1x1 convolution last)."""
        return [s.conv for s in self.plan() if s.conv is not None]

    def param_count(self) -> int:
        """Parameters before folding: convolution weights, two per batch-norm channel, the classifier."""
        return sum(c.c_in * c.c_out * c.kernel**2 + (2 if c.batchnorm else 1) * c.c_out for c in self.convs())


#: torchvision's resnet50 (ResNet v1.5): 25,557,032 parameters.
RESNET50 = ResNetConfig()


class ResNetService(GraphedService):
    """ResNet inference over a batch of images: one request = one forward pass.

    Parameters
    ----------
    config : ResNetConfig
    batch_sizes : sequence of int
        Images per request served (the activation buffers fit the largest).
    seed : int
        Seeds the weights, the batch-norm statistics and the input images.
    arrays : DeviceArrays, optional
        Where the arrays live (the GPU by default; `EmulatorArrays` for CPU tests).

    Attributes
    ----------
    images : cupy.ndarray
        (max_batch, image, image, in_channels): the inputs (a request of b uses the first b).
    weights : dict
        Per convolution name, the folded ``(w, bias)``, w in RSCK layout.
    """

    def __init__(self, config: ResNetConfig = RESNET50, batch_sizes: Sequence[int] = (1, 2, 4, 8, 16, 32), *,
                 seed: int = 0, arrays: DeviceArrays | None = None):
        super().__init__()
        c = self.config = config
        self.batch_sizes = check_batch_sizes(batch_sizes)
        B = self.batch_sizes[-1]
        self.arrays = a = arrays or DeviceArrays(seed)
        self.plan = c.plan()
        self.weights = {s.conv.name: self._make_conv(s.conv, s.residual is not None)
                        for s in self.plan if s.conv is not None}
        self.images = a.store(a.normal((B, c.image, c.image, c.in_channels)), c.dtype)
        elems = max(int(np.prod(shape)) for s in self.plan for shape in (s.in_shape, s.out_shape))
        dt = dtypes.numpy_dtype(c.dtype)
        self._buffers = {name: a.empty((B * elems,), dt) for name in ("a", "b", "t1", "t2", "sc")}
        a.synchronize()

    def _make_conv(self, conv: Conv, closes_block: bool) -> tuple[Any, Any]:
        """He-normal weights and batch-norm statistics near the identity, folded; the batch norm
        closing a block is scaled by about 0.2, so the residual stream stays in range."""
        a, xp, k, kind = self.arrays, self.arrays.xp, conv.c_out, self.config.dtype
        w = a.normal((k, conv.c_in, conv.kernel, conv.kernel), (2.0 / (conv.c_in * conv.kernel**2)) ** 0.5)
        if not conv.batchnorm:
            return a.store(w.transpose(2, 3, 1, 0), kind), a.store(a.normal((k,), 0.01), kind)
        gamma = a.normal((k,), 0.05 if closes_block else 0.1, 0.2 if closes_block else 1.0)
        var = xp.abs(a.normal((k,), 0.2, 1.0)) + 0.1
        folded, bias = fold_batchnorm(w, gamma, a.normal((k,), 0.1), a.normal((k,), 0.1), var, self.config.bn_eps)
        return a.store(folded, kind), a.store(bias, kind)

    def forward(self, batch_size: int, stream: Any) -> Any:
        """One forward pass over the first ``batch_size`` images.

        Returns
        -------
        cupy.ndarray
            (batch_size, classes) logits, the model's dtype (a workspace view).
        """
        B = self.check_batch(batch_size)
        s = self.arrays.stream(stream)
        buffers = {"image": self.images.reshape(-1), **self._buffers}

        def view(name: str, shape: tuple[int, int, int]) -> Any:
            return buffers[name][:B * shape[0] * shape[1] * shape[2]].reshape(B, *shape)

        for st in self.plan:
            x, y = view(st.src, st.in_shape), view(st.dst, st.out_shape)
            if st.op == "conv":
                w, bias = self.weights[st.conv.name]
                conv2d_nhwc(x, w, bias, y, stride=st.conv.stride, padding=st.conv.padding, relu=st.conv.relu,
                            residual=None if st.residual is None else view(st.residual, st.out_shape), stream=s)
            elif st.op == "maxpool":
                maxpool2d_nhwc(x, y, stream=s)
            else:
                avgpool_nhwc(x, y.reshape(B, st.out_shape[2]), stream=s)
        return y.reshape(B, self.config.classes)

    def cost(self, batch_size: int) -> Cost:
        """FLOPs of the convolutions and the classifier; bytes: every weight and bias read once,
        every kernel's input (and residual) read once and its output written once."""
        B = self.check_batch(batch_size)
        e = item(self.config.dtype)
        flops = nbytes = 0.0
        for st in self.plan:
            n_in, n_out = int(np.prod(st.in_shape)), int(np.prod(st.out_shape))
            nbytes += B * (n_in + n_out) * e
            if st.conv is not None:
                cv = st.conv
                flops += 2.0 * B * n_out * cv.c_in * cv.kernel**2
                nbytes += (cv.kernel**2 * cv.c_in * cv.c_out + cv.c_out) * e + (B * n_out * e if st.residual else 0)
        return Cost(flops, nbytes)


def reference_forward(service: ResNetService, batch_size: int) -> np.ndarray:
    """float64 logits of the first ``batch_size`` images, from host copies of ``service``'s
    (folded) weights: the same plan, each step by `kernels.convnet`'s references."""
    from kernels.convnet import reference_conv2d_nhwc, reference_maxpool_nhwc

    def host(x: Any) -> np.ndarray:
        return dtypes.to_float64(service.arrays.to_host(x), service.config.dtype)

    acts = {"image": host(service.images)[:batch_size]}
    for st in service.plan:
        x = acts[st.src]
        if st.op == "conv":
            w, bias = (host(t) for t in service.weights[st.conv.name])
            y = reference_conv2d_nhwc(x, w, bias, st.conv.stride, st.conv.padding,
                                      None if st.residual is None else acts[st.residual], st.conv.relu)
        elif st.op == "maxpool":
            y = reference_maxpool_nhwc(x)
        else:
            y = x.mean(axis=(1, 2), keepdims=True)
        acts[st.dst] = y
    return y.reshape(batch_size, service.config.classes)
