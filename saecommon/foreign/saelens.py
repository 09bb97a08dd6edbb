"""SAELens 6.x: a folder with ``sae_weights.safetensors`` and ``cfg.json``.

Read: the inference architectures standard (ReLU), topk and jumprelu, and the training
checkpoints batchtopk and matryoshka_batchtopk (``topk_threshold``). A TopK or
BatchTopK SAE trained with ``rescale_acts_by_decoder_norm`` selects on pre * ||W_dec||
and decodes z / ||W_dec||: the norms are folded into the encoder, which is exact.
An old JumpReLU ``log_threshold`` becomes ``threshold = exp(log_threshold)``.
Pre-6.0 configs (no ``architecture`` key) are refused: SAELens 6 converts them
(``SAE.load_from_disk(path)`` then ``sae.save_model(new_path)``).

Written: standard, topk or jumprelu, as ``SAE.load_from_disk`` reads them. BatchTopK
and Matryoshka SAEs are written as jumprelu with their one inference threshold for
every latent, as SAELens itself saves them for inference; the input scale is folded
into the weights (normalize_activations "none").
"""

from __future__ import annotations

import math
import os

import numpy as np

from saecommon.foreign.files import (
    ForeignError,
    float_arrays,
    json_bytes,
    read_json,
    read_safetensors,
)
from saecommon.foreign.model import (
    Model,
    check_jumprelu_threshold,
    decoder_norm_folded,
    dictionary_config,
    latent_thresholds,
    unscaled,
)

WEIGHTS = "sae_weights.safetensors"
CFG = "cfg.json"
READS = ("standard", "topk", "jumprelu", "batchtopk", "matryoshka_batchtopk")


def sniff(path: str) -> bool:
    return os.path.isfile(os.path.join(path, WEIGHTS))


def read(path: str, given: dict, hookpoint: str | None = None) -> Model:
    cfg_path, weights_path = os.path.join(path, CFG), os.path.join(path, WEIGHTS)
    if not os.path.isfile(cfg_path):
        raise ForeignError(f"{path} has {WEIGHTS} but no {CFG} (SAELens writes both)")
    cfg = read_json(cfg_path)
    arch = cfg.get("architecture")
    if arch is None:
        raise ForeignError(
            f"{cfg_path} has no 'architecture': a SAELens config from before 6.0. "
            "Load it with SAELens 6 (sae_lens.SAE.load_from_disk(path), which "
            "converts it) and save_model it again, then convert that folder"
        )
    if arch not in READS:
        raise ForeignError(
            f"{cfg_path}: SAELens architecture {arch!r} is not supported; these are: "
            + ", ".join(READS)
        )
    norm = cfg.get("normalize_activations", "none")
    if norm == "expected_average_only_in":
        raise ForeignError(
            f"{cfg_path}: normalize_activations is expected_average_only_in, whose "
            "scaling factor is not in the folder; fold it in SAELens first "
            "(sae.fold_activation_norm_scaling_factor(factor); sae.save_model(path))"
        )
    if norm != "none" or cfg.get("reshape_activations", "none") != "none":
        raise ForeignError(
            f"{cfg_path}: normalize_activations {norm!r} / reshape_activations "
            f"{cfg.get('reshape_activations')!r} are not supported (only 'none': the "
            "model here is linear in its input)"
        )
    tensors, _ = read_safetensors(weights_path)
    sd, notes = float_arrays(tensors, weights_path)
    if "log_threshold" in sd:
        sd["threshold"] = np.exp(sd.pop("log_threshold"))
        notes.append("log_threshold read as threshold = exp(log_threshold)")
    activation = {
        "standard": "relu",
        "topk": "topk",
        "jumprelu": "jumprelu",
        "batchtopk": "batchtopk",
        "matryoshka_batchtopk": "matryoshka",
    }[arch]
    if activation == "jumprelu" and "threshold" in sd:
        sd["threshold"] = check_jumprelu_threshold(sd["threshold"], weights_path)
    if "topk_threshold" in sd:
        sd["threshold"] = np.maximum(sd.pop("topk_threshold").reshape(()), 0)
    if cfg.get("rescale_acts_by_decoder_norm") and "W_dec" in sd:
        sd = decoder_norm_folded(sd)
        notes.append(
            "decoder norms folded into the encoder (rescale_acts_by_decoder_norm)"
        )
    carried = {
        "d_in": cfg.get("d_in"),
        "d_sae": cfg.get("d_sae"),
        "activation": activation,
        "subtract_b_dec": bool(cfg.get("apply_b_dec_to_input", True)),
    }
    if activation in ("topk", "batchtopk", "matryoshka"):
        carried["k"], note = whole_k(cfg.get("k"), activation)
        notes += note
    if activation == "matryoshka":
        carried["matryoshka_widths"] = tuple(cfg.get("matryoshka_widths", ()))
    config = dictionary_config(carried, given, cfg_path)
    return Model(sd, config, tuple(notes))


def whole_k(k, activation: str) -> tuple[object, list[str]]:
    """SAELens types a batch rule's k as a float (its mean latents per token); a whole
    number is that int. A fractional one is kept as its ceiling: inference uses the
    threshold, so only further training would see the difference (said in a note)."""
    if isinstance(k, float) and activation != "topk":
        if k.is_integer():
            return int(k), []
        return math.ceil(k), [
            f"k {k} (fractional, SAELens's batch k) kept as {math.ceil(k)}: inference "
            "uses the threshold; further training would keep that many per token"
        ]
    return k, []


def write(model: Model) -> tuple[dict[str, bytes], list[str]]:
    """The folder's files by name, and what was changed on the way."""
    from safetensors.numpy import save

    model = unscaled(model)
    config, sd = model.config, model.state_dict
    arch = {"relu": "standard", "topk": "topk", "jumprelu": "jumprelu"}.get(
        config.activation, "jumprelu"
    )
    weights = {k: sd[k] for k in ("W_enc", "b_enc", "W_dec", "b_dec")}
    cfg = {
        "architecture": arch,
        "d_in": config.d_in,
        "d_sae": config.d_sae,
        "dtype": str(sd["W_enc"].dtype),
        "device": "cpu",
        "apply_b_dec_to_input": config.subtract_b_dec,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {"converted_by": "jax-torch-sae scripts/convert.py"},
    }
    if arch == "topk":
        cfg.update(k=config.k, rescale_acts_by_decoder_norm=False)
    notes = list(model.notes)
    if arch == "jumprelu":
        weights["threshold"] = latent_thresholds(model)
        if config.activation != "jumprelu":
            notes.append(
                f"{config.activation} written as jumprelu with its inference threshold "
                "for every latent (as SAELens saves it)"
            )
    files = {
        WEIGHTS: save({k: np.array(v, order="C") for k, v in weights.items()}),
        CFG: json_bytes(cfg),
    }
    return files, notes
