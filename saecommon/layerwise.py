"""Greedy layer-wise pretraining, written once for both packages.

For an mlp with encoder widths ``d1 .. dn`` (e.g. 784-128-64-32-2), stage s trains the
model ``input-d1-..-ds`` whose outer s-1 encoder layers and their mirror decoder layers
are copied from stage s-1 and frozen; only the new inner pair (``encoder.{s-1}`` and
``decoder.0``) learns. A final stage fine-tunes the whole model with nothing frozen.

Every stage's layers are layers of the full model: stage s's ``encoder.i`` is the full
``encoder.i`` and its ``decoder.j`` the full ``decoder.{n-s+j}`` (same shape, same
place in the data flow). So each stage reconstructs the input through the frozen
outer layers, and a new layer starts from the full model's initial weights for it.

Stages before the last train their innermost layer as the hidden layer it will be:
with ``activation``, and without the code's sparsity layers (top-k, lifetime) or
code penalties; an L1 penalty on every hidden layer (``l1_layers="hidden"``) applies
throughout. The last pretraining stage is the full model, outer layers frozen.

Tying: ``layerwise_tied`` ties the decoders while pretraining; the fine-tune follows
the model's ``tied`` (a tied pretraining may be fine-tuned untied: the decoders start
as copies of the transposed encoders). The reverse cannot be done and is refused.

A run directory for ``run`` holds one ordinary run directory per stage (``stage-1``
.. ``stage-n``, ``finetune``), each with its own checkpoint, metrics and pictures,
plus the final ``model.safetensors`` and ``config.json`` at the top. With ``resume``,
finished stages are kept, an interrupted stage continues from its train state, and
the rest run: nothing finished is trained again.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Callable, Mapping

import numpy as np

from saecommon import rundir
from saecommon.checkpoint import (
    CheckpointError,
    atomic_write,
    check_state_dict,
    expected_shapes,
    read_checkpoint,
    untie_state_dict,
)
from saecommon.config import ConfigError, SAEConfig
from saecommon.data import PreparedData, prepare_data
from saecommon.train_config import RunConfig

FINETUNE = "finetune"


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    """Its run directory under the pretraining run: stage-1 .. stage-n, finetune."""
    run: RunConfig
    """The stage's own run: its model and its epochs."""
    frozen: tuple[str, ...]
    """Layers copied from the previous stage and held fixed."""
    copied: dict[str, str]
    """This stage's layer -> the previous stage's layer it starts from."""
    full_names: dict[str, str]
    """This stage's layer -> the full model's layer it is (for fresh layers' init)."""

    @property
    def trained(self) -> tuple[str, ...]:
        return tuple(name for name in self.full_names if name not in self.frozen)


def _dims(config: SAEConfig) -> str:
    return "-".join(str(d) for d in (config.input_dim, *config.hidden_dims))


