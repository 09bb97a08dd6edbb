"""What every format converts to and from: a numpy state dict in this project's names
and layouts with its config, and the exact rewrites ("folds") that carry a dictionary
SAE into a format whose model is a special case of ours.

Each fold leaves the latents z and the reconstruction x_hat unchanged (up to float32
rounding of the rewritten tensors), for every input:

- input scale s into the weights: W_enc * s, W_dec / s, b_dec / s (SAELens's
  ``fold_activation_norm_scaling_factor``); pre-activations are unchanged;
- the b_dec subtraction into b_enc: (x - b_dec) @ W_enc + b_enc
  = x @ W_enc + (b_enc - b_dec @ W_enc);
- decoder row norms n into the encoder: W_dec / n, W_enc * n, b_enc * n (SAELens's
  ``fold_W_dec_norm``), for TopK SAEs that select on pre * n;
- a batch rule's single inference threshold t as a per-latent JumpReLU threshold:
  relu(pre) > t <=> pre > t for t >= 0, and ReLU is JumpReLU with threshold 0.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from saecommon.config import ConfigError, SAEConfig, from_fields
from saecommon.dictionary_config import DictConfig
from saecommon.foreign.files import ForeignError

StateDict = dict[str, np.ndarray]


class Model(NamedTuple):
    """A model on its way between formats."""

    state_dict: StateDict
    """This project's names and layouts (SAELens's for dictionaries, torch's
    ``state_dict`` for the classic autoencoders)."""
    config: DictConfig | SAEConfig
    notes: tuple[str, ...] = ()
    """What the conversion did beyond renaming, in words (folds, upcasts)."""

    @property
    def kind(self) -> str:
        return "dictionary" if isinstance(self.config, DictConfig) else "classic"

    def noted(self, *notes: str) -> Model:
        return self._replace(notes=self.notes + notes)


def _cast(new: dict, old: StateDict) -> StateDict:
    """``new``'s arrays in the dtypes of ``old``'s (folds compute in float64)."""
    return {
        k: np.asarray(v, dtype=old[k].dtype if k in old else np.float32)
        for k, v in new.items()
    }


def unscaled(model: Model) -> Model:
    """The same dictionary SAE with input_scale 1 (the scale folded into W_enc,
    W_dec and b_dec)."""
    s = model.config.input_scale
    if s == 1.0:
        return model
    sd = model.state_dict
    new = dict(sd)
    new["W_enc"] = sd["W_enc"].astype(np.float64) * s
    new["W_dec"] = sd["W_dec"].astype(np.float64) / s
    new["b_dec"] = sd["b_dec"].astype(np.float64) / s
    return Model(
        _cast(new, sd),
        model.config.replace(input_scale=1.0),
        model.notes + (f"input scale {s:.6g} folded into W_enc, W_dec and b_dec",),
    )


def with_b_dec_subtraction(model: Model, subtract: bool) -> Model:
    """The same dictionary SAE with ``subtract_b_dec = subtract`` (b_enc absorbs
    b_dec @ W_enc)."""
    config, sd = model.config, model.state_dict
    if config.subtract_b_dec == subtract:
        return model
    shift = sd["b_dec"].astype(np.float64) @ sd["W_enc"].astype(np.float64)
    b_enc = sd["b_enc"].astype(np.float64) + (shift if subtract else -shift)
    how = "now subtracted" if subtract else "folded into b_enc"
    return Model(
        _cast({**sd, "b_enc": b_enc}, sd),
        config.replace(subtract_b_dec=subtract),
        model.notes + (f"b_dec's subtraction from the input {how}",),
    )


def decoder_norm_folded(state_dict: StateDict) -> StateDict:
    """W_dec's row norms n moved into the encoder: W_dec / n, W_enc * n, b_enc * n
    (n clamped at 1e-8 as SAELens does)."""
    n = np.maximum(np.linalg.norm(state_dict["W_dec"].astype(np.float64), axis=1), 1e-8)
    new = dict(state_dict)
    new["W_dec"] = state_dict["W_dec"].astype(np.float64) / n[:, None]
    new["W_enc"] = state_dict["W_enc"].astype(np.float64) * n[None, :]
    new["b_enc"] = state_dict["b_enc"].astype(np.float64) * n
    return _cast(new, state_dict)


def latent_thresholds(model: Model) -> np.ndarray | None:
    """The per-latent JumpReLU threshold [d_sae] that encodes exactly as ``model``
    does at inference, or None for TopK (which has none)."""
    config, sd = model.config, model.state_dict
    if config.activation == "topk":
        return None
    if config.activation == "jumprelu":
        return sd["threshold"]
    value = sd["threshold"] if config.has_threshold else 0.0
    return np.full(config.d_sae, value, dtype=sd["W_enc"].dtype)


def check_jumprelu_threshold(threshold: np.ndarray, source: str) -> np.ndarray:
    """A foreign JumpReLU threshold as ours: NaN refused; negative values set to 0,
    which encodes identically (relu(pre) * (pre > t) = relu(pre) for t < 0)."""
    threshold = np.asarray(threshold)
    if np.isnan(threshold).any():
        raise ForeignError(f"{source}: the threshold holds NaN")
    return np.maximum(threshold, 0).astype(threshold.dtype)


# ------------------------------------------------------------ a numpy reference forward


def encode_numpy(state_dict: StateDict, config: DictConfig, x: np.ndarray):
    """The latents z [tokens, d_sae] of x [tokens, d_in] at inference, in float64:
    the dictionary model of saecommon/dictionary_config.py written in numpy (the
    reference the conversion checks compare against; ties to the lower index)."""
    sd = {k: np.asarray(v, dtype=np.float64) for k, v in state_dict.items()}
    xs = np.asarray(x, dtype=np.float64) * config.input_scale
    xc = xs - sd["b_dec"] if config.subtract_b_dec else xs
    pre = xc @ sd["W_enc"] + sd["b_enc"]
    acts = np.maximum(pre, 0)
    if config.activation == "relu":
        return acts
    if config.activation == "topk":
        keep = np.argsort(-acts, axis=1, kind="stable")[:, : config.k]
        z = np.zeros_like(acts)
        np.put_along_axis(z, keep, np.take_along_axis(acts, keep, axis=1), axis=1)
        return z
    if config.activation == "jumprelu":
        return np.where(pre > sd["threshold"], pre, 0)
    return np.where(acts > sd["threshold"], acts, 0)


def forward_numpy(state_dict: StateDict, config: DictConfig, x: np.ndarray):
    """(z, x_hat) in float64, as encode_numpy."""
    z = encode_numpy(state_dict, config, x)
    w_dec = np.asarray(state_dict["W_dec"], dtype=np.float64)
    b_dec = np.asarray(state_dict["b_dec"], dtype=np.float64)
    return z, (z @ w_dec + b_dec) / config.input_scale


def classic_config(
    fields: dict, shape_fields: dict, source: str, required: tuple[str, ...]
) -> SAEConfig:
    """An SAEConfig from the fields the weights imply (``shape_fields``) and those the
    user gave (``fields``); the ``required`` ones must be given, never guessed."""
    missing = [name for name in required if name not in fields]
    if missing:
        flags = ", ".join("--set " + name + "=..." for name in missing)
        raise ForeignError(
            f"{source} holds weights only; the model's {', '.join(missing)} are not "
            f"in it: give them ({flags}), or --preset NAME, or --config FILE.json"
        )
    return _config(SAEConfig, shape_fields, fields, source, "the weights")


def dictionary_config(carried: dict, given: dict, source: str) -> DictConfig:
    """A DictConfig from the fields a file carries and those the user gave; a given
    field that contradicts the file is an error, not an override."""
    return _config(DictConfig, carried, given, source, "the file")


def _config(cls, carried: dict, given: dict, source: str, holder: str):
    """``cls`` from ``carried`` and ``given`` fields; ForeignError where a given field
    contradicts a carried one, or the config is invalid (unknown fields named)."""
    clash = {
        k: (given[k], v) for k, v in carried.items() if k in given and given[k] != v
    }
    if clash:
        said = "; ".join(
            f"{k}: given {a!r}, {holder} say{'s' if holder == 'the file' else ''} {b!r}"
            for k, (a, b) in clash.items()
        )
        raise ForeignError(
            f"{source}: the given config disagrees with {holder}: {said}"
        )
    try:
        return from_fields(cls, {**given, **carried}, "config")
    except (ConfigError, TypeError) as err:
        raise ForeignError(f"{source}: {err}") from None
