"""Training in PyTorch with jaxsae's contract: the same run directory, metric keys,
schedules, checkpoints and ``resume``.

The data stays resident as one tensor on the device; an epoch is a shuffled index
tensor and a loop of steps (no Dataset/DataLoader). Per-step metrics stay on the device
and are read once per epoch. Randomness: the model is initialised from
``Generator().manual_seed(seed)``; epoch e shuffles and draws noise from a generator
seeded with ``epoch_seed(seed, e)``, so a resumed run draws what an uninterrupted one
would. The short last batch of an epoch is dropped, as in jaxsae.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
from collections.abc import Callable, Collection, Mapping

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from saecommon import rundir
from saecommon.checkpoint import CheckpointError, check_frozen, check_state_dict
from saecommon.config import SAEConfig
from saecommon.data import PreparedData, prepare_data
from saecommon.metrics import CodeStats
from saecommon.recorder import RunRecorder, check_batch_size
from saecommon.schedules import cosine_lr, epoch_order
from saecommon.train_config import RunConfig, TrainConfig
from torchsae import distributed
from torchsae.checkpoint import save_checkpoint, to_state_dict
from torchsae.evaluation import encode
from torchsae.losses import loss_terms
from torchsae.models import Autoencoder

FRAMEWORK = "torch"
LOSS_KEYS = ("recon", "penalty", "loss")
"""The loss terms (``loss_terms``) recorded per step and per evaluated split."""
METRIC_KEYS = (*LOSS_KEYS, "l0")
"""The per-step training metrics, in the order ``train_step`` stacks them."""


def epoch_seed(seed: int, epoch: int) -> int:
    return seed * 1_000_003 + epoch + 1


def make_optimizer(tcfg: TrainConfig, params) -> torch.optim.Optimizer:
    """Adam / AdamW / SGD with momentum, matching jaxsae's optax choices (cosine decay is
    applied per step by the trainer, reduce-on-plateau per epoch)."""
    params = list(params)
    if tcfg.optimizer == "adamw":
        return torch.optim.AdamW(
            params, tcfg.learning_rate, weight_decay=tcfg.weight_decay
        )
    if tcfg.optimizer == "sgd":
        return torch.optim.SGD(params, tcfg.learning_rate, momentum=tcfg.momentum)
    return torch.optim.Adam(params, tcfg.learning_rate)


def corrupt(
    x: torch.Tensor,
    generator: torch.Generator,
    tcfg: TrainConfig,
    pixel_range=(0.0, 1.0),
):
    """Denoising input noise; ``pixel_range`` is where pixel values 0 and 1 sit after
    preprocessing (Gaussian noise is clipped to it, masking sets pixels to its low end)."""
    lo, hi = pixel_range
    if tcfg.noise == "gaussian":
        noise = torch.randn(
            x.shape, generator=generator, device=x.device, dtype=x.dtype
        )
        return (x + tcfg.noise_std * noise).clamp(lo, hi)
    if tcfg.noise == "masking":
        keep = (
            torch.rand(x.shape, generator=generator, device=x.device)
            >= tcfg.mask_fraction
        )
        return torch.where(keep, x, torch.tensor(lo, dtype=x.dtype, device=x.device))
    return x


def _forward(model: Autoencoder, inputs: torch.Tensor, precision: str):
    """``model``'s training forward pass at ``precision`` (TrainConfig.precision).

    bfloat16 is mixed precision, as in jaxsae: the float32 master parameters and
    ``inputs`` are cast to bfloat16, every op of the model (sparsity masks included)
    runs in bfloat16, and the outputs come back as float32, so the loss and penalties
    are computed in float32. Autograd through the casts leaves float32 gradients on
    the float32 parameters; the optimizer never sees bfloat16.

    Not ``torch.autocast``: it casts per op, from lists that differ by device and
    torch version (matmuls and convolutions to bfloat16, losses such as mse_loss to
    float32, anything else by type promotion, so an op mixing a float32 parameter with
    a bfloat16 activation runs in float32). jaxsae has no such policy and casts
    everything once; the same casts in both packages keep them comparable
    (parity_tests/test_mixed_precision.py)."""
    if precision == "float32":
        return model(inputs, train=True)
    low, high = getattr(torch, precision), inputs.dtype  # high: float32 in training
    params = {name: p.to(low) for name, p in model.named_parameters()}
    out = torch.func.functional_call(model, params, (inputs.to(low),), {"train": True})
    return out._replace(  # the mask stays bool
        reconstruction=out.reconstruction.to(high),
        logits=out.logits.to(high),
        code=out.code.to(high),
        hiddens=tuple(h.to(high) for h in out.hiddens),
    )


class _Forward(torch.nn.Module):
    """``_forward`` as a module, for DistributedDataParallel to wrap (its gradient
    averaging is armed by its own forward call)."""

    def __init__(self, model: Autoencoder, precision: str):
        super().__init__()
        self.model, self.precision = model, precision

    def forward(self, inputs: torch.Tensor):
        return _forward(self.model, inputs, self.precision)


def make_train_step(
    config: SAEConfig,
    tcfg: TrainConfig,
    model: Autoencoder,
    optimizer: torch.optim.Optimizer,
    pixel_range=(0.0, 1.0),
    total_steps: int = 0,
    compile: bool = False,
    split: distributed.Split | None = None,
) -> Callable:
    """``train_step(batch [batch, input], generator, step) -> metrics [4]`` (recon,
    penalty, loss, l0 as one device tensor; no host sync). ``step`` counts updates done
    before this one; with the cosine schedule it sets the learning rate, as optax's
    cosine_decay_schedule does from its own count.

    The forward pass runs at ``tcfg.precision`` (``_forward``); the loss, gradients,
    parameters and optimizer state are float32 either way, and so is evaluation
    (``eval_metrics``).

    With ``split`` (several processes, torchsae.distributed) ``batch`` is the global
    batch, noised whole (the same noise as one process draws), and this process
    trains on its rows of it: the model runs under DistributedDataParallel, the
    rules over the batch inside ``batch_split``; the metrics are this process's."""
    forward = functools.partial(_forward, model, precision=tcfg.precision)
    if split is not None:
        device = next(model.parameters()).device
        forward = DistributedDataParallel(
            _Forward(model, tcfg.precision),
            device_ids=[device.index] if device.type == "cuda" else None,
        )

    def objective(inputs, batch):
        out = forward(inputs)
        terms = loss_terms(out, batch, config)  # the target is the clean input
        l0 = (out.code != 0).sum(dim=1).to(batch.dtype).mean()
        return terms["loss"], torch.stack(
            [terms["recon"], terms["penalty"], terms["loss"], l0]
        )

    if compile:
        objective = torch.compile(objective)

    def train_step(batch: torch.Tensor, generator: torch.Generator, step: int):
        if tcfg.schedule == "cosine":
            for group in optimizer.param_groups:
                group["lr"] = cosine_lr(tcfg.learning_rate, step, total_steps)
        inputs = corrupt(batch, generator, tcfg, pixel_range)
        if split is not None:  # this process's rows of the global batch
            rows = distributed.own_rows(batch.shape[0], split)
            inputs, batch = inputs[rows], batch[rows]
        optimizer.zero_grad(set_to_none=True)
        with distributed.batch_split(split) if split else contextlib.nullcontext():
            loss, metrics = objective(inputs, batch)
        loss.backward()
        optimizer.step()
        return metrics.detach()

    return train_step


