"""Training a dictionary SAE with torchsae: the backend that saecommon/dict_run.py's
loop drives (``train``), and ``train_array`` for in-memory data (benchmarks, tests).
Mirrors jaxsae/dictionary_training.py name for name."""

from __future__ import annotations

import functools
import sys
import time
from types import SimpleNamespace

import numpy as np
import torch

from saecommon import dict_run
from saecommon.checkpoint import CheckpointError
from saecommon.dictionary import array_batch, array_start
from saecommon.dictionary_config import DictConfig, DictTrainConfig
from saecommon.schedules import coefficients
from torchsae import distributed
from torchsae.dictionary import (
    Coefficients,
    DictState,
    forward,
    init_state,
    make_train_step,
    params_from_state_dict,
    to_state_dict,
)

FRAMEWORK = "torch"

__all__ = [
    "Coefficients",
    "FRAMEWORK",
    "backend",
    "forward_numpy",
    "init_state",
    "make_train_step",
    "train",
    "train_array",
]


def put(x: np.ndarray, device="cpu") -> torch.Tensor:
    return torch.from_numpy(x).to(device)


def host_metrics(metrics: dict) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()}  # one sync per step


def step_count(state: DictState) -> int:
    return int(state.step)


def dead_fraction(state: DictState, train: DictTrainConfig) -> float:
    """The share of latents that have not fired in the last dead_tokens tokens."""
    return float((state.since_fired >= train.dead_tokens).double().mean())


def state_dict(state: DictState, config: DictConfig) -> dict[str, np.ndarray]:
    return to_state_dict(state.params, state.threshold, config)


def train_state_arrays(state: DictState) -> dict[str, np.ndarray]:
    arrays = {
        f"params.{k}": v.detach().cpu().numpy().copy() for k, v in state.params.items()
    }
    names = list(state.params)
    for index, slots in state.optimizer.state_dict()["state"].items():
        for slot, value in slots.items():
            arrays[f"adam.{names[index]}.{slot}"] = value.detach().cpu().numpy().copy()
    arrays["threshold"] = state.threshold.cpu().numpy().copy()
    arrays["since_fired"] = state.since_fired.cpu().numpy().copy()
    arrays["step"] = np.asarray(state.step, np.int64)
    return arrays


def restore_train_state(
    arrays, config: DictConfig, train: DictTrainConfig, device="cpu"
):
    from saecommon.dictionary import init_state_dict

    state = init_state(
        init_state_dict(config, train.replace(b_dec_init="zeros")),
        config,
        train,
        device,
    )
    names = list(state.params)
    expected = {f"params.{k}" for k in names}
    if not expected <= set(arrays):
        raise CheckpointError("the train state does not hold this model's parameters")
    with torch.no_grad():
        for k, p in state.params.items():
            p.copy_(torch.from_numpy(arrays[f"params.{k}"].reshape(p.shape)))
    opt = state.optimizer.state_dict()
    opt["state"] = {}
    for i, k in enumerate(names):
        slots = {
            slot.split(".")[-1]: torch.from_numpy(v.copy()).to(device)
            for slot, v in arrays.items()
            if slot.startswith(f"adam.{k}.")
        }
        if slots:
            slots["step"] = slots["step"].reshape(()).cpu()
            opt["state"][i] = slots
    state.optimizer.load_state_dict(opt)
    state.threshold = (
        torch.from_numpy(arrays["threshold"].copy()).reshape(()).to(device)
    )
    state.since_fired = torch.from_numpy(arrays["since_fired"].copy()).to(device)
    state.step = int(arrays["step"].reshape(()))
    return state


def forward_numpy(state_dict, config: DictConfig, x: np.ndarray, device="cpu"):
    """(z, x_hat) as numpy for x [tokens, d_in], at inference."""
    params, threshold = params_from_state_dict(state_dict, config, device)
    with torch.no_grad():
        batch = torch.from_numpy(np.asarray(x)).to(device)
        z, x_hat = forward(params, batch, config, threshold)
    return z.cpu().numpy(), x_hat.cpu().numpy()


def backend(device="cpu") -> SimpleNamespace:
    """This module's functions bound to ``device``: what saecommon/dict_run.py's loop
    calls. In a process group of several processes (torchrun) the backend is one
    process's part of a data parallel run (``split_backend``)."""
    here = sys.modules[__name__]
    names = (
        "FRAMEWORK",
        "backend",
        "Coefficients",
        "make_train_step",
        "host_metrics",
        "step_count",
        "dead_fraction",
        "state_dict",
        "train_state_arrays",
    )
    bound = {name: getattr(here, name) for name in names}
    for name in ("put", "init_state", "restore_train_state", "forward_numpy"):
        bound[name] = functools.partial(getattr(here, name), device=device)
    split = distributed.world()
    if split.size > 1:
        bound.update(split_backend(split))
    return SimpleNamespace(**bound)


def split_backend(split: distributed.Split) -> dict:
    """What changes for process ``split.rank`` of ``split.size``: it reads its rows of
    each global batch, trains under DistributedDataParallel with the batch rules on
    the global batch (make_train_step's ``split``), stops when any process is asked
    to, and writes nothing unless it is process 0."""

    def check_batch(size: int) -> None:
        distributed.check_batch_divides(size, split.size)

    def batch_rows(size: int) -> tuple[int, int]:
        rows = distributed.own_rows(size, split)
        return rows.start, rows.stop

    def split_step(config: DictConfig, train: DictTrainConfig):
        check_batch(train.batch_size)
        return make_train_step(config, train, split)

    return {
        "check_batch": check_batch,
        "batch_rows": batch_rows,
        "make_train_step": split_step,
        "agree": distributed.any_process,
        "writer": split.rank == 0,
    }


def train(run: dict_run.DictRun, out_dir: str, device="cpu", **options) -> dict:
    """Train ``run`` into ``out_dir`` on ``device``
    (saecommon.dict_run.train_dictionary); one process's part of a data parallel
    run in a process group of several (torchrun)."""
    return dict_run.train_dictionary(backend(device), run, out_dir, **options)


def train_array(
    config: DictConfig,
    train: DictTrainConfig,
    data: np.ndarray,
    *,
    steps: int,
    warmup_steps_untimed: int = 1,
    state_dict_init: dict | None = None,
    device="cpu",
) -> tuple[dict[str, np.ndarray], float]:
    """Train on ``data`` [tokens, d_in] (batches in a seeded numpy order, wrapping
    around) for ``steps`` steps on ``device``; returns (state dict, seconds of the
    timed steps: all but the first ``warmup_steps_untimed``)."""
    order, sd = array_start(config, train, data, state_dict_init)
    state = init_state(sd, config, train, device)
    step_fn = make_train_step(config, train)
    start = None
    for s in range(steps):
        if s == warmup_steps_untimed:
            _sync(device)
            start = time.perf_counter()
        x = torch.from_numpy(array_batch(data, order, s, train.batch_size)).to(device)
        state, _ = step_fn(state, x, Coefficients(*coefficients(config, train, s)))
    _sync(device)
    seconds = time.perf_counter() - start if start is not None else 0.0
    return state_dict(state, config), seconds


def _sync(device) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
