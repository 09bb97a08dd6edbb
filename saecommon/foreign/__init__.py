"""Models in other libraries' formats, read and written framework-neutrally (numpy):
what ``scripts/convert.py``, both packages' ``load_foreign``/``save_foreign`` and the
evaluation scripts go through.

Formats (``FORMATS``); each module's docstring says what it holds and what changes on
the way:

    sae                  this project's checkpoint (the default target)    ours.py
    saelens              SAELens 6 folder: sae_weights.safetensors + cfg.json
    sparsify             sparsify folder: sae.safetensors + cfg.json (or a run
                         folder of hookpoints)
    dictionary_learning  folder: ae.pt + config.json
    gemmascope           params.npz (JumpReLU)
    torch                a bare state dict: .pt/.pth/.bin/.safetensors  state_dicts.py
    flax                 a flax.serialization msgpack file, or an orbax folder

``read(path)`` detects the format when it is not given and says what it found when it
is none of them; every read checks every tensor's shape against the config it builds.
``write`` never replaces a file unless told to (``overwrite=True``).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

from saecommon.checkpoint import (
    CheckpointError,
    atomic_write,
    check_finite_weights,
    check_state_dict,
)
from saecommon.dictionary import check_state_dict as check_dictionary
from saecommon.foreign import (
    dictionary_learning,
    gemmascope,
    ours,
    saelens,
    sparsify,
    state_dicts,
)
from saecommon.foreign.files import (
    MSGPACK_EXTENSIONS,
    ForeignError,
    describe,
    is_msgpack_map,
    is_pickle,
    is_safetensors,
    is_torch_zip,
)
from saecommon.foreign.model import Model, forward_numpy

FORMATS = (
    "sae",
    "saelens",
    "sparsify",
    "dictionary_learning",
    "gemmascope",
    "torch",
    "flax",
)
DICTIONARY_ONLY = ("saelens", "sparsify", "dictionary_learning", "gemmascope")
FOLDER_FORMATS = ("saelens", "sparsify", "dictionary_learning")

_READERS = {
    "sae": ours.read,
    "saelens": saelens.read,
    "sparsify": sparsify.read,
    "dictionary_learning": dictionary_learning.read,
    "gemmascope": gemmascope.read,
    "torch": state_dicts.read_torch,
    "flax": state_dicts.read_flax,
}
_WRITERS = {
    "sae": ours.write,
    "saelens": saelens.write,
    "sparsify": sparsify.write,
    "dictionary_learning": dictionary_learning.write,
    "gemmascope": gemmascope.write,
    "flax": state_dicts.write_flax,
}
_FILES_IN_FOLDERS = {
    saelens.WEIGHTS: "saelens",
    sparsify.WEIGHTS: "sparsify",
    dictionary_learning.WEIGHTS: "dictionary_learning",
}

__all__ = [
    "FORMATS",
    "ForeignError",
    "Model",
    "detect",
    "forward_numpy",
    "read",
    "verify",
    "write",
]


def detect(path: str | os.PathLike) -> tuple[str, str]:
    """(format, the path to read it from): a file that belongs to a folder format
    (sae_weights.safetensors, sae.safetensors, ae.pt) means its folder."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ForeignError(f"no file or folder at {path}")
    if os.path.isdir(path):
        for name, sniff in (
            ("sae", ours.sniff),
            ("saelens", saelens.sniff),
            ("dictionary_learning", dictionary_learning.sniff),
            ("sparsify", sparsify.sniff),
            ("flax", state_dicts.looks_like_orbax),
        ):
            if sniff(path):
                return name, path
        raise ForeignError(
            f"{path} is {describe(path)}; a folder is read as saelens "
            f"({saelens.WEIGHTS} + {saelens.CFG}), sparsify ({sparsify.WEIGHTS} + "
            f"{sparsify.CFG}, or a run folder of hookpoint folders), "
            f"dictionary_learning ({dictionary_learning.WEIGHTS} + "
            f"{dictionary_learning.CFG}), a run folder of this project (model."
            "safetensors) or an orbax checkpoint; give --from if it is one of them"
        )
    name = os.path.basename(path)
    if name in _FILES_IN_FOLDERS and not ours.sniff(path):
        return _FILES_IN_FOLDERS[name], os.path.dirname(os.path.abspath(path))
    if is_safetensors(path):
        return ("sae" if ours.sniff(path) else "torch"), path
    if gemmascope.sniff(path):
        return "gemmascope", path
    if is_torch_zip(path) or is_pickle(path):
        return "torch", path
    if path.endswith(MSGPACK_EXTENSIONS) or is_msgpack_map(path):
        return "flax", path
    raise ForeignError(
        f"{path} is {describe(path)}, which is none of the formats read here "
        f"({', '.join(FORMATS)}); give --from if it is one of them"
    )


