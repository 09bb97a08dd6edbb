"""Jitted training: a pure ``train_step``, epochs as ``lax.scan`` over device-resident
data, evaluation as a scan, checkpoints every epoch, ``resume`` to continue.

Randomness: ``key = PRNGKey(seed)`` splits into an init key and a training key; epoch e
uses ``fold_in(train_key, e)`` for its shuffle and its per-step noise keys, so a resumed
run draws exactly what an uninterrupted one would. The short last batch of an epoch is
dropped (static shapes); each epoch reshuffles, so every sample is seen over time.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Collection, Mapping
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxsae import distributed
from jaxsae.checkpoint import from_state_dict, save_checkpoint, to_state_dict
from jaxsae.cpu_kernels import default_platform, for_partitioner
from jaxsae.evaluation import encode
from jaxsae.losses import loss_terms
from jaxsae.models import Autoencoder
from saecommon import rundir
from saecommon.checkpoint import CheckpointError, check_frozen
from saecommon.config import SAEConfig
from saecommon.data import PreparedData, prepare_data
from saecommon.metrics import CodeStats
from saecommon.recorder import RunRecorder, check_batch_size, check_batch_splits
from saecommon.schedules import epoch_order
from saecommon.train_config import RunConfig, TrainConfig

FRAMEWORK = "jax"


class TrainState(NamedTuple):
    params: Any
    opt_state: Any
    step: jax.Array  # int32 scalar: updates done


def make_optimizer(
    tcfg: TrainConfig, steps_per_epoch: int, frozen: Collection[str] = ()
) -> optax.GradientTransformation:
    """Adam / AdamW / SGD with momentum. The learning rate lives in the optimizer state
    (``inject_hyperparams``) so reduce-on-plateau can change it between epochs.

    ``frozen`` names layers ("encoder.0", as in the checkpoint) that must not move:
    ``optax.multi_transform`` sends them to ``set_to_zero``, so they get no update, no
    weight decay and no optimizer state (the optimizer's moments exist only for the
    trained layers)."""
    if tcfg.schedule == "cosine":
        lr = optax.cosine_decay_schedule(
            tcfg.learning_rate, tcfg.epochs * steps_per_epoch
        )
    else:
        lr = tcfg.learning_rate

    def build(learning_rate):
        if tcfg.optimizer == "adamw":
            return optax.adamw(learning_rate, weight_decay=tcfg.weight_decay)
        if tcfg.optimizer == "sgd":
            return optax.sgd(learning_rate, momentum=tcfg.momentum)
        return optax.adam(learning_rate)

    def build_partly_frozen(learning_rate):
        transforms = {"train": build(learning_rate), "frozen": optax.set_to_zero()}
        return optax.multi_transform(transforms, partial(_frozen_labels, frozen))

    return optax.inject_hyperparams(build_partly_frozen if frozen else build)(
        learning_rate=lr
    )


def _frozen_labels(frozen: Collection[str], params) -> dict:
    """ "frozen" or "train" for every leaf; top-level names encoder_0 <-> encoder.0."""
    labels = {}
    for name, layer in params.items():
        label = "frozen" if _layer_name(name) in frozen else "train"
        labels[name] = jax.tree.map(lambda _, label=label: label, layer)
    return labels


def _layer_name(flax_name: str) -> str:
    return flax_name.replace("_", ".")


def corrupt(x: jax.Array, key: jax.Array, tcfg: TrainConfig, pixel_range=(0.0, 1.0)):
    """Denoising input noise; ``pixel_range`` is where pixel values 0 and 1 sit after
    preprocessing (Gaussian noise is clipped to it, masking sets pixels to its low end)."""
    lo, hi = pixel_range
    if tcfg.noise == "gaussian":
        return jnp.clip(
            x + tcfg.noise_std * jax.random.normal(key, x.shape, x.dtype), lo, hi
        )
    if tcfg.noise == "masking":
        keep = jax.random.uniform(key, x.shape) >= tcfg.mask_fraction
        return jnp.where(keep, x, lo)
    return x


def _forward(model: Autoencoder, params, inputs: jax.Array, precision: str):
    """``model``'s training forward pass at ``precision`` (TrainConfig.precision).

    bfloat16 is mixed precision: the float32 master ``params`` and ``inputs`` are cast
    to bfloat16, every op of the model (sparsity masks included) runs in bfloat16, and
    the outputs come back as float32, so the loss and penalties are computed in
    float32. Autodiff through the casts hands the gradients back as float32, the
    params' dtype; the optimizer never sees bfloat16."""
    if precision == "float32":
        return model.apply({"params": params}, inputs, train=True)
    low, high = jnp.dtype(precision), inputs.dtype  # high: float32 in training
    params, inputs = jax.tree.map(lambda a: a.astype(low), (params, inputs))
    out = model.apply({"params": params}, inputs, train=True)
    return out._replace(  # the mask stays bool
        reconstruction=out.reconstruction.astype(high),
        logits=out.logits.astype(high),
        code=out.code.astype(high),
        hiddens=tuple(h.astype(high) for h in out.hiddens),
    )


