"""Training a dictionary SAE with jaxsae: the backend that saecommon/dict_run.py's loop
drives (``train``), and ``train_array`` for in-memory data (benchmarks, tests).

The step is jaxsae.dictionary's ``make_train_step``, jitted once; batches arrive on
the device ahead of the step (saecommon.activations.Prefetcher with ``put``)."""

from __future__ import annotations

import sys
import time
from functools import partial
from types import ModuleType

import jax
import jax.numpy as jnp
import numpy as np

from jaxsae.dictionary import (
    Coefficients,
    DictState,
    forward,
    init_state,
    make_train_step,
    params_from_state_dict,
    to_state_dict,
)
from jaxsae.training import _restore_state, _state_arrays
from saecommon import dict_run
from saecommon.dictionary import array_batch, array_start
from saecommon.dictionary_config import DictConfig, DictTrainConfig
from saecommon.schedules import coefficients

FRAMEWORK = "jax"

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


def put(x: np.ndarray) -> jax.Array:
    return jax.device_put(x)


def host_metrics(metrics: dict) -> dict[str, float]:
    return {k: float(v) for k, v in jax.device_get(metrics).items()}


def step_count(state: DictState) -> int:
    return int(state.step)


def dead_fraction(state: DictState, train: DictTrainConfig) -> float:
    """The share of latents that have not fired in the last dead_tokens tokens."""
    return float(jnp.mean(state.since_fired >= train.dead_tokens))


def state_dict(state: DictState, config: DictConfig) -> dict[str, np.ndarray]:
    return to_state_dict(
        jax.device_get(state.params), np.asarray(state.threshold), config
    )


def train_state_arrays(state: DictState) -> dict[str, np.ndarray]:
    return _state_arrays(state)


def restore_train_state(arrays, config: DictConfig, train: DictTrainConfig):
    from saecommon.dictionary import init_state_dict

    template = init_state(
        init_state_dict(config, train.replace(b_dec_init="zeros")), config, train
    )
    return _restore_state(template, arrays, "train state")


@partial(jax.jit, static_argnums=2)
def _forward(params, threshold, config: DictConfig, x):
    return forward(params, x, config, threshold)


def forward_numpy(state_dict, config: DictConfig, x: np.ndarray):
    """(z, x_hat) as numpy for x [tokens, d_in], at inference."""
    params, threshold = params_from_state_dict(state_dict, config)
    z, x_hat = _forward(params, threshold, config, jnp.asarray(x))
    return np.asarray(z), np.asarray(x_hat)


def backend() -> ModuleType:
    """What saecommon/dict_run.py's loop calls: this module (JAX places arrays on its
    default device; saecommon.frameworks sets it)."""
    return sys.modules[__name__]


def train(run: dict_run.DictRun, out_dir: str, **options) -> dict:
    """Train ``run`` into ``out_dir`` (saecommon.dict_run.train_dictionary)."""
    return dict_run.train_dictionary(backend(), run, out_dir, **options)


def train_array(
    config: DictConfig,
    train: DictTrainConfig,
    data: np.ndarray,
    *,
    steps: int,
    warmup_steps_untimed: int = 1,
    state_dict_init: dict | None = None,
) -> tuple[dict[str, np.ndarray], float]:
    """Train on ``data`` [tokens, d_in] (batches in a seeded numpy order, wrapping
    around) for ``steps`` steps; returns (state dict, seconds of the timed steps: all
    but the first ``warmup_steps_untimed``, which include compilation)."""
    order, sd = array_start(config, train, data, state_dict_init)
    state = init_state(sd, config, train)
    step_fn = make_train_step(config, train)
    start = None
    for s in range(steps):
        if s == warmup_steps_untimed:
            jax.block_until_ready(state)
            start = time.perf_counter()
        x = jnp.asarray(array_batch(data, order, s, train.batch_size))
        state, _ = step_fn(state, x, Coefficients(*coefficients(config, train, s)))
    jax.block_until_ready(state)
    seconds = time.perf_counter() - start if start is not None else 0.0
    return state_dict(state, config), seconds
