"""The rules both trainers apply per step and per epoch, written once: the cosine
learning rate, reduce-on-plateau, and the numpy epoch order (``shuffle_source``
"numpy"); for dictionary SAEs, the learning rate's warm-up and decay and the sparsity
coefficient's warm-up (``coefficients``)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from saecommon.dictionary_config import DictConfig, DictTrainConfig
from saecommon.train_config import TrainConfig


def epoch_order(train: TrainConfig, epoch: int, n: int) -> np.ndarray | None:
    """The order in which epoch ``epoch`` visits ``n`` training samples when numpy draws
    it (``shuffle_source`` "numpy"): ``default_rng([seed, epoch]).permutation(n)``, the
    same in both packages and on resume. None when the framework draws the order (or
    the data is visited in order)."""
    if train.shuffle_source != "numpy":
        return None
    return np.random.default_rng([train.seed, epoch]).permutation(n)


def cosine_lr(base: float, step: int, total_steps: int) -> float:
    """base * (1 + cos(pi * step / total)) / 2, held at 0 after total (optax's
    cosine_decay_schedule with alpha 0)."""
    t = min(step, total_steps) / max(total_steps, 1)
    return base * 0.5 * (1 + math.cos(math.pi * t))


@dataclasses.dataclass
class Plateau:
    """Reduce-on-plateau, host side, once per epoch, the same in both trainers.

    Like torch's ReduceLROnPlateau(mode="min", threshold=1e-4, threshold_mode="rel",
    cooldown=0): an epoch improves when value < best * (1 - 1e-4); after more than
    ``patience`` epochs without improvement the learning rate is multiplied by
    ``factor`` and the count restarts.
    """

    factor: float
    patience: int
    best: float = math.inf
    bad_epochs: int = 0

    def step(self, value: float, lr: float) -> float:
        if value < self.best * (1 - 1e-4):
            self.best, self.bad_epochs = value, 0
            return lr
        self.bad_epochs += 1
        if self.bad_epochs > self.patience:
            self.bad_epochs = 0
            return lr * self.factor
        return lr


def sparsity_coefficient(base: float, step: int, warmup_steps: int) -> float:
    """The L1/L0 coefficient at ``step`` (0-based, before the update): linear warm-up
    from 0 to ``base`` over ``warmup_steps`` (Rajamanoharan et al. 2024)."""
    if warmup_steps == 0:
        return base
    return base * min(1.0, (step + 1) / warmup_steps)


def learning_rate(train: DictTrainConfig, step: int) -> float:
    """Adam's learning rate at ``step`` (0-based): linear warm-up, constant, then
    linear decay to 0 over the last decay_steps (both trainers use this function)."""
    lr = train.learning_rate
    if train.warmup_steps and step < train.warmup_steps:
        return lr * (step + 1) / train.warmup_steps
    decay_start = train.steps - train.decay_steps
    if train.decay_steps and step >= decay_start:
        return lr * (train.steps - step) / train.decay_steps
    return lr


def coefficients(config: DictConfig, train: DictTrainConfig, step: int):
    """(learning rate, sparsity coefficient) at ``step``: what both trainers pass
    each step (the L0 coefficient for jumprelu, else the L1 one, after warm-up)."""
    base = (
        train.l0_coefficient
        if config.activation == "jumprelu"
        else train.l1_coefficient
    )
    return (
        learning_rate(train, step),
        sparsity_coefficient(base, step, train.sparsity_warmup_steps),
    )