def make_train_step(
    config: SAEConfig,
    tcfg: TrainConfig,
    optimizer: optax.GradientTransformation,
    pixel_range=(0.0, 1.0),
) -> Callable:
    """``train_step(state, batch [batch, input], key) -> (state, metrics)``, pure.

    The forward pass runs at ``tcfg.precision`` (``_forward``); the loss, gradients,
    parameters and optimizer state are float32 either way, and so is evaluation
    (``make_eval_metrics``)."""
    model = Autoencoder(config)

    def train_step(state: TrainState, batch: jax.Array, key: jax.Array):
        inputs = corrupt(batch, key, tcfg, pixel_range)

        def objective(params):
            out = _forward(model, params, inputs, tcfg.precision)
            terms = loss_terms(out, batch, config)  # the target is the clean input
            return terms["loss"], (terms, out.code)

        (_, (terms, code)), grads = jax.value_and_grad(objective, has_aux=True)(
            state.params
        )
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {**terms, "l0": jnp.mean(jnp.sum(code != 0, axis=1))}
        return TrainState(params, opt_state, state.step + 1), metrics

    return train_step


def make_train_epoch(
    train_step: Callable,
    batch_size: int,
    shuffle: bool = True,
    step_callbacks: bool = False,
    batch_sharding: jax.sharding.Sharding | None = None,
) -> Callable:
    """``epoch(state, data [n, input], key, order=None, on_step=None) -> (state,
    per-step metrics [steps])``, jitted with the state donated: one shuffle (``order``
    [n] if given, else drawn from ``key``; or the data in order), then
    ``n // batch_size`` minibatches gathered on the device, as one ``lax.scan`` (no
    host round trip per step). With ``step_callbacks`` the scan calls
    ``on_step(done, steps)`` on the host after each step (``jax.debug.callback``:
    progress inside long epochs, at the cost of a host call per step). With
    ``batch_sharding`` each gathered minibatch is laid out so (split over a mesh's
    "data" axis: ``mesh_placement``)."""
    hook: dict[str, Callable | None] = {"on_step": None}

    def report(done, steps, _loss):
        if hook["on_step"] is not None:
            hook["on_step"](int(done), int(steps))

    def plan(data: jax.Array, key: jax.Array, order: jax.Array | None):
        steps = data.shape[0] // batch_size
        perm_key, noise_key = jax.random.split(key)
        if order is None:  # else numpy drew it (saecommon.schedules.epoch_order)
            n = data.shape[0]
            order = jax.random.permutation(perm_key, n) if shuffle else jnp.arange(n)
        order = order[: steps * batch_size].reshape(steps, batch_size)
        return order, jax.random.split(noise_key, steps)

    @partial(jax.jit, donate_argnums=0)
    def train_epoch(state: TrainState, data: jax.Array, key: jax.Array, order=None):
        indices, keys = plan(data, key, order)
        steps = indices.shape[0]

        def body(state, xs):
            batch, step_key, done = xs
            x = data[batch]
            if batch_sharding is not None:
                x = jax.lax.with_sharding_constraint(x, batch_sharding)
            state, metrics = train_step(state, x, step_key)
            if step_callbacks:  # the loss argument makes it wait for the step
                jax.debug.callback(report, done, steps, metrics["loss"])
            return state, metrics

        return jax.lax.scan(body, state, (indices, keys, jnp.arange(1, steps + 1)))

    def run_epoch(state, data, key, order=None, on_step=None):
        hook["on_step"] = on_step  # read by callbacks that may run after we return
        return train_epoch(state, data, key, order)

    return run_epoch


