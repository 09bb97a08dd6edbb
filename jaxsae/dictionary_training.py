"""Training a dictionary SAE with jaxsae: the backend that saecommon/dict_run.py's loop
drives (``train``), and ``train_array`` for in-memory data (benchmarks, tests).

The step is jaxsae.dictionary's ``make_train_step``, jitted once; batches arrive on
the device ahead of the step (saecommon.activations.Prefetcher with ``put``)."""

from __future__ import annotations

import sys
import time
from functools import partial
from types import ModuleType, SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxsae import distributed
from jaxsae.cpu_kernels import for_partitioner
from jaxsae.dictionary import (
    Coefficients,
    DictState,
    forward,
    init_state,
    make_train_step,
    params_from_state_dict,
    to_state_dict,
)
from jaxsae.mesh_select import latents_sharded
from jaxsae.training import (
    _restore_state,
    _state_arrays,
    check_batch_divides,
    make_mesh,
)
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


def backend(mesh: tuple[int, int] | None = None) -> ModuleType | SimpleNamespace:
    """What saecommon/dict_run.py's loop calls: this module (JAX places arrays on its
    default device; saecommon.frameworks sets it), or with ``mesh`` = (data, model)
    its functions over a ``Mesh`` of data * model devices (``mesh_backend``). Started
    as one of several processes (jaxsae.distributed), the default mesh is data
    parallel over every device of every process."""
    mesh = distributed.default_mesh(mesh)
    return sys.modules[__name__] if mesh is None else mesh_backend(mesh)


# ------------------------------------------------------------------- several devices
#
# The layouts are sharding annotations: the batch is split over the mesh's "data" axis
# and the latents (W_enc's columns, b_enc, W_dec's rows, a per-latent threshold, the
# dead-latent counters and their Adam moments) over its "model" axis; everything else
# is replicated. jax.jit compiles the one train step for those layouts (GSPMD), so the
# step computes the same global function as on one device. The selections over the
# global latent dimension and the sparse decoder's sums are shard_map
# (jaxsae.mesh_select: local top-k, one small all-gather; one all-reduce of the
# decoder's partial sums), since left to GSPMD they would gather the whole
# [tokens, d_sae] activations. Results differ from one device only by the order of
# float32 reductions; every mask is the same.

_LATENT_AXIS = {"W_enc": 1, "b_enc": 0, "W_dec": 0, "threshold": 0, "log_threshold": 0}


def _partition(path, leaf) -> PartitionSpec:
    """A state leaf's layout: latent-indexed arrays split on "model", the rest
    replicated (found by the parameter's name in the leaf's path)."""
    names = [getattr(key, "key", getattr(key, "name", None)) for key in path]
    if np.ndim(leaf) == 0:
        return PartitionSpec()
    if "since_fired" in names:
        return PartitionSpec("model")
    for name in reversed(names):
        if name in _LATENT_AXIS:
            spec = [None] * np.ndim(leaf)
            spec[_LATENT_AXIS[name]] = "model"
            return PartitionSpec(*spec)
    return PartitionSpec()


def state_sharding(state: DictState, mesh: Mesh):
    """The NamedSharding of every leaf of ``state`` on ``mesh``."""
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: NamedSharding(mesh, _partition(path, leaf)), state
    )


def mesh_backend(shape: tuple[int, int]) -> SimpleNamespace:
    """This module's backend over a (data, model) mesh: batches sharded on "data",
    the state placed by ``state_sharding`` and kept there by the step's
    out_shardings. The batch must divide by the data axis (``check_batch``).

    The mesh may span several processes (jaxsae.distributed): each then reads its
    rows of every batch (``batch_rows``), fetches the state whole to save it
    (``state_dict``, ``train_state_arrays``: collectives), and process 0 writes."""
    here = sys.modules[__name__]
    mesh = make_mesh(shape)
    batch = NamedSharding(mesh, PartitionSpec("data", None))
    replicated = NamedSharding(mesh, PartitionSpec())
    sizes = {}  # the batch size, from check_batch

    def check_batch(size: int) -> None:
        check_batch_divides(size, shape)
        sizes["batch"] = size

    def batch_rows(size: int):
        check_batch(size)
        return distributed.batch_rows(batch, size)

    def put(x: np.ndarray) -> jax.Array:  # this process's rows of a checked batch
        return distributed.from_rows(x, batch, sizes.get("batch", len(x)))

    def placed(state: DictState) -> DictState:
        return distributed.to_mesh(state, state_sharding(state, mesh))

    def sharded_step(config: DictConfig, train: DictTrainConfig):
        check_batch(train.batch_size)
        step = make_train_step(config, train)
        jitted = {}  # built on the first call, from the state's own structure

        def step_on_the_mesh(state, x, coefficients):
            if not jitted:
                layout = (state_sharding(state, mesh), replicated)
                jitted["step"] = jax.jit(
                    step.__wrapped__, donate_argnums=0, out_shardings=layout
                )
            # Traced (on the first call) for XLA's partitioner, and with TopK,
            # BatchTopK and AuxK selecting shard by shard (jaxsae.mesh_select).
            with for_partitioner(), latents_sharded(mesh):
                return jitted["step"](state, x, coefficients)

        return step_on_the_mesh

    same = (
        "FRAMEWORK",
        "Coefficients",
        "host_metrics",
        "step_count",
        "dead_fraction",
        "forward_numpy",
    )
    return SimpleNamespace(
        **{name: getattr(here, name) for name in same},
        mesh=mesh,
        writer=distributed.is_writer(),
        agree=distributed.any_process,
        check_batch=check_batch,
        batch_rows=batch_rows,
        put=put,
        state_dict=lambda state, config: state_dict(distributed.fetch(state), config),
        train_state_arrays=lambda state: _state_arrays(distributed.fetch(state)),
        init_state=lambda *a: placed(init_state(*a)),
        restore_train_state=lambda *a: placed(restore_train_state(*a)),
        make_train_step=sharded_step,
    )


def train(
    run: dict_run.DictRun,
    out_dir: str,
    mesh: tuple[int, int] | None = None,
    **options,
) -> dict:
    """Train ``run`` into ``out_dir`` (saecommon.dict_run.train_dictionary); with
    ``mesh`` = (data, model), on that many devices (``mesh_backend``)."""
    return dict_run.train_dictionary(backend(mesh), run, out_dir, **options)


def train_array(
    config: DictConfig,
    train: DictTrainConfig,
    data: np.ndarray,
    *,
    steps: int,
    warmup_steps_untimed: int = 1,
    state_dict_init: dict | None = None,
    mesh: tuple[int, int] | None = None,
) -> tuple[dict[str, np.ndarray], float]:
    """Train on ``data`` [tokens, d_in] (batches in a seeded numpy order, wrapping
    around) for ``steps`` steps, on one device or a (data, model) ``mesh``; returns
    (state dict, seconds of the timed steps: all but the first
    ``warmup_steps_untimed``, which include compilation)."""
    chosen = backend(mesh)
    order, sd = array_start(config, train, data, state_dict_init)
    state = chosen.init_state(sd, config, train)
    step_fn = chosen.make_train_step(config, train)
    start = None
    for s in range(steps):
        if s == warmup_steps_untimed:
            jax.block_until_ready(state)
            start = time.perf_counter()
        x = chosen.put(array_batch(data, order, s, train.batch_size))
        state, _ = step_fn(state, x, Coefficients(*coefficients(config, train, s)))
    jax.block_until_ready(state)
    seconds = time.perf_counter() - start if start is not None else 0.0
    return state_dict(state, config), seconds
