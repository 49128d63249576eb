"""The network's layout, the same for every backend: the shapes of its layers and parameters, max-pooling
geometry, and its dropout sites. Conventions (written down once, implemented by every backend's primitives):

- Data arrives flat, (n, C*H*W) in (C, H, W) order; for arch = "conv" the conv stack reshapes it.
- The network: optional dropout on the input; for arch = "conv", blocks of [5x5 'same' convolution -> activation
  -> 3x3/2 max pooling -> dropout]; the flattened result feeds the fully connected layers [linear -> activation
  -> dropout]; a linear output layer.
- Convolution: stride 1, zero padding k // 2 on every side (odd k), so the spatial size is kept.
- Max pooling, `pool_mode`: "ceil" (the default) is cuda-convnet's pooling as Srivastava et al. 2014 used it:
  windows start at 0 every `stride` pixels and the last one may run over the edge (the missing pixels never win),
  output ceil((H - k) / s) + 1, so 32 -> 16 -> 8 -> 4 for 3x3/2. "pad1" pads (k - 1) // 2 pixels on each side that
  never win and floors (torch's MaxPool2d(3, 2, padding=1)): also 32 -> 16 -> 8 -> 4, windows shifted by one.
  "valid" has no padding and floors (dfa-torch's SpatialMaxPooling(3,3,2,2)): 32 -> 15 -> 7 -> 3.
- Dropout is inverted: a kept unit is scaled by 1 / (1 - p) at training time, so evaluation uses the network
  as it is. The keep-masks come from advbp_cli.rng (DropoutMasks), never from a backend, so every backend sees
  the same masks; the sites and their order are `dropout_sites`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class ModelSpec(Protocol):
    """What a backend needs to know about the network (advbp_cli.config.ModelConfig satisfies it)."""

    input_size: int
    hidden: list[int]
    activation: str  # logistic | tanh | relu
    output: str  # sigmoid_bce | softmax_ce
    num_classes: int
    # arch = "conv" only (read with getattr, so an object without them is an MLP):
    # arch, input_shape (C, H, W), conv_channels, conv_kernel, pool_size, pool_stride, pool_mode


class StepSpec(Protocol):
    """The hyper-parameters of one SGD step (advbp_cli.config.TrainConfig satisfies it)."""

    method: str  # backprop | adversarial
    eps: float
    adv_weight: float  # a in a*J(x) + (1-a)*J(z); 0 is the paper
    clip: tuple[float, float] | None
    lr: float
    # the CIFAR-10 settings (read with getattr; absent means off):
    # dropout_input, dropout_conv, dropout_fc (rates), adv_dropout ("same" | "off"),
    # momentum, dampening, weight_decay, max_norm


def pool_geometry(size: int, k: int, s: int, mode: str) -> tuple[int, int, int]:
    """(output size, padding before, padding after) of max pooling along one axis. Padding never wins the max;
    a negative `after` means trailing pixels that no window reaches. See the module docstring for the modes."""
    if mode == "valid":
        lo, out = 0, (size - k) // s + 1
    elif mode == "pad1":
        lo = (k - 1) // 2
        out = (size + 2 * lo - k) // s + 1
    elif mode == "ceil":
        lo = 0
        out = -(-(size - k) // s) + 1
        if (out - 1) * s >= size:  # a last window that would start beyond the image is dropped (torch's rule)
            out -= 1
    else:
        raise ValueError(f"unknown pool_mode {mode!r}")
    return out, lo, (out - 1) * s + k - size - lo


@dataclass(frozen=True)
class Architecture:
    """Everything about the network's shape that every backend (and the checkpoint) derives from the config."""

    input_size: int
    hidden: tuple[int, ...]
    num_classes: int
    input_shape: tuple[int, int, int] | None = None  # (C, H, W); None for the MLP
    conv_channels: tuple[int, ...] = ()
    conv_kernel: int = 5
    pool_size: int = 3
    pool_stride: int = 2
    pool_mode: str = "ceil"

    @property
    def n_conv(self) -> int:
        return len(self.conv_channels)

    def conv_outputs(self) -> list[tuple[int, int, int]]:
        """(C, H, W) of every conv block's output (after pooling)."""
        shapes = []
        if not self.n_conv:
            return shapes
        _, h, w = self.input_shape
        for c in self.conv_channels:
            h = pool_geometry(h, self.pool_size, self.pool_stride, self.pool_mode)[0]
            w = pool_geometry(w, self.pool_size, self.pool_stride, self.pool_mode)[0]
            shapes.append((c, h, w))
        return shapes

    def fc_sizes(self) -> list[int]:
        """Fan-ins and fan-outs of the fully connected layers: [flattened input, *hidden, classes]."""
        if self.n_conv:
            c, h, w = self.conv_outputs()[-1]
            first = c * h * w
        else:
            first = self.input_size
        return [first, *self.hidden, self.num_classes]

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Parameter names and shapes, in the order of the backends' parameter lists (conv layers first).
        MLP names are unchanged from the first checkpoints: layers.i.weight (fan_in, fan_out), layers.i.bias."""
        shapes: dict[str, tuple[int, ...]] = {}
        in_c = self.input_shape[0] if self.n_conv else 0
        for i, c in enumerate(self.conv_channels):
            shapes[f"conv.{i}.weight"] = (c, in_c, self.conv_kernel, self.conv_kernel)
            shapes[f"conv.{i}.bias"] = (c,)
            in_c = c
        sizes = self.fc_sizes()
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            shapes[f"layers.{i}.weight"] = (fan_in, fan_out)
            shapes[f"layers.{i}.bias"] = (fan_out,)
        return shapes

    def layer_names(self) -> list[tuple[str, str]]:
        """(weight name, bias name) of every layer, in parameter-list order."""
        names = list(self.param_shapes())
        return list(zip(names[0::2], names[1::2]))


def architecture(model: ModelSpec) -> Architecture:
    if getattr(model, "arch", "mlp") != "conv":
        return Architecture(model.input_size, tuple(model.hidden), model.num_classes)
    return Architecture(model.input_size, tuple(model.hidden), model.num_classes, tuple(model.input_shape),
                        tuple(model.conv_channels), model.conv_kernel, model.pool_size, model.pool_stride,
                        model.pool_mode)


def _per_layer(rate, n: int) -> list[float]:
    if isinstance(rate, (list, tuple)):
        if len(rate) != n:
            raise ValueError(f"{len(rate)} dropout rates for {n} layers")
        return [float(r) for r in rate]
    return [float(rate or 0.0)] * n


def dropout_rates(arch: Architecture, step: StepSpec) -> list[float]:
    """The dropout rate of every site: [input, each conv block, each hidden fully connected layer]."""
    return [float(getattr(step, "dropout_input", 0.0) or 0.0),
            *_per_layer(getattr(step, "dropout_conv", 0.0), arch.n_conv),
            *_per_layer(getattr(step, "dropout_fc", 0.0), len(arch.hidden))]


def dropout_sites(arch: Architecture, step: StepSpec, n: int) -> list[tuple[tuple[int, ...], float]]:
    """(mask shape, rate) of every dropout site for a batch of n, in the order the masks are drawn."""
    shapes = [(n, arch.input_size), *[(n, *s) for s in arch.conv_outputs()], *[(n, h) for h in arch.hidden]]
    return list(zip(shapes, dropout_rates(arch, step)))


def uses_dropout(arch: Architecture, step: StepSpec) -> bool:
    return any(r > 0 for r in dropout_rates(arch, step))
