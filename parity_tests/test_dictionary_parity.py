"""Dictionary SAEs: jaxsae and torchsae compute the same losses, masks and gradients
(the JumpReLU threshold's pseudo-gradient included), and train to the same weights.

The batches are built to tie: duplicated tokens, a token equal to b_dec (so its
pre-activation is exactly b_enc, with exact zeros after the ReLU), two latents with
identical encoder columns (equal values at every rank, the k-th included), and
JumpReLU thresholds set exactly to pre-activation values. Weights come from numpy
(saecommon.dictionary.init_state_dict) and go into both packages.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxsae import dictionary as jd
from parity_tests.harness import compare, on_device
from saecommon.dictionary import init_state_dict
from saecommon.dictionary_config import DictConfig, DictTrainConfig
from saecommon.schedules import coefficients
from torchsae import dictionary as td

D_IN, D_SAE, TOKENS, K = 12, 40, 24, 4

CASES = {
    "relu": (dict(activation="relu"), dict()),
    "relu-decnorm": (
        dict(activation="relu"),
        dict(l1_decoder_norm=True, normalize_decoder=False),
    ),
    "topk": (dict(activation="topk", k=K), dict()),
    "topk-aux": (dict(activation="topk", k=K), dict(aux_k=6)),
    "topk-aux-resvar": (
        dict(activation="topk", k=K, subtract_b_dec=False),
        dict(aux_k=8, aux_normalization="residual_variance"),
    ),
    "batchtopk": (dict(activation="batchtopk", k=K), dict()),
    "batchtopk-aux": (
        dict(activation="batchtopk", k=K),
        dict(aux_k=5, aux_normalization="none"),
    ),
    "jumprelu-log": (
        dict(activation="jumprelu", threshold_param="log"),
        dict(bandwidth=0.05),
    ),
    "jumprelu-raw": (
        dict(activation="jumprelu", threshold_param="raw", subtract_b_dec=False),
        dict(bandwidth=0.05),
    ),
    "matryoshka-aux": (
        dict(activation="matryoshka", k=K, matryoshka_widths=(5, 17)),
        dict(aux_k=4),
    ),
}


def tied_case(name: str, dtype):
    """(config, train, state dict, batch x, dead) for case ``name``, built to tie."""
    model_kw, train_kw = CASES[name]
    config = DictConfig(d_in=D_IN, d_sae=D_SAE, **model_kw)
    train = DictTrainConfig(b_dec_init="zeros", threshold_init=0.1, **train_kw)
    rng = np.random.default_rng(7)
    sd = init_state_dict(config, train)
    sd["b_dec"] = rng.normal(0, 0.3, D_IN).astype(np.float32)
    sd["b_enc"] = rng.normal(0, 0.2, D_SAE).astype(np.float32)
    sd["W_enc"] = sd["W_enc"] + rng.normal(0, 0.1, sd["W_enc"].shape).astype(np.float32)
    # Latents 3 and 9 are identical: equal values at every rank on every token.
    sd["W_enc"][:, 9] = sd["W_enc"][:, 3]
    sd["b_enc"][9] = sd["b_enc"][3]
    x = rng.normal(0, 1, (TOKENS, D_IN)).astype(np.float32)
    x[5] = x[2]  # duplicated tokens: ties across the batch
    x[11] = x[2]
    x[7] = sd["b_dec"]  # pre = b_enc exactly; negative b_enc -> exact zeros
    if config.activation == "jumprelu":
        # thresholds exactly at pre-activation values of token 7 (b_enc), and within
        # the kernel's window of others
        theta = np.abs(rng.normal(0.3, 0.2, D_SAE)).astype(np.float32) + 0.01
        positive = np.flatnonzero(sd["b_enc"] > 0)[:3]
        theta[positive] = sd["b_enc"][positive]
        sd["threshold"] = theta
        if config.subtract_b_dec is False:
            x[7] = 0.0
    if config.activation == "topk":
        # Token 0: latents 3 and 9 tie for the k-th place (b_enc set so that their
        # value lies between the others' (k-1)-th and k-th largest); the tie rule
        # keeps 3.
        xc = x[0].astype(np.float64) - (sd["b_dec"] if config.subtract_b_dec else 0)
        pre = xc @ sd["W_enc"].astype(np.float64) + sd["b_enc"]
        others = np.sort(np.delete(pre, [3, 9]))[::-1]
        target = (others[K - 2] + others[K - 1]) / 2
        sd["b_enc"][[3, 9]] = target - xc @ sd["W_enc"][:, 3].astype(np.float64)
    dead = np.zeros(D_SAE, bool)
    dead[[0, 3, 9, 13, 21, 22, 30, 39]] = True
    sd = {k: v.astype(dtype) for k, v in sd.items()}
    return config, train, sd, x.astype(dtype), dead


def _jax_run(config, train, sd, x, dead, coef):
    params, _ = jd.params_from_state_dict(sd, config)

    def objective(p):
        return jd.loss_terms(p, jnp.asarray(x), jnp.asarray(dead), coef, config, train)

    (loss, terms), grads = jax.value_and_grad(objective, has_aux=True)(params)
    out = {k: np.asarray(v) for k, v in terms.items()}
    out["loss"] = np.asarray(loss)
    out.update({f"grad.{k}": np.asarray(v) for k, v in grads.items()})
    return out


def _torch_run(config, train, sd, x, dead, coef, device):
    params, _ = td.params_from_state_dict(sd, config)
    params = {k: v.detach().to(device).requires_grad_() for k, v in params.items()}
    loss, terms = td.loss_terms(
        params,
        torch.from_numpy(x).to(device),
        torch.from_numpy(dead).to(device),
        coef,
        config,
        train,
    )
    loss.backward()
    out = {k: v.detach().cpu().numpy() for k, v in terms.items()}
    out["loss"] = loss.detach().cpu().numpy()
    out.update({f"grad.{k}": v.grad.cpu().numpy() for k, v in params.items()})
    return out


def _fix_scalars(out: dict, dtype) -> dict:
    """Counts (l0) are floats in both; make every float scalar the case's dtype."""
    return {k: (v.astype(dtype) if v.dtype.kind == "f" else v) for k, v in out.items()}


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_loss_terms_masks_and_gradients_agree(name, dtype, device):
    config, train, sd, x, dead = tied_case(name, dtype)
    coef = 0.7
    with jax.enable_x64(dtype == np.float64), on_device(device) as torch_device:
        got_jax = _fix_scalars(_jax_run(config, train, sd, x, dead, coef), dtype)
        got_torch = _fix_scalars(
            _torch_run(config, train, sd, x, dead, coef, torch_device), dtype
        )
    diffs = compare(got_jax, got_torch, dtype, f"dict-{name}-{device}")
    assert "grad.W_enc" in diffs and "mask" in diffs
    if config.activation == "jumprelu":
        key = (
            "grad.log_threshold"
            if config.threshold_param == "log"
            else "grad.threshold"
        )
        # the pseudo-gradient is not zero: thresholds sit inside the kernel's window
        assert np.abs(got_jax[key]).max() > 0
    if train.aux_k is not None:
        assert got_jax["aux"] > 0 and got_jax["aux_mask"].any()
    if config.activation in ("topk",):
        assert (got_jax["mask"].sum(axis=1) == config.k).all()
        assert got_jax["mask"][0, 3] and not got_jax["mask"][0, 9]  # the k-th tie
    if config.activation in ("batchtopk", "matryoshka"):
        assert got_jax["mask"].sum() == config.k * TOKENS


