"""Soft sparsity penalties as pure functions of activations."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from saecommon.config import REDUCTIONS, SAEConfig, check_rho
from torchsae.distributed import rows_total, sum_rows


def l1_penalty(activations: Sequence[torch.Tensor], weight: float) -> torch.Tensor:
    """weight * sum over layers of mean |a| (one layer: the code; all: the tutorial's
    FashionMNIST variant)."""
    return weight * sum(a.abs().mean() for a in activations)


def kl_divergence(rho: float, rho_hat: torch.Tensor) -> torch.Tensor:
    """Bernoulli KL(rho || rho_hat), elementwise (Ng, CS294A sparse autoencoder notes)."""
    return rho * torch.log(rho / rho_hat) + (1 - rho) * torch.log(
        (1 - rho) / (1 - rho_hat)
    )


def kl_penalty(
    code: torch.Tensor,
    rho: float,
    weight: float,
    reduction: str = "sum",
    eps: float = 1e-6,
) -> torch.Tensor:
    """weight * reduce_j KL(rho || rho_hat_j), rho_hat_j = batch mean of code unit j.

    code [batch, code] must lie in [0, 1]; rho_hat is clamped to [eps, 1 - eps].
    """
    check_rho(rho)
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; expected sum or mean")
    return _kl_penalty(code, rho, weight, reduction, eps)


def _kl_penalty(code, rho, weight, reduction, eps):
    """:func:`kl_penalty` without its checks (the model's path, from a validated
    config)."""
    # over the global batch when it is split over processes (torchsae.distributed)
    rho_hat = (sum_rows(code) / rows_total(code.shape[0])).clamp(eps, 1 - eps)
    kl = kl_divergence(rho, rho_hat)
    return weight * (kl.sum() if reduction == "sum" else kl.mean())


def sparsity_penalty(
    hiddens: Sequence[torch.Tensor], code: torch.Tensor, config: SAEConfig
) -> torch.Tensor:
    """The penalty that ``config`` names, from a forward pass's hidden activations."""
    if config.penalty == "l1":
        layers = hiddens if config.l1_layers == "hidden" else (code,)
        return l1_penalty(layers, config.penalty_weight)
    if config.penalty == "kl":  # config validated rho and the reduction
        return _kl_penalty(
            code,
            config.kl_rho,
            config.penalty_weight,
            config.kl_reduction,
            config.kl_eps,
        )
    return code.new_zeros(())
