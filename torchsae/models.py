"""The sparse autoencoder as a torch ``nn.Module``, in its three architectures: mlp
(fully connected, any depth), conv and fullconv (the convolutional layers of
saecommon/architectures.py).

``state_dict`` names are ``encoder.{i}.weight``/``.bias`` and ``decoder.{i}.weight``/
``.bias`` in torch's layouts (Linear [out, in], Conv2d [out, in, kh, kw],
ConvTranspose2d [in, out, kh, kw]); a tied decoder layer has only a bias and uses its
mirror encoder weight transposed. These names and layouts are the portable checkpoint
format. Initialisation is torch's default for each layer, U(-1/sqrt(fan_in),
1/sqrt(fan_in)) for weight and bias, drawn from ``generator`` when one is given.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from saecommon.architectures import (
    CODE_SHAPES,
    IMAGE_SHAPE,
    Layer,
    check_input_shape,
    layers,
)
from saecommon.config import SAEConfig
from torchsae.sparsity import apply_mask, sparsity_mask


class AutoencoderOutput(NamedTuple):
    reconstruction: torch.Tensor
    """[batch, input] after the output activation."""
    logits: torch.Tensor
    """[batch, input] before the output activation (BCE is computed from these)."""
    code: torch.Tensor
    """[batch, code] after the sparsity layers."""
    hiddens: tuple[torch.Tensor, ...]
    """Every hidden activation, input side first: encoder layers, code, decoder layers."""
    mask: torch.Tensor
    """[batch, code] bool: units kept by the sparsity layers (all True without them)."""


def activate(x: torch.Tensor, name: str, negative_slope: float = 0.01) -> torch.Tensor:
    if name == "relu":
        return torch.relu(x)
    if name == "leaky_relu":
        return F.leaky_relu(x, negative_slope)
    if name == "sigmoid":
        return torch.sigmoid(x)
    if name == "tanh":
        return torch.tanh(x)
    if name == "identity":
        return x
    raise ValueError(f"unknown activation {name!r}")


def check_input(x: torch.Tensor, config: SAEConfig) -> None:
    """ValueError unless ``x`` is [batch, input_dim] with batch >= 1."""
    check_input_shape(x.shape, config)


class Dense(nn.Module):
    """y = x @ weight.T + bias. ``has_weight=False`` (tied decoders) owns a bias only and
    takes the weight at call time."""

    def __init__(
        self, fan_in: int, fan_out: int, has_weight: bool = True, generator=None
    ):
        super().__init__()
        bound = 1 / math.sqrt(fan_in)
        if has_weight:
            self.weight = nn.Parameter(torch.empty(fan_out, fan_in))
            nn.init.uniform_(self.weight, -bound, bound, generator=generator)
        self.bias = nn.Parameter(torch.empty(fan_out))
        nn.init.uniform_(self.bias, -bound, bound, generator=generator)

    def forward(
        self, x: torch.Tensor, weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        return F.linear(x, self.weight if weight is None else weight, self.bias)


class Autoencoder(nn.Module):
    """x [batch, input] -> AutoencoderOutput. ``train`` (default: ``self.training``)
    turns lifetime top-k on."""

    def __init__(self, config: SAEConfig, *, generator: torch.Generator | None = None):
        super().__init__()
        self.config = config
        specs = layers(config)
        self.encoder = nn.ModuleList(
            _build(spec, config, generator)
            for spec in specs
            if spec.name.startswith("encoder.")
        )
        self.decoder = nn.ModuleList(
            _build(spec, config, generator)
            for spec in specs
            if spec.name.startswith("decoder.")
        )

    def forward(self, x: torch.Tensor, train: bool | None = None) -> AutoencoderOutput:
        cfg = self.config
        train = self.training if train is None else train
        check_input(x, cfg)
        if cfg.architecture != "mlp":
            return self._conv(x, train)
        n = len(cfg.hidden_dims)
        hiddens = []
        h = x
        for i, layer in enumerate(self.encoder):
            h = layer(h)
            if i < n - 1:
                h = activate(h, cfg.activation, cfg.negative_slope)
                hiddens.append(h)
        code = activate(h, cfg.code_activation, cfg.negative_slope)
        mask = sparsity_mask(code, cfg, train)
        code = apply_mask(code, mask)
        hiddens.append(code)
        h = code
        for i, layer in enumerate(self.decoder):
            # .contiguous(): the same BLAS call as an untied layer, so untie() keeps
            # outputs bit-identical (a transposed view takes another kernel path).
            tied = self.encoder[n - 1 - i].weight.T.contiguous() if cfg.tied else None
            h = layer(h, tied)
            if i < n - 1:
                h = activate(h, cfg.activation, cfg.negative_slope)
                hiddens.append(h)
        reconstruction = activate(h, cfg.output_activation, cfg.negative_slope)
        return AutoencoderOutput(reconstruction, h, code, tuple(hiddens), mask)

    def _conv(self, x: torch.Tensor, train: bool) -> AutoencoderOutput:
        cfg = self.config
        h = x.reshape(x.shape[0], *IMAGE_SHAPE)  # NCHW
        fmt = _conv_memory_format(x)
        hiddens = []
        for i, layer in enumerate(self.encoder):
            h = layer(h.contiguous(memory_format=fmt))
            if i < len(self.encoder) - 1:
                h = activate(h, cfg.activation, cfg.negative_slope)
                hiddens.append(h)
        h = F.max_pool2d(activate(h, cfg.code_activation, cfg.negative_slope), 2)
        code = h.flatten(1)
        mask = sparsity_mask(code, cfg, train)
        code = apply_mask(code, mask)
        hiddens.append(code)
        h = (
            code
            if cfg.architecture == "conv"
            else code.reshape(-1, *CODE_SHAPES[cfg.architecture])
        )
        for i, layer in enumerate(self.decoder):
            h = layer(
                h if cfg.architecture == "conv" else h.contiguous(memory_format=fmt)
            )
            if i < len(self.decoder) - 1:
                h = activate(h, cfg.activation, cfg.negative_slope)
                hiddens.append(h)
        h = h.flatten(1)
        reconstruction = activate(h, cfg.output_activation, cfg.negative_slope)
        return AutoencoderOutput(reconstruction, h, code, tuple(hiddens), mask)


def _conv_memory_format(x: torch.Tensor) -> torch.memory_format:
    """How convolution inputs are laid out in memory: channels_last (NHWC) on the CPU,
    where oneDNN runs this package's convolutions faster that way (the fullconv
    training step at batch 1200 on 2 cores: 0.50 s vs 0.69 s median, eager; a
    torch.compile'd step is as fast either way); the default NCHW elsewhere. Only
    memory strides change: every tensor keeps its NCHW shape and is read in that
    order, and values agree with NCHW up to summation order. (A 1-channel image is
    both layouts at once, so the first layer's output stays NCHW; each later input
    is converted.)"""
    return torch.channels_last if x.device.type == "cpu" else torch.contiguous_format


def _build(spec: Layer, config: SAEConfig, generator) -> nn.Module:
    """The torch module for one layer spec, with torch's default init drawn from
    ``generator``."""
    if spec.kind == "linear":
        tied = config.tied and spec.name.startswith("decoder.")
        return Dense(
            spec.fan_in, spec.fan_out, has_weight=not tied, generator=generator
        )
    cls = nn.Conv2d if spec.kind == "conv" else nn.ConvTranspose2d
    layer = cls(spec.fan_in, spec.fan_out, spec.kernel, stride=spec.stride)
    bound = 1 / math.sqrt(spec.init_fan_in)
    with torch.no_grad():
        nn.init.uniform_(layer.weight, -bound, bound, generator=generator)
        nn.init.uniform_(layer.bias, -bound, bound, generator=generator)
    return layer
