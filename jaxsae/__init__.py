"""Sparse autoencoders in JAX + Flax Linen + optax, mirroring torchsae name for name."""

from jaxsae.checkpoint import (
    from_state_dict,
    load_checkpoint,
    save_checkpoint,
    to_state_dict,
    untie,
)
from jaxsae.convert import load_foreign, save_foreign
from jaxsae.evaluation import encode, evaluate_checkpoint, evaluate_model
from jaxsae.losses import bce_loss, loss_terms, mse_loss, reconstruction_loss
from jaxsae.models import (
    Autoencoder,
    AutoencoderOutput,
    activate,
    check_input,
)
from jaxsae.penalties import kl_divergence, kl_penalty, l1_penalty, sparsity_penalty
from jaxsae.sparsity import (
    apply_mask,
    lifetime_topk,
    lifetime_topk_mask,
    sparsity_mask,
    topk,
    topk_mask,
)
from saecommon.checkpoint import CheckpointError
from saecommon.config import ConfigError, SAEConfig

__all__ = [
    "Autoencoder",
    "AutoencoderOutput",
    "CheckpointError",
    "ConfigError",
    "SAEConfig",
    "activate",
    "apply_mask",
    "bce_loss",
    "check_input",
    "encode",
    "evaluate_checkpoint",
    "evaluate_model",
    "from_state_dict",
    "kl_divergence",
    "kl_penalty",
    "l1_penalty",
    "lifetime_topk",
    "lifetime_topk_mask",
    "load_checkpoint",
    "load_foreign",
    "save_foreign",
    "loss_terms",
    "mse_loss",
    "reconstruction_loss",
    "save_checkpoint",
    "sparsity_mask",
    "sparsity_penalty",
    "to_state_dict",
    "topk",
    "topk_mask",
    "untie",
]
