"""Greedy layer-wise pretraining in both packages: the stage schedule, frozen layers that
do not move and have no optimizer state, tied pretraining then untied fine-tuning,
resume after a kill, and the errors for schedules and checkpoints that do not fit."""

import dataclasses
import json
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import optax
import pytest
from safetensors.numpy import load_file
from test_cli import ROOT
from test_data import write_idx

from conftest import synthetic_data
from saecommon import frameworks, layerwise, plots, rundir
from saecommon.checkpoint import CheckpointError, read_checkpoint, write_checkpoint
from saecommon.config import ConfigError, SAEConfig
from saecommon.data import IDX_FILES
from saecommon.presets import PRESETS
from saecommon.progress import EpochProgress
from saecommon.train_config import RunConfig, TrainConfig

MODEL = SAEConfig(
    input_dim=16,
    hidden_dims=(12, 8, 2),
    activation="leaky_relu",
    code_activation="identity",
    output_activation="sigmoid",
    topk=1,
    penalty="l1",
    penalty_weight=1e-3,
    l1_layers="hidden",
)
RUN = RunConfig(
    MODEL,
    TrainConfig(
        epochs=2,
        batch_size=32,
        layerwise_epochs=(2, 1, 1),
        optimizer="adamw",  # weight decay would move a frozen layer that is not frozen
        weight_decay=0.5,
        learning_rate=0.01,
    ),
)


def pretrainer(framework):
    return frameworks.load(framework, "cpu").pretrain


@pytest.fixture(autouse=True)
def no_pictures(monkeypatch):
    """Each stage would draw its pictures (tested in test_plots); skip them here."""
    monkeypatch.setattr(plots, "write_run_plots", lambda *args, **kwargs: None)


def test_the_schedule_of_784_128_64_32_2():
    run = PRESETS["mnist-layerwise"]
    stages = layerwise.stage_schedule(run)
    assert [s.name for s in stages] == [
        "stage-1",
        "stage-2",
        "stage-3",
        "stage-4",
        "finetune",
    ]
    assert [s.run.model.hidden_dims for s in stages] == [
        (128,),
        (128, 64),
        (128, 64, 32),
        (128, 64, 32, 2),
        (128, 64, 32, 2),
    ]
    assert [s.run.train.epochs for s in stages] == [3, 3, 3, 3, 10]
    assert stages[2].frozen == ("encoder.0", "encoder.1", "decoder.1", "decoder.2")
    assert stages[2].trained == ("encoder.2", "decoder.0")
    assert stages[2].copied == {
        "encoder.0": "encoder.0",
        "encoder.1": "encoder.1",
        "decoder.1": "decoder.0",
        "decoder.2": "decoder.1",
    }
    # stage 3's new decoder layer is the full model's decoder.1 (32 -> 64)
    assert stages[2].full_names["decoder.0"] == "decoder.1"
    assert stages[0].frozen == () and stages[-1].frozen == ()
    # inner stages train a hidden layer: its activation, no code-only rules
    assert stages[0].run.model.code_activation == "relu"
    assert stages[3].run.model.code_activation == "identity"
    assert stages[-1].run.model == run.model
    for stage in stages:
        assert stage.run.train.layerwise_epochs == ()


def test_code_rules_act_only_where_the_code_is():
    stages = layerwise.stage_schedule(RUN)
    assert [s.run.model.topk for s in stages] == [None, None, 1, 1]
    # L1 on every hidden layer applies at every stage; a code-only penalty does not
    assert [s.run.model.penalty for s in stages] == ["l1"] * 4
    code_l1 = dataclasses.replace(RUN, model=MODEL.replace(l1_layers="code"))
    assert [s.run.model.penalty for s in layerwise.stage_schedule(code_l1)] == [
        "none",
        "none",
        "l1",
        "l1",
    ]


