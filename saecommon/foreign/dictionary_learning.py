"""dictionary_learning (saprmarks/dictionary_learning): a folder with ``ae.pt`` (a
state dict, read with ``torch.load(weights_only=True)``, never unpickling code) and
``config.json`` whose ``trainer.dict_class`` names the model:

    AutoEncoder             relu; encoder.weight [d_sae, d_in], encoder.bias,
                            decoder.weight [d_in, d_sae], bias (b_dec, subtracted)
    AutoEncoderTopK         topk; encoder.*, decoder.weight, b_dec, k, threshold
    BatchTopKSAE            batchtopk; the same keys, threshold used at inference
    MatryoshkaBatchTopKSAE  matryoshka; W_enc, b_enc, W_dec, b_dec, k, threshold,
                            group_sizes
    JumpReluAutoEncoder     jumprelu without the b_dec subtraction; W_enc, b_enc,
                            W_dec, b_dec, threshold

Reading AutoEncoder folds the decoder norms into the encoder, as its
``from_pretrained`` does by default (normalize_decoder=True). A negative BatchTopK
threshold (-1: never estimated) keeps every positive latent, as threshold 0 does here.
"""

from __future__ import annotations

import os

import numpy as np

from saecommon.foreign.files import (
    ForeignError,
    float_arrays,
    json_bytes,
    read_json,
    to_numpy,
    torch_load,
    torch_save_bytes,
)
from saecommon.foreign.model import (
    Model,
    check_jumprelu_threshold,
    decoder_norm_folded,
    dictionary_config,
    unscaled,
    with_b_dec_subtraction,
)

WEIGHTS = "ae.pt"
CFG = "config.json"
CLASSES = {
    "AutoEncoder": "relu",
    "AutoEncoderTopK": "topk",
    "BatchTopKSAE": "batchtopk",
    "MatryoshkaBatchTopKSAE": "matryoshka",
    "JumpReluAutoEncoder": "jumprelu",
}
KEYS = {
    "AutoEncoder": ("bias", "encoder.weight", "encoder.bias", "decoder.weight"),
    "AutoEncoderTopK": (
        "encoder.weight",
        "encoder.bias",
        "decoder.weight",
        "b_dec",
        "k",
        "threshold",
    ),
    "MatryoshkaBatchTopKSAE": (
        "W_enc",
        "b_enc",
        "W_dec",
        "b_dec",
        "k",
        "threshold",
        "group_sizes",
    ),
    "JumpReluAutoEncoder": ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"),
}
KEYS["BatchTopKSAE"] = KEYS["AutoEncoderTopK"]


def sniff(path: str) -> bool:
    return os.path.isfile(os.path.join(path, WEIGHTS))


