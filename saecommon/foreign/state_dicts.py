"""Bare weights: a torch state dict (``.pt``/``.pth``/``.bin`` through
``torch.load(weights_only=True)``, or a safetensors file without this project's
metadata) and a Flax msgpack file (``flax.serialization``) or orbax checkpoint folder.

They carry no config, so the model is named from their keys and shapes and the rest is
given (``--set``, ``--preset``, ``--config``), never guessed:

- a dictionary SAE: SAELens names (W_enc [d_in, d_sae], b_enc, W_dec, b_dec and
  threshold or log_threshold) or sparsify's (encoder.weight [d_sae, d_in],
  encoder.bias, W_dec, b_dec); needs activation, subtract_b_dec and (for the k rules)
  k;
- a classic autoencoder in one of these torch layouts, renamed to encoder.{i} /
  decoder.{i} in order:

      encoder.0, encoder.2, ...   nn.Sequential submodules (activations between)
      encoder, decoder            one nn.Linear each
      enc1, enc2, ..., dec1, ...  the seed tutorials' attributes (1-based)
      0, 2, 4, ...                one nn.Sequential: the first half is the encoder

  or jaxsae's Flax names (encoder_{i}/kernel), Flax's Dense_{i} (first half the
  encoder) or {"encoder": {...}, "decoder": {...}} submodules; needs activation,
  code_activation, output_activation and topk (``none`` for no top-k).

A common wrapper ({"state_dict": ...}, {"model": ...}, {"params": ...}) and a
``module.`` / ``model.`` / ``_orig_mod.`` prefix on every key are taken off.
"""

from __future__ import annotations

import os
import re

import numpy as np

from saecommon.architectures import CONV, FULLCONV
from saecommon.flax_layout import to_flax_layout, to_torch_layout
from saecommon.foreign import sparsify
from saecommon.foreign.files import (
    ForeignError,
    float_arrays,
    is_safetensors,
    read_safetensors,
    torch_load,
    torch_save_bytes,
)
from saecommon.foreign.model import (
    Model,
    check_jumprelu_threshold,
    classic_config,
    dictionary_config,
    unscaled,
)

CLASSIC_REQUIRED = ("activation", "code_activation", "output_activation", "topk")
WRAPPERS = ("state_dict", "model_state_dict", "model", "params", "target")
PREFIXES = ("module.", "model.", "_orig_mod.")


def _unwrap(tree, source: str):
    """The state dict inside a common checkpoint wrapper."""
    notes = []
    while isinstance(tree, dict):
        inner = [k for k in WRAPPERS if isinstance(tree.get(k), dict)]
        if not inner or any(
            _is_array(v) for key, v in tree.items() if key not in WRAPPERS
        ):
            break
        tree = tree[inner[0]]
        notes.append(f"took the weights under {inner[0]!r}")
    if not isinstance(tree, dict):
        raise ForeignError(f"{source} holds a {type(tree).__name__}, not a state dict")
    return tree, notes


def _is_array(value) -> bool:
    return hasattr(value, "shape") and hasattr(value, "dtype")


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "/"))
        else:
            out[name] = value
    return out


def _strip_prefix(sd: dict) -> tuple[dict, list[str]]:
    for prefix in PREFIXES:
        if sd and all(k.startswith(prefix) for k in sd):
            return {k[len(prefix) :]: v for k, v in sd.items()}, [
                f"the {prefix!r} prefix taken off every key"
            ]
    return sd, []


# ------------------------------------------------------------------ dictionary SAEs


