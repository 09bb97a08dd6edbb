"""The portable checkpoint: one safetensors file, PyTorch ``state_dict`` names and
layouts, the config as JSON in the file's metadata. Framework-neutral (numpy only);
jaxsae and torchsae convert to and from the numpy state dict.

Loading never unpickles: safetensors holds raw tensors and a JSON header only.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Collection, Mapping

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save as _save_bytes

from saecommon.architectures import layers
from saecommon.config import ConfigError, SAEConfig

FORMAT = "sae-checkpoint"
FORMAT_VERSION = "1"

StateDict = Mapping[str, np.ndarray]


class CheckpointError(ValueError):
    """A checkpoint cannot be read, or does not fit the model it is loaded into."""


def expected_shapes(config: SAEConfig) -> dict[str, tuple[int, ...]]:
    """PyTorch ``state_dict`` names and shapes of the model that ``config`` describes
    (the layers of saecommon/architectures.py); a tied decoder layer has a bias and no
    weight."""
    shapes: dict[str, tuple[int, ...]] = {}
    for layer in layers(config):
        if not (config.tied and layer.name.startswith("decoder.")):
            shapes[f"{layer.name}.weight"] = layer.weight_shape
        shapes[f"{layer.name}.bias"] = (layer.fan_out,)
    return shapes


def check_state_dict(state_dict: StateDict, config: SAEConfig) -> None:
    """Raise CheckpointError naming every missing, unexpected and mis-shaped key."""
    expected = expected_shapes(config)
    missing, unexpected, wrong = compare_shapes(state_dict, expected)
    misshaped = [f"{k}: checkpoint {got}, model {want}" for k, got, want in wrong]
    problems = []
    if missing:
        problems.append("missing keys: " + ", ".join(missing))
    if unexpected:
        problems.append("unexpected keys: " + ", ".join(unexpected))
    if misshaped:
        problems.append("mis-shaped keys: " + "; ".join(misshaped))
    if problems:
        raise CheckpointError(
            "checkpoint does not fit this architecture "
            f"(hidden_dims={list(config.hidden_dims)}, tied={config.tied}): "
            + " | ".join(problems)
        )
    dtypes = {state_dict[k].dtype for k in expected}
    if len(dtypes) != 1 or not np.issubdtype(next(iter(dtypes)), np.floating):
        raise CheckpointError(
            f"checkpoint tensors must share one float dtype, got {dtypes}"
        )


def compare_shapes(
    state_dict: StateDict, expected: Mapping[str, tuple[int, ...]]
) -> tuple[list[str], list[str], list[tuple[str, tuple, tuple]]]:
    """(missing keys, unexpected keys, [(key, shape found, shape expected)]) of
    ``state_dict`` against ``expected`` names and shapes."""
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    misshaped = [
        (k, tuple(np.shape(state_dict[k])), expected[k])
        for k in expected
        if k in state_dict and tuple(np.shape(state_dict[k])) != expected[k]
    ]
    return missing, unexpected, misshaped


def check_frozen(frozen: Collection[str], config: SAEConfig) -> None:
    """Frozen layers must be layers of ``config``'s model (named as in checkpoints)."""
    names = [layer.name for layer in layers(config)]
    unknown = sorted(set(frozen) - set(names))
    if unknown:
        raise ValueError(
            f"cannot freeze {', '.join(unknown)}: the model's layers are "
            + ", ".join(names)
        )


def write_checkpoint(path: str | os.PathLike, state_dict: StateDict, config: SAEConfig):
    """Write ``state_dict`` and ``config`` atomically: a kill mid-write leaves the old
    file (or none), never a truncated one."""
    atomic_write(path, checkpoint_bytes(state_dict, config))


