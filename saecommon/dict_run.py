"""Training a dictionary SAE on an activation cache: the framework-neutral loop both
packages run (``jaxsae.dictionary_training.train``, ``torchsae.dictionary_training.
train`` pass themselves in as the ``backend``).

A run directory (saecommon/rundir.py's names) holds ``config.json`` (the DictRun),
``model.safetensors`` (the portable checkpoint, saved every ``checkpoint_every`` steps
and at the end), ``train_state.safetensors`` (what ``resume`` needs: parameters, Adam's
moments, the batch threshold, the dead-latent counters, the step), ``metrics.jsonl``
(one row per ``log_every`` steps) and, at the end, ``summary.json`` with the held-out
evaluation. Ctrl-C saves where training stopped; a resumed run sees exactly the
batches and learning rates an uninterrupted one would (the cache's stream from the
saved step, the schedules as functions of the step), so it ends at the same weights.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import threading
import time
from types import ModuleType
from typing import Any

import numpy as np

from saecommon import rundir
from saecommon.activations import ActivationCache, Prefetcher
from saecommon.checkpoint import CheckpointError, atomic_write
from saecommon.config import ConfigError, check_int, from_fields
from saecommon.dictionary import init_state_dict, input_scale, save_dictionary
from saecommon.dictionary_config import DictConfig, DictTrainConfig
from saecommon.metrics import ReconStats
from saecommon.progress import terminal_bar
from saecommon.schedules import coefficients


class DictTrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training: the run was saved at ``step``."""

    def __init__(self, out_dir: str, step: int):
        super().__init__(f"stopped at step {step}; saved in {out_dir}")
        self.out_dir, self.step = out_dir, step


class DictTrainingDiverged(RuntimeError):
    """The loss became NaN or inf."""


