"""Reconstruction losses and the total objective, as pure functions."""

from __future__ import annotations

import torch

from saecommon.config import SAEConfig
from torchsae.models import AutoencoderOutput
from torchsae.penalties import sparsity_penalty


def mse_loss(reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error over every element."""
    return (reconstruction - target).square().mean()


def bce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of sigmoid(logits) against target in [0, 1], mean over
    elements, from the logits so it never reaches inf: softplus(z) - z * t, with
    softplus(z) = logaddexp(z, 0). Written as one smooth op, not relu(z) + log1p(exp(-|z|)):
    that splits into two kinks whose subgradients at z == 0 add up wrong."""
    return (torch.logaddexp(logits, torch.zeros_like(logits)) - logits * target).mean()


def reconstruction_loss(
    output: AutoencoderOutput, target: torch.Tensor, config: SAEConfig
) -> torch.Tensor:
    if config.loss == "bce":
        return bce_loss(output.logits, target)
    return mse_loss(output.reconstruction, target)


def loss_terms(
    output: AutoencoderOutput, target: torch.Tensor, config: SAEConfig
) -> dict[str, torch.Tensor]:
    """{"recon", "penalty", "loss"}: the objective is recon + penalty."""
    recon = reconstruction_loss(output, target, config)
    penalty = sparsity_penalty(output.hiddens, output.code, config)
    return {"recon": recon, "penalty": penalty, "loss": recon + penalty}