def _dictionary(sd: dict, given: dict, source: str, notes: list[str]) -> Model:
    if "encoder.weight" in sd:  # sparsify's names
        rest = {k: v for k, v in sd.items() if k not in sparsify.NAMES}
        sd = {**sparsify.renamed(sd, to_ours=True), **rest}
        notes.append("sparsify's names (encoder.weight is W_enc transposed)")
    if "log_threshold" in sd:
        sd["threshold"] = np.exp(sd.pop("log_threshold"))
        notes.append("log_threshold read as threshold = exp(log_threshold)")
    missing = [name for name in ("activation", "subtract_b_dec") if name not in given]
    if (
        given.get("activation") in ("topk", "batchtopk", "matryoshka")
        and "k" not in given
    ):
        missing.append("k")
    if missing:
        raise ForeignError(
            f"{source} holds a dictionary SAE's weights but not its "
            f"{', '.join(missing)}: give them ("
            + ", ".join(f"--set {name}=..." for name in missing)
            + ")"
        )
    d_in, d_sae = np.shape(sd["W_enc"])
    config = dictionary_config({"d_in": d_in, "d_sae": d_sae}, given, source)
    if config.activation == "jumprelu" and "threshold" in sd:
        sd["threshold"] = check_jumprelu_threshold(sd["threshold"], source)
    return Model(sd, config, tuple(notes))


# --------------------------------------------------------------- classic autoencoders

_TORCH_LAYOUTS = (
    (re.compile(r"^(encoder|decoder)\.(\d+)\.(weight|bias)$"), "sequential"),
    (re.compile(r"^(encoder|decoder)\.(weight|bias)$"), "single"),
    (re.compile(r"^(enc|dec)(\d+)\.(weight|bias)$"), "numbered"),
    (re.compile(r"^(\d+)\.(weight|bias)$"), "flat"),
)


def _renumber(entries: list[tuple[str, int, str, str]]) -> dict[str, str]:
    """[(group, index, leaf, old key)] -> {old key: "group.i.leaf"}, indices in
    order per group."""
    names = {}
    for group in ("encoder", "decoder"):
        order = sorted({i for g, i, _, _ in entries if g == group})
        for g, i, leaf, old in entries:
            if g == group:
                names[old] = f"{group}.{order.index(i)}.{leaf}"
    return names


def _halves(entries: list[tuple[int, str, str]], source: str, what: str):
    """A flat sequence of layers [(index, leaf, key)]: the first half encodes."""
    order = sorted({i for i, _, _ in entries})
    if len(order) % 2:
        raise ForeignError(
            f"{source}: {len(order)} {what} layers; an autoencoder here has as many "
            "decoder layers as encoder layers (the first half encodes)"
        )
    half = len(order) // 2
    return [
        (
            "encoder" if order.index(i) < half else "decoder",
            order.index(i) % half,
            leaf,
            key,
        )
        for i, leaf, key in entries
    ]


def torch_names(keys: list[str], source: str) -> tuple[dict[str, str], str]:
    """{key: our key} for a classic autoencoder's torch state dict, and the layout."""
    for pattern, layout in _TORCH_LAYOUTS:
        matches = [pattern.match(k) for k in keys]
        if not all(matches):
            continue
        if layout == "sequential":
            entries = [(m[1], int(m[2]), m[3], m[0]) for m in matches]
        elif layout == "single":
            entries = [(m[1], 0, m[2], m[0]) for m in matches]
        elif layout == "numbered":
            groups = {"enc": "encoder", "dec": "decoder"}
            entries = [(groups[m[1]], int(m[2]), m[3], m[0]) for m in matches]
        else:
            entries = _halves(
                [(int(m[1]), m[2], m[0]) for m in matches], source, "Sequential"
            )
        return _renumber(entries), layout
    unknown = [k for k in keys if not any(p.match(k) for p, _ in _TORCH_LAYOUTS)]
    raise ForeignError(
        f"{source}: keys {', '.join(sorted(unknown)[:6])} fit none of the layouts read "
        "here (encoder.N/decoder.N, encoder/decoder, encN/decN, one Sequential's "
        "N.weight; or a dictionary SAE's W_enc, W_dec)"
    )


_FLAX_OURS = re.compile(r"^(encoder|decoder)_(\d+)/(kernel|bias)$")
_FLAX_DENSE = re.compile(r"^Dense_(\d+)/(kernel|bias)$")
_FLAX_NESTED = re.compile(r"^(encoder|decoder)/\w*?_?(\d+)/(kernel|bias)$")


