"""Flax params <-> PyTorch ``state_dict`` names and layouts (numpy), for the classic
autoencoders: the one conversion table (jaxsae/checkpoint.py and the Flax format of
saecommon/foreign use it).

    Flax                               PyTorch                      transpose
    {g}_{i}/kernel [in, out]           {g}.{i}.weight [out, in]     Linear
    encoder_{i}/kernel [kh, kw, in, out]  encoder.{i}.weight [out, in, kh, kw]  Conv2d
    decoder_{i}/kernel [kh, kw, in, out]  decoder.{i}.weight [in, out, kh, kw]  ConvTranspose2d
    {g}_{i}/bias [out]                 {g}.{i}.bias [out]           as is

(4-D decoder kernels are transposed convolutions; the kernel is not flipped on disk,
the JAX layer flips it: see jaxsae.models.Conv.)
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

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


def to_torch_layout(params: Mapping) -> dict[str, np.ndarray]:
    """{"encoder_0": {"kernel", "bias"}, ...} -> {"encoder.0.weight", ...} (numpy,
    contiguous). Works on any pytree shaped like the params."""
    out = {}
    for module, leaves in params.items():
        group, index = module.rsplit("_", 1)
        for leaf, value in leaves.items():
            out[f"{group}.{index}.{LEAF_NAMES[leaf]}"] = np.ascontiguousarray(
                _layout(group, leaf, np.asarray(value), to_torch=True)
            )
    return out


def to_flax_layout(state_dict: Mapping[str, np.ndarray]) -> dict[str, dict]:
    """The inverse of :func:`to_torch_layout` (numpy arrays)."""
    params: dict[str, dict[str, np.ndarray]] = {}
    for name, value in state_dict.items():
        group, index, torch_leaf = name.split(".")
        leaf = _FLAX_LEAF[torch_leaf]
        params.setdefault(f"{group}_{index}", {})[leaf] = np.ascontiguousarray(
            _layout(group, leaf, np.asarray(value), to_torch=False)
        )
    return params
