"""This project's checkpoint (``sae``): one safetensors file with the config in its
metadata (saecommon/checkpoint.py for the classic autoencoders,
saecommon/dictionary.py for dictionary SAEs), or a run folder holding one as
``model.safetensors``."""

from __future__ import annotations

import os

from saecommon.checkpoint import FORMAT, checkpoint_bytes, read_checkpoint
from saecommon.dictionary import dictionary_bytes, load_dictionary
from saecommon.foreign.files import ForeignError, is_safetensors, read_safetensors
from saecommon.foreign.model import Model
from saecommon.rundir import MODEL


def checkpoint_file(path: str) -> str:
    return os.path.join(path, MODEL) if os.path.isdir(path) else path


def sniff(path: str) -> bool:
    path = checkpoint_file(path)
    if not (os.path.isfile(path) and is_safetensors(path)):
        return False
    try:
        _, metadata = read_safetensors(path)
    except ForeignError:
        return False
    return metadata.get("format") == FORMAT


def read(path: str, given: dict, hookpoint: str | None = None) -> Model:
    path = checkpoint_file(path)
    _, metadata = read_safetensors(path)
    if metadata.get("kind") == "dictionary":
        state_dict, config = load_dictionary(path)
    else:
        state_dict, config = read_checkpoint(path)
    differ = {k: v for k, v in given.items() if getattr(config, k, object()) != v}
    if differ:
        raise ForeignError(
            f"{path} carries its config; the given "
            + ", ".join(f"{k}={v!r}" for k, v in differ.items())
            + " disagree with it"
        )
    return Model(dict(state_dict), config)


def write(model: Model) -> tuple[dict[str, bytes], list[str]]:
    if model.kind == "dictionary":
        data = dictionary_bytes(model.state_dict, model.config, "the converted model")
    else:
        data = checkpoint_bytes(model.state_dict, model.config)
    return {"": data}, list(model.notes)