def flax_names(keys: list[str], source: str) -> dict[str, str]:
    """{flat Flax key: "encoder_i/leaf"} (jaxsae's module names)."""
    for pattern in (_FLAX_OURS, _FLAX_NESTED):
        matches = [pattern.match(k) for k in keys]
        if all(matches):
            entries = [(m[1], int(m[2]), m[3], m[0]) for m in matches]
            return {
                old: new.replace(".", "_", 1).replace(".", "/")
                for old, new in _renumber(entries).items()
            }
    matches = [_FLAX_DENSE.match(k) for k in keys]
    if all(matches):
        entries = _halves([(int(m[1]), m[2], m[0]) for m in matches], source, "Dense")
        return {
            old: new.replace(".", "_", 1).replace(".", "/")
            for old, new in _renumber(entries).items()
        }
    raise ForeignError(
        f"{source}: Flax params {', '.join(sorted(keys)[:6])} fit none of the layouts "
        "read here (jaxsae's encoder_N/decoder_N, Dense_N, or encoder/decoder "
        "submodules; or a dictionary SAE's W_enc, W_dec)"
    )


def _classic(sd: dict, given: dict, source: str, notes: list[str]) -> Model:
    ranks = {np.ndim(v) for k, v in sd.items() if k.endswith(".weight")}
    if 4 in ranks:
        has_conv_decoder = any(
            np.ndim(v) == 4 for k, v in sd.items() if k.startswith("decoder.")
        )
        architecture = "fullconv" if has_conv_decoder else "conv"
        spec = FULLCONV if has_conv_decoder else CONV
        shape_fields = {"architecture": architecture, "input_dim": 784}
        if len([k for k in sd if k.endswith(".weight")]) != len(spec):
            raise ForeignError(
                f"{source}: {len([k for k in sd if k.endswith('.weight')])} weight "
                f"tensors; the {architecture} architecture has {len(spec)} layers"
            )
    else:
        encoders = sorted(
            (k for k in sd if k.startswith("encoder.") and k.endswith(".weight")),
            key=lambda k: int(k.split(".")[1]),
        )
        if not encoders:
            raise ForeignError(f"{source}: no encoder weights among {sorted(sd)}")
        tied = not any(k.startswith("decoder.") and k.endswith(".weight") for k in sd)
        shape_fields = {
            "architecture": "mlp",
            "input_dim": int(np.shape(sd[encoders[0]])[1]),
            "hidden_dims": tuple(int(np.shape(sd[k])[0]) for k in encoders),
            "tied": tied,
        }
    config = classic_config(given, shape_fields, source, CLASSIC_REQUIRED)
    return Model(sd, config, tuple(notes))  # foreign.read checks every tensor


def _model(sd: dict, given: dict, source: str, notes: list[str], names) -> Model:
    sd, more = _strip_prefix(sd)
    notes = notes + more
    if "W_enc" in sd or ("encoder.weight" in sd and "W_dec" in sd):
        return _dictionary(dict(sd), given, source, notes)
    renamed, layout = names(list(sd), source)
    if layout not in ("sequential", "jaxsae"):
        notes.append(f"{layout} layout renamed to encoder.N/decoder.N")
    return _classic({renamed[k]: v for k, v in sd.items()}, given, source, notes)


# ---------------------------------------------------------------------------- torch


def sniff_torch(path: str) -> bool:
    return os.path.isfile(path)


def read_torch(path: str, given: dict, hookpoint: str | None = None) -> Model:
    if is_safetensors(path):
        raw, _ = read_safetensors(path)
        notes = []
    else:
        raw, notes = _unwrap(torch_load(path), path)
    sd, upcast = float_arrays(raw, path)
    return _model(sd, given, path, notes + upcast, torch_names)


def _bare(model: Model) -> Model:
    """A dictionary SAE's input scale folded in: a bare state dict has no config to
    hold it."""
    return unscaled(model) if model.kind == "dictionary" else model


def write_torch(model: Model) -> tuple[dict[str, bytes], list[str]]:
    model = _bare(model)
    return {"": torch_save_bytes(dict(model.state_dict))}, list(model.notes)


def write_torch_safetensors(model: Model) -> tuple[dict[str, bytes], list[str]]:
    from safetensors.numpy import save

    model = _bare(model)
    arrays = {k: np.array(v, order="C") for k, v in model.state_dict.items()}
    return {"": save(arrays)}, list(model.notes)