def test_schedules_that_do_not_fit_are_clear_errors():
    def schedule(model=MODEL, **train):
        layerwise.stage_schedule(
            RunConfig(model, dataclasses.replace(RUN.train, **train))
        )

    with pytest.raises(ConfigError, match="gives 2 stages .* has 3 encoder layers"):
        schedule(layerwise_epochs=(1, 1))
    with pytest.raises(ConfigError, match="needs layerwise_epochs"):
        schedule(layerwise_epochs=())
    with pytest.raises(ConfigError, match="mlp architecture, not 'fullconv'"):
        schedule(model=SAEConfig(architecture="fullconv"), layerwise_epochs=(1,))
    with pytest.raises(ConfigError, match="untied pretraining cannot be fine-tuned"):
        schedule(model=MODEL.replace(tied=True))
    with pytest.raises(ConfigError, match=r"layerwise_epochs\[1\] must be >= 1"):
        TrainConfig(layerwise_epochs=(2, 0))
    assert TrainConfig.__dataclass_fields__["layerwise_epochs"].default == ()
    assert TrainConfig(layerwise_epochs=[2, 3]).layerwise_epochs == (2, 3)


def test_a_checkpoint_of_other_widths_is_refused():
    stages = layerwise.stage_schedule(RUN)
    wrong = MODEL.replace(hidden_dims=(10,), topk=None, code_activation="leaky_relu")
    from torchsae.training import init_state_dict

    previous = init_state_dict(wrong, 0)
    full = init_state_dict(layerwise.pretraining_model(RUN), 0)
    with pytest.raises(
        CheckpointError,
        match=r"run/stage-1 does not fit stage-2 of 16-12-8: stage-2's encoder.0.weight "
        r"starts from its encoder.0.weight, which must have shape \(12, 16\), but it "
        r"has shape \(10, 16\)",
    ):
        layerwise.stage_init(stages[1], previous, wrong, full, "run/stage-1")
    right = init_state_dict(stages[0].run.model, 0)
    init = layerwise.stage_init(stages[1], right, stages[0].run.model, full)
    np.testing.assert_array_equal(init["decoder.1.weight"], right["decoder.0.weight"])
    np.testing.assert_array_equal(init["decoder.0.weight"], full["decoder.1.weight"])
    np.testing.assert_array_equal(init["encoder.1.bias"], full["encoder.1.bias"])


@pytest.mark.parametrize("framework", ["jax", "torch"])
def test_frozen_layers_stay_bit_identical_and_have_no_optimizer_state(
    framework, tmp_path
):
    histories = pretrainer(framework)(
        RUN, tmp_path, data=synthetic_data(), progress=False
    )
    assert list(histories) == ["stage-1", "stage-2", "stage-3", "finetune"]
    assert [len(h) for h in histories.values()] == [2, 1, 1, 2]
    stages = layerwise.stage_schedule(RUN)
    for previous, stage in zip(stages, stages[1:-1]):
        before = load_file(tmp_path / previous.name / "model.safetensors")
        after = load_file(tmp_path / stage.name / "model.safetensors")
        for layer, source in stage.copied.items():
            for leaf in ("weight", "bias"):
                np.testing.assert_array_equal(
                    after[f"{layer}.{leaf}"], before[f"{source}.{leaf}"]
                )
        arrays, _ = rundir.read_train_state(tmp_path / stage.name / rundir.TRAIN_STATE)
        optimizer_keys = [k for k in arrays if "opt" in k and ("mu" in k or "exp" in k)]
        if framework == "jax":  # moments exist for the trained layers only
            layers_with_state = {
                k.split("['")[-2].split("']")[0].replace("_", ".")
                for k in optimizer_keys
            }
        else:  # optim.{index}: the optimizer holds the trained parameters only
            indices = {int(k.split(".")[1]) for k in optimizer_keys}
            assert indices == set(range(2 * len(stage.trained)))
            shapes = [arrays[f"optim.{i}.exp_avg"].shape for i in sorted(indices)]
            assert shapes == [
                after[f"{layer}.{leaf}"].shape
                for layer in sorted(stage.trained)[::-1]  # encoder before decoder
                for leaf in ("weight", "bias")
            ]
            layers_with_state = set(stage.trained)
        assert layers_with_state == set(stage.trained)
    # the trained layers did move, and the fine-tune moved everything
    last = load_file(tmp_path / "stage-3" / "model.safetensors")
    final = load_file(tmp_path / "model.safetensors")
    assert final.keys() == last.keys()
    for k in final:
        assert not np.array_equal(final[k], last[k]), k
    np.testing.assert_array_equal(
        final["encoder.0.weight"],
        load_file(tmp_path / "finetune" / "model.safetensors")["encoder.0.weight"],
    )


