"""A denoising training step, in both packages, reconstructs the noisy input but is
scored against the clean batch: its recon metric and its update are computed by hand
from the noise the step drew (``corrupt`` with the same key or generator seed)."""

import dataclasses

import jax
import numpy as np
import pytest
import torch

from saecommon.config import SAEConfig
from saecommon.train_config import TrainConfig

# 6 -> 4 -> 6, untied, identity code: logits = (x @ W0.T + b0) @ W1.T + b1.
CONFIG = SAEConfig(input_dim=6, hidden_dims=(4,), code_activation="identity")
SEED = 7  # the step's noise key (jax) or generator seed (torch)
LR = 0.5


def weights() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    shapes = {
        "encoder.0.weight": (4, 6),
        "encoder.0.bias": (4,),
        "decoder.0.weight": (6, 4),
        "decoder.0.bias": (6,),
    }
    return {k: rng.uniform(-1, 1, shape) for k, shape in shapes.items()}


def one_step(fw, tcfg: TrainConfig, sd, x):
    """One SGD step of ``fw``'s ``make_train_step`` on the clean batch ``x``:
    (recon metric, decoder.0.bias after the update, the noisy input the step used)."""
    if fw.name == "jax":
        import jaxsae
        from jaxsae import training as jt

        opt = jt.make_optimizer(tcfg, 1)
        params = jaxsae.from_state_dict(sd, CONFIG)
        state = jt.TrainState(params, opt.init(params), jax.numpy.zeros((), "int32"))
        batch, key = jax.numpy.asarray(x), jax.random.key(SEED)
        state, metrics = jt.make_train_step(CONFIG, tcfg, opt)(state, batch, key)
        noisy = np.asarray(jt.corrupt(batch, key, tcfg))
        bias = jaxsae.to_state_dict(state.params)["decoder.0.bias"]
        return float(metrics["recon"]), bias, noisy
    import torchsae
    from torchsae import training as tt

    model = torchsae.from_state_dict(sd, CONFIG)
    opt = tt.make_optimizer(tcfg, model.parameters())
    batch = torch.from_numpy(x)
    metrics = tt.make_train_step(CONFIG, tcfg, model, opt)(
        batch, torch.Generator().manual_seed(SEED), 0
    )
    noisy = tt.corrupt(batch, torch.Generator().manual_seed(SEED), tcfg).numpy()
    bias = model.decoder[0].bias.detach().numpy()
    return float(metrics[tt.METRIC_KEYS.index("recon")]), bias, noisy


@pytest.mark.parametrize(
    "tcfg",
    [
        TrainConfig(noise="gaussian", noise_std=0.3),
        TrainConfig(noise="masking", mask_fraction=0.5),
    ],
    ids=["gaussian", "masking"],
)
def test_a_denoising_step_is_scored_against_the_clean_batch(fw, tcfg):
    tcfg = dataclasses.replace(
        tcfg, optimizer="sgd", momentum=0.0, learning_rate=LR, batch_size=8
    )
    sd = weights()
    x = np.random.default_rng(1).uniform(0.2, 0.8, size=(8, 6))  # float64
    recon, bias, noisy = one_step(fw, tcfg, sd, x)
    assert np.abs(noisy - x).max() > 0.1, "the noise left the batch unchanged"

    # By hand, from the noisy input: r = sigmoid(logits), recon = mean((r - x)^2).
    code = noisy @ sd["encoder.0.weight"].T + sd["encoder.0.bias"]
    r = 1 / (1 + np.exp(-(code @ sd["decoder.0.weight"].T + sd["decoder.0.bias"])))
    against_clean = np.mean((r - x) ** 2)
    against_noisy = np.mean((r - noisy) ** 2)
    # The two targets are far apart, so the check below tells them apart.
    assert abs(against_clean - against_noisy) > 1e-3
    assert recon == pytest.approx(against_clean, rel=1e-12), (
        f"recon {recon} vs {against_clean} against the clean batch "
        f"({against_noisy} against the noisy input)"
    )
    # The update follows the clean target too: d recon / d b1 =
    # 2 (r - x) r (1 - r), averaged over the batch*features elements, per feature.
    grad = 2 * ((r - x) * r * (1 - r)).sum(axis=0) / x.size
    np.testing.assert_allclose(
        bias, sd["decoder.0.bias"] - LR * grad, rtol=1e-12, err_msg="decoder.0.bias"
    )
