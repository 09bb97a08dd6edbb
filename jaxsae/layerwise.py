"""Greedy layer-wise pretraining with jaxsae's trainer: the schedule, the copying and
the checks live in saecommon/layerwise.py; frozen layers go to ``optax.set_to_zero``
through ``optax.multi_transform`` (``training.make_optimizer``)."""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping

import numpy as np

from jaxsae import distributed
from jaxsae.training import init_state_dict, train
from saecommon import layerwise
from saecommon.data import PreparedData
from saecommon.train_config import RunConfig


def pretrain(
    run: RunConfig,
    out_dir: str | os.PathLike,
    *,
    resume: bool = False,
    data: PreparedData | None = None,
    progress: bool = True,
    init: Mapping[str, np.ndarray] | None = None,
    overwrite: bool = False,
    mesh: tuple[int, int] | None = None,
) -> dict[str, list[dict]]:
    """Pretrain ``run``'s mlp layer by layer, then fine-tune it; one run directory per
    stage under ``out_dir`` and the final model.safetensors; returns each stage's
    history. See saecommon/layerwise.py for the stages and ``resume``. Every stage
    trains on ``mesh`` (``training.train``'s), and on every process of several."""
    return layerwise.pretrain(
        run,
        out_dir,
        functools.partial(train, mesh=mesh),
        init_state_dict,
        resume=resume,
        data=data,
        progress=progress,
        init=init,
        overwrite=overwrite,
        writer=distributed.is_writer(),
        barrier=distributed.barrier,
    )