@pytest.mark.parametrize("name", sorted(CASES))
def test_inference_encoding_agrees(name, device):
    config, train, sd, x, dead = tied_case(name, np.float64)
    threshold = np.float64(0.15)
    with jax.enable_x64(True), on_device(device) as torch_device:
        params_j, _ = jd.params_from_state_dict(sd, config)
        z_j, xh_j = jd.forward(params_j, jnp.asarray(x), config, jnp.asarray(threshold))
        params_t, _ = td.params_from_state_dict(sd, config)
        params_t = {k: v.detach().to(torch_device) for k, v in params_t.items()}
        with torch.no_grad():
            z_t, xh_t = td.forward(
                params_t,
                torch.from_numpy(x).to(torch_device),
                config,
                torch.tensor(threshold).to(torch_device),
            )
    compare(
        {"z": np.asarray(z_j), "x_hat": np.asarray(xh_j), "mask": np.asarray(z_j) != 0},
        {
            "z": z_t.cpu().numpy(),
            "x_hat": xh_t.cpu().numpy(),
            "mask": z_t.cpu().numpy() != 0,
        },
        np.float64,
        f"dict-encode-{name}-{device}",
    )


TRAIN_TOLERANCES = {np.float64: 1e-9, np.float32: 2e-4}
# JumpReLU's output jumps at theta: in float32 a pre-activation within rounding of its
# threshold can land on either side in the two packages, and the runs drift apart by
# more than rounding from there (float64 agrees to 1e-9).
JUMPRELU_F32_TOLERANCE = 2e-3


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize(
    "name", ["topk-aux", "batchtopk", "jumprelu-log", "matryoshka-aux", "relu"]
)
def test_200_steps_end_at_the_same_weights(name, dtype):
    """200 steps from the same init on the same batches (numpy-generated), with the
    learning-rate warm-up and decay, the sparsity warm-up, clipping, the decoder rule,
    the batch threshold and the dead-latent window all active. Weights agree to
    TRAIN_TOLERANCES (max abs difference; float32 drifts by rounding over 200 steps)."""
    model_kw, train_kw = CASES[name]
    config = DictConfig(d_in=D_IN, d_sae=D_SAE, **model_kw)
    train = DictTrainConfig(
        steps=200,
        batch_size=TOKENS,
        learning_rate=3e-3,
        warmup_steps=20,
        decay_steps=40,
        sparsity_warmup_steps=50,
        grad_clip=1.0,
        dead_tokens=TOKENS * 3,
        b_dec_init="mean",
        bandwidth=0.05,
        threshold_init=0.05,
        l1_coefficient=0.05,
        l0_coefficient=0.01,
        **{k: v for k, v in train_kw.items() if k != "bandwidth"},
    )
    rng = np.random.default_rng(3)
    directions = rng.normal(size=(30, D_IN))
    codes = rng.exponential(1.0, (200, TOKENS, 30)) * (
        rng.random((200, TOKENS, 30)) < 0.1
    )
    batches = (codes @ directions + 0.05 * rng.normal(size=(200, TOKENS, D_IN))).astype(
        dtype
    )
    sd = {
        k: v.astype(dtype)
        for k, v in init_state_dict(config, train, batches[0]).items()
    }
    coefs = [coefficients(config, train, s) for s in range(train.steps)]
    with jax.enable_x64(dtype == np.float64):
        state = jd.init_state(sd, config, train)
        step = jd.make_train_step(config, train)
        for s in range(train.steps):
            state, _ = step(state, jnp.asarray(batches[s]), jd.Coefficients(*coefs[s]))
        out_j = jd.to_state_dict(state.params, state.threshold, config)
        since_j = np.asarray(state.since_fired)
    tstate = td.init_state(sd, config, train)
    tstep = td.make_train_step(config, train)
    for s in range(train.steps):
        tstate, _ = tstep(
            tstate, torch.from_numpy(batches[s]), td.Coefficients(*coefs[s])
        )
    out_t = td.to_state_dict(tstate.params, tstate.threshold, config)
    for key in out_j:
        err = np.abs(
            out_j[key].astype(np.float64) - out_t[key].astype(np.float64)
        ).max()
        tol = TRAIN_TOLERANCES[dtype]
        if config.activation == "jumprelu" and dtype == np.float32:
            tol = JUMPRELU_F32_TOLERANCE
        assert err <= tol, f"{name} {key}: max diff {err:.3g}"
        moved = np.abs(out_j[key].astype(np.float64) - sd[key].astype(np.float64)).max()
        if key != "threshold" or config.has_threshold:
            assert moved > 10 * TRAIN_TOLERANCES[dtype], f"{key} did not train"
    np.testing.assert_array_equal(since_j, tstate.since_fired.numpy())


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_decoder_rule_and_threshold_estimate_agree(dtype, device):
    """The decoder-norm rule (the gradient's parallel component removed, rows back to
    unit norm) and the batch threshold's update, in both packages."""
    rng = np.random.default_rng(11)
    w = rng.normal(size=(D_SAE, D_IN)).astype(dtype)
    g = rng.normal(size=(D_SAE, D_IN)).astype(dtype)
    with jax.enable_x64(dtype == np.float64), on_device(device) as torch_device:
        got_j = {
            "projected": np.asarray(
                jd.remove_parallel_component(jnp.asarray(g), jnp.asarray(w))
            ),
            "unit": np.asarray(jd.unit_rows(jnp.asarray(w))),
            "threshold": np.asarray(
                jd.update_threshold(
                    jnp.asarray(dtype(0.3)), jnp.asarray(dtype(0.1)), 0.99
                )
            ),
        }
        tw, tg = (torch.from_numpy(a).to(torch_device) for a in (w, g))
        got_t = {
            "projected": td.remove_parallel_component(tg, tw).cpu().numpy(),
            "unit": td.unit_rows(tw).cpu().numpy(),
            "threshold": td.update_threshold(
                torch.tensor(dtype(0.3)).to(torch_device),
                torch.tensor(dtype(0.1)).to(torch_device),
                0.99,
            )
            .cpu()
            .numpy(),
        }
    compare(got_j, got_t, dtype, f"dict-decoder-rule-{device}")
    assert np.abs(np.sum(got_j["projected"] * got_j["unit"], axis=1)).max() < 1e-4