def stage_schedule(run: RunConfig) -> list[Stage]:
    """The stages of ``run``'s layer-wise pretraining and its fine-tune; ConfigError
    when the schedule does not fit the model."""
    model, tcfg = run.model, run.train
    epochs = tcfg.layerwise_epochs
    if not epochs:
        raise ConfigError("layer-wise pretraining needs layerwise_epochs (per stage)")
    if model.architecture != "mlp":
        raise ConfigError(
            "layer-wise pretraining is defined for the mlp architecture, not "
            f"{model.architecture!r}"
        )
    n = len(model.hidden_dims)
    if len(epochs) != n:
        raise ConfigError(
            f"layerwise_epochs gives {len(epochs)} stages "
            f"({','.join(map(str, epochs))}) but the model {_dims(model)} has {n} "
            f"encoder layers: give one number of epochs per layer"
        )
    if model.tied and not tcfg.layerwise_tied:
        raise ConfigError(
            "an untied pretraining cannot be fine-tuned tied: set layerwise_tied true "
            "(or tied false)"
        )
    base_train = dataclasses.replace(tcfg, layerwise_epochs=(), layerwise_tied=False)
    pretrain_model = model.replace(tied=tcfg.layerwise_tied)
    stages = []
    for s in range(1, n + 1):
        stage_model = pretrain_model.replace(hidden_dims=model.hidden_dims[:s])
        if s < n:  # the innermost layer is a hidden layer of the final model
            keeps_l1 = model.penalty == "l1" and model.l1_layers == "hidden"
            stage_model = stage_model.replace(
                code_activation=model.activation,
                topk=None,
                lifetime_k=None,
                lifetime_rate=None,
                penalty=model.penalty if keeps_l1 else "none",
            )
        full_names = {f"encoder.{i}": f"encoder.{i}" for i in range(s)}
        full_names.update({f"decoder.{j}": f"decoder.{n - s + j}" for j in range(s)})
        copied = {f"encoder.{i}": f"encoder.{i}" for i in range(s - 1)}
        copied.update({f"decoder.{j}": f"decoder.{j - 1}" for j in range(1, s)})
        stages.append(
            Stage(
                f"stage-{s}",
                RunConfig(
                    stage_model, dataclasses.replace(base_train, epochs=epochs[s - 1])
                ),
                tuple(copied),
                copied,
                full_names,
            )
        )
    copied = {name: name for name in stages[-1].full_names}
    stages.append(Stage(FINETUNE, RunConfig(model, base_train), (), copied, copied))
    return stages


def pretraining_model(run: RunConfig) -> SAEConfig:
    """The full model as pretrained (tied when ``layerwise_tied``): the form that
    ``pretrain``'s ``init`` and the last pretraining stage's checkpoint take."""
    return stage_schedule(run)[-2].run.model


def stage_init(
    stage: Stage,
    previous: Mapping[str, np.ndarray] | None,
    previous_config: SAEConfig | None,
    full_init: Mapping[str, np.ndarray],
    source: str = "the previous stage",
) -> dict[str, np.ndarray]:
    """The initial weights of ``stage``: copied layers from ``previous`` (checked: a
    width that does not fit is a CheckpointError naming the layer, both shapes and
    ``source``), new layers from ``full_init`` (the full model's initial weights)."""
    model = stage.run.model
    if previous is not None and previous_config.tied and not model.tied:
        previous, previous_config = untie_state_dict(previous, previous_config)
    wanted = expected_shapes(model)
    init = {}
    for key, shape in wanted.items():
        layer, leaf = key.rsplit(".", 1)
        if layer in stage.copied:
            from_key = f"{stage.copied[layer]}.{leaf}"
            value = None if previous is None else previous.get(from_key)
            if value is None or tuple(value.shape) != shape:
                found = "nothing" if value is None else f"shape {tuple(value.shape)}"
                raise CheckpointError(
                    f"{source} does not fit {stage.name} of {_dims(model)}: "
                    f"{stage.name}'s {key} starts from its {from_key}, which must have "
                    f"shape {shape}, but it has {found}"
                )
        else:
            from_key = f"{stage.full_names[layer]}.{leaf}"
            value = full_init[from_key]
        init[key] = np.asarray(value)
    check_state_dict(init, model)
    return init


