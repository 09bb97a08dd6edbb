"""Greedy layer-wise pretraining agrees between the packages: the same schedule from
the same initial weights over the same batches (``shuffle=False``, no noise) ends every
stage, and the fine-tune, with the same weights.

Tolerance: float32 training over 4 stages (60 steps). Measured largest differences:
Adam at lr 1e-3 4.5e-7, SGD 1.5e-8; the bound is rtol 1e-5 / atol 5e-6. Adam divides
by sqrt(v), which amplifies rounding in proportion to the learning rate: at lr 1e-2
the same schedule differs by up to 3.4e-5, which is no disagreement in the math."""

import dataclasses

import numpy as np
import pytest

from conftest import synthetic_data
from saecommon import layerwise, plots
from saecommon.checkpoint import read_checkpoint
from saecommon.config import SAEConfig
from saecommon.train_config import RunConfig, TrainConfig

from .harness import on_device

MODEL = SAEConfig(
    input_dim=16,
    hidden_dims=(12, 8, 3),
    activation="leaky_relu",
    code_activation="leaky_relu",  # a ReLU code of 3 units can die: nothing to compare
    output_activation="sigmoid",
    topk=2,
    penalty="l1",
    penalty_weight=1e-3,
    l1_layers="hidden",
)
TRAIN = TrainConfig(
    epochs=2,
    batch_size=32,
    layerwise_epochs=(2, 1, 1),
    shuffle=False,
)
TOL = dict(rtol=1e-5, atol=5e-6)


@pytest.mark.parametrize(
    "tied, optimizer, learning_rate",
    [(False, "adam", 1e-3), (True, "sgd", 0.1)],
    ids=["untied-adam", "tied-then-untied-sgd"],
)
def test_the_same_schedule_ends_with_the_same_weights(
    tied, optimizer, learning_rate, device, tmp_path, monkeypatch
):
    from jaxsae.layerwise import pretrain as jax_pretrain
    from torchsae.layerwise import pretrain as torch_pretrain
    from torchsae.training import init_state_dict

    monkeypatch.setattr(plots, "write_run_plots", lambda *args, **kwargs: None)
    run = RunConfig(
        MODEL.replace(tied=False),
        dataclasses.replace(
            TRAIN,
            layerwise_tied=tied,
            optimizer=optimizer,
            learning_rate=learning_rate,
        ),
    )
    init = init_state_dict(layerwise.pretraining_model(run), 5)  # numpy, fed to both
    data = synthetic_data()
    with on_device(device) as torch_device:
        jax_pretrain(run, tmp_path / "jax", data=data, progress=False, init=init)
        torch_pretrain(
            run,
            tmp_path / "torch",
            data=data,
            progress=False,
            init=init,
            device=torch_device,
        )
    for stage in layerwise.stage_schedule(run):
        a, config_a = read_checkpoint(
            tmp_path / "jax" / stage.name / "model.safetensors"
        )
        b, config_b = read_checkpoint(
            tmp_path / "torch" / stage.name / "model.safetensors"
        )
        assert config_a == config_b == stage.run.model
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_allclose(a[k], b[k], **TOL, err_msg=f"{stage.name} {k}")
    final, _ = read_checkpoint(tmp_path / "jax" / "model.safetensors")
    assert not np.allclose(final["encoder.0.weight"], init["encoder.0.weight"])
