"""The fully connected sparse autoencoder as a torch ``nn.Module``.

``state_dict`` names are ``encoder.{i}.weight`` [out, in], ``encoder.{i}.bias``,
``decoder.{i}.weight``/``.bias``; a tied decoder layer has only a bias and uses its
mirror encoder weight transposed. These names and layouts are the portable checkpoint
format. Initialisation is torch's ``nn.Linear`` default, U(-1/sqrt(fan_in),
1/sqrt(fan_in)) for weight and bias, drawn from ``generator`` when one is given.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from saecommon.config import SAEConfig
from torchsae.sparsity import apply_mask, lifetime_topk_mask, topk_mask


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
    if name == "identity":
        return x
    raise ValueError(f"unknown activation {name!r}")


def sparsity_mask(code: torch.Tensor, config: SAEConfig, train: bool) -> torch.Tensor:
    """Bool [batch, code]: per-sample top-k, then lifetime top-k of what it kept (the
    lifetime layer acts in training only)."""
    mask = torch.ones(code.shape, dtype=torch.bool, device=code.device)
    if config.topk is not None:
        mask = topk_mask(code, config.topk)
        code = torch.where(
            mask, code, torch.zeros((), dtype=code.dtype, device=code.device)
        )
    if train and (config.lifetime_k is not None or config.lifetime_rate is not None):
        mask = mask & lifetime_topk_mask(code, config.lifetime_k, config.lifetime_rate)
    return mask


def check_input(x: torch.Tensor, config: SAEConfig) -> None:
    if x.ndim != 2 or x.shape[1] != config.input_dim:
        raise ValueError(
            f"expected input [batch, {config.input_dim}], got shape {tuple(x.shape)}"
        )


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
        self.encoder = nn.ModuleList(
            Dense(fan_in, fan_out, generator=generator)
            for fan_in, fan_out in config.encoder_dims
        )
        self.decoder = nn.ModuleList(
            Dense(fan_in, fan_out, has_weight=not config.tied, generator=generator)
            for fan_in, fan_out in config.decoder_dims
        )

    def forward(self, x: torch.Tensor, train: bool | None = None) -> AutoencoderOutput:
        cfg = self.config
        train = self.training if train is None else train
        check_input(x, cfg)
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


def untie(model: Autoencoder) -> Autoencoder:
    """A tied model as a new untied one with identical outputs: each decoder layer gets
    a copy of its mirror encoder weight, transposed."""
    config = model.config
    if not config.tied:
        raise ValueError("untie needs a tied model (config.tied is False)")
    ref = next(model.parameters())
    untied = Autoencoder(config.replace(tied=False)).to(
        dtype=ref.dtype, device=ref.device
    )
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    n = len(config.hidden_dims)
    for i in range(n):
        state[f"decoder.{i}.weight"] = (
            model.encoder[n - 1 - i].weight.detach().T.clone()
        )
    untied.load_state_dict(state)
    untied.train(model.training)
    return untied