def checkpoint_bytes(state_dict: StateDict, config: SAEConfig) -> bytes:
    """The checkpoint file's bytes, after checking every tensor against ``config``."""
    check_state_dict(state_dict, config)
    arrays = {k: np.ascontiguousarray(v) for k, v in state_dict.items()}
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": config.to_json(),
    }
    return _save_bytes(arrays, metadata=metadata)


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to a temp file beside ``path``, fsync, then rename over ``path``:
    a kill at any moment leaves the old file (or none), never a truncated one. The
    file gets the mode ``open()`` would give it (0o666 less the umask, which the
    kernel applies when it creates the temp file)."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = _create_temp(directory, os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _create_temp(directory: str, name: str) -> tuple[int, str]:
    """A new file ``.tmp-<random>-<name>`` in ``directory``, opened for writing."""
    for _ in range(100):
        tmp = os.path.join(directory, f".tmp-{secrets.token_hex(4)}-{name}")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name for {name} in {directory}")


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], SAEConfig]:
    """Read a checkpoint written by either package: (numpy state dict, config)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"no checkpoint at {path}")
    state_dict, metadata = read_safetensors(path)
    if metadata.get("format") != FORMAT or "config" not in metadata:
        raise CheckpointError(
            f"{path} is a safetensors file but not an SAE checkpoint "
            "(its metadata has no 'format': 'sae-checkpoint' and 'config')"
        )
    version = metadata.get("format_version")
    if version != FORMAT_VERSION:
        found = (
            "no format_version" if version is None else f"format_version {version!r}"
        )
        raise CheckpointError(
            f"{path} has {found}; this code reads format_version "
            f"{FORMAT_VERSION!r} only"
        )
    try:
        config = SAEConfig.from_json(metadata["config"])
    except (ConfigError, TypeError) as err:
        raise CheckpointError(f"{path} holds an invalid config: {err}") from None
    check_state_dict(state_dict, config)
    check_finite_weights(state_dict, path)
    return state_dict, config


def check_finite_weights(state_dict: StateDict, source: str) -> None:
    """CheckpointError naming every tensor of ``state_dict`` that holds NaN or inf
    (a model saved from a diverged run must not load as if it were trained)."""
    bad = []
    for name, value in state_dict.items():
        value = np.asarray(value)
        finite = np.isfinite(value)
        if not finite.all():
            n_nan = int(np.count_nonzero(np.isnan(value)))
            n_bad = value.size - int(np.count_nonzero(finite))
            bad.append(
                f"{name} ({n_nan} NaN, {n_bad - n_nan} inf of {value.size} values)"
            )
    if bad:
        raise CheckpointError(
            f"{source} holds non-finite weights: {', '.join(bad)}; the run that "
            "wrote it diverged or the file is corrupt"
        )


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict]:
    """(arrays, metadata) of a safetensors file; CheckpointError if it is unreadable."""
    try:
        with safe_open(os.fspath(path), framework="np") as f:
            metadata = f.metadata() or {}
            return {k: f.get_tensor(k) for k in f.keys()}, metadata
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(
            f"{path} is not a readable safetensors file (truncated or corrupt?): {err}"
        ) from None


def initial_state_dict(
    path: str | os.PathLike, config: SAEConfig
) -> dict[str, np.ndarray]:
    """Weights to start a run of ``config`` from: the checkpoint at ``path``, untied on
    the way when it is tied and ``config`` is not (the tied-then-untied fine-tuning
    procedure: decoder i gets a copy of encoder n-1-i's weight, transposed, so the
    untied model starts with the tied model's outputs). Any other difference in
    architecture is a CheckpointError naming the keys."""
    state_dict, saved = read_checkpoint(path)
    if saved.tied and not config.tied:
        state_dict, _ = untie_state_dict(state_dict, saved)
    check_state_dict(state_dict, config)
    return state_dict


def untie_state_dict(
    state_dict: StateDict, config: SAEConfig
) -> tuple[dict[str, np.ndarray], SAEConfig]:
    """A tied model's weights and config as an untied model's with identical outputs:
    decoder i gets a copy of encoder n-1-i's weight, transposed (both packages'
    ``untie`` and ``initial_state_dict`` go through here)."""
    if not config.tied:
        raise ValueError("untie needs a tied model (config.tied is False)")
    n = len(config.hidden_dims)
    untied = {k: np.asarray(v) for k, v in state_dict.items()}
    for i in range(n):
        untied[f"decoder.{i}.weight"] = np.ascontiguousarray(
            untied[f"encoder.{n - 1 - i}.weight"].T
        )
    return untied, config.replace(tied=False)
