"""torch modules <-> the portable checkpoint.

The checkpoint's names and layouts are torch's own ``state_dict``, so no table is
needed here (jaxsae/checkpoint.py holds the one conversion table). Every tensor is still
checked against the shapes the config implies before it is loaded.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from saecommon.checkpoint import (
    StateDict,
    check_state_dict,
    read_checkpoint,
    untie_state_dict,
    write_checkpoint,
)
from torchsae.models import Autoencoder


def to_state_dict(model: torch.nn.Module) -> dict[str, np.ndarray]:
    """A model's parameters as numpy arrays (detached, on the CPU)."""
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def from_state_dict(state_dict: StateDict, config) -> Autoencoder:
    """A new Autoencoder holding ``state_dict``, after checking every key and shape;
    its dtype is the checkpoint's."""
    check_state_dict(state_dict, config)
    dtype = torch.from_numpy(np.array(next(iter(state_dict.values())))).dtype
    model = Autoencoder(config).to(dtype)
    model.load_state_dict(
        {k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()}
    )
    return model


def save_checkpoint(path: str | os.PathLike, model: Autoencoder) -> None:
    """Write the model's parameters and config to one safetensors file (atomic)."""
    write_checkpoint(path, to_state_dict(model), model.config)


def load_checkpoint(path: str | os.PathLike):
    """(model, config) from a checkpoint written by jaxsae or torchsae."""
    state_dict, config = read_checkpoint(path)
    return from_state_dict(state_dict, config), config


def untie(model: Autoencoder) -> Autoencoder:
    """A tied model as a new untied one with identical outputs: each decoder layer gets
    a copy of its mirror encoder weight, transposed."""
    state_dict, config = untie_state_dict(to_state_dict(model), model.config)
    untied = from_state_dict(state_dict, config).to(next(model.parameters()).device)
    untied.train(model.training)
    return untied