# ----------------------------------------------------------------------------- flax


def _flax_model(tree: dict, given: dict, source: str, notes: list[str]) -> Model:
    tree, more = _unwrap(tree, source)
    flat = _flatten(tree)
    sd, upcast = float_arrays(flat, source)
    notes = notes + upcast
    if "W_enc" in sd or "log_threshold" in sd:
        return _dictionary(sd, given, source, notes + more)

    def names(keys, source):
        return flax_names(keys, source), "jaxsae"

    renamed_flax, _ = names(list(sd), source)
    if any(np.ndim(v) == 4 for v in sd.values()) and not all(
        _FLAX_OURS.match(k) for k in sd
    ):
        raise ForeignError(
            f"{source}: convolution kernels are read from jaxsae's own module names "
            "(encoder_N/decoder_N) only, whose layouts are known"
        )
    nested: dict[str, dict] = {}
    for old, new in renamed_flax.items():
        module, leaf = new.split("/")
        nested.setdefault(module, {})[leaf] = sd[old]
    torch_sd = to_torch_layout(nested)
    return _classic(torch_sd, given, source, notes + more)


def read_flax(path: str, given: dict, hookpoint: str | None = None) -> Model:
    if os.path.isdir(path):
        try:
            import orbax.checkpoint as ocp
        except ImportError:
            raise ForeignError(
                f"{path} looks like an orbax checkpoint folder; reading it needs "
                "orbax-checkpoint (pip install orbax-checkpoint)"
            ) from None
        tree = ocp.PyTreeCheckpointer().restore(os.path.abspath(path))
        return _flax_model(tree, given, path, ["read with orbax"])
    from flax import serialization

    try:
        with open(path, "rb") as f:
            tree = serialization.msgpack_restore(f.read())
    except Exception as err:  # msgpack raises several unrelated types
        raise ForeignError(
            f"{path} is not a readable Flax msgpack file: {err}"
        ) from None
    return _flax_model(tree, given, path, [])


def flax_tree(model: Model) -> tuple[dict, list[str]]:
    """The tree a Flax user restores: a dictionary SAE's arrays by name, or a classic
    autoencoder's {"params": {"encoder_0": {"kernel", "bias"}, ...}} (jaxsae's)."""
    model = _bare(model)
    if model.kind == "dictionary":
        tree = {k: np.array(v, order="C") for k, v in model.state_dict.items()}
    else:
        tree = {"params": to_flax_layout(model.state_dict)}
    return tree, list(model.notes)


def write_flax(model: Model) -> tuple[dict[str, bytes], list[str]]:
    from flax import serialization

    tree, notes = flax_tree(model)
    return {"": serialization.msgpack_serialize(tree)}, notes


def write_orbax(
    model: Model, path: str, overwrite: bool
) -> tuple[list[str], list[str]]:
    """The Flax tree as an orbax checkpoint folder at ``path``, saved beside it first
    and moved into place (an existing folder is replaced only with ``overwrite``)."""
    import shutil
    import tempfile

    try:
        import orbax.checkpoint as ocp
    except ImportError:
        raise ForeignError(
            "writing an orbax checkpoint folder needs orbax-checkpoint; give DST a "
            "file name (.msgpack) for flax.serialization's format instead"
        ) from None
    path = os.path.abspath(path)
    if os.path.exists(path) and not overwrite:
        raise ForeignError(
            f"{path} already exists; choose another destination, or overwrite it "
            "(--overwrite)"
        )
    tree, notes = flax_tree(model)
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".tmp-orbax-", dir=parent)
    try:
        ocp.PyTreeCheckpointer().save(os.path.join(staging, "ckpt"), tree)
        if os.path.exists(path):
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
        os.replace(os.path.join(staging, "ckpt"), path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [path], notes + ["written as an orbax checkpoint folder (DST has no suffix)"]


def looks_like_orbax(path: str) -> bool:
    names = set(os.listdir(path)) if os.path.isdir(path) else set()
    return bool(
        names & {"_METADATA", "_CHECKPOINT_METADATA", "manifest.ocdbt", "checkpoint"}
    )
