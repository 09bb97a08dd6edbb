"""Flax params <-> the portable checkpoint (PyTorch ``state_dict`` names and layouts).

The conversion table, the only place that knows how the two layouts differ:

    Flax                               PyTorch                      transpose
    {g}_{i}/kernel [in, out]           {g}.{i}.weight [out, in]     Linear
    encoder_{i}/kernel [kh, kw, in, out]  encoder.{i}.weight [out, in, kh, kw]  Conv2d
    decoder_{i}/kernel [kh, kw, in, out]  decoder.{i}.weight [in, out, kh, kw]  ConvTranspose2d
    {g}_{i}/bias [out]                 {g}.{i}.bias [out]           as is

(4-D decoder kernels are transposed convolutions; the kernel is not flipped on disk,
the JAX layer flips it: see jaxsae.models.Conv.) Every tensor is checked against the
shapes the config implies before it is used.
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

# (group, rank) -> (axes Flax -> torch, axes torch -> Flax)
KERNEL_LAYOUTS = {
    ("encoder", 2): ((1, 0), (1, 0)),
    ("decoder", 2): ((1, 0), (1, 0)),
    ("encoder", 4): ((3, 2, 0, 1), (2, 3, 1, 0)),
    ("decoder", 4): ((2, 3, 0, 1), (2, 3, 0, 1)),
}
LEAF_NAMES = {"kernel": "weight", "bias": "bias"}  # Flax -> torch
_FLAX_LEAF = {torch: flax for flax, torch in LEAF_NAMES.items()}


def _layout(group: str, leaf: str, value: np.ndarray, to_torch: bool) -> np.ndarray:
    if leaf == "bias":
        return value
    axes = KERNEL_LAYOUTS[(group, value.ndim)][0 if to_torch else 1]
    return np.transpose(value, axes)


def to_state_dict(params) -> dict[str, np.ndarray]:
    """Flax params -> numpy arrays with PyTorch names and layouts. Works on any pytree
    shaped like the params (gradients, optimizer moments)."""
    out = {}
    for module, leaves in params.items():
        group, index = module.rsplit("_", 1)
        for leaf, value in leaves.items():
            out[f"{group}.{index}.{LEAF_NAMES[leaf]}"] = np.ascontiguousarray(
                _layout(group, leaf, np.asarray(value), to_torch=True)
            )
    return out


def from_state_dict(state_dict: StateDict, config: SAEConfig):
    """PyTorch-layout numpy arrays -> Flax params, after checking every key and shape."""
    check_state_dict(state_dict, config)
    params: dict[str, dict[str, jax.Array]] = {}
    for name, value in state_dict.items():
        group, index, torch_leaf = name.split(".")
        leaf = _FLAX_LEAF[torch_leaf]
        flax_value = _layout(group, leaf, np.asarray(value), to_torch=False)
        params.setdefault(f"{group}_{index}", {})[leaf] = jnp.asarray(flax_value)
    return params


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
