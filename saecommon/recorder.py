"""The framework-neutral half of a training loop, shared by both trainers
(:class:`RunRecorder`): resume bookkeeping, the per-epoch metrics row and its
divergence and collapse checks, reduce-on-plateau, the atomic per-epoch writes into the
run directory (rundir.py), progress, and the end-of-run pictures and summary."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import numpy as np

from saecommon import rundir
from saecommon.data import PreparedData
from saecommon.progress import EpochProgress
from saecommon.schedules import Plateau
from saecommon.train_config import RunConfig, TrainConfig

if TYPE_CHECKING:
    from saecommon.evaluation import Encoded

PREVIEW = 256
"""Test samples drawn in the end-of-run pictures (reconstructions, codes)."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or inf; the last good checkpoint is kept."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGINT) during training, said in one line: where it stopped and what
    was saved. ``resumable``: a checkpoint of this run is on disk."""

    def __init__(self, message: str, resumable: bool):
        super().__init__(message)
        self.resumable = resumable


class DeadCodeWarning(RuntimeWarning):
    """Every code unit takes one value on every test sample (zero, or a constant left
    by a dead inner layer): the code collapsed and the decoder gives one picture."""


def check_batch_splits(batch_size: int, parts: int, what: str, fewer: str) -> None:
    """A ValueError unless a global batch splits evenly into ``parts`` (the ``what``
    it is split over: devices of a mesh's data axis, processes); ``fewer`` says how
    to ask for fewer of them."""
    if batch_size % parts:
        raise ValueError(
            f"batch_size {batch_size} does not divide by the {parts} {what}; give a "
            f"batch size that does, or {fewer}"
        )


def check_batch_size(train: TrainConfig, data: PreparedData) -> None:
    """Every epoch needs one full batch (the short last batch is dropped): a
    ValueError, before anything is built, when the training split is smaller."""
    if len(data.train) < train.batch_size:
        raise ValueError(
            f"batch_size {train.batch_size} is larger than the training set "
            f"({len(data.train)})"
        )


def epoch_means(
    step_metrics: Mapping[str, np.ndarray],
    epoch: int,
    prefix="train",
    kept="the last good checkpoint is kept",
):
    """Per-step metric arrays -> their epoch means; raises TrainingDiverged naming the
    first step whose loss is not finite (and saying what is ``kept``)."""
    loss = np.asarray(step_metrics["loss"])
    bad = np.flatnonzero(~np.isfinite(loss))
    if bad.size:
        raise TrainingDiverged(
            f"the loss became {loss[bad[0]]} at epoch {epoch + 1}, step {bad[0] + 1} "
            f"of {loss.size}; training stopped and {kept}"
        )
    return {f"{prefix}/{k}": float(np.mean(v)) for k, v in step_metrics.items()}


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
        keys = sorted(
            (k for k in final if k.startswith(split + "/")), key=_summary_order
        )
        if keys:
            lines.append(
                f"  {split:5s} "
                + "  ".join(f"{k.split('/')[1]}={final[k]:.5g}" for k in keys)
            )
    return "\n".join(lines)


SUMMARY_ORDER = ("loss", "recon", "penalty", "l0", "dead_fraction", "constant_fraction")
"""The printed summary's metrics, in this order (others follow, sorted)."""


def _summary_order(key: str) -> tuple[int, str]:
    name = key.split("/", 1)[1]
    return (SUMMARY_ORDER.index(name), "") if name in SUMMARY_ORDER else (99, name)


def finish_run(
    out_dir,
    run: RunConfig,
    history,
    seconds,
    data: PreparedData,
    encode: Callable[[np.ndarray], Encoded],
    state_dict,
    progress: bool = True,
) -> dict:
    """Pictures and summary.json at the end of a run; prints the summary.

    ``encode(x [n, input])`` runs the trained model in evaluation mode (the package's
    ``evaluation.encode``)."""
    from saecommon import plots  # matplotlib, imported when a run ends

    x = data.test[:PREVIEW]
    out = encode(x)
    image_shape = plots.picture_shape(data.image_shape, run.model.input_dim)
    weights, tile_shape = plots.dictionary_weights(state_dict, run.model)
    plots.write_run_plots(
        out_dir,
        history,
        data.to_pixels(x),
        data.to_pixels(out.reconstruction),
        weights,
        out.code,
        labels=data.test_labels[:PREVIEW],
        image_shape=image_shape,
        dictionary_shape=tile_shape,
        dictionary_is_code=plots.dictionary_is_code(run.model),
    )
    summary = summarize(history, seconds)
    rundir.write_summary(out_dir, summary)
    if progress:
        print(format_summary(summary), flush=True)
    return summary


def check_epochs(out_dir, done: int, epochs: int) -> None:
    """Resuming a run that has ``done`` epochs to ``epochs`` in all: fewer is an
    error, and so is the same number once the run has finished (nothing to do)."""
    if epochs < done:
        raise ValueError(
            f"{out_dir} has trained {done} epochs: resuming it to {epochs} epochs would "
            f"leave its model at epoch {done}; give epochs > {done} to train further"
        )
    if epochs == done and os.path.isfile(os.path.join(out_dir, rundir.SUMMARY)):
        raise ValueError(
            f"{out_dir} has finished all {done} of its epochs: nothing to resume; "
            f"give epochs > {done} to train further"
        )


class RunRecorder:
    """The framework-neutral half of a training loop.

    A trainer builds one, restores its own state from ``resumed`` (arrays, meta) when
    that is set, then for each epoch from ``first_epoch`` calls ``row``, ``next_lr``
    and ``save``, and at the end ``finish``.

    Of the processes of one data-parallel run, one (process 0) is the ``writer``;
    the others keep the same history and write nothing."""

    def __init__(
        self,
        run: RunConfig,
        out_dir,
        framework: str,
        data: PreparedData,
        *,
        resume: bool,
        progress: bool,
        writer: bool = True,
    ):
        tcfg = run.train
        self.writer = writer
        self.run, self.out_dir, self.framework, self.data = (
            run,
            out_dir,
            framework,
            data,
        )
        self.plateau = Plateau(tcfg.plateau_factor, tcfg.plateau_patience)
        self.history: list[dict] = []
        self.warned_dead = False
        self.state_path = os.path.join(out_dir, rundir.TRAIN_STATE)
        self.resumed: tuple[dict[str, np.ndarray], dict] | None = None
        if resume:
            arrays, meta = rundir.read_train_state(self.state_path)
            rundir.check_resumable(meta, run, framework, self.state_path)
            self.plateau = Plateau(**meta["plateau"])
            self.history = meta["history"]
            self.resumed = arrays, meta
            check_epochs(out_dir, len(self.history), tcfg.epochs)
        # A new run writes nothing before its first epoch is saved, and stages that
        # first save (rundir.commit_files): an interrupted start leaves the folder as
        # it was. config.json is written with the first save of every process.
        self.fresh = not resume
        self.saved = False
        self.epoch = self.step = None  # where training is, for an interruption
        self.sigint = False  # a Ctrl-C came (``interrupts``)
        self.progress = progress
        self.bar = EpochProgress(
            tcfg.epochs, initial=len(self.history), enabled=progress
        )
        self.start = time.perf_counter() - sum(r["seconds"] for r in self.history)
        self.epoch_start = time.perf_counter()

    @property
    def first_epoch(self) -> int:
        return len(self.history)

    @property
    def eval_splits(self) -> tuple[str, ...]:
        """The splits evaluated each epoch: "test", and "val" first when held out."""
        return ("test",) if self.data.val_is_test else ("val", "test")

    @contextlib.contextmanager
    def interrupts(self):
        """While active, Ctrl-C raises KeyboardInterrupt as usual and is also
        remembered: one that lands where Python drops exceptions (a garbage
        collector callback of JAX's, between two steps) is raised again at the next
        epoch boundary instead of being lost, and Python's "Exception ignored"
        report of it is left out (the Ctrl-C still ends in one line). A SIGINT that was ignored (a
        background job) stays ignored; off the main thread nothing changes."""
        main = threading.current_thread() is threading.main_thread()
        if not main or signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
            yield
            return

        def handle(signum, frame):
            self.sigint = True
            raise KeyboardInterrupt

        def unraisable(info):  # Python's report of the dropped one: not a traceback
            if not (self.sigint and isinstance(info.exc_value, KeyboardInterrupt)):
                previous_hook(info)

        previous, previous_hook = (
            signal.signal(signal.SIGINT, handle),
            sys.unraisablehook,
        )
        sys.unraisablehook = unraisable
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)
            sys.unraisablehook = previous_hook

    def _raise_lost_interrupt(self) -> None:
        if self.sigint:
            raise KeyboardInterrupt

    def begin_epoch(self, epoch: int) -> None:
        self.epoch_start = time.perf_counter()
        self.epoch, self.step = epoch, None
        self._raise_lost_interrupt()

    def step_done(self, step: int, steps: int) -> None:
        """Step ``step`` (from 1) of ``steps`` of the current epoch has run: progress
        inside long epochs, and where an interruption happened."""
        self.step = (step, steps)
        self.bar.step(step, steps)

    def interrupted(self) -> TrainingInterrupted:
        """The one-line account of a Ctrl-C: where training was, what is saved."""
        where = "before the first epoch"
        if self.epoch is not None:
            where = f"in epoch {self.epoch + 1} of {self.run.train.epochs}"
            if self.step is not None:
                where += f", after step {self.step[0]} of {self.step[1]}"
        if self.history:
            kept = (
                f"the last checkpoint is epoch {len(self.history)} ({self.state_path})"
            )
        elif self.fresh:
            kept = "no epoch finished, so nothing was written"
        else:
            kept = "nothing new was saved"
        return TrainingInterrupted(
            f"interrupted {where}; {kept}", resumable=bool(self.history)
        )

    def row(self, epoch: int, lr: float, step_metrics, eval_metrics) -> dict:
        """The epoch's metrics: train means (raising TrainingDiverged on a non-finite
        loss), then ``eval_metrics(split)`` for "val" (if held out) and "test"."""
        self._raise_lost_interrupt()
        row = {"epoch": epoch + 1, "lr": lr}
        kept = (
            "the last good checkpoint is kept"
            if self.history
            else "nothing was written (no epoch finished)"
        )
        row.update(epoch_means(step_metrics, epoch, kept=kept))
        for split in self.eval_splits:
            row.update({f"{split}/{k}": v for k, v in eval_metrics(split).items()})
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
        if not self.writer:
            self.saved = True
            return
        stage = self.fresh and not self.saved
        os.makedirs(self.out_dir, exist_ok=True)

        def path(name: str) -> str:
            if stage:
                return rundir.staged_path(self.out_dir, name)
            return os.path.join(self.out_dir, name)

        rundir.write_train_state(path(rundir.TRAIN_STATE), arrays, meta)
        write_model(path(rundir.MODEL))
        rundir.write_history(self.out_dir, self.history, path(rundir.HISTORY))
        if not self.saved:  # this process's config (on resume: its epochs)
            rundir.write_run_config(self.out_dir, self.run, path(rundir.CONFIG))
        if stage:  # the run's files, in together; a replaced run's results out
            from saecommon import plots

            rundir.commit_files(
                self.out_dir,
                {name: path(name) for name in rundir.RUN_FILES},
                stale=(rundir.SUMMARY, *plots.RUN_PICTURES),
            )
        self.saved = True
        self.bar.update(row)

    def close(self) -> None:
        self.bar.close()

    def finish(self, encode: Callable[[np.ndarray], Encoded], state_dict) -> dict:
        """The run's summary, written with its pictures (by the writer only: the
        others return {})."""
        if not self.writer:
            return {}
        return finish_run(
            self.out_dir,
            self.run,
            self.history,
            time.perf_counter() - self.start,
            self.data,
            encode,
            state_dict,
            self.progress,
        )