def make_eval_metrics(config: SAEConfig, batch_size: int) -> Callable:
    """``eval_metrics(params, data [n, input]) -> metrics``, the per-epoch metrics of
    a split, over every sample in evaluation mode (no lifetime top-k, no noise):
    recon, penalty and loss are means over samples (penalties per batch of
    ``batch_size``, weighted by its size); l0, dead_fraction and constant_fraction are
    ``saecommon.metrics.CodeStats``'s, from per-unit statistics reduced batch by batch
    on the device. The batches run as one ``lax.scan``."""
    model = Autoencoder(config)

    def batch_metrics(params, x):
        out = model.apply({"params": params}, x, train=False)
        code = out.code  # per unit: samples active, lowest value, highest value
        stats = (jnp.sum(code != 0, axis=0), code.min(axis=0), code.max(axis=0))
        return loss_terms(out, x, config), stats

    def no_samples(dtype, xp=jnp):  # the statistics of zero samples: merge's identity
        return (
            xp.zeros((config.code_dim,), xp.int32),
            xp.full((config.code_dim,), xp.inf, dtype),
            xp.full((config.code_dim,), -xp.inf, dtype),
        )

    def merge(a, b, xp=jnp):
        return a[0] + b[0], xp.minimum(a[1], b[1]), xp.maximum(a[2], b[2])

    # Everything on the device is jitted, the small merges after are numpy: op-by-op
    # JAX would compile each slice and merge on its first call (seconds on a GPU).
    @partial(jax.jit, static_argnums=2)
    def scan_batches(params, data, full):
        def body(stats, x):
            terms, batch_stats = batch_metrics(params, x)
            return merge(stats, batch_stats), terms

        batches = data[:full].reshape(-1, batch_size, data.shape[1])
        return jax.lax.scan(body, no_samples(data.dtype), batches)

    @partial(jax.jit, static_argnums=2)
    def remainder(params, data, full):  # one smaller batch: a second compiled shape
        return batch_metrics(params, data[full:])

    def eval_metrics(params, data) -> dict[str, float]:
        n = data.shape[0]
        full = n // batch_size * batch_size
        sums: dict[str, float] = {}
        stats = no_samples(data.dtype, np)
        if full:
            stats, terms = jax.device_get(scan_batches(params, data, full))
            sums = {k: float(np.sum(v)) * batch_size for k, v in terms.items()}
        if full < n:
            terms, batch_stats = jax.device_get(remainder(params, data, full))
            stats = merge(stats, batch_stats, np)
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v) * (n - full)
        metrics = {k: v / n for k, v in sums.items()}
        metrics.update(CodeStats(n, *stats).metrics())
        return metrics

    return eval_metrics


def init_params(config: SAEConfig, key: jax.Array):
    """Random initial parameters (torch's default init rule, see models.py). Jitted:
    run op by op, the conv models' init compiled ~170 small programs (20 s on a CPU);
    the values are the same."""

    @jax.jit
    def init(key):
        return Autoencoder(config).init(key, jnp.zeros((1, config.input_dim)))

    return init(key)["params"]