def read(path: str, given: dict, hookpoint: str | None = None) -> Model:
    cfg_path, weights_path = os.path.join(path, CFG), os.path.join(path, WEIGHTS)
    if not os.path.isfile(cfg_path):
        raise ForeignError(
            f"{path} has {WEIGHTS} but no {CFG}; dictionary_learning's config.json "
            "names the model class (trainer.dict_class)"
        )
    trainer = read_json(cfg_path).get("trainer", {})
    dict_class = trainer.get("dict_class")
    if dict_class not in CLASSES:
        raise ForeignError(
            f"{cfg_path}: dict_class {dict_class!r} is not supported; these are: "
            + ", ".join(CLASSES)
        )
    raw = torch_load(weights_path)
    if not isinstance(raw, dict):
        raise ForeignError(
            f"{weights_path} holds a {type(raw).__name__}, not a state dict"
        )
    want = KEYS[dict_class]
    missing, extra = [k for k in want if k not in raw], sorted(set(raw) - set(want))
    if missing or extra:
        raise ForeignError(
            f"{weights_path}: missing {missing or 'nothing'}, unexpected "
            f"{extra or 'nothing'} for a {dict_class}"
        )
    ints = {k: to_numpy(raw.pop(k)) for k in ("k", "group_sizes") if k in raw}
    sd, notes = float_arrays(raw, weights_path)
    activation = CLASSES[dict_class]
    if "encoder.weight" in sd:
        ours = {
            "W_enc": np.ascontiguousarray(sd["encoder.weight"].T),
            "b_enc": sd["encoder.bias"],
            "W_dec": np.ascontiguousarray(sd["decoder.weight"].T),
            "b_dec": sd["bias"] if "bias" in sd else sd["b_dec"],
        }
    else:
        ours = {k: sd[k] for k in ("W_enc", "b_enc", "W_dec", "b_dec")}
    if activation == "relu":
        ours = decoder_norm_folded(ours)
        notes.append("decoder norms folded into the encoder, as from_pretrained does")
    if activation == "jumprelu":
        ours["threshold"] = check_jumprelu_threshold(sd["threshold"], weights_path)
    elif activation in ("batchtopk", "matryoshka"):
        ours["threshold"] = np.maximum(sd["threshold"].reshape(()), 0)
    elif activation == "topk" and float(sd["threshold"]) >= 0:
        notes.append(
            "its inference threshold (encode(use_threshold=True)) is not kept: "
            "TopK here selects k per token, as its default encode does"
        )
    d_in, d_sae = ours["W_enc"].shape
    carried = {
        "d_in": d_in,
        "d_sae": d_sae,
        "activation": activation,
        "subtract_b_dec": activation != "jumprelu",
    }
    if "k" in ints:
        carried["k"] = int(trainer.get("k", ints["k"]))
    if "group_sizes" in ints:
        carried["matryoshka_widths"] = tuple(
            int(w) for w in np.cumsum(ints["group_sizes"])
        )
    return Model(ours, dictionary_config(carried, given, cfg_path), tuple(notes))


def write(model: Model) -> tuple[dict[str, bytes], list[str]]:
    config = model.config
    model = with_b_dec_subtraction(unscaled(model), config.activation != "jumprelu")
    sd = model.state_dict
    notes = list(model.notes)
    if config.activation == "relu":
        norms = np.linalg.norm(sd["W_dec"].astype(np.float64), axis=1)
        if not np.allclose(norms, 1, atol=1e-5):
            sd = decoder_norm_folded(sd)
            notes.append(
                "decoder rows scaled to unit norm (AutoEncoder.from_pretrained does "
                "it on loading): x_hat is unchanged, each latent is multiplied by "
                "its decoder row's norm"
            )
    dict_class = {v: k for k, v in CLASSES.items()}[config.activation]
    if dict_class in ("AutoEncoder", "AutoEncoderTopK", "BatchTopKSAE"):
        out = {
            "encoder.weight": np.ascontiguousarray(sd["W_enc"].T),
            "encoder.bias": sd["b_enc"],
            "decoder.weight": np.ascontiguousarray(sd["W_dec"].T),
            ("bias" if dict_class == "AutoEncoder" else "b_dec"): sd["b_dec"],
        }
    else:
        out = {k: sd[k] for k in ("W_enc", "b_enc", "W_dec", "b_dec")}
    if config.activation in ("topk", "batchtopk", "matryoshka"):
        out["k"] = np.array(config.k, dtype=np.int32)
        # -1: never estimated (dictionary_learning's own start value), for TopK
        out["threshold"] = (
            np.array(-1.0, dtype=np.float32)
            if config.activation == "topk"
            else np.array(sd["threshold"], dtype=np.float32).reshape(())
        )
    if config.activation == "matryoshka":
        out["group_sizes"] = np.diff((0,) + config.matryoshka_widths).astype(np.int64)
    if config.activation == "jumprelu":
        out["threshold"] = sd["threshold"]
    trainer = {
        "dict_class": dict_class,
        "activation_dim": config.d_in,
        "dict_size": config.d_sae,
        "converted_by": "jax-torch-sae scripts/convert.py",
    }
    if config.k is not None and config.activation in (
        "topk",
        "batchtopk",
        "matryoshka",
    ):
        trainer["k"] = config.k
    files = {WEIGHTS: torch_save_bytes(out), CFG: json_bytes({"trainer": trainer})}
    return files, notes
