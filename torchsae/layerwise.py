"""Greedy layer-wise pretraining with torchsae's trainer: the schedule, the copying and
the checks live in saecommon/layerwise.py; frozen layers get ``requires_grad=False``
and are left out of the optimizer (``training.train``)."""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping

import numpy as np

from saecommon import layerwise
from saecommon.data import PreparedData
from saecommon.train_config import RunConfig
from torchsae import distributed
from torchsae.training import init_state_dict, train


def pretrain(
    run: RunConfig,
    out_dir: str | os.PathLike,
    *,
    resume: bool = False,
    data: PreparedData | None = None,
    progress: bool = True,
    init: Mapping[str, np.ndarray] | None = None,
    overwrite: bool = False,
    device: str = "cpu",
    compile: bool = False,
) -> dict[str, list[dict]]:
    """Pretrain ``run``'s mlp layer by layer, then fine-tune it; one run directory per
    stage under ``out_dir`` and the final model.safetensors; returns each stage's
    history. See saecommon/layerwise.py for the stages and ``resume``. In a process
    group of several processes (torchrun) every stage trains data parallel."""
    return layerwise.pretrain(
        run,
        out_dir,
        functools.partial(train, device=device, compile=compile),
        init_state_dict,
        resume=resume,
        data=data,
        progress=progress,
        init=init,
        overwrite=overwrite,
        writer=distributed.world().rank == 0,
        barrier=distributed.barrier,
    )
