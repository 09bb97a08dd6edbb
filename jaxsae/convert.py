"""Models in other libraries' formats (SAELens, sparsify, dictionary_learning, Gemma
Scope, bare torch state dicts, Flax msgpack) as jaxsae models, and back. The formats
are read and written once, in numpy, by saecommon/foreign; this module converts to
and from this package's arrays.

    model, config = load_foreign("gemma-scope/params.npz")   # format detected
    save_foreign(model, config, "out/saelens-folder", "saelens")

A classic autoencoder comes as Flax params (as ``load_checkpoint`` gives), a
dictionary SAE as (params, threshold) (as ``dictionary.params_from_state_dict``).
"""

from __future__ import annotations

import os
from typing import Any

from jaxsae import checkpoint, dictionary
from saecommon import foreign
from saecommon.dictionary_config import DictConfig

__all__ = ["load_foreign", "save_foreign"]


def load_foreign(
    path: str | os.PathLike,
    format: str | None = None,
    *,
    fields: dict[str, Any] | None = None,
    hookpoint: str | None = None,
):
    """(model, config) from ``path`` in any format of ``saecommon.foreign.FORMATS``
    (detected when not given). ``fields``: config fields the file does not carry
    (activation, k, ...); ``hookpoint``: which SAE of a sparsify run folder."""
    read = foreign.read(path, format, fields=fields, hookpoint=hookpoint)
    if read.kind == "dictionary":
        return dictionary.params_from_state_dict(
            read.state_dict, read.config
        ), read.config
    return checkpoint.from_state_dict(read.state_dict, read.config), read.config


def save_foreign(
    model,
    config,
    path: str | os.PathLike,
    format: str = "sae",
    *,
    overwrite: bool = False,
) -> tuple[list[str], list[str]]:
    """Write ``model`` (as load_foreign returns it) as ``format``: (files written,
    what changed on the way). Nothing is replaced unless ``overwrite``."""
    if isinstance(config, DictConfig):
        params, threshold = model
        state_dict = dictionary.to_state_dict(params, threshold, config)
    else:
        state_dict = checkpoint.to_state_dict(model)
    return foreign.write(
        foreign.Model(state_dict, config), path, format, overwrite=overwrite
    )
