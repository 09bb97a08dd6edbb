"""What both trainers share around the step: data preparation, the run directory, the
train-state file, the metrics log and the progress display.

A run directory holds:
    config.json             the RunConfig
    metrics.jsonl           one line of metrics per finished epoch
    model.safetensors       the portable checkpoint (either package loads it)
    train_state.safetensors everything --resume needs: params, optimizer state, epoch,
                            schedule state, history (framework-specific)
    summary.json, *.png     written at the end
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Mapping

import numpy as np
from safetensors.numpy import save as _save_bytes

from saecommon.architectures import layers
from saecommon.checkpoint import CheckpointError, atomic_write, read_safetensors
from saecommon.data import (
    DataError,
    Normalization,
    check_finite,
    fit_normalization,
    flatten_images,
    load_dataset,
    split_validation,
)
from saecommon.train_config import Plateau, RunConfig

CONFIG = "config.json"
METRICS = "metrics.jsonl"
MODEL = "model.safetensors"
TRAIN_STATE = "train_state.safetensors"
SUMMARY = "summary.json"
TRAIN_STATE_FORMAT = "sae-train-state"


class TrainingDiverged(RuntimeError):
    """The loss became NaN or inf; the last good checkpoint is kept."""


class DeadCodeWarning(RuntimeWarning):
    """Every code unit takes one value on every test sample (zero, or a constant left
    by a dead inner layer): the code collapsed and the decoder gives one picture."""


@dataclasses.dataclass(frozen=True)
class PreparedData:
    """Flattened float32 arrays [n, pixels] ready for a trainer, and their labels."""

    train: np.ndarray
    train_labels: np.ndarray
    val: np.ndarray
    """Validation inputs: held out from train, or the test split when val_fraction=0."""
    val_labels: np.ndarray
    test: np.ndarray
    test_labels: np.ndarray
    pixel_range: tuple[float, float]
    """The values that pixel 0 and pixel 1 take after preprocessing (noise clips here)."""
    image_shape: tuple[int, ...]
    normalization: Normalization | None
    val_is_test: bool


def prepare_data(run: RunConfig) -> PreparedData:
    """Load ``run.train.dataset``, scale to [0, 1], optionally standardise, split."""
    tcfg, mcfg = run.train, run.model
    ds = load_dataset(tcfg.dataset)
    image_shape = tuple(ds.train_images.shape[1:])
    train, test = flatten_images(ds.train_images), flatten_images(ds.test_images)
    if train.shape[1] != mcfg.input_dim:
        raise DataError(
            f"dataset {tcfg.dataset!r} has {train.shape[1]} pixels per sample "
            f"(images {image_shape}) but the model's input_dim is {mcfg.input_dim}; "
            "use the kind of data the model takes (--dataset/--data-dir)"
        )
    train_labels, test_labels = ds.train_labels, ds.test_labels
    val_is_test = tcfg.val_fraction == 0
    if val_is_test:
        val, val_labels = test, test_labels
    else:
        train, train_labels, val, val_labels = split_validation(
            train, train_labels, tcfg.val_fraction
        )
    norm = fit_normalization(train) if tcfg.normalize else None
    if norm is not None:
        train, val, test = norm.apply(train), norm.apply(val), norm.apply(test)
    lo, hi = (
        (norm.apply(np.float32(0)), norm.apply(np.float32(1))) if norm else (0.0, 1.0)
    )
    for name, array in (("train", train), ("validation", val), ("test", test)):
        check_finite(array, f"{tcfg.dataset} {name} data")
    if len(train) < tcfg.batch_size:
        raise ValueError(
            f"batch_size {tcfg.batch_size} is larger than the training set ({len(train)})"
        )
    return PreparedData(
        train.astype(np.float32),
        train_labels,
        val.astype(np.float32),
        val_labels,
        test.astype(np.float32),
        test_labels,
        (float(lo), float(hi)),
        image_shape,
        norm,
        val_is_test,
    )


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
    atomic_write(os.path.join(out_dir, METRICS), text.encode())


def read_history(out_dir: str | os.PathLike) -> list[dict]:
    """A run directory's metrics.jsonl rows ([] when it has none)."""
    path = os.path.join(out_dir, METRICS)
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def epoch_means(step_metrics: Mapping[str, np.ndarray], epoch: int, prefix="train"):
    """Per-step metric arrays -> their epoch means; raises TrainingDiverged naming the
    first step whose loss is not finite."""
    loss = np.asarray(step_metrics["loss"])
    bad = np.flatnonzero(~np.isfinite(loss))
    if bad.size:
        raise TrainingDiverged(
            f"the loss became {loss[bad[0]]} at epoch {epoch + 1}, step {bad[0] + 1} "
            f"of {loss.size}; training stopped and the last good checkpoint is kept"
        )
    return {f"{prefix}/{k}": float(np.mean(v)) for k, v in step_metrics.items()}