def read(
    path: str | os.PathLike,
    format: str | None = None,
    *,
    fields: dict[str, Any] | None = None,
    hookpoint: str | None = None,
) -> Model:
    """The model at ``path`` in this project's names and layouts. ``fields``: config
    fields the file does not carry (activation, k, ...); a field the file carries
    must agree with it. ``hookpoint``: which SAE of a sparsify run folder."""
    path = os.fspath(path)
    if format is None:
        format, path = detect(path)
    elif format not in FORMATS:
        raise ForeignError(
            f"unknown format {format!r}; these are: {', '.join(FORMATS)}"
        )
    elif format in FOLDER_FORMATS and os.path.isfile(path):
        path = os.path.dirname(os.path.abspath(path))
    if not os.path.exists(path):
        raise ForeignError(f"no file or folder at {path}")
    if hookpoint is not None and format != "sparsify":
        raise ForeignError(f"--hookpoint is for sparsify run folders, not {format}")
    model = _READERS[format](path, dict(fields or {}), hookpoint)
    if format == "sae":
        return model  # its own loader checked every tensor
    # every other format, here once: each tensor against the config built (names
    # what is missing, unexpected or mis-shaped, and non-finite weights)
    if model.kind == "dictionary":
        check_dictionary(model.state_dict, model.config, path)
        return model
    try:
        check_state_dict(model.state_dict, model.config)
    except CheckpointError as err:
        raise ForeignError(f"{path}: {err}") from None
    check_finite_weights(model.state_dict, path)
    return model


def write(
    model: Model,
    path: str | os.PathLike,
    format: str = "sae",
    *,
    overwrite: bool = False,
) -> tuple[list[str], list[str]]:
    """Write ``model`` as ``format`` at ``path`` (a folder for saelens, sparsify and
    dictionary_learning, and for flax a path without a suffix: an orbax checkpoint;
    else a file): (files written, what changed on the way). An
    existing file is never replaced unless ``overwrite``; nothing is written when the
    format cannot hold the model."""
    path = os.fspath(path)
    if format not in FORMATS:
        raise ForeignError(
            f"unknown format {format!r}; these are: {', '.join(FORMATS)}"
        )
    if format in DICTIONARY_ONLY and model.kind != "dictionary":
        raise ForeignError(
            f"{format} holds dictionary SAEs; this is a classic {model.config.architecture} "
            "autoencoder: write it as sae, torch or flax"
        )
    if format == "flax" and not os.path.splitext(path)[1]:
        return state_dicts.write_orbax(model, path, overwrite)
    if format == "torch":
        writer = (
            state_dicts.write_torch_safetensors
            if path.endswith(".safetensors")
            else state_dicts.write_torch
        )
    else:
        writer = _WRITERS[format]
    files, notes = writer(model)
    if format in FOLDER_FORMATS:
        if os.path.isfile(path):
            raise ForeignError(f"{path} is a file; {format} is written to a folder")
        targets = {os.path.join(path, name): data for name, data in files.items()}
    else:
        if os.path.isdir(path):
            raise ForeignError(f"{path} is a folder; {format} is written to a file")
        targets = {path: files[""]}
    existing = [t for t in targets if os.path.exists(t)]
    if existing and not overwrite:
        raise ForeignError(
            f"{', '.join(existing)} already exist{'s' if len(existing) == 1 else ''}; "
            "choose another destination, or overwrite it (--overwrite)"
        )
    for target, data in targets.items():
        atomic_write(target, data)
    return list(targets), notes


def verify(
    model: Model,
    path: str | os.PathLike,
    format: str,
    *,
    fields: dict[str, Any] | None = None,
    tokens: int = 64,
    seed: int = 0,
) -> dict[str, float]:
    """Read ``path`` back and compare it with ``model``. A dictionary SAE: the largest
    difference of z and of x_hat on ``tokens`` standard-normal inputs, each relative
    to the largest |value| ({"z": ..., "x_hat": ...}); a classic autoencoder: the
    largest difference of any tensor ({"weights": ...}). Fields a bare state dict
    does not store come from ``model``'s config."""
    config = model.config
    shape_fields = (
        "d_in",
        "d_sae",
        "input_scale",
        "architecture",
        "input_dim",
        "hidden_dims",
        "tied",
    )
    if format in ("torch", "flax"):  # no config in the file: the model's own
        carried = {
            k: v for k, v in dataclasses.asdict(config).items() if k not in shape_fields
        }
        fields = {**carried, **(fields or {})}
    back = read(path, format, fields=fields)
    if model.kind == "classic":
        worst = max(
            float(np.max(np.abs(model.state_dict[k] - back.state_dict[k]), initial=0))
            for k in model.state_dict
        )
        return {"weights": worst}
    x = np.random.default_rng(seed).standard_normal((tokens, config.d_in))
    out = {}
    for name, a, b in zip(
        ("z", "x_hat"),
        forward_numpy(model.state_dict, config, x),
        forward_numpy(back.state_dict, back.config, x),
    ):
        scale = max(float(np.max(np.abs(a))), 1e-12)
        out[name] = float(np.max(np.abs(a - b))) / scale
    return out
