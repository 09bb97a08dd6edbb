"""The trainers of both packages: run directory, metrics, resume, divergence, noise,
schedules. Small synthetic data so each run takes a second or two."""

import dataclasses
import json
import math

import jax
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from conftest import synthetic_data
from saecommon import data as data_layer
from saecommon import frameworks, recorder, rundir
from saecommon.checkpoint import CheckpointError
from saecommon.config import SAEConfig
from saecommon.data import DataError
from saecommon.progress import EpochProgress
from saecommon.schedules import Plateau, cosine_lr
from saecommon.train_config import RunConfig, TrainConfig

MODEL = SAEConfig(
    input_dim=16,
    hidden_dims=(12, 6),
    activation="leaky_relu",
    code_activation="relu",
    topk=3,
    lifetime_rate=0.5,
    penalty="l1",
    penalty_weight=1e-3,
)


def trainer(name):
    return frameworks.load(name, "cpu").train


@pytest.fixture(params=["jax", "torch"])
def framework(request):
    return request.param


def run_config(**train):
    fields = dict(epochs=3, batch_size=32, eval_batch_size=32, seed=3)
    fields.update(train)
    return RunConfig(MODEL, TrainConfig(**fields))


def test_a_run_leaves_its_files_and_metrics(framework, tmp_path):
    history = trainer(framework)(
        run_config(), tmp_path, data=synthetic_data(), progress=False
    )
    assert [r["epoch"] for r in history] == [1, 2, 3]
    keys = {
        "epoch",
        "lr",
        "seconds",
        *(f"train/{k}" for k in ("recon", "penalty", "loss", "l0")),
        *(
            f"test/{k}"
            for k in (
                "recon",
                "penalty",
                "loss",
                "l0",
                "dead_fraction",
                "constant_fraction",
            )
        ),
    }
    assert set(history[0]) == keys
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == history
    for row in history:
        assert row["train/loss"] == pytest.approx(
            row["train/recon"] + row["train/penalty"]
        )
        assert 0 < row["train/l0"] <= 3  # top-3 per sample, then lifetime
        assert 0 <= row["test/dead_fraction"] <= row["test/constant_fraction"] <= 1
    assert history[-1]["train/loss"] < history[0]["train/loss"]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["epochs"] == 3
    assert RunConfig.from_json((tmp_path / "config.json").read_text()) == run_config()
    for picture in (
        "loss_curves.png",
        "reconstructions.png",
        "dictionary.png",
        "codes.png",
    ):
        assert (tmp_path / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The checkpoint is portable: both packages load it.
    import jaxsae
    import torchsae

    assert jaxsae.load_checkpoint(tmp_path / "model.safetensors")[1] == MODEL
    assert torchsae.load_checkpoint(tmp_path / "model.safetensors")[1] == MODEL


class Killed(Exception):
    pass


@pytest.mark.parametrize("schedule", ["constant", "cosine", "plateau"])
def test_resume_after_a_kill_ends_with_the_same_weights(
    framework, schedule, tmp_path, monkeypatch
):
    run = run_config(
        epochs=4,
        schedule=schedule,
        plateau_patience=0,
        noise="gaussian",
        noise_std=0.2,
        optimizer="adamw",
    )
    data = synthetic_data()
    train = trainer(framework)
    train(run, tmp_path / "straight", data=data, progress=False)

    original = EpochProgress.update

    def kill_after_epoch_2(self, row):
        original(self, row)
        if row["epoch"] == 2:
            raise Killed

    monkeypatch.setattr(EpochProgress, "update", kill_after_epoch_2)
    with pytest.raises(Killed):
        train(run, tmp_path / "killed", data=data, progress=True)
    monkeypatch.setattr(EpochProgress, "update", original)
    assert len((tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()) == 2
    history = train(run, tmp_path / "killed", data=data, progress=False, resume=True)

    a = load_file(tmp_path / "straight" / "model.safetensors")
    b = load_file(tmp_path / "killed" / "model.safetensors")
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    straight = [json.loads(x) for x in (tmp_path / "straight" / "metrics.jsonl").open()]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in history] == [
        {k: v for k, v in r.items() if k != "seconds"} for r in straight
    ]


def test_a_batch_larger_than_the_training_set_is_refused_before_anything(
    framework, tmp_path
):
    data = synthetic_data()  # 320 training samples
    with pytest.raises(
        ValueError, match=r"batch_size 512 is larger than the training set \(320\)"
    ):
        trainer(framework)(
            run_config(batch_size=512, schedule="cosine"), tmp_path / "run", data=data
        )
    assert not (tmp_path / "run").exists()


def test_resume_refuses_another_config_or_framework(framework, tmp_path):
    data = synthetic_data()
    trainer(framework)(run_config(epochs=1), tmp_path, data=data, progress=False)
    with pytest.raises(CheckpointError, match="another config; only --epochs"):
        trainer(framework)(
            run_config(epochs=2, seed=4), tmp_path, data=data, resume=True
        )
    other = "torch" if framework == "jax" else "jax"
    with pytest.raises(
        CheckpointError, match=f"resume it with --framework {framework}"
    ):
        trainer(other)(run_config(epochs=2), tmp_path, data=data, resume=True)
    with pytest.raises(rundir.RunDirError, match="nothing to resume"):
        trainer(framework)(run_config(), tmp_path / "empty", data=data, resume=True)


def test_a_nan_loss_stops_and_keeps_the_last_good_checkpoint(
    framework, tmp_path, monkeypatch
):
    data = synthetic_data()
    trainer(framework)(
        run_config(epochs=1), tmp_path / "one", data=data, progress=False
    )
    original = recorder.epoch_means

    def nan_in_epoch_2(step_metrics, epoch, prefix="train", **kwargs):
        if epoch == 1:
            step_metrics = {k: np.array(v, copy=True) for k, v in step_metrics.items()}
            step_metrics["loss"][6] = np.nan
        return original(step_metrics, epoch, prefix, **kwargs)

    monkeypatch.setattr(recorder, "epoch_means", nan_in_epoch_2)
    with pytest.raises(
        recorder.TrainingDiverged, match="became nan at epoch 2, step 7 of 10"
    ):
        trainer(framework)(run_config(), tmp_path / "nan", data=data, progress=False)
    assert len((tmp_path / "nan" / "metrics.jsonl").read_text().splitlines()) == 1
    a = load_file(tmp_path / "one" / "model.safetensors")
    b = load_file(tmp_path / "nan" / "model.safetensors")
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.parametrize("split", ["train", "val"])
def test_non_finite_data_is_refused_before_training(framework, tmp_path, split):
    # Once reported as "the loss became nan" (divergence) after an epoch of training.
    data = synthetic_data()
    x = getattr(data, split).copy()
    x[5, 7] = np.nan
    with pytest.raises(DataError) as err:
        trainer(framework)(
            run_config(),
            tmp_path / "run",
            data=dataclasses.replace(data, **{split: x}),
            progress=False,
        )
    assert str(err.value) == (
        f"PreparedData.{split} has 1 non-finite entries (1 NaN, 0 inf) of "
        f"{x.size}; the first is at index (5, 7)"
    )
    assert not (tmp_path / "run").exists()


def test_a_real_divergence_is_caught(framework, tmp_path):
    # A linear model (no ReLU to go dead) with a huge step: weights overflow to inf.
    linear = SAEConfig(
        input_dim=16,
        hidden_dims=(6,),
        activation="identity",
        code_activation="identity",
        output_activation="identity",
    )
    run = RunConfig(linear, run_config(optimizer="sgd", learning_rate=1e30).train)
    with pytest.raises(recorder.TrainingDiverged, match="at epoch 1, step"):
        trainer(framework)(run, tmp_path, data=synthetic_data(), progress=False)
    assert not (tmp_path / "model.safetensors").exists()


def test_plateau_by_hand():
    p = Plateau(factor=0.1, patience=2)
    lrs = [p.step(v, 1.0) for v in (5.0, 4.0, 4.0, 4.0)]
    assert lrs == [1.0, 1.0, 1.0, 1.0]  # two bad epochs: not yet more than patience
    assert p.step(4.0, 1.0) == pytest.approx(0.1)  # the third bad epoch reduces
    assert p.bad_epochs == 0
    assert p.step(3.9999, 0.1) == 0.1  # within the 1e-4 relative threshold: still bad
    assert p.bad_epochs == 1


def test_cosine_lr_by_hand_and_matches_optax():
    import optax

    assert cosine_lr(2.0, 0, 100) == 2.0
    assert cosine_lr(2.0, 50, 100) == pytest.approx(1.0)
    assert cosine_lr(2.0, 25, 100) == pytest.approx(1 + math.sqrt(0.5))
    assert cosine_lr(2.0, 100, 100) == cosine_lr(2.0, 150, 100) == pytest.approx(0)
    schedule = optax.cosine_decay_schedule(2.0, 100)
    for step in (0, 1, 33, 50, 99, 100, 120):
        assert float(schedule(step)) == pytest.approx(
            cosine_lr(2.0, step, 100), abs=1e-6
        )


@pytest.mark.parametrize("noise", ["gaussian", "masking"])
def test_noise(framework, noise):
    tcfg = TrainConfig(noise=noise, noise_std=0.3, mask_fraction=0.25)
    x = np.full((200, 500), 0.5, np.float32)
    if framework == "jax":
        from jaxsae.training import corrupt

        out = np.asarray(
            corrupt(jax.numpy.asarray(x), jax.random.key(0), tcfg, (0.0, 1.0))
        )
    else:
        from torchsae.training import corrupt

        g = torch.Generator().manual_seed(0)
        out = corrupt(torch.from_numpy(x), g, tcfg, (0.0, 1.0)).numpy()
    if noise == "masking":
        assert set(np.unique(out)) == {0.0, 0.5}
        assert (out == 0).mean() == pytest.approx(0.25, abs=0.005)
    else:
        assert out.min() >= 0 and out.max() <= 1  # clipped
        # the std of N(0, 0.3^2) clipped to [-0.5, 0.5], estimated with numpy
        clipped = np.clip(np.random.default_rng(0).normal(0, 0.3, 10**6), -0.5, 0.5)
        assert (out - 0.5).std() == pytest.approx(clipped.std(), abs=0.005)
        assert (out - 0.5).mean() == pytest.approx(0, abs=0.01)


@pytest.mark.parametrize("noise", ["gaussian", "masking"])
def test_noise_acts_in_the_symmetric_space(framework, noise):
    """pixel_scale symmetric: the std is in [-1, 1] units and the noise is clipped to
    the pixel range (-1, 1); masking sets pixels to pixel 0, which is -1 there."""
    tcfg = TrainConfig(noise=noise, noise_std=1.0, mask_fraction=0.25)
    x = np.zeros((200, 500), np.float32)  # pixel 0.5, the middle of [-1, 1]
    if framework == "jax":
        from jaxsae.training import corrupt

        out = np.asarray(
            corrupt(jax.numpy.asarray(x), jax.random.key(0), tcfg, (-1.0, 1.0))
        )
    else:
        from torchsae.training import corrupt

        g = torch.Generator().manual_seed(0)
        out = corrupt(torch.from_numpy(x), g, tcfg, (-1.0, 1.0)).numpy()
    if noise == "masking":
        assert set(np.unique(out)) == {-1.0, 0.0}
        assert (out == -1).mean() == pytest.approx(0.25, abs=0.005)
        return
    assert out.min() == -1 and out.max() == 1  # clipped at both ends
    # P(|N(0, 1)| >= 1) = 0.3173: the share of pixels clipped by a std of 1
    assert (np.abs(out) == 1).mean() == pytest.approx(0.3173, abs=0.005)
    clipped = np.clip(np.random.default_rng(0).normal(0, 1.0, 10**6), -1, 1)
    assert out.std() == pytest.approx(clipped.std(), abs=0.005)  # 0.7187 by numpy


def test_a_tanh_run_on_symmetric_pixels_with_gaussian_noise(
    framework, tmp_path, monkeypatch
):
    """The tanh tutorial's setup end to end (mnist-tanh-kl-denoise on 16 pixels):
    prepare_data scales to [-1, 1] and the trainer learns there, noise of std 1
    included."""
    from saecommon.presets import PRESETS

    rng = np.random.default_rng(0)
    fake = data_layer.Dataset(
        "fake",
        rng.integers(0, 256, (320, 4, 4), dtype=np.uint8),
        rng.integers(0, 10, 320),
        rng.integers(0, 256, (70, 4, 4), dtype=np.uint8),
        rng.integers(0, 10, 70),
    )
    preset = PRESETS["mnist-tanh-kl-denoise"]
    run = RunConfig(
        preset.model.replace(input_dim=16, hidden_dims=(6,)),
        dataclasses.replace(preset.train, epochs=3, batch_size=32, eval_batch_size=32),
    )
    monkeypatch.setattr(data_layer, "load_dataset", lambda spec: fake)
    data = data_layer.prepare_data(run)
    assert data.pixel_range == (-1.0, 1.0) and data.train.min() == -1.0
    history = trainer(framework)(run, tmp_path, data=data, progress=False)
    assert history[-1]["train/loss"] < history[0]["train/loss"]
    assert all(math.isfinite(row["test/recon"]) for row in history)
    assert (tmp_path / "reconstructions.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_data_of_the_wrong_width_is_a_clear_error(monkeypatch):
    fake = data_layer.Dataset(
        "fake",
        np.zeros((10, 5, 5), np.uint8),
        np.zeros(10, np.int64),
        np.zeros((4, 5, 5), np.uint8),
        np.zeros(4, np.int64),
    )
    monkeypatch.setattr(data_layer, "load_dataset", lambda spec: fake)
    with pytest.raises(DataError, match=r"25 pixels per sample .* input_dim is 16"):
        data_layer.prepare_data(RunConfig(MODEL, TrainConfig()))


@pytest.mark.parametrize("architecture", ["conv", "fullconv"])
def test_conv_architectures_train(framework, architecture, tmp_path):
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(96, 784)).astype(np.float32)
    y = rng.integers(0, 10, 96)
    data = data_layer.PreparedData(
        x[:64], y[:64], x[64:], y[64:], x[64:], y[64:], (0.0, 1.0), (28, 28), None, True
    )
    model = SAEConfig(
        architecture=architecture, topk=30, penalty="l1", penalty_weight=1e-3
    )
    run = RunConfig(model, TrainConfig(epochs=2, batch_size=16, eval_batch_size=32))
    history = trainer(framework)(run, tmp_path, data=data, progress=False)
    assert history[-1]["train/loss"] < history[0]["train/loss"]
    assert history[-1]["test/l0"] <= 30
    assert (tmp_path / "dictionary.png").read_bytes()[:4] == b"\x89PNG"


def test_tied_then_untied_fine_tuning(framework, tmp_path):
    from saecommon.checkpoint import CheckpointError, initial_state_dict

    data = synthetic_data()
    tied_model = MODEL.replace(tied=True, topk=None, lifetime_rate=None)
    tied = RunConfig(tied_model, run_config(epochs=3).train)
    tied_history = trainer(framework)(
        tied, tmp_path / "tied", data=data, progress=False
    )
    untied = RunConfig(tied_model.replace(tied=False), run_config(epochs=2).train)
    init = initial_state_dict(tmp_path / "tied" / "model.safetensors", untied.model)
    tied_sd = load_file(tmp_path / "tied" / "model.safetensors")
    np.testing.assert_array_equal(
        init["decoder.0.weight"], tied_sd["encoder.1.weight"].T
    )
    np.testing.assert_array_equal(
        init["decoder.1.weight"], tied_sd["encoder.0.weight"].T
    )
    fine = trainer(framework)(
        untied, tmp_path / "untied", data=data, progress=False, init=init
    )
    fresh = trainer(framework)(untied, tmp_path / "fresh", data=data, progress=False)
    # Fine-tuning continues from the tied model instead of starting over.
    assert fine[0]["test/loss"] < fresh[0]["test/loss"]
    assert fine[-1]["test/loss"] <= tied_history[-1]["test/loss"] * 1.02
    with pytest.raises(CheckpointError, match="mis-shaped keys: encoder.1.weight"):
        initial_state_dict(
            tmp_path / "tied" / "model.safetensors",
            untied.model.replace(hidden_dims=(12, 5)),
        )


def test_tied_weights_are_updated_once(framework):
    # recon = w * (w * x) with w = 3, x = 2: loss = (18 - 2)^2 = 256,
    # dL/dw = 2 * 16 * (2 * w * x) = 384; SGD lr 0.1: w = 3 - 38.4 = -35.4
    # (a double update would give -73.8).
    cfg = SAEConfig(
        input_dim=1,
        hidden_dims=(1,),
        activation="identity",
        code_activation="identity",
        output_activation="identity",
        tied=True,
    )
    tcfg = TrainConfig(optimizer="sgd", momentum=0.0, learning_rate=0.1, batch_size=1)
    sd = {
        "encoder.0.weight": np.array([[3.0]], np.float32),
        "encoder.0.bias": np.zeros(1, np.float32),
        "decoder.0.bias": np.zeros(1, np.float32),
    }
    x = np.array([[2.0]], np.float32)
    if framework == "jax":
        import jaxsae
        from jaxsae import training as jt

        opt = jt.make_optimizer(tcfg, 1)
        params = jaxsae.from_state_dict(sd, cfg)
        state = jt.TrainState(params, opt.init(params), jax.numpy.zeros((), "int32"))
        state, metrics = jt.make_train_step(cfg, tcfg, opt)(state, x, jax.random.key(0))
        loss = float(metrics["loss"])
        w = jaxsae.to_state_dict(state.params)["encoder.0.weight"]
        n_leaves = len(jax.tree.leaves(state.opt_state.inner_state[0].trace))
    else:
        import torchsae
        from torchsae import training as tt

        model = torchsae.from_state_dict(sd, cfg)
        opt = tt.make_optimizer(tcfg, model.parameters())
        metrics = tt.make_train_step(cfg, tcfg, model, opt)(
            torch.from_numpy(x), torch.Generator(), 0
        )
        loss = float(metrics[2])  # recon, penalty, loss, l0
        w = model.encoder[0].weight.detach().numpy()
        n_leaves = len(opt.param_groups[0]["params"])
    assert loss == 256.0  # computed before the update
    assert w.item() == pytest.approx(-35.4, rel=1e-6)
    assert n_leaves == 3  # the shared weight and two biases: the weight is counted once


def test_a_collapsed_code_is_reported(framework, tmp_path):
    """A code that is zero on every sample warns once, naming the epoch."""
    from jaxsae.training import init_state_dict

    init = init_state_dict(MODEL, 0)
    init["encoder.1.bias"] = np.full_like(init["encoder.1.bias"], -100.0)  # ReLU: dead
    with pytest.warns(recorder.DeadCodeWarning, match="collapsed at epoch 1") as caught:
        history = trainer(framework)(
            run_config(epochs=2),
            tmp_path,
            data=synthetic_data(),
            progress=False,
            init=init,
        )
    assert len(caught) == 1 and history[-1]["test/dead_fraction"] == 1.0
    assert history[-1]["test/constant_fraction"] == 1.0
    assert history[-1]["train/l0"] == 0.0


def test_a_code_left_constant_by_a_dead_inner_layer_is_reported(framework, tmp_path):
    """A dead hidden layer leaves the code one non-zero vector for every input (what
    stalled jaxsae's seed-42 ivlabs-l1 run): reported as a collapse too."""
    from jaxsae.training import init_state_dict

    model = MODEL.replace(activation="relu", topk=None, lifetime_rate=None)
    init = init_state_dict(model, 0)
    init["encoder.0.bias"] = np.full_like(init["encoder.0.bias"], -100.0)
    init["encoder.1.bias"] = np.full_like(init["encoder.1.bias"], 1.0)
    with pytest.warns(recorder.DeadCodeWarning, match="an inner layer died") as caught:
        history = trainer(framework)(
            RunConfig(model, run_config(epochs=2).train),
            tmp_path,
            data=synthetic_data(),
            progress=False,
            init=init,
        )
    assert len(caught) == 1
    assert [r["test/constant_fraction"] for r in history] == [1.0, 1.0]
    assert [r["test/dead_fraction"] for r in history] == [0.0, 0.0]
    assert history[-1]["test/l0"] == 6.0  # all six units on, the same for every input


def test_evaluation_counts_dead_and_constant_units_by_hand(framework):
    """Units 0 and 1 ignore the input (zero weights) with biases -1 and 0.5: after the
    ReLU one is always 0 (dead), one always 0.5 (constant); the other four vary."""
    from jaxsae.training import init_state_dict

    model = MODEL.replace(hidden_dims=(6,), topk=None, lifetime_rate=None)
    sd = {k: np.array(v) for k, v in init_state_dict(model, 1).items()}
    sd["encoder.0.weight"][:2] = 0.0
    sd["encoder.0.bias"][:2] = [-1.0, 0.5]
    data = synthetic_data().test[:70]  # two batches of 32 and a remainder of 6
    if framework == "jax":
        import jaxsae
        from jaxsae.training import make_eval_metrics

        metrics = make_eval_metrics(model, 32)(jaxsae.from_state_dict(sd, model), data)
    else:
        import torchsae
        from torchsae.training import eval_metrics

        model_ = torchsae.from_state_dict(sd, model)
        metrics = eval_metrics(model_, torch.from_numpy(data), 32)
    assert metrics["dead_fraction"] == 1 / 6
    assert metrics["constant_fraction"] == 2 / 6


def test_the_scan_reports_each_step_and_takes_the_order_given():
    """With step callbacks the scan calls on_step(done, steps) once per step, in
    order, and computes what it computes without them; an order numpy drew is the
    order used."""
    import jax.numpy as jnp

    from jaxsae import training as jt

    tcfg = TrainConfig(batch_size=32, noise="gaussian", optimizer="adamw")
    opt = jt.make_optimizer(tcfg, 10)
    params = jt.init_params(MODEL, jax.random.key(0))
    step = jt.make_train_step(MODEL, tcfg, opt)
    data = jnp.asarray(synthetic_data().train)
    numpy_order = jnp.asarray(np.random.default_rng(0).permutation(len(data)), "int32")
    results, calls = {}, []
    for callbacks in (False, True):
        for order in (None, numpy_order):
            fresh = jax.tree.map(jnp.copy, params)  # an epoch donates its state
            state = jt.TrainState(fresh, opt.init(fresh), jnp.zeros((), jnp.int32))
            epoch = jt.make_train_epoch(step, 32, step_callbacks=callbacks)
            state, metrics = epoch(
                state, data, jax.random.key(7), order, lambda *a: calls.append(a)
            )
            jax.effects_barrier()
            results[callbacks, order is None] = (state, metrics)
    assert calls == [(i, 10) for i in range(1, 11)] * 2
    for own_order in (True, False):
        (a, ma), (b, mb) = results[False, own_order], results[True, own_order]
        assert int(a.step) == int(b.step) == 10 and mb["loss"].shape == (10,)
        np.testing.assert_array_equal(ma["loss"], mb["loss"])
        for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
            np.testing.assert_array_equal(x, y)
    own, given = results[False, True][1]["loss"], results[False, False][1]["loss"]
    assert np.abs(own - given).max() > 1e-3  # the order given is the order used


def test_a_bfloat16_run_trains_close_to_float32_and_records_its_precision(
    framework, tmp_path
):
    """precision bfloat16 (mixed precision; the packages compared step by step in
    parity_tests/test_mixed_precision.py): a tiny run, lifetime top-k included, ends
    near float32's losses without being float32's; evaluation and the checkpoint are
    float32; config.json records the precision, and a config.json from before the
    field loads as float32."""
    histories = {}
    for precision in ("float32", "bfloat16"):
        histories[precision] = trainer(framework)(
            run_config(epochs=2, precision=precision),
            tmp_path / precision,
            data=synthetic_data(),
            progress=False,
        )
    for f32, bf16 in zip(histories["float32"], histories["bfloat16"]):
        for key in ("train/loss", "test/loss"):
            assert bf16[key] != f32[key], f"{key}: bfloat16 gave float32's"
            assert bf16[key] == pytest.approx(f32[key], rel=0.02), key
    out = tmp_path / "bfloat16"
    weights = load_file(out / "model.safetensors")
    assert {v.dtype for v in weights.values()} == {np.dtype(np.float32)}
    assert rundir.read_run_config(out).train.precision == "bfloat16"
    saved = json.loads((out / "config.json").read_text())
    assert saved["train"]["precision"] == "bfloat16"
    del saved["train"]["precision"]
    old = RunConfig.from_json(json.dumps(saved))
    assert old.train.precision == "float32"
