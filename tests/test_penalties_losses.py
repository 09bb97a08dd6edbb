"""Penalties and losses against values worked out by hand, in both packages."""

import math

import numpy as np
import pytest

from saecommon.config import ConfigError, SAEConfig


def test_l1_penalty(fw):
    a1 = np.array([[1.0, -2.0], [0.0, 3.0]])  # mean |a| = 6 / 4 = 1.5
    a2 = np.array([[-1.0, 1.0]])  # mean |a| = 1
    got = fw.pkg.l1_penalty([fw.asarray(a1), fw.asarray(a2)], 0.1)
    assert float(got) == pytest.approx(0.1 * 2.5, rel=1e-15)
    assert float(fw.pkg.l1_penalty([fw.asarray(a1)], 0.1)) == pytest.approx(0.15)


def _kl(rho, q):
    return rho * math.log(rho / q) + (1 - rho) * math.log((1 - rho) / (1 - q))


def test_kl_penalty_sum_and_mean(fw):
    code = np.array([[0.1, 0.5], [0.3, 0.5]])  # rho_hat = [0.2, 0.5]
    per_unit = [_kl(0.1, 0.2), _kl(0.1, 0.5)]
    assert per_unit == pytest.approx([0.036690, 0.368064], abs=1e-6)  # by hand
    got_sum = fw.pkg.kl_penalty(fw.asarray(code), rho=0.1, weight=2.0)
    got_mean = fw.pkg.kl_penalty(fw.asarray(code), 0.1, 2.0, reduction="mean")
    assert float(got_sum) == pytest.approx(2.0 * sum(per_unit), rel=1e-12)
    assert float(got_mean) == pytest.approx(2.0 * sum(per_unit) / 2, rel=1e-12)


def test_kl_penalty_clamps_dead_and_saturated_units(fw):
    code = np.array([[0.0, 1.0], [0.0, 1.0]])  # rho_hat = [0, 1] -> [eps, 1 - eps]
    got = float(fw.pkg.kl_penalty(fw.asarray(code), 0.05, 1.0, eps=1e-6))
    assert math.isfinite(got)
    assert got == pytest.approx(_kl(0.05, 1e-6) + _kl(0.05, 1 - 1e-6), rel=1e-9)


def test_kl_penalty_is_zero_at_rho(fw):
    code = np.full((4, 3), 0.05)
    assert float(fw.pkg.kl_penalty(fw.asarray(code), 0.05, 1.0)) == pytest.approx(
        0, abs=1e-15
    )


def test_kl_penalty_rejects_bad_rho_and_reduction(fw):
    code = fw.asarray(np.full((2, 2), 0.5))
    with pytest.raises(ConfigError, match=r"rho must be in \(0, 1\), got 1.5"):
        fw.pkg.kl_penalty(code, 1.5, 1.0)
    with pytest.raises(ValueError, match="unknown reduction 'max'"):
        fw.pkg.kl_penalty(code, 0.5, 1.0, reduction="max")


def test_mse_loss(fw):
    got = fw.pkg.mse_loss(
        fw.asarray(np.array([[0.0, 1.0]])), fw.asarray(np.array([[1.0, 1.0]]))
    )
    assert float(got) == 0.5


def test_bce_loss_from_logits(fw):
    logits = np.array([[0.0, 2.0]])
    target = np.array([[1.0, 0.0]])
    expected = (math.log(2) + math.log(1 + math.exp(2))) / 2  # = 1.4100375...
    assert expected == pytest.approx(1.4100375, abs=1e-7)
    got = fw.pkg.bce_loss(fw.asarray(logits), fw.asarray(target))
    assert float(got) == pytest.approx(expected, rel=1e-14)
    # d/dz mean BCE = (sigmoid(z) - t) / n
    grad = fw.grad(lambda z: fw.pkg.bce_loss(z, fw.asarray(target)), logits)
    sig = 1 / (1 + np.exp(-logits))
    np.testing.assert_allclose(grad, (sig - target) / 2, rtol=1e-14)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bce_never_reaches_inf(fw, dtype):
    logits = np.array([[1000.0, -1000.0, 80.0]], dtype)
    target = np.array([[0.0, 1.0, 1.0]], dtype)
    got = float(fw.pkg.bce_loss(fw.asarray(logits), fw.asarray(target)))
    assert got == pytest.approx(2000.0 / 3, rel=1e-6)


def test_sparsity_penalty_follows_config(fw):
    hiddens = [fw.asarray(np.array([[2.0, -2.0]])), fw.asarray(np.array([[0.5, 0.5]]))]
    code = hiddens[1]
    l1_code = SAEConfig(input_dim=2, hidden_dims=(2,), penalty="l1", penalty_weight=0.5)
    l1_all = l1_code.replace(l1_layers="hidden")
    kl = SAEConfig(
        input_dim=2,
        hidden_dims=(2,),
        code_activation="sigmoid",
        penalty="kl",
        penalty_weight=0.5,
        kl_rho=0.25,
    )
    assert float(fw.pkg.sparsity_penalty(hiddens, code, l1_code)) == pytest.approx(0.25)
    assert float(fw.pkg.sparsity_penalty(hiddens, code, l1_all)) == pytest.approx(1.25)
    assert float(fw.pkg.sparsity_penalty(hiddens, code, kl)) == pytest.approx(
        0.5 * 2 * _kl(0.25, 0.5)
    )
    assert float(fw.pkg.sparsity_penalty(hiddens, code, SAEConfig(input_dim=2))) == 0.0