def test_optax_frozen_layers_get_no_update_no_decay_no_state():
    from jaxsae.training import make_optimizer

    params = {
        "encoder_0": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones(2)},
        "decoder_0": {"kernel": jnp.ones((2, 3)), "bias": jnp.ones(3)},
    }
    opt = make_optimizer(
        TrainConfig(optimizer="adamw", weight_decay=0.5), 1, {"encoder.0"}
    )
    state = opt.init(params)
    grads = {
        k: {n: jnp.full_like(v, 2.0) for n, v in d.items()} for k, d in params.items()
    }
    for _ in range(3):
        updates, state = opt.update(grads, state, params)
        params = optax.apply_updates(params, updates)
    np.testing.assert_array_equal(params["encoder_0"]["kernel"], np.ones((3, 2)))
    np.testing.assert_array_equal(params["encoder_0"]["bias"], np.ones(2))
    # adamw by hand: a constant gradient makes Adam's normalised step 1, and the
    # decoupled decay adds lr * decay * w
    w = 1.0
    for _ in range(3):
        w -= 1e-3 * (2 / (2 + 1e-8) + 0.5 * w)
    np.testing.assert_allclose(params["decoder_0"]["bias"], w, rtol=1e-6)
    inner = state.inner_state.inner_states["train"].inner_state[0]
    for leaf in ("kernel", "bias"):  # no moments for the frozen layer
        assert isinstance(inner.mu["encoder_0"][leaf], optax.MaskedNode)
        assert isinstance(inner.nu["encoder_0"][leaf], optax.MaskedNode)
    np.testing.assert_allclose(inner.mu["decoder_0"]["bias"], 2 * (1 - 0.9**3))


@pytest.mark.parametrize("framework", ["jax", "torch"])
def test_tied_pretraining_then_untied_fine_tuning(framework, tmp_path):
    run = RunConfig(
        MODEL, dataclasses.replace(RUN.train, layerwise_tied=True, epochs=1)
    )
    pretrainer(framework)(run, tmp_path, data=synthetic_data(), progress=False)
    for name in ("stage-1", "stage-2", "stage-3"):
        sd, config = read_checkpoint(tmp_path / name / "model.safetensors")
        assert config.tied and not any(
            k.startswith("decoder.") and k.endswith("weight") for k in sd
        )
    final, config = read_checkpoint(tmp_path / "model.safetensors")
    assert not config.tied and "decoder.0.weight" in final
    # the fine-tune started from the tied weights, untied
    stages = layerwise.stage_schedule(run)
    tied, tied_config = read_checkpoint(tmp_path / "stage-3" / "model.safetensors")
    start = layerwise.stage_init(stages[-1], tied, tied_config, {})
    for i in range(3):
        np.testing.assert_array_equal(
            start[f"decoder.{i}.weight"], tied[f"encoder.{2 - i}.weight"].T
        )


class Killed(Exception):
    pass