def init_state_dict(config: SAEConfig, seed: int) -> dict[str, np.ndarray]:
    """The portable initial weights ``train`` draws for ``config`` with ``seed``."""
    init_key, _ = jax.random.split(jax.random.key(seed))
    return to_state_dict(init_params(config, init_key))


def _state_arrays(state: TrainState) -> dict[str, np.ndarray]:
    leaves = jax.tree_util.tree_flatten_with_path(state)[0]
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}


def _restore_state(
    template: TrainState, arrays: dict[str, np.ndarray], path
) -> TrainState:
    leaves, treedef = jax.tree_util.tree_flatten_with_path(template)
    names = [jax.tree_util.keystr(p) for p, _ in leaves]
    if sorted(names) != sorted(arrays):
        raise CheckpointError(f"{path} does not hold this model's training state")
    restored = []
    for name, (_, leaf) in zip(names, leaves):
        value = arrays[name]
        if value.size != leaf.size:  # safetensors stores 0-d arrays as shape (1,)
            raise CheckpointError(
                f"{path}: {name} has shape {value.shape}, not {leaf.shape}"
            )
        restored.append(jnp.asarray(value.reshape(leaf.shape), dtype=leaf.dtype))
    return jax.tree_util.tree_unflatten(treedef, restored)


MESH_AXES = ("data", "model")


def make_mesh(shape: tuple[int, int]) -> Mesh:
    """A (data, model) ``Mesh`` over the first data * model devices (of every
    process: ``jax.devices()``, in process order)."""
    data, model = shape
    devices = jax.devices()
    if data < 1 or model < 1 or data * model > len(devices):
        raise ValueError(
            f"a {data}x{model} mesh needs {data * model} devices; JAX sees "
            f"{len(devices)} ({devices[0].platform})"
        )
    grid = np.asarray(devices[: data * model]).reshape(data, model)
    return Mesh(grid, MESH_AXES)


def check_batch_divides(batch_size: int, mesh: tuple[int, int]) -> None:
    """ValueError unless the batch splits evenly over the mesh's data axis."""
    check_batch_splits(
        batch_size,
        mesh[0],
        "devices of the mesh's data axis",
        "fewer devices (--devices, --mesh)",
    )


def mesh_placement(mesh: tuple[int, int] | None, batch_size: int):
    """(place, batch_sharding) for data-parallel training on a (devices, 1) mesh:
    ``place`` replicates an array tree over the mesh, ``batch_sharding`` splits a
    minibatch over its "data" axis; on one device (``mesh`` None) place puts it on
    the default device and there is no batch sharding. On a mesh the step is traced
    ``for_partitioner`` (no top-k barrier, no CPU kernels: XLA's partitioner
    splits neither)."""
    if mesh is None:
        return jax.device_put, None
    if mesh[1] != 1:
        raise ValueError(
            f"a {mesh[0]}x{mesh[1]} mesh: the classic autoencoders train data "
            "parallel only (DATAx1); latent sharding is for dictionary SAEs"
        )
    check_batch_divides(batch_size, mesh)
    grid = make_mesh(mesh)
    replicated = NamedSharding(grid, PartitionSpec())

    def place(tree):
        return distributed.to_mesh(tree, replicated)

    return place, NamedSharding(grid, PartitionSpec("data", None))