class Progress:
    """An epoch progress bar (tqdm) on a terminal; one plain line per epoch in a log."""

    def __init__(self, total: int, initial: int = 0, enabled: bool = True):
        self.enabled = enabled
        self.total = total
        self.bar = None
        self.start = time.perf_counter()
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(
                total=total, initial=initial, unit="epoch", dynamic_ncols=True
            )

    def update(self, row: dict) -> None:
        if not self.enabled:
            return
        shown = {
            k.replace("/", " "): row[k]
            for k in ("train/loss", "test/loss", "val/loss", "test/l0", "lr")
            if k in row
        }
        if self.bar is not None:
            self.bar.set_postfix(
                {k: f"{v:.4g}" for k, v in shown.items()}, refresh=False
            )
            self.bar.update(1)
        else:
            parts = " ".join(f"{k}={v:.5g}" for k, v in shown.items())
            elapsed = time.perf_counter() - self.start
            print(
                f"epoch {row['epoch']}/{self.total} {parts} ({elapsed:.1f}s)",
                flush=True,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def summarize(history: list[dict], seconds: float) -> dict:
    """The final summary: the last epoch's metrics, the best validation loss, time."""
    last = history[-1]
    key = "val/loss" if "val/loss" in last else "test/loss"
    best = min(history, key=lambda r: r.get(key, math.inf))
    return {
        "epochs": last["epoch"],
        "final": {k: v for k, v in last.items() if k != "epoch"},
        "best_epoch": best["epoch"],
        f"best_{key.replace('/', '_')}": best[key],
        "train_seconds": seconds,
    }


def format_summary(summary: dict) -> str:
    final = summary["final"]
    lines = [f"trained {summary['epochs']} epochs in {summary['train_seconds']:.1f}s"]
    for split in ("train", "val", "test"):
        keys = [k for k in final if k.startswith(split + "/")]
        if keys:
            lines.append(
                f"  {split:5s} "
                + "  ".join(f"{k.split('/')[1]}={final[k]:.5g}" for k in keys)
            )
    return "\n".join(lines)


def dictionary(
    state_dict: Mapping[str, np.ndarray], config
) -> tuple[np.ndarray, tuple]:
    """([units, pixels], tile shape or None): what each input unit of the last decoder
    layer writes (for a one-layer model or the conv model, each code unit's decoder
    weights; for fullconv, the 8x8 stamp each input channel of the last transposed
    convolution paints)."""
    last = [layer for layer in layers(config) if layer.name.startswith("decoder.")][-1]
    if config.tied:
        return np.asarray(state_dict["encoder.0.weight"]), None  # [h1, input]
    weight = np.asarray(state_dict[f"{last.name}.weight"])
    if last.kind == "conv_transpose":  # [in, out=1, k, k]
        return weight.reshape(weight.shape[0], -1), (last.kernel, last.kernel)
    return weight.T, None  # [input, h1] -> [h1, input]


def picture_shape(data: PreparedData, input_dim: int) -> tuple[int, int]:
    """(h, w) to draw one sample as: the image's, or a column when it does not fit."""
    shape = data.image_shape[:2] if len(data.image_shape) >= 2 else data.image_shape
    if int(np.prod(shape)) != input_dim:
        shape = (input_dim, 1)
    return tuple(int(s) for s in shape)


def finish_run(
    out_dir,
    run: RunConfig,
    history,
    seconds,
    data: PreparedData,
    forward,
    state_dict,
    progress: bool = True,
) -> dict:
    """Pictures and summary.json at the end of a run; prints the summary.

    ``forward(x [n, input]) -> (reconstruction, code)`` as numpy, in evaluation mode."""
    from saecommon.plots import write_run_plots

    x = data.test[:256]
    recon, code = forward(x)
    shown_x, shown_recon = x, recon
    if data.normalization is not None:
        shown_x, shown_recon = (
            data.normalization.invert(x),
            data.normalization.invert(recon),
        )
    image_shape = picture_shape(data, run.model.input_dim)
    weights, tile_shape = dictionary(state_dict, run.model)
    write_run_plots(
        out_dir,
        history,
        shown_x,
        shown_recon,
        weights,
        code,
        labels=data.test_labels[:256],
        image_shape=tuple(image_shape),
        dictionary_shape=tile_shape,
    )
    summary = summarize(history, seconds)
    with open(os.path.join(out_dir, SUMMARY), "w") as f:
        json.dump(summary, f, indent=1, sort_keys=True)
    if progress:
        print(format_summary(summary), flush=True)
    return summary


class RunRecorder:
    """The framework-neutral half of a training loop, shared by both trainers: resume
    bookkeeping, the per-epoch metrics row, reduce-on-plateau, the atomic per-epoch
    writes, progress, and the end-of-run pictures and summary.

    A trainer builds one, restores its own state from ``resumed`` (arrays, meta) when
    that is set, then for each epoch from ``first_epoch`` calls ``row``, ``next_lr``
    and ``save``, and at the end ``finish``."""

    def __init__(
        self,
        run: RunConfig,
        out_dir,
        framework: str,
        data: PreparedData,
        *,
        resume: bool,
        progress: bool,
    ):
        self.run, self.out_dir, self.framework, self.data = (
            run,
            out_dir,
            framework,
            data,
        )
        tcfg = run.train
        self.plateau = Plateau(tcfg.plateau_factor, tcfg.plateau_patience)
        self.history: list[dict] = []
        self.warned_dead = False
        self.state_path = os.path.join(out_dir, TRAIN_STATE)
        self.resumed: tuple[dict[str, np.ndarray], dict] | None = None
        if resume:
            arrays, meta = read_train_state(self.state_path)
            check_resumable(meta, run, framework, self.state_path)
            self.plateau = Plateau(**meta["plateau"])
            self.history = meta["history"]
            self.resumed = arrays, meta
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, CONFIG), "w") as f:
            f.write(run.to_json())
        self.progress = progress
        self.bar = Progress(tcfg.epochs, initial=len(self.history), enabled=progress)
        self.start = time.perf_counter() - sum(r["seconds"] for r in self.history)
        self.epoch_start = time.perf_counter()

    @property
    def first_epoch(self) -> int:
        return len(self.history)

    @property
    def eval_splits(self) -> tuple[str, ...]:
        """The splits evaluated each epoch: "test", and "val" first when held out."""
        return ("test",) if self.data.val_is_test else ("val", "test")

    def begin_epoch(self) -> None:
        self.epoch_start = time.perf_counter()

    def row(self, epoch: int, lr: float, step_metrics, evaluate) -> dict:
        """The epoch's metrics: train means (raising TrainingDiverged on a non-finite
        loss), then ``evaluate(split)`` for "val" (if held out) and "test"."""
        row = {"epoch": epoch + 1, "lr": lr}
        row.update(epoch_means(step_metrics, epoch))
        for split in self.eval_splits:
            row.update({f"{split}/{k}": v for k, v in evaluate(split).items()})
        if row["test/constant_fraction"] == 1 and not self.warned_dead:
            self.warned_dead = True
            how = (
                "every code unit is zero on every test sample, so the decoder sees "
                "no input"
                if row["test/dead_fraction"] == 1
                else "every code unit takes one value on every test sample (an inner "
                "layer died), so the decoder gives one picture for every input"
            )
            warnings.warn(
                f"the code collapsed at epoch {epoch + 1}: {how}. A ReLU network "
                "under a penalty or a high learning_rate can die this way and does "
                "not recover; try a lower penalty_weight or learning_rate, leaky_relu "
                "activations, or another seed",
                DeadCodeWarning,
                stacklevel=2,
            )
        return row

    def next_lr(self, row: dict, lr: float) -> float:
        """The learning rate for the next epoch (reduce-on-plateau acts here)."""
        if self.run.train.schedule != "plateau":
            return lr
        return self.plateau.step(
            row["val/loss" if "val/loss" in row else "test/loss"], lr
        )

    def save(
        self, row: dict, arrays: Mapping[str, np.ndarray], write_model, **meta
    ) -> None:
        """Append ``row`` and write the train state, the portable model (via
        ``write_model(path)``) and metrics.jsonl, each atomically."""
        row["seconds"] = time.perf_counter() - self.epoch_start
        self.history.append(row)
        plateau = dataclasses.asdict(self.plateau)
        meta = {
            "framework": self.framework,
            "run_config": self.run.to_json(),
            "history": self.history,
            "plateau": plateau,
            **meta,
        }
        write_train_state(self.state_path, arrays, meta)
        write_model(os.path.join(self.out_dir, MODEL))
        write_history(self.out_dir, self.history)
        self.bar.update(row)

    def close(self) -> None:
        self.bar.close()

    def finish(self, forward, state_dict) -> dict:
        return finish_run(
            self.out_dir,
            self.run,
            self.history,
            time.perf_counter() - self.start,
            self.data,
            forward,
            state_dict,
            self.progress,
        )