def train_epoch(
    train_step,
    data: torch.Tensor,
    batch_size: int,
    generator,
    first_step: int = 0,
    shuffle: bool = True,
    order: np.ndarray | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> dict:
    """One shuffled pass (``order`` [n] if given, else drawn from ``generator``; or
    the data in order), calling ``on_step(done, steps)`` after each step; returns
    per-step metrics as numpy arrays [steps]."""
    steps = data.shape[0] // batch_size
    if order is not None:  # drawn by numpy (saecommon.schedules.epoch_order)
        order = torch.from_numpy(order).to(data.device)
    elif shuffle:
        order = torch.randperm(data.shape[0], generator=generator, device=data.device)
    else:
        order = torch.arange(data.shape[0], device=data.device)
    metrics = torch.empty(steps, len(METRIC_KEYS), dtype=data.dtype, device=data.device)
    for i in range(steps):
        batch = data[order[i * batch_size : (i + 1) * batch_size]]
        metrics[i] = train_step(batch, generator, first_step + i)
        if on_step is not None:
            on_step(i + 1, steps)
    values = metrics.cpu().numpy()
    return {k: values[:, j] for j, k in enumerate(METRIC_KEYS)}


@torch.no_grad()
def eval_metrics(
    model: Autoencoder, data: torch.Tensor, batch_size: int
) -> dict[str, float]:
    """The per-epoch metrics of a split, over every sample in evaluation mode (no
    lifetime top-k, no noise), as in jaxsae: recon, penalty and loss are means over
    samples (penalties per batch of ``batch_size``, weighted by its size); l0,
    dead_fraction and constant_fraction are ``saecommon.metrics.CodeStats``'s, from
    per-unit statistics reduced batch by batch on the device."""
    config = model.config
    n = data.shape[0]
    sums = torch.zeros(len(LOSS_KEYS), dtype=torch.float64, device=data.device)
    # per unit: samples active, lowest value, highest value
    active = torch.zeros(config.code_dim, dtype=torch.int64, device=data.device)
    low = torch.full(
        (config.code_dim,), torch.inf, dtype=data.dtype, device=data.device
    )
    high = torch.full(
        (config.code_dim,), -torch.inf, dtype=data.dtype, device=data.device
    )
    for start in range(0, n, batch_size):
        x = data[start : start + batch_size]
        out = model(x, train=False)
        terms = loss_terms(out, x, config)
        sums += torch.stack([terms[k] for k in LOSS_KEYS]).double() * x.shape[0]
        active += (out.code != 0).sum(dim=0)
        low = torch.minimum(low, out.code.amin(dim=0))
        high = torch.maximum(high, out.code.amax(dim=0))
    metrics = {k: float(v) / n for k, v in zip(LOSS_KEYS, sums.cpu().tolist())}
    stats = CodeStats(n, *(t.cpu().numpy() for t in (active, low, high)))
    metrics.update(stats.metrics())
    return metrics


def init_state_dict(config: SAEConfig, seed: int) -> dict[str, np.ndarray]:
    """The portable initial weights ``train`` draws for ``config`` with ``seed``."""
    return to_state_dict(
        Autoencoder(config, generator=torch.Generator().manual_seed(seed))
    )


def _state_arrays(model, optimizer) -> tuple[dict[str, np.ndarray], list]:
    arrays = {f"model.{k}": v for k, v in to_state_dict(model).items()}
    opt = optimizer.state_dict()
    for index, slots in opt["state"].items():
        for name, value in slots.items():
            arrays[f"optim.{index}.{name}"] = value.detach().cpu().numpy().copy()
    return arrays, opt["param_groups"]


def _restore_state(model, optimizer, arrays, param_groups, path) -> None:
    model_sd = {
        k[len("model.") :]: v for k, v in arrays.items() if k.startswith("model.")
    }
    if set(model_sd) != set(model.state_dict()):
        raise CheckpointError(f"{path} does not hold this model's training state")
    model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in model_sd.items()})
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in arrays.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = torch.from_numpy(value.copy())
    optimizer.load_state_dict({"state": state, "param_groups": param_groups})


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
    device: str = "cpu",
    compile: bool = False,
) -> list[dict]:
    """Train ``run`` and write the run directory; returns the metrics history.

    With ``resume``, continue from ``out_dir``'s train state (only ``epochs`` may
    differ); the result equals an uninterrupted run with the same seed. ``init``, a
    portable state dict (``saecommon.checkpoint.initial_state_dict``), replaces the
    random initial weights: fine-tuning, e.g. untied after a tied run. ``frozen``
    layers ("encoder.0", ...) keep their initial weights: ``requires_grad=False`` and
    left out of the optimizer, so they get no update, no weight decay and no state.

    In a process group of several processes (torchrun; torchsae.distributed) the run
    is data parallel: every process takes its rows of each global batch of
    ``batch_size``, DistributedDataParallel averages the gradients, the rules over
    the batch see the global batch, and process 0 alone writes the run directory.
    It trains what one process trains on the same batches.

    A folder that holds a run is refused unless ``overwrite`` or ``resume``
    (``saecommon.rundir.check_out_dir``); Ctrl-C raises ``TrainingInterrupted``
    saying where it stopped and what is saved."""
    mcfg, tcfg = run.model, run.train
    check_frozen(frozen, mcfg)
    split = distributed.world()
    if split.size > 1:
        distributed.check_batch_divides(tcfg.batch_size, split.size)
        if compile:
            raise ValueError(
                "torch.compile is not used with several processes; leave out compile"
            )
    rundir.check_out_dir(out_dir, resume=resume, overwrite=overwrite)
    data = prepare_data(run) if data is None else data
    check_batch_size(tcfg, data)
    steps_per_epoch = len(data.train) // tcfg.batch_size
    total_steps = tcfg.epochs * steps_per_epoch
    model = Autoencoder(mcfg, generator=torch.Generator().manual_seed(tcfg.seed)).to(
        device
    )
    if init is not None:
        check_state_dict(init, mcfg)
        model.load_state_dict(
            {k: torch.from_numpy(np.array(v)) for k, v in init.items()}
        )
    trained = []
    for name, param in model.named_parameters():
        param.requires_grad_(name.rsplit(".", 1)[0] not in frozen)
        if param.requires_grad:
            trained.append(param)
    optimizer = make_optimizer(tcfg, trained)
    train_step = make_train_step(
        mcfg,
        tcfg,
        model,
        optimizer,
        data.pixel_range,
        total_steps,
        compile,
        split if split.size > 1 else None,
    )
    recorder = RunRecorder(
        run,
        out_dir,
        FRAMEWORK,
        data,
        resume=resume,
        progress=progress and split.rank == 0,
        writer=split.rank == 0,
    )
    if recorder.resumed is not None:
        arrays, meta = recorder.resumed
        _restore_state(
            model, optimizer, arrays, meta["param_groups"], recorder.state_path
        )

    train_x = torch.from_numpy(data.train).to(device)
    eval_x = {
        split: torch.from_numpy(getattr(data, split)).to(device)
        for split in recorder.eval_splits
    }
    with recorder.interrupts():
        try:
            for epoch in range(recorder.first_epoch, tcfg.epochs):
                recorder.begin_epoch(epoch)
                first_step = epoch * steps_per_epoch
                lr = optimizer.param_groups[0]["lr"]
                if tcfg.schedule == "cosine":
                    lr = cosine_lr(tcfg.learning_rate, first_step, total_steps)
                model.train()
                generator = torch.Generator(device).manual_seed(
                    epoch_seed(tcfg.seed, epoch)
                )
                step_metrics = train_epoch(
                    train_step,
                    train_x,
                    tcfg.batch_size,
                    generator,
                    first_step,
                    tcfg.shuffle,
                    epoch_order(tcfg, epoch, train_x.shape[0]),
                    recorder.step_done,
                )
                step_metrics = distributed.mean_over_processes(step_metrics, split)
                model.eval()
                row = recorder.row(
                    epoch,
                    lr,
                    step_metrics,
                    lambda split: eval_metrics(
                        model, eval_x[split], tcfg.eval_batch_size
                    ),
                )
                # (process 0's choice: evaluations on GPUs may differ in the last bit)
                new_lr = distributed.broadcast_float(recorder.next_lr(row, lr), split)
                for group in optimizer.param_groups:
                    group["lr"] = new_lr
                arrays, param_groups = _state_arrays(model, optimizer)
                recorder.save(
                    row,
                    arrays,
                    lambda path: save_checkpoint(path, model),
                    param_groups=json.loads(json.dumps(param_groups)),
                )
        except KeyboardInterrupt:
            raise recorder.interrupted() from None
        finally:
            recorder.close()
    model.eval()
    recorder.finish(
        lambda x: encode(model, x, batch_size=tcfg.eval_batch_size),
        to_state_dict(model),
    )
    return recorder.history
