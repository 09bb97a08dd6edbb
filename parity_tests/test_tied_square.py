"""A tied model whose encoder weight is square and not symmetric: the one case where a
decoder that forgets the transpose still has the right shape. Checked by hand (numpy),
against finite differences, and across the two packages.

A tied decoder layer i uses its mirror encoder weight W [out, in] transposed, so in
PyTorch's layout it computes ``h @ (W.T).T + b = h @ W + b``; the bug computes
``h @ W.T + b``, which differs only when W is square and not symmetric."""

import jax
import numpy as np
import pytest

from parity_tests.harness import TOLERANCES, compare, on_device, run_jax, run_torch
from saecommon.checkpoint import expected_shapes
from saecommon.config import SAEConfig

CASES = {
    # one square layer: 4 -> 4 (code) -> 4
    "square": SAEConfig(
        input_dim=4,
        hidden_dims=(4,),
        code_activation="identity",
        tied=True,
    ),
    # a square inner layer behind a non-square one: 5 -> 4 -> 4 (code) -> 4 -> 5
    "square_inner": SAEConfig(
        input_dim=5,
        hidden_dims=(4, 4),
        activation="leaky_relu",
        negative_slope=0.1,
        code_activation="identity",
        tied=True,
    ),
}


def weights(config: SAEConfig) -> dict[str, np.ndarray]:
    """float64 weights in PyTorch layout, U(-1, 1): every square weight is far from
    symmetric (asserted, so the case keeps telling W from W.T)."""
    rng = np.random.default_rng(12)
    sd = {k: rng.uniform(-1, 1, shape) for k, shape in expected_shapes(config).items()}
    for name, w in sd.items():
        if w.ndim == 2 and w.shape[0] == w.shape[1]:
            assert np.abs(w - w.T).max() > 0.5, f"{name} is nearly symmetric"
    return sd


def batch(config: SAEConfig) -> np.ndarray:
    return np.random.default_rng(3).uniform(size=(6, config.input_dim))


def hand_forward(sd, config: SAEConfig, x, transpose_tied: bool = True):
    """(logits, reconstruction) in numpy. ``transpose_tied=False`` is the bug: the
    decoder uses a square encoder weight as it is stored (a non-square one would not
    fit)."""

    def leaky(h):
        return np.where(h > 0, h, config.negative_slope * h)

    n = len(config.hidden_dims)
    h = x
    for i in range(n):  # encoder: h @ W.T + b, leaky_relu except at the code
        h = h @ sd[f"encoder.{i}.weight"].T + sd[f"encoder.{i}.bias"]
        if i < n - 1:
            h = leaky(h)
    for i in range(n):  # decoder i uses encoder n-1-i's weight W [out, in]: h @ W + b
        w = sd[f"encoder.{n - 1 - i}.weight"]
        if not transpose_tied and w.shape[0] == w.shape[1]:
            w = w.T
        h = h @ w + sd[f"decoder.{i}.bias"]
        if i < n - 1:
            h = leaky(h)
    return h, 1 / (1 + np.exp(-h))


def hand_loss(sd, config, x) -> float:
    """The objective with no penalty: mean squared error over every element."""
    return float(np.mean((hand_forward(sd, config, x)[1] - x) ** 2))


def finite_difference_grads(sd, config, x, eps=1e-6) -> dict[str, np.ndarray]:
    """Central differences of ``hand_loss`` for every parameter entry (float64)."""
    grads = {}
    for name, value in sd.items():
        g = np.zeros_like(value)
        for i in np.ndindex(value.shape):
            up, down = dict(sd), dict(sd)
            up[name], down[name] = value.copy(), value.copy()
            up[name][i] += eps
            down[name][i] -= eps
            g[i] = (hand_loss(up, config, x) - hand_loss(down, config, x)) / (2 * eps)
        grads[name] = g
    return grads


@pytest.mark.parametrize("case", CASES)
def test_tied_square_forward_by_hand(fw, case):
    config = CASES[case]
    sd, x = weights(config), batch(config)
    logits, reconstruction = hand_forward(sd, config, x)
    # The case separates the right decoder from one that skips the transpose.
    _, untransposed = hand_forward(sd, config, x, transpose_tied=False)
    assert np.abs(untransposed - reconstruction).max() > 0.05
    out = fw.forward(sd, config, x)
    np.testing.assert_allclose(
        fw.numpy(out.logits), logits, rtol=1e-12, atol=1e-14, err_msg="logits"
    )
    np.testing.assert_allclose(
        fw.numpy(out.reconstruction),
        reconstruction,
        rtol=1e-12,
        atol=1e-14,
        err_msg="reconstruction",
    )


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", CASES)
def test_tied_square_matches_across_frameworks(case, dtype, device):
    config = CASES[case]
    sd64, x64 = weights(config), batch(config)
    sd = {k: v.astype(dtype) for k, v in sd64.items()}
    x = x64.astype(dtype)
    with jax.enable_x64(dtype == np.float64), on_device(device) as torch_device:
        got_jax = run_jax(sd, config, x, train=True)
        got_torch = run_torch(sd, config, x, train=True, device=torch_device)
    compare(got_jax, got_torch, dtype, f"tied {case}")

    rtol, atol = TOLERANCES[dtype]
    _, reconstruction = hand_forward(sd64, config, x64)
    for name, got in (("jax", got_jax), ("torch", got_torch)):
        np.testing.assert_allclose(
            got["reconstruction"],
            reconstruction,
            rtol=100 * rtol,
            atol=100 * atol,
            err_msg=f"{name} reconstruction vs hand",
        )
    if dtype != np.float64:
        return
    # The tied weight's gradient comes from both its uses; finite differences of the
    # hand objective check it (and every bias) independently of either package.
    expected = finite_difference_grads(sd64, config, x64)
    for name, got in (("jax", got_jax), ("torch", got_torch)):
        assert {k[len("grad.") :] for k in got if k.startswith("grad.")} == set(sd)
        for k, g in expected.items():
            np.testing.assert_allclose(
                got[f"grad.{k}"],
                g,
                rtol=1e-6,
                atol=1e-9,
                err_msg=f"{name} grad.{k} vs finite differences",
            )
