"""EleutherAI's sparsify: a folder with ``sae.safetensors`` (encoder.weight
[d_sae, d_in], encoder.bias, W_dec [d_sae, d_in], b_dec) and ``cfg.json``; a training
run's folder holds one such folder per hookpoint (pick one with ``hookpoint``).

sparsify's SAEs are TopK over relu((x - b_dec) @ encoder.weight.T + encoder.bias);
a transcoder (``transcode``) skips the b_dec subtraction. groupmax activations and
skip connections are not supported. Written: TopK only (b_dec subtraction and input
scale folded in where ours differ).
"""

from __future__ import annotations

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
    dictionary_config,
    unscaled,
    with_b_dec_subtraction,
)

WEIGHTS = "sae.safetensors"
NAMES = ("encoder.weight", "encoder.bias", "W_dec", "b_dec")
CFG = "cfg.json"


def renamed(state_dict: dict, to_ours: bool) -> dict:
    """sparsify's names <-> ours: encoder.weight [d_sae, d_in] is W_enc transposed,
    encoder.bias is b_enc; W_dec and b_dec are the same."""
    enc, bias = ("encoder.weight", "encoder.bias") if to_ours else ("W_enc", "b_enc")
    new_enc, new_bias = (
        ("W_enc", "b_enc") if to_ours else ("encoder.weight", "encoder.bias")
    )
    out = {k: state_dict[k] for k in ("W_dec", "b_dec") if k in state_dict}
    if enc in state_dict:
        out[new_enc] = np.ascontiguousarray(np.asarray(state_dict[enc]).T)
    if bias in state_dict:
        out[new_bias] = state_dict[bias]
    return out  # a missing tensor stays missing: the reader's check names it


def _hookpoints(path: str) -> list[str]:
    return sorted(
        name
        for name in os.listdir(path)
        if os.path.isfile(os.path.join(path, name, WEIGHTS))
    )


def sniff(path: str) -> bool:
    return os.path.isfile(os.path.join(path, WEIGHTS)) or bool(_hookpoints(path))


def resolve(path: str, hookpoint: str | None) -> tuple[str, list[str]]:
    """The folder of one SAE: ``path`` itself, or its ``hookpoint`` subfolder (the
    only one there may be taken without naming it)."""
    notes = []
    if os.path.isfile(os.path.join(path, WEIGHTS)):
        if hookpoint is not None:
            raise ForeignError(f"{path} holds one SAE, not hookpoint {hookpoint!r}")
        return path, notes
    found = _hookpoints(path)
    if hookpoint is None:
        if len(found) > 1:
            raise ForeignError(
                f"{path} is a sparsify run with {len(found)} hookpoints "
                f"({', '.join(found)}); choose one with --hookpoint NAME"
            )
        hookpoint = found[0]
        notes.append(f"hookpoint {hookpoint}, the run's only one")
    if hookpoint not in found:
        raise ForeignError(
            f"{path} has no hookpoint {hookpoint!r}; it has: {', '.join(found)}"
        )
    return os.path.join(path, hookpoint), notes


def read(path: str, given: dict, hookpoint: str | None = None) -> Model:
    folder, notes = resolve(path, hookpoint)
    cfg_path = os.path.join(folder, CFG)
    if not os.path.isfile(cfg_path):
        raise ForeignError(
            f"{folder} has {WEIGHTS} but no {CFG} (sparsify writes both)"
        )
    cfg = read_json(cfg_path)
    if cfg.get("activation", "topk") != "topk":
        raise ForeignError(
            f"{cfg_path}: activation {cfg.get('activation')!r} is not supported "
            "(topk is)"
        )
    if cfg.get("skip_connection"):
        raise ForeignError(
            f"{cfg_path}: SAEs with a skip connection (W_skip) are not supported"
        )
    weights_path = os.path.join(folder, WEIGHTS)
    tensors, _ = read_safetensors(weights_path)
    sd, upcast = float_arrays(tensors, weights_path)
    notes += upcast
    expected = set(NAMES)
    if set(sd) != expected:
        missing, extra = sorted(expected - set(sd)), sorted(set(sd) - expected)
        raise ForeignError(
            f"{weights_path}: missing {missing or 'nothing'}, unexpected "
            f"{extra or 'nothing'} (a sparsify SAE holds {', '.join(sorted(expected))})"
        )
    d_sae, d_in = sd["encoder.weight"].shape
    ours = renamed(sd, to_ours=True)
    carried = {
        "d_in": cfg.get("d_in", d_in),
        "d_sae": d_sae,
        "activation": "topk",
        "k": cfg.get("k"),
        "subtract_b_dec": not cfg.get("transcode", False),
    }
    return Model(ours, dictionary_config(carried, given, cfg_path), tuple(notes))


def write(model: Model) -> tuple[dict[str, bytes], list[str]]:
    from safetensors.numpy import save

    config = model.config
    if config.activation != "topk":
        raise ForeignError(
            f"sparsify holds TopK SAEs only; this SAE is {config.activation} "
            "(saelens, dictionary_learning or sae hold it)"
        )
    model = with_b_dec_subtraction(unscaled(model), True)
    weights = renamed(model.state_dict, to_ours=False)
    cfg = {
        "activation": "topk",
        "expansion_factor": max(1, config.d_sae // config.d_in),
        "normalize_decoder": True,
        "num_latents": config.d_sae,
        "k": config.k,
        "multi_topk": False,
        "skip_connection": False,
        "transcode": False,
        "d_in": config.d_in,
    }
    files = {
        WEIGHTS: save({k: np.array(v, order="C") for k, v in weights.items()}),
        CFG: json_bytes(cfg),
    }
    return files, list(model.notes)
