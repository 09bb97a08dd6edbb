"""Flax params <-> the portable checkpoint (PyTorch ``state_dict`` names and layouts).

The conversion table, the only place that knows how the two layouts differ:

    Flax                        PyTorch               layout
    {group}_{i}/kernel [in,out] {group}.{i}.weight    [out, in]   (transpose)
    {group}_{i}/bias   [out]    {group}.{i}.bias      [out]       (as is)

Every tensor is checked against the shapes the config implies before it is used.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from saecommon.checkpoint import (
    StateDict,
    check_state_dict,
    read_checkpoint,
    write_checkpoint,
)
from saecommon.config import SAEConfig

# Flax leaf name -> (torch leaf name, Flax -> torch layout, torch -> Flax layout)
CONVERSION_TABLE = {
    "kernel": ("weight", np.transpose, np.transpose),
    "bias": ("bias", np.asarray, np.asarray),
}
_TORCH_TO_FLAX_LEAF = {torch: flax for flax, (torch, _, _) in CONVERSION_TABLE.items()}


def to_state_dict(params) -> dict[str, np.ndarray]:
    """Flax params -> numpy arrays with PyTorch names and layouts. Works on any pytree
    shaped like the params (gradients, optimizer moments)."""
    out = {}
    for module, leaves in params.items():
        group, index = module.rsplit("_", 1)
        for leaf, value in leaves.items():
            torch_leaf, to_torch, _ = CONVERSION_TABLE[leaf]
            out[f"{group}.{index}.{torch_leaf}"] = np.ascontiguousarray(
                to_torch(np.asarray(value))
            )
    return out


def from_state_dict(state_dict: StateDict, config: SAEConfig):
    """PyTorch-layout numpy arrays -> Flax params, after checking every key and shape."""
    check_state_dict(state_dict, config)
    params: dict[str, dict[str, jax.Array]] = {}
    for name, value in state_dict.items():
        group, index, torch_leaf = name.split(".")
        leaf = _TORCH_TO_FLAX_LEAF[torch_leaf]
        to_flax = CONVERSION_TABLE[leaf][2]
        params.setdefault(f"{group}_{index}", {})[leaf] = jnp.asarray(to_flax(value))
    return params


def save_checkpoint(path: str | os.PathLike, params, config: SAEConfig) -> None:
    """Write params and config to one safetensors file (atomic)."""
    write_checkpoint(path, to_state_dict(params), config)


def load_checkpoint(path: str | os.PathLike):
    """(params, config) from a checkpoint written by jaxsae or torchsae."""
    state_dict, config = read_checkpoint(path)
    return from_state_dict(state_dict, config), config