def test_resume_after_a_kill_mid_stage_ends_with_the_same_weights(
    tmp_path, monkeypatch
):
    from jaxsae.layerwise import pretrain

    run = dataclasses.replace(
        RUN, train=dataclasses.replace(RUN.train, layerwise_epochs=(1, 3, 1))
    )
    data = synthetic_data()
    pretrain(run, tmp_path / "straight", data=data, progress=False)

    original = EpochProgress.update
    seen = []

    def kill_in_stage_2(self, row):
        original(self, row)
        seen.append(row["epoch"])
        if len(seen) == 3:  # stage-1's epoch, then stage-2's second epoch
            raise Killed

    monkeypatch.setattr(EpochProgress, "update", kill_in_stage_2)
    with pytest.raises(Killed):
        pretrain(run, tmp_path / "killed", data=data, progress=False)
    monkeypatch.setattr(EpochProgress, "update", original)
    stage_1 = tmp_path / "killed" / "stage-1" / "model.safetensors"
    mtime = stage_1.stat().st_mtime_ns
    metrics = (tmp_path / "killed" / "stage-2" / "metrics.jsonl").read_text()
    assert len(metrics.splitlines()) == 2
    histories = pretrain(
        run, tmp_path / "killed", data=data, progress=False, resume=True
    )
    assert stage_1.stat().st_mtime_ns == mtime  # a finished stage is not run again
    assert [len(h) for h in histories.values()] == [1, 3, 1, 2]
    a = load_file(tmp_path / "straight" / "model.safetensors")
    b = load_file(tmp_path / "killed" / "model.safetensors")
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)

    other = dataclasses.replace(run, model=MODEL.replace(hidden_dims=(10, 8, 2)))
    with pytest.raises(
        CheckpointError, match="holds a finished stage-1 of another model or schedule"
    ):
        pretrain(other, tmp_path / "killed", data=data, progress=False, resume=True)


def test_init_must_be_the_whole_model_as_pretrained(tmp_path):
    from jaxsae.layerwise import pretrain
    from jaxsae.training import init_state_dict

    wrong = init_state_dict(MODEL.replace(hidden_dims=(12, 6, 2)), 0)
    with pytest.raises(CheckpointError, match="mis-shaped keys: encoder.1.weight"):
        pretrain(RUN, tmp_path, data=synthetic_data(), progress=False, init=wrong)


def test_layerwise_from_the_command_line(tmp_path):
    """The train command runs the schedule; --init-from must fit the whole model."""
    tiny = tmp_path / "data"
    tiny.mkdir()
    rng = np.random.default_rng(0)
    for field, name in IDX_FILES.items():  # 300 train and 300 test images of noise
        shape = (300, 28, 28) if "images" in field else (300,)
        write_idx(tiny / name, rng.integers(0, 256 if "images" in field else 10, shape))
    common = [
        sys.executable,
        "scripts/train.py",
        "--preset",
        "mnist-layerwise",
        "--data-dir",
        str(tiny),
        "--layerwise-epochs",
        "1,1,1,1",
        "--epochs",
        "1",
        "--batch-size",
        "100",
        "--framework",
        "torch",
    ]
    done = subprocess.run(
        [*common, "--out", str(tmp_path / "run")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert (
        "stage-4 (4/5): 784-128-64-32-2, training encoder.3, decoder.0" in done.stdout
    )
    for stage in ("stage-1", "stage-2", "stage-3", "stage-4", "finetune"):
        rows = (tmp_path / "run" / stage / "metrics.jsonl").read_text().splitlines()
        assert len(rows) == 1 and json.loads(rows[0])["epoch"] == 1
    _, config = read_checkpoint(tmp_path / "run" / "model.safetensors")
    assert config == PRESETS["mnist-layerwise"].model

    other, other_config = read_checkpoint(
        tmp_path / "run" / "stage-2" / "model.safetensors"
    )
    write_checkpoint(tmp_path / "stage2.safetensors", other, other_config)
    bad = subprocess.run(
        [
            *common,
            "--init-from",
            str(tmp_path / "stage2.safetensors"),
            "--out",
            str(tmp_path / "bad"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2
    assert "missing keys: encoder.2.weight" in bad.stderr


@pytest.mark.parametrize("framework", ["jax", "torch"])
def test_freezing_an_unknown_layer_is_a_clear_error(framework, tmp_path):
    from test_training import trainer

    run = RunConfig(MODEL, TrainConfig(epochs=1, batch_size=32))
    with pytest.raises(
        ValueError,
        match=r"cannot freeze encoder.7: the model's layers are encoder.0, encoder.1, "
        r"encoder.2, decoder.0",
    ):
        trainer(framework)(
            run, tmp_path, data=synthetic_data(), progress=False, frozen={"encoder.7"}
        )