def pretrain(
    run: RunConfig,
    out_dir: str | os.PathLike,
    train: Callable[..., list[dict]],
    init_state_dict: Callable[[SAEConfig, int], dict[str, np.ndarray]],
    *,
    resume: bool = False,
    data: PreparedData | None = None,
    progress: bool = True,
    init: Mapping[str, np.ndarray] | None = None,
    overwrite: bool = False,
    writer: bool = True,
    barrier: Callable[[], None] = lambda: None,
) -> dict[str, list[dict]]:
    """Run the whole schedule with one package's ``train`` (which takes ``init`` and
    ``frozen``) and ``init_state_dict(config, seed)``; returns each stage's history.

    In a run of several processes, each runs this with its package's ``writer``
    (process 0 writes the top-level files) and ``barrier`` (waits for every
    process: each stage starts from the file the writer saved).

    A folder that holds a run is refused unless ``resume`` or ``overwrite``; with
    ``overwrite`` the run that was there (its top-level files and its stage folders)
    is removed before the first stage starts.

    ``init``: the full model's initial weights (in the pretraining's tied form) instead
    of ``init_state_dict``'s: both packages then start every layer identically."""
    stages = stage_schedule(run)
    if resume:
        if not os.path.isfile(os.path.join(out_dir, rundir.CONFIG)):
            raise rundir.RunDirError(
                f"nothing to resume in {out_dir}: it holds no layer-wise run "
                f"(no {rundir.CONFIG})"
            )
    elif rundir.check_out_dir(out_dir, overwrite=overwrite) and writer:
        _remove_run(out_dir)
    full_model = pretraining_model(run)
    if init is None:
        init = init_state_dict(full_model, run.train.seed)
    check_state_dict(init, full_model)
    data = prepare_data(run) if data is None else data
    progress = progress and writer
    if writer:
        rundir.write_run_config(out_dir, run)

    histories: dict[str, list[dict]] = {}
    previous = previous_config = None
    previous_path = "the previous stage"
    for index, stage in enumerate(stages):
        stage_dir = os.path.join(out_dir, stage.name)
        if progress:
            frozen = ", ".join(stage.frozen) or "none"
            print(
                f"{stage.name} ({index + 1}/{len(stages)}): {_dims(stage.run.model)}, "
                f"training {', '.join(stage.trained)}; frozen: {frozen}",
                flush=True,
            )
        done = _finished_epochs(stage_dir, stage) if resume else None
        if done is not None and done >= stage.run.train.epochs:
            histories[stage.name] = rundir.read_history(stage_dir)
        else:
            stage_resume = resume and os.path.isfile(
                os.path.join(stage_dir, rundir.TRAIN_STATE)
            )
            start = None
            if not stage_resume:
                start = stage_init(
                    stage, previous, previous_config, init, previous_path
                )
            histories[stage.name] = train(
                stage.run,
                stage_dir,
                resume=stage_resume,
                data=data,
                progress=progress,
                init=start,
                frozen=stage.frozen,
                overwrite=not stage_resume,  # this pretraining's own stage folder
            )
        barrier()  # the writer has saved the stage
        previous_path = os.path.join(stage_dir, rundir.MODEL)
        previous, previous_config = read_checkpoint(previous_path)
    if writer:
        with open(previous_path, "rb") as f:  # the final model, also at the top
            atomic_write(os.path.join(out_dir, rundir.MODEL), f.read())
    return histories


def _remove_run(out_dir: str) -> None:
    """Remove the run in ``out_dir`` that ``overwrite`` replaces: its files and the
    stage folders of a layer-wise run (nothing else in the folder)."""
    from saecommon import plots

    rundir.remove_files(
        out_dir, (*rundir.RUN_FILES, rundir.SUMMARY, *plots.RUN_PICTURES)
    )
    for name in os.listdir(out_dir):
        path = os.path.join(out_dir, name)
        is_stage = name == FINETUNE or name.startswith("stage-")
        if is_stage and os.path.isdir(path) and rundir.holds_run(path):
            shutil.rmtree(path)


def _finished_epochs(stage_dir: str, stage: Stage) -> int | None:
    """Epochs of a stage that ran to its end (summary written), else None; a stage
    directory that holds another model or schedule is a CheckpointError."""
    if not os.path.isfile(os.path.join(stage_dir, rundir.SUMMARY)):
        return None
    saved = rundir.read_run_config(stage_dir)
    if not rundir.same_but_epochs(saved, stage.run):
        raise CheckpointError(
            f"{stage_dir} holds a finished {stage.name} of another model or schedule "
            f"({_dims(saved.model)}, not {_dims(stage.run.model)}, or other settings); "
            "resume only the pretraining that wrote it, or use a new output directory"
        )
    return len(rundir.read_history(stage_dir))
