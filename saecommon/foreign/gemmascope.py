"""Gemma Scope: ``params.npz`` with W_enc [d_in, d_sae], W_dec [d_sae, d_in], b_enc,
b_dec and threshold [d_sae]: JumpReLU without the b_dec subtraction
(z = pre * (pre > threshold), pre = x @ W_enc + b_enc).

Written: any SAE with a per-latent threshold that encodes as it does: jumprelu, the
batch rules (their one threshold for every latent) and relu (threshold 0); the b_dec
subtraction and the input scale are folded into the weights. TopK has no threshold,
so it cannot be written here.
"""

from __future__ import annotations

import io
import os
import zipfile

import numpy as np

from saecommon.foreign.files import ForeignError, float_arrays
from saecommon.foreign.model import (
    Model,
    check_jumprelu_threshold,
    dictionary_config,
    latent_thresholds,
    unscaled,
    with_b_dec_subtraction,
)

KEYS = ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")


def sniff(path: str) -> bool:
    return os.path.isfile(path) and path.endswith(".npz") and zipfile.is_zipfile(path)


def read(path: str, given: dict, hookpoint: str | None = None) -> Model:
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (ValueError, OSError, zipfile.BadZipFile) as err:
        raise ForeignError(f"{path} is not a readable .npz of arrays: {err}") from None
    missing = [k for k in KEYS if k not in arrays]
    unexpected = sorted(set(arrays) - set(KEYS))
    if missing or unexpected:
        raise ForeignError(
            f"{path}: missing {missing or 'nothing'}, unexpected "
            f"{unexpected or 'nothing'} (Gemma Scope's params.npz holds "
            f"{', '.join(KEYS)})"
        )
    sd, notes = float_arrays(arrays, path)
    sd["threshold"] = check_jumprelu_threshold(sd["threshold"], path)
    d_in, d_sae = sd["W_enc"].shape
    carried = {
        "d_in": d_in,
        "d_sae": d_sae,
        "activation": "jumprelu",
        "subtract_b_dec": False,
    }
    return Model(sd, dictionary_config(carried, given, path), tuple(notes))


def write(model: Model) -> tuple[dict[str, bytes], list[str]]:
    if model.config.activation == "topk":
        raise ForeignError(
            "Gemma Scope's format holds JumpReLU SAEs (a threshold per latent); a "
            "topk SAE selects k latents per token and has no threshold that encodes "
            "the same way. Write it to saelens, sparsify, dictionary_learning or sae"
        )
    model = with_b_dec_subtraction(unscaled(model), False)
    sd = model.state_dict
    notes = list(model.notes)
    if model.config.activation != "jumprelu":
        notes.append(
            f"{model.config.activation} written as JumpReLU with "
            + (
                "threshold 0"
                if model.config.activation == "relu"
                else "its inference threshold"
            )
            + " for every latent"
        )
    arrays = {k: sd[k] for k in KEYS[:4]}
    arrays["threshold"] = latent_thresholds(model)
    buffer = io.BytesIO()
    np.savez(buffer, **{k: np.array(v, order="C") for k, v in arrays.items()})
    return {"": buffer.getvalue()}, notes
