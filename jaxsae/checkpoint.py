"""Flax params <-> the portable checkpoint (PyTorch ``state_dict`` names and layouts).

The conversion table lives in saecommon/flax_layout.py (numpy, shared with the Flax
format of saecommon/foreign). Every tensor is checked against the shapes the config
implies before it is used.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np

from saecommon.checkpoint import (
    StateDict,
    check_state_dict,
    read_checkpoint,
    untie_state_dict,
    write_checkpoint,
)
from saecommon.config import SAEConfig
from saecommon.flax_layout import to_flax_layout, to_torch_layout


def to_state_dict(params) -> dict[str, np.ndarray]:
    """Flax params -> numpy arrays with PyTorch names and layouts. Works on any pytree
    shaped like the params (gradients, optimizer moments)."""
    return to_torch_layout(params)


def from_state_dict(state_dict: StateDict, config: SAEConfig):
    """PyTorch-layout numpy arrays -> Flax params, after checking every key and shape."""
    check_state_dict(state_dict, config)
    return jax.tree_util.tree_map(jnp.asarray, to_flax_layout(state_dict))


def save_checkpoint(path: str | os.PathLike, params, config: SAEConfig) -> None:
    """Write params and config to one safetensors file (atomic)."""
    write_checkpoint(path, to_state_dict(params), config)


def load_checkpoint(path: str | os.PathLike):
    """(params, config) from a checkpoint written by jaxsae or torchsae."""
    state_dict, config = read_checkpoint(path)
    return from_state_dict(state_dict, config), config


def untie(params, config: SAEConfig):
    """A tied model's (params, config) as an untied one with identical outputs: each
    decoder layer gets a copy of its mirror encoder kernel, transposed."""
    state_dict, untied = untie_state_dict(to_state_dict(params), config)
    return from_state_dict(state_dict, untied), untied
