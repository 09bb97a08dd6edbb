"""The run directory: its file names, and reading and writing the files both trainers
(and the evaluation, the layer-wise schedule and the scripts) share.

A run directory holds:
    config.json             the RunConfig
    metrics.jsonl           the history: one line of metrics per finished epoch
    model.safetensors       the portable checkpoint (either package loads it)
    train_state.safetensors everything --resume needs: params, optimizer state, epoch,
                            schedule state, history (framework-specific)
    summary.json, *.png     written at the end

A folder that holds a run (any of config.json, metrics.jsonl, model.safetensors,
train_state.safetensors) is never written into by a new run unless the caller says
``overwrite`` (:func:`check_out_dir`); ``resume`` continues it. A new run writes
nothing until its first epoch is saved, and then stages that epoch's files and moves
them in together (:func:`commit_files`), so a start that is interrupted (a crash, a
kill, a divergence in the first epoch) leaves what was there as it was.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save as _save_bytes

from saecommon.checkpoint import CheckpointError, atomic_write, read_safetensors
from saecommon.train_config import RunConfig

CONFIG = "config.json"
HISTORY = "metrics.jsonl"
MODEL = "model.safetensors"
TRAIN_STATE = "train_state.safetensors"
SUMMARY = "summary.json"
TRAIN_STATE_FORMAT = "sae-train-state"
RUN_FILES = (CONFIG, HISTORY, MODEL, TRAIN_STATE)
"""The files whose presence makes a folder hold a run."""
STAGED = ".new-"
"""Prefix of a file staged by :func:`commit_files` (left over only by a kill)."""


class RunDirError(ValueError):
    """The output folder cannot be used as asked: it holds a run that would be lost,
    it has nothing to resume, or it cannot be written."""


def holds_run(out_dir: str | os.PathLike) -> bool:
    """Whether ``out_dir`` holds (part of) a training run."""
    return any(os.path.exists(os.path.join(out_dir, name)) for name in RUN_FILES)


def _state_meta(path: str) -> dict:
    """The metadata of the train state at ``path`` (read from its header only), or
    {} when there is none or it cannot be read."""
    if not os.path.isfile(path):
        return {}
    try:
        with safe_open(path, "np") as f:
            meta = json.loads(f.metadata()["meta"])
    except Exception:  # a damaged or foreign file: say nothing about it
        return {}
    return meta if isinstance(meta, dict) else {}


def _state_framework(path: str) -> str | None:
    """The framework that wrote the train state at ``path``, or None when there is
    none or it cannot be read."""
    return _state_meta(path).get("framework")


def run_framework(out_dir: str | os.PathLike) -> str | None:
    """The framework of the run in ``out_dir`` (its train state's, or for a layer-wise
    run its stages'), or None when none can be told."""
    found = _state_framework(os.path.join(out_dir, TRAIN_STATE))
    if found is None and os.path.isdir(out_dir):
        for name in sorted(os.listdir(out_dir)):
            found = _state_framework(os.path.join(out_dir, name, TRAIN_STATE))
            if found:
                break
    return found


def describe_run(out_dir: str | os.PathLike) -> str:
    """What run ``out_dir`` holds, in a few words, for messages: its framework, its
    model and how far it got ("a finished jax run of 784-64 top-16, 6 of 6 epochs")."""
    parts = []
    framework = run_framework(out_dir)
    epochs = (
        len(read_history(out_dir))
        if os.path.isfile(os.path.join(out_dir, HISTORY))
        else 0
    )
    finished = os.path.isfile(os.path.join(out_dir, SUMMARY))
    try:
        run = read_run_config(out_dir)
    except Exception:
        run = None
    what = "a finished" if finished else "an unfinished" if epochs else "a"
    parts.append(f"{what} {framework + ' ' if framework else ''}run")
    if run is not None:
        parts.append(f"of {_model_words(run.model)}")
        parts.append(f"{epochs} of {run.train.epochs} epochs done")
    elif (dictionary := _dictionary_words(out_dir)) is not None:
        return f"{parts[0]} of {dictionary}"
    else:
        parts.append(f"{epochs} epochs done")
        return ", ".join(parts)
    return f"{' '.join(parts[:2])}, {parts[2]}"


def _dictionary_words(out_dir) -> str | None:
    """ "a topk dictionary 384x3072, 500 of 1000 steps done" for a dictionary SAE's
    run folder (saecommon/dict_run.py), else None."""
    from saecommon.dict_run import read_run

    try:
        run = read_run(out_dir)
    except Exception:
        return None
    steps = _state_meta(os.path.join(out_dir, TRAIN_STATE)).get("step", 0)
    model = run.model
    return (
        f"a {model.activation} dictionary {model.d_in}x{model.d_sae}, {steps} of "
        f"{run.train.steps} steps done"
    )


def _model_words(model) -> str:
    """ "mlp 784-64, top-16, l1 penalty" and the like."""
    if model.architecture == "mlp":
        words = [
            f"mlp {'-'.join(str(d) for d in (model.input_dim, *model.hidden_dims))}"
        ]
    else:
        words = [f"{model.architecture} (code {model.code_dim})"]
    if model.topk:
        words.append(f"top-{model.topk}")
    if model.lifetime_k or model.lifetime_rate:
        words.append("lifetime top-k")
    if model.penalty != "none":
        words.append(f"{model.penalty} penalty")
    return ", ".join(words)


def _present(out_dir) -> str:
    names = [name for name in RUN_FILES if os.path.exists(os.path.join(out_dir, name))]
    return ", ".join(names)


def check_writable(out_dir: str | os.PathLike) -> None:
    """RunDirError when ``out_dir`` is a file, sits inside a file, or cannot be
    created or written. Creates nothing: a run makes its folder when it first saves."""
    out_dir = os.path.abspath(os.fspath(out_dir))
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise RunDirError(f"the output folder {out_dir} is a file, not a folder")
    existing = out_dir
    while not os.path.exists(existing):  # the folder, or the nearest one above it
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise RunDirError(
            f"cannot create the output folder {out_dir}: {existing} is a file"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "the output folder" if existing == out_dir else "its parent folder"
        raise RunDirError(
            f"cannot write into {out_dir}: {what} {existing} is not writable"
        )


def check_out_dir(
    out_dir: str | os.PathLike, *, resume: bool = False, overwrite: bool = False
) -> bool:
    """Make sure a run may go into ``out_dir``, before any data is loaded: it is (or
    can be made) a writable folder; a new run does not land on an earlier one unless
    ``overwrite``; ``resume`` has a train state to continue. Writes nothing.
    Returns whether a new run will replace one that is there (``overwrite``).
    Raises RunDirError."""
    out_dir = os.fspath(out_dir)
    if resume and overwrite:
        raise RunDirError(
            "resume continues the run in the folder; overwrite replaces "
            "it: ask for one of them"
        )
    check_writable(out_dir)
    if resume:
        if not os.path.isfile(os.path.join(out_dir, TRAIN_STATE)):
            raise RunDirError(
                f"nothing to resume in {out_dir}: it has no {TRAIN_STATE}"
                + (
                    " (its run stopped before its first epoch was saved)"
                    if not holds_run(out_dir)
                    else ""
                )
            )
        return False
    if not holds_run(out_dir):
        return False
    if not overwrite:
        raise RunDirError(
            f"{out_dir} already holds {describe_run(out_dir)} ({_present(out_dir)}); "
            "to keep it, choose "
            "another output folder; to continue it, resume; to replace it, overwrite"
        )
    return True


def commit_files(
    out_dir: str | os.PathLike, staged: Mapping[str, str], stale: tuple[str, ...] = ()
) -> None:
    """Move staged files into place (``staged``: final name -> staged path, each
    already complete on disk), after removing ``stale`` names (a replaced run's
    summary and pictures). The train state moves first: ``resume`` trusts it."""
    remove_files(out_dir, stale)
    for name in sorted(staged, key=lambda name: name != TRAIN_STATE):
        os.replace(staged[name], os.path.join(out_dir, name))


def remove_files(out_dir: str | os.PathLike, names) -> None:
    """Remove the files ``names`` from ``out_dir`` where they exist."""
    for name in names:
        path = os.path.join(out_dir, name)
        if os.path.isfile(path):
            os.remove(path)


def staged_path(out_dir: str | os.PathLike, name: str) -> str:
    """Where :func:`commit_files` expects ``name``'s new contents."""
    return os.path.join(out_dir, STAGED + name)


def write_run_config(
    out_dir: str | os.PathLike, run: RunConfig, path: str | None = None
) -> None:
    """config.json (or ``path``), atomically, creating ``out_dir`` if needed."""
    os.makedirs(out_dir, exist_ok=True)
    atomic_write(path or os.path.join(out_dir, CONFIG), run.to_json().encode())


def read_run_config(out_dir: str | os.PathLike) -> RunConfig:
    """The RunConfig in ``out_dir``'s config.json."""
    with open(os.path.join(out_dir, CONFIG)) as f:
        return RunConfig.from_json(f.read())


def write_train_state(
    path: str | os.PathLike, arrays: Mapping[str, np.ndarray], meta: dict
) -> None:
    """Atomically write named arrays plus JSON metadata (epoch, history, ...)."""
    data = _save_bytes(
        {k: np.ascontiguousarray(v) for k, v in arrays.items()},
        metadata={"format": TRAIN_STATE_FORMAT, "meta": json.dumps(meta)},
    )
    atomic_write(path, data)


def read_train_state(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict]:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"nothing to resume: no {TRAIN_STATE} at {path}")
    arrays, metadata = read_safetensors(path)
    if metadata.get("format") != TRAIN_STATE_FORMAT:
        raise CheckpointError(f"{path} is not an SAE train state")
    return arrays, json.loads(metadata["meta"])


def check_resumable(meta: dict, run: RunConfig, framework: str, path) -> None:
    """A train state continues only the run it came from."""
    if meta.get("framework") != framework:
        raise CheckpointError(
            f"{path} was written by {meta.get('framework')}; resume it with "
            f"--framework {meta.get('framework')}"
        )
    if not same_but_epochs(RunConfig.from_json(meta["run_config"]), run):
        raise CheckpointError(
            f"{path} belongs to a run with another config; only --epochs may change "
            "on --resume"
        )


def same_but_epochs(a: RunConfig, b: RunConfig) -> bool:
    """Whether two runs are the same experiment, perhaps with more or fewer epochs."""

    def strip(run: RunConfig) -> RunConfig:
        return dataclasses.replace(run, train=dataclasses.replace(run.train, epochs=1))

    return strip(a) == strip(b)


def write_history(
    out_dir: str | os.PathLike, history: list[dict], path: str | None = None
) -> None:
    """metrics.jsonl (or ``path``), rewritten whole from the history (so a resume never
    duplicates)."""
    text = "".join(json.dumps(row, sort_keys=True) + "\n" for row in history)
    atomic_write(path or os.path.join(out_dir, HISTORY), text.encode())


def read_history(out_dir: str | os.PathLike) -> list[dict]:
    """A run directory's metrics.jsonl rows ([] when it has none)."""
    path = os.path.join(out_dir, HISTORY)
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def write_summary(out_dir: str | os.PathLike, summary: dict) -> None:
    """summary.json (written once, at the end of a run)."""
    with open(os.path.join(out_dir, SUMMARY), "w") as f:
        json.dump(summary, f, indent=1, sort_keys=True)


def read_summary(out_dir: str | os.PathLike) -> dict:
    with open(os.path.join(out_dir, SUMMARY)) as f:
        return json.load(f)