@dataclasses.dataclass(frozen=True)
class DictRun:
    """What a dictionary run is: model, training, data and its bookkeeping."""

    model: DictConfig
    train: DictTrainConfig
    cache: str
    """The activation cache's folder (scripts/cache_activations.py)."""
    eval_tokens: int = 4096
    """The cache's last tokens, held out of training for the evaluation."""
    log_every: int = 50
    """Steps per row of metrics.jsonl (each row: the means over those steps)."""
    checkpoint_every: int = 500
    """Steps between saves of the model and the train state (and at the end)."""

    def __post_init__(self):
        self.train.check_model(self.model)
        check_int("eval_tokens", self.eval_tokens, minimum=0)
        check_int("log_every", self.log_every, minimum=1)
        check_int("checkpoint_every", self.checkpoint_every, minimum=1)

    def to_json(self) -> str:
        return json.dumps(
            {
                "kind": "dictionary-run",
                "model": self.model.to_dict(),
                "train": self.train.to_dict(),
                "cache": self.cache,
                "eval_tokens": self.eval_tokens,
                "log_every": self.log_every,
                "checkpoint_every": self.checkpoint_every,
            },
            indent=1,
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> DictRun:
        data = json.loads(text)
        if data.pop("kind", None) != "dictionary-run":
            raise ConfigError("not a dictionary run's config (kind != dictionary-run)")
        data["model"] = DictConfig.from_dict(data["model"])
        data["train"] = DictTrainConfig.from_dict(data["train"])
        return from_fields(cls, data, "dictionary run")

    def same_but_steps(self, other: DictRun) -> bool:
        """Whether ``other`` continues this run (only the step count may change; the
        input scale is measured at the start, so it is the saved one's)."""

        def strip(run: DictRun) -> DictRun:
            return dataclasses.replace(
                run,
                model=run.model.replace(input_scale=1.0),
                train=run.train.replace(steps=1, warmup_steps=0, decay_steps=0),
            )

        same_schedule = (other.train.warmup_steps, other.train.decay_steps) == (
            self.train.warmup_steps,
            self.train.decay_steps,
        )
        return strip(self) == strip(other) and same_schedule


def open_cache(run: DictRun) -> ActivationCache:
    """The run's cache, checked against the model's width."""
    cache = ActivationCache(run.cache, eval_tokens=run.eval_tokens)
    cache.check_width(run.model.d_in)
    return cache


def start(run: DictRun, cache: ActivationCache) -> tuple[DictConfig, dict]:
    """(model config with its measured input scale, initial numpy state dict)."""
    n = min(run.train.init_sample_tokens, cache.n_train)
    sample = cache.sample(n, run.train.seed)
    scale = input_scale(sample, run.train.input_normalization)
    model = run.model.replace(input_scale=scale)
    return model, init_state_dict(model, run.train, sample)


def train_dictionary(
    backend: ModuleType,
    run: DictRun,
    out_dir: str,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Train (or continue) ``run`` in ``out_dir`` with ``backend`` (jaxsae's or
    torchsae's dictionary_training module). Returns the summary.

    A backend over several devices or processes (data parallel) says so with
    ``check_batch(batch_size)`` (a ValueError, checked first, unless the batch
    splits evenly), ``writer`` (False but in process 0: it writes nothing),
    ``batch_rows(batch_size)`` (the rows of each global batch this process reads,
    or None for all) and ``agree(flag)`` (whether any process raised ``flag``: a
    Ctrl-C stops them all at the same step)."""
    out_dir = os.fspath(out_dir)
    getattr(backend, "check_batch", lambda size: None)(run.train.batch_size)
    writer = getattr(backend, "writer", True)
    progress = progress and writer
    # A run that --overwrite replaces stays whole until the new one's first save.
    rundir.check_out_dir(out_dir, resume=resume, overwrite=overwrite)
    cache = open_cache(run)
    history: list[dict] = []
    if resume:
        arrays, meta = rundir.read_train_state(
            os.path.join(out_dir, rundir.TRAIN_STATE)
        )
        saved = DictRun.from_json(meta["run"])
        if meta.get("framework") != backend.FRAMEWORK:
            raise CheckpointError(
                f"{out_dir} was trained with {meta.get('framework')}; resume it with "
                "that framework"
            )
        if not saved.same_but_steps(run):
            raise CheckpointError(
                f"{out_dir} holds a run with another config; only --steps may change "
                "on resume"
            )
        first = int(meta["step"])
        if run.train.steps < first:
            raise CheckpointError(
                f"{out_dir} has done {first} steps; give --steps {first} or more"
            )
        model = saved.model
        run = dataclasses.replace(run, model=model)
        state = backend.restore_train_state(arrays, model, run.train)
        history = rundir.read_history(out_dir)
    else:
        model, sd = start(run, cache)
        run = dataclasses.replace(run, model=model)
        state = backend.init_state(sd, model, run.train)
        first = 0
    step_fn = backend.make_train_step(model, run.train)
    bar = (
        terminal_bar(total=run.train.steps, initial=first, unit="step")
        if progress
        else None
    )
    sums: dict[str, float] = {}
    count = 0
    tick = time.perf_counter()
    batch_rows = getattr(backend, "batch_rows", lambda size: None)
    agree = getattr(backend, "agree", bool)
    batches = Prefetcher(
        cache.batches(
            run.train.batch_size,
            run.train.seed,
            start_step=first,
            rows=batch_rows(run.train.batch_size),
        ),
        put=backend.put,
    )
    stop = _StopRequest()
    try:
        with batches, stop:
            for s in range(first, run.train.steps):
                x = next(batches)
                coefs = backend.Coefficients(*coefficients(model, run.train, s))
                state, metrics = step_fn(state, x, coefs)
                values = backend.host_metrics(metrics)
                if not math.isfinite(values["loss"]):
                    raise DictTrainingDiverged(
                        f"the loss is {values['loss']} at step {s + 1}; lower the "
                        "learning rate or clip gradients (--grad-clip)"
                    )
                for k, v in values.items():
                    sums[k] = sums.get(k, 0.0) + v
                count += 1
                if bar is not None:
                    bar.update(1)
                done = s + 1
                if done % run.log_every == 0 or done == run.train.steps:
                    now = time.perf_counter()
                    row = {k: v / count for k, v in sums.items()}
                    row.update(
                        step=done,
                        tokens=done * run.train.batch_size,
                        lr=coefs.lr,
                        tokens_per_s=count * run.train.batch_size / (now - tick),
                    )
                    history.append(row)
                    if bar is not None:
                        bar.set_postfix(
                            fvu=f"{row['fvu']:.3f}",
                            l0=f"{row['l0']:.1f}",
                            dead=f"{row['dead_fraction']:.2f}",
                        )
                    elif progress:
                        _line(row, run.train.steps)
                    sums, count, tick = {}, 0, now
                if done % run.checkpoint_every == 0 and done < run.train.steps:
                    _save(backend, state, run, out_dir, done, history, writer)
                if agree(stop.requested):
                    _save(backend, state, run, out_dir, done, history, writer)
                    raise DictTrainingInterrupted(out_dir, done)
    finally:
        if bar is not None:
            bar.close()
    _save(backend, state, run, out_dir, run.train.steps, history, writer)
    summary = evaluate_on(backend, backend.state_dict(state, model), model, cache)
    summary["train_dead_fraction"] = backend.dead_fraction(state, run.train)
    summary.update(
        framework=backend.FRAMEWORK,
        steps=run.train.steps,
        tokens=run.train.steps * run.train.batch_size,
    )
    if writer:
        rundir.write_summary(out_dir, summary)
    return summary


def evaluate_on(backend, state_dict, model: DictConfig, cache) -> dict:
    """Held-out metrics (:func:`evaluate_batches`) on the cache's held-out tokens."""
    if not cache.n_eval:
        return {}
    return evaluate_batches(backend, state_dict, model, cache.eval_batches(4096))


def evaluate_batches(backend, state_dict, model: DictConfig, batches) -> dict:
    """ReconStats, L0 and never-active share over ``batches`` (numpy [n, d_in])."""
    stats = None
    active = np.zeros(model.d_sae, bool)
    nonzero = 0
    n = 0
    for x in batches:
        z, x_hat = backend.forward_numpy(state_dict, model, x)
        part = ReconStats.of(x, x_hat)
        stats = part if stats is None else stats.merge(part)
        active |= (z != 0).any(axis=0)
        nonzero += int(np.count_nonzero(z))
        n += len(x)
    if stats is None:
        return {}
    return {
        **stats.as_dict(),
        "l0": nonzero / n,
        "eval_dead_fraction": float(1 - active.mean()),
        "eval_tokens": n,
    }


def _save(
    backend, state, run: DictRun, out_dir: str, step: int, history, writer: bool
) -> None:
    """Stage the train state, the model and the history, then move them in together
    (the ``writer`` does; every process fetches the state, which may gather it)."""
    model_sd = backend.state_dict(state, run.model)
    arrays = backend.train_state_arrays(state)
    if not writer:
        return
    os.makedirs(out_dir, exist_ok=True)
    names = {
        rundir.TRAIN_STATE: rundir.staged_path(out_dir, rundir.TRAIN_STATE),
        rundir.MODEL: rundir.staged_path(out_dir, rundir.MODEL),
        rundir.HISTORY: rundir.staged_path(out_dir, rundir.HISTORY),
        rundir.CONFIG: rundir.staged_path(out_dir, rundir.CONFIG),
    }
    meta = {"framework": backend.FRAMEWORK, "step": step, "run": run.to_json()}
    rundir.write_train_state(names[rundir.TRAIN_STATE], arrays, meta)
    save_dictionary(names[rundir.MODEL], model_sd, run.model)
    rundir.write_history(out_dir, history, names[rundir.HISTORY])
    atomic_write(names[rundir.CONFIG], run.to_json().encode())
    # The summary is the finished run's: any earlier one goes (it is rewritten after
    # the last save).
    rundir.commit_files(out_dir, names, stale=(rundir.SUMMARY,))


class _StopRequest:
    """While active, the first Ctrl-C (SIGINT) asks the loop to stop after the step
    in flight, so the saved state is a whole step's (torch updates in place: a step
    cut short would leave half-updated weights); a second Ctrl-C stops at once. Off
    the main thread (where signals cannot be caught) it does nothing."""

    requested = False

    def __enter__(self):
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def read_run(out_dir: str) -> DictRun:
    with open(os.path.join(out_dir, rundir.CONFIG)) as f:
        return DictRun.from_json(f.read())


def _line(row: dict, total: int) -> None:
    print(
        f"step {row['step']}/{total}: loss {row['loss']:.4g} fvu {row['fvu']:.4f} "
        f"l0 {row['l0']:.1f} dead {row['dead_fraction']:.3f} "
        f"({row['tokens_per_s']:.0f} tokens/s)",
        flush=True,
    )