def train(
    run: RunConfig,
    out_dir: str | os.PathLike,
    *,
    resume: bool = False,
    data: PreparedData | None = None,
    progress: bool = True,
    init: Mapping[str, np.ndarray] | None = None,
    frozen: Collection[str] = (),
    overwrite: bool = False,
    mesh: tuple[int, int] | None = None,
) -> list[dict]:
    """Train ``run`` and write the run directory; returns the metrics history.

    With ``resume``, continue from ``out_dir``'s train state (only ``epochs`` may
    differ); the result equals an uninterrupted run with the same seed. ``init``, a
    portable state dict (``saecommon.checkpoint.initial_state_dict``), replaces the
    random initial weights: fine-tuning, e.g. untied after a tied run. ``frozen``
    layers ("encoder.0", ...) keep their initial weights (``make_optimizer``).
    ``mesh`` = (devices, 1): data parallel over that many devices (each minibatch
    split over them, parameters and optimizer state replicated, the step the same
    global function; see ``mesh_placement``). Started as one of several processes
    (jaxsae.distributed), the default mesh is every device of every process, and
    process 0 alone writes the run directory.

    A folder that holds a run is refused unless ``overwrite`` or ``resume``
    (``saecommon.rundir.check_out_dir``); Ctrl-C raises ``TrainingInterrupted``
    saying where it stopped and what is saved."""
    mcfg, tcfg = run.model, run.train
    check_frozen(frozen, mcfg)
    mesh = distributed.default_mesh(mesh)
    writer = distributed.is_writer()
    progress = progress and writer
    rundir.check_out_dir(out_dir, resume=resume, overwrite=overwrite)
    data = prepare_data(run) if data is None else data
    check_batch_size(tcfg, data)
    steps_per_epoch = len(data.train) // tcfg.batch_size
    optimizer = make_optimizer(tcfg, steps_per_epoch, frozen)
    train_step = make_train_step(mcfg, tcfg, optimizer, data.pixel_range)
    # Step progress inside epochs where they are long; on GPUs a host call per step
    # would cost more than the progress is worth.
    step_callbacks = progress and default_platform() == "cpu"
    place, batch_sharding = mesh_placement(mesh, tcfg.batch_size)
    train_epoch = make_train_epoch(
        train_step, tcfg.batch_size, tcfg.shuffle, step_callbacks, batch_sharding
    )
    eval_metrics = make_eval_metrics(mcfg, tcfg.eval_batch_size)

    init_key, train_key = jax.random.split(jax.random.key(tcfg.seed))
    if init is None:
        params = init_params(mcfg, init_key)
    else:
        params = from_state_dict(init, mcfg)
    state = TrainState(params, optimizer.init(params), jnp.zeros((), jnp.int32))
    recorder = RunRecorder(
        run, out_dir, FRAMEWORK, data, resume=resume, progress=progress, writer=writer
    )
    if recorder.resumed is not None:
        state = _restore_state(state, recorder.resumed[0], recorder.state_path)

    state = place(state)
    train_x = place(data.train)  # resident for the whole run
    eval_x = {split: place(getattr(data, split)) for split in recorder.eval_splits}
    # on a mesh every jitted function is traced for XLA's partitioner
    partitioned = for_partitioner() if mesh else contextlib.nullcontext()
    with partitioned, recorder.interrupts():
        try:
            for epoch in range(recorder.first_epoch, tcfg.epochs):
                recorder.begin_epoch(epoch)
                hyper = state.opt_state.hyperparams
                lr = float(hyper["learning_rate"])
                order = epoch_order(tcfg, epoch, train_x.shape[0])
                state, step_metrics = train_epoch(
                    state,
                    train_x,
                    jax.random.fold_in(train_key, epoch),
                    None if order is None else jnp.asarray(order, jnp.int32),
                    recorder.step_done,
                )
                row = recorder.row(
                    epoch,
                    lr,
                    jax.device_get(step_metrics),
                    lambda split, params=state.params: eval_metrics(
                        params, eval_x[split]
                    ),
                )
                new_lr = recorder.next_lr(row, lr)
                if new_lr != lr:  # the learning rate lives in the optimizer state
                    hyper["learning_rate"] = place(
                        np.asarray(new_lr, hyper["learning_rate"].dtype)
                    )
                recorder.save(
                    row,
                    _state_arrays(state),
                    lambda path, params=state.params: save_checkpoint(
                        path, params, mcfg
                    ),
                )
        except KeyboardInterrupt:
            raise recorder.interrupted() from None
        finally:
            recorder.close()
        params = jax.device_get(state.params)  # the writer's own copy
        recorder.finish(
            lambda x: encode(params, mcfg, x, batch_size=tcfg.eval_batch_size),
            to_state_dict(params),
        )
    return recorder.history
