"""Reconstruction losses and the total objective, as pure functions."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxsae.models import AutoencoderOutput
from jaxsae.penalties import sparsity_penalty
from saecommon.config import SAEConfig


def mse_loss(reconstruction: jax.Array, target: jax.Array) -> jax.Array:
    """Mean squared error over every element."""
    return jnp.mean(jnp.square(reconstruction - target))


def bce_loss(logits: jax.Array, target: jax.Array) -> jax.Array:
    """Binary cross-entropy of sigmoid(logits) against target in [0, 1], mean over
    elements, from the logits so it never reaches inf: softplus(z) - z * t, with
    softplus(z) = logaddexp(z, 0). Written as one smooth op, not relu(z) + log1p(exp(-|z|)):
    that splits into two kinks whose subgradients at z == 0 add up wrong."""
    return jnp.mean(jnp.logaddexp(logits, 0) - logits * target)


def reconstruction_loss(
    output: AutoencoderOutput, target: jax.Array, config: SAEConfig
):
    if config.loss == "bce":
        return bce_loss(output.logits, target)
    return mse_loss(output.reconstruction, target)


def loss_terms(
    output: AutoencoderOutput, target: jax.Array, config: SAEConfig
) -> dict[str, jax.Array]:
    """{"recon", "penalty", "loss"}: the objective is recon + penalty."""
    recon = reconstruction_loss(output, target, config)
    penalty = sparsity_penalty(output.hiddens, output.code, config)
    return {"recon": recon, "penalty": penalty, "loss": recon + penalty}
