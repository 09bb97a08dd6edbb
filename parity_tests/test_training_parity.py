"""Training steps and evaluation agree between the packages: from the same weights and
the same batches, each optimizer ends at the same weights; evaluation gives the same
metrics."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jaxsae
import torchsae
from jaxsae import training as jt
from saecommon.config import SAEConfig
from saecommon.train_config import TrainConfig
from torchsae import training as tt

CONFIG = SAEConfig(
    input_dim=20,
    hidden_dims=(16, 8),
    activation="leaky_relu",
    code_activation="relu",
    topk=4,
    lifetime_rate=0.5,
    penalty="l1",
    penalty_weight=1e-2,
    l1_layers="hidden",
    tied=True,
)
# float64: the same math to ~1e-12 after several updates; float32: Adam divides by
# sqrt(v), which amplifies rounding, so a looser absolute bound.
TOL = {np.float64: dict(rtol=1e-9, atol=1e-11), np.float32: dict(rtol=1e-4, atol=2e-5)}
STEPS = 5


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize(
    "optimizer, schedule",
    [("adam", "constant"), ("adamw", "cosine"), ("sgd", "cosine"), ("sgd", "constant")],
)
def test_optimizer_steps_match(optimizer, schedule, dtype):
    tcfg = TrainConfig(
        optimizer=optimizer,
        schedule=schedule,
        learning_rate=0.05,
        weight_decay=0.1,
        momentum=0.9,
        epochs=1,
        batch_size=8,
    )
    rng = np.random.default_rng(0)
    batches = rng.uniform(size=(STEPS, 8, 20)).astype(dtype)
    sd = {
        k: v.astype(dtype)
        for k, v in torchsae.to_state_dict(
            torchsae.Autoencoder(CONFIG, generator=torch.Generator().manual_seed(0))
        ).items()
    }
    with jax.enable_x64(dtype == np.float64):
        opt = jt.make_optimizer(tcfg, STEPS)
        params = jaxsae.from_state_dict(sd, CONFIG)
        state = jt.TrainState(params, opt.init(params), jnp.zeros((), jnp.int32))
        step = jax.jit(jt.make_train_step(CONFIG, tcfg, opt))
        jax_metrics = []
        for i in range(STEPS):
            state, m = step(state, jnp.asarray(batches[i]), jax.random.key(i))
            jax_metrics.append(float(m["loss"]))
        jax_sd = jaxsae.to_state_dict(state.params)

    model = torchsae.from_state_dict(sd, CONFIG)
    topt = tt.make_optimizer(tcfg, model.parameters())
    tstep = tt.make_train_step(CONFIG, tcfg, model, topt, total_steps=STEPS)
    torch_metrics = [
        float(tstep(torch.from_numpy(batches[i]), torch.Generator(), i)[2])
        for i in range(STEPS)
    ]
    torch_sd = torchsae.to_state_dict(model)
    np.testing.assert_allclose(jax_metrics, torch_metrics, **TOL[dtype], err_msg="loss")
    for k in sd:
        assert not np.array_equal(jax_sd[k], sd[k]), f"{k} did not move"
        np.testing.assert_allclose(jax_sd[k], torch_sd[k], **TOL[dtype], err_msg=k)


def test_evaluation_matches_with_a_remainder_batch():
    rng = np.random.default_rng(1)
    data = rng.uniform(size=(70, 20)).astype(np.float32)  # 2 batches of 32 + 6
    model = torchsae.Autoencoder(
        CONFIG.replace(topk=2), generator=torch.Generator().manual_seed(1)
    )
    model.eval()
    sd = torchsae.to_state_dict(model)
    params = jaxsae.from_state_dict(sd, model.config)
    a = jt.make_eval_metrics(model.config, 32)(params, jnp.asarray(data))
    b = tt.eval_metrics(model, torch.from_numpy(data), 32)
    assert a.keys() == b.keys()  # which keys: tests/test_training.py
    for k in a:
        assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-7), k
    # By hand: l0 is top-2 everywhere (relu codes here have > 2 positive units or ties)
    assert a["l0"] <= 2


def test_a_numpy_shuffle_gives_both_packages_the_same_run(tmp_path):
    """shuffle_source "numpy": both packages visit epoch e in the order
    ``epoch_order`` draws, so two epochs from one init end at the same weights; the
    order is not the data's own (an in-order run ends elsewhere)."""
    from conftest import synthetic_data
    from saecommon.checkpoint import read_checkpoint
    from saecommon.train_config import RunConfig

    model = CONFIG.replace(input_dim=16, tied=False)
    init = tt.init_state_dict(model, 0)
    data = synthetic_data()
    tcfg = TrainConfig(epochs=2, batch_size=32, eval_batch_size=32, seed=5)
    ends = {}
    for name, train, shuffle in (
        ("jax", jt.train, dict(shuffle_source="numpy")),
        ("torch", tt.train, dict(shuffle_source="numpy")),
        ("in order", tt.train, dict(shuffle=False)),
    ):
        run = RunConfig(model, dataclasses.replace(tcfg, **shuffle))
        history = train(run, tmp_path / name, data=data, progress=False, init=init)
        ends[name] = read_checkpoint(tmp_path / name / "model.safetensors")[0], history
    (jax_sd, jax_h), (torch_sd, torch_h) = ends["jax"], ends["torch"]
    for k in init:
        np.testing.assert_allclose(jax_sd[k], torch_sd[k], rtol=1e-5, atol=5e-6)
    for a, b in zip(jax_h, torch_h):
        assert a["train/loss"] == pytest.approx(b["train/loss"], rel=1e-5)
    in_order = ends["in order"][0]
    assert max(np.abs(in_order[k] - torch_sd[k]).max() for k in init) > 1e-3
