"""The run directory: its file names, and reading and writing the files both trainers
(and the evaluation, the layer-wise schedule and the scripts) share.

A run directory holds:
    config.json             the RunConfig
    metrics.jsonl           the history: one line of metrics per finished epoch
    model.safetensors       the portable checkpoint (either package loads it)
    train_state.safetensors everything --resume needs: params, optimizer state, epoch,
                            schedule state, history (framework-specific)
    summary.json, *.png     written at the end
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping

import numpy as np
from safetensors.numpy import save as _save_bytes

from saecommon.checkpoint import CheckpointError, atomic_write, read_safetensors
from saecommon.train_config import RunConfig

CONFIG = "config.json"
HISTORY = "metrics.jsonl"
MODEL = "model.safetensors"
TRAIN_STATE = "train_state.safetensors"
SUMMARY = "summary.json"
TRAIN_STATE_FORMAT = "sae-train-state"


def write_run_config(out_dir: str | os.PathLike, run: RunConfig) -> None:
    """config.json, creating ``out_dir`` if needed."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, CONFIG), "w") as f:
        f.write(run.to_json())


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


def write_history(out_dir: str | os.PathLike, history: list[dict]) -> None:
    """metrics.jsonl, rewritten whole from the history (so a resume never duplicates)."""
    text = "".join(json.dumps(row, sort_keys=True) + "\n" for row in history)
    atomic_write(os.path.join(out_dir, HISTORY), text.encode())


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
