"""The layers of each architecture, written once: both model packages build their
modules from these specs, and the checkpoint's names and shapes come from them.

Torch layouts (the checkpoint's): Linear weight [out, in]; Conv2d weight
[out, in, kh, kw]; ConvTranspose2d weight [in, out, kh, kw]. No padding anywhere.
"""

from __future__ import annotations

from typing import NamedTuple


class Layer(NamedTuple):
    name: str  # torch state_dict prefix: "encoder.0", "decoder.2", ...
    kind: str  # "linear", "conv" or "conv_transpose"
    fan_in: int  # input features or channels
    fan_out: int  # output features or channels
    kernel: int = 1  # square kernel size (convolutions)
    stride: int = 1

    @property
    def weight_shape(self) -> tuple[int, ...]:
        if self.kind == "linear":
            return (self.fan_out, self.fan_in)
        if self.kind == "conv":
            return (self.fan_out, self.fan_in, self.kernel, self.kernel)
        return (self.fan_in, self.fan_out, self.kernel, self.kernel)

    @property
    def init_fan_in(self) -> int:
        """torch's fan_in for its default init U(-1/sqrt(fan_in), 1/sqrt(fan_in)):
        dim 1 of the weight times the kernel area (for ConvTranspose2d, its out
        channels)."""
        return self.weight_shape[1] * self.kernel * self.kernel


# A convolutional encoder with a fully connected decoder: 4 x [Conv 6x6 + LeakyReLU]
# 1->8->8->8->8, MaxPool 2x2, flatten (8 * 4 * 4 = 128), Linear 128 -> 784.
CONV = (
    Layer("encoder.0", "conv", 1, 8, 6),
    Layer("encoder.1", "conv", 8, 8, 6),
    Layer("encoder.2", "conv", 8, 8, 6),
    Layer("encoder.3", "conv", 8, 8, 6),
    Layer("decoder.0", "linear", 128, 784),
)
# The fully convolutional autoencoder: Conv(1,8,3) Conv(8,16,5) Conv(16,32,5,s2) MaxPool 2
# (code 32 x 4 x 4 = 512) ConvT(32,16,3,s2) ConvT(16,8,5,s2) ConvT(8,1,8) -> 1 x 28 x 28.
FULLCONV = (
    Layer("encoder.0", "conv", 1, 8, 3),
    Layer("encoder.1", "conv", 8, 16, 5),
    Layer("encoder.2", "conv", 16, 32, 5, 2),
    Layer("decoder.0", "conv_transpose", 32, 16, 3, 2),
    Layer("decoder.1", "conv_transpose", 16, 8, 5, 2),
    Layer("decoder.2", "conv_transpose", 8, 1, 8),
)
CODE_SHAPES = {"conv": (8, 4, 4), "fullconv": (32, 4, 4)}
"""[channels, height, width] of the pooled code; it is flattened in this (NCHW) order."""
IMAGE_SHAPE = (1, 28, 28)
"""The input both convolutional architectures are built for: [channels, h, w]."""


def check_input_shape(shape: tuple[int, ...], config) -> None:
    """ValueError unless ``shape`` is [batch, config.input_dim] with batch >= 1: the
    one check behind both packages' ``check_input`` and ``encode`` (a shape is static
    under jit, so it costs nothing inside a traced forward)."""
    shape = tuple(int(d) for d in shape)
    if len(shape) != 2 or shape[1] != config.input_dim:
        images = "" if config.architecture == "mlp" else " (1x28x28 images, flattened)"
        raise ValueError(
            f"expected input [batch, {config.input_dim}]{images}, got shape {shape}"
        )
    if shape[0] == 0:
        # jax would return an empty output and torch's top-k would fail on it.
        raise ValueError(
            f"x has 0 samples (shape {shape}); the model needs at least one"
        )


def layers(config) -> tuple[Layer, ...]:
    """Every parameterised layer of ``config``'s model, encoder first."""
    if config.architecture == "conv":
        return CONV
    if config.architecture == "fullconv":
        return FULLCONV
    enc = tuple(
        Layer(f"encoder.{i}", "linear", a, b)
        for i, (a, b) in enumerate(config.encoder_dims)
    )
    dec = tuple(
        Layer(f"decoder.{i}", "linear", a, b)
        for i, (a, b) in enumerate(config.decoder_dims)
    )
    return enc + dec


def train_step_flops(config, batch: int) -> int:
    """Matmul FLOPs of one training step of the MLP: forward 2*B*in*out per layer, and
    backward twice that (gradients of weights and of inputs), i.e. 6*B*sum(in*out).
    Elementwise work (activations, top-k, the optimizer) is not counted."""
    weights = sum(i * o for i, o in config.encoder_dims + config.decoder_dims)
    return 6 * batch * weights
