"""The autoencoder module in both packages: wiring, tied weights, untie, bad input."""

import numpy as np
import pytest

from saecommon.checkpoint import expected_shapes
from saecommon.config import SAEConfig

DEEP = SAEConfig(input_dim=12, hidden_dims=(10, 8, 6), activation="leaky_relu", topk=3)


@pytest.mark.parametrize("tied", [False, True])
def test_parameters_have_the_portable_names_and_shapes(fw, tied):
    cfg = DEEP.replace(tied=tied)
    sd = fw.init(cfg, 0)
    assert {k: v.shape for k, v in sd.items()} == expected_shapes(cfg)
    assert all(v.dtype == np.float32 for v in sd.values())
    n_weights = sum(k.endswith("weight") for k in sd)
    assert n_weights == (3 if tied else 6)


def test_init_follows_torch_linear_default(fw):
    cfg = SAEConfig(input_dim=400, hidden_dims=(300,))
    sd = fw.init(cfg, 0)
    w, b = sd["encoder.0.weight"], sd["encoder.0.bias"]
    bound = 1 / np.sqrt(400)  # U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert np.abs(w).max() <= bound and np.abs(b).max() <= bound
    assert np.abs(w).max() > 0.99 * bound
    assert w.std() == pytest.approx(bound / np.sqrt(3), rel=0.01)
    assert np.abs(sd["decoder.0.bias"]).max() <= 1 / np.sqrt(300)


def test_forward_by_hand(fw):
    # 2 -> 1 -> 2, identity everywhere, tied: code = w.x + b_e, recon = code * w + b_d.
    cfg = SAEConfig(
        input_dim=2,
        hidden_dims=(1,),
        activation="identity",
        code_activation="identity",
        output_activation="identity",
        tied=True,
    )
    sd = {
        "encoder.0.weight": np.array([[1.0, 2.0]]),
        "encoder.0.bias": np.array([0.5]),
        "decoder.0.bias": np.array([0.1, -0.1]),
    }
    out = fw.forward(sd, cfg, np.array([[1.0, 1.0], [0.0, -1.0]]))
    np.testing.assert_allclose(fw.numpy(out.code), [[3.5], [-1.5]], rtol=1e-15)
    np.testing.assert_allclose(
        fw.numpy(out.reconstruction), [[3.6, 6.9], [-1.4, -3.1]], rtol=1e-14
    )


def test_tanh_code_and_output_by_hand(fw):
    # 2 -> 1 -> 2 with a tanh code and a tanh output (for pixels in [-1, 1]):
    # code = tanh(w_e x + b_e), logits = w_d code + b_d, recon = tanh(logits).
    cfg = SAEConfig(
        input_dim=2,
        hidden_dims=(1,),
        code_activation="tanh",
        output_activation="tanh",
    )
    sd = {
        "encoder.0.weight": np.array([[1.0, 2.0]]),
        "encoder.0.bias": np.array([0.5]),
        "decoder.0.weight": np.array([[1.0], [-2.0]]),
        "decoder.0.bias": np.array([0.1, -0.1]),
    }
    out = fw.forward(sd, cfg, np.array([[1.0, 1.0], [0.0, -1.0]]))
    code = np.tanh(np.array([[3.5], [-1.5]]))  # w_e x + b_e = 3.5, -1.5
    logits = code * np.array([[1.0, -2.0]]) + np.array([[0.1, -0.1]])
    np.testing.assert_allclose(fw.numpy(out.code), code, rtol=1e-15)
    np.testing.assert_allclose(fw.numpy(out.logits), logits, rtol=1e-15)
    np.testing.assert_allclose(fw.numpy(out.reconstruction), np.tanh(logits), 1e-15)
    # tanh(3.5) = 0.99818: tanh(0.99818 + 0.1) = 0.79984, tanh(-2.09636) = -0.97024
    np.testing.assert_allclose(
        fw.numpy(out.reconstruction)[0], [0.79984, -0.97024], atol=1e-5
    )


def test_output_holds_every_hidden_activation(fw):
    sd = fw.init(DEEP, 0)
    x = np.random.default_rng(0).uniform(size=(5, 12)).astype(np.float32)
    out = fw.forward(sd, DEEP, x)
    shapes = [tuple(h.shape) for h in out.hiddens]
    assert shapes == [
        (5, 10),
        (5, 8),
        (5, 6),
        (5, 8),
        (5, 10),
    ]  # enc, enc, code, dec, dec
    assert out.hiddens[2] is out.code
    assert tuple(out.reconstruction.shape) == tuple(out.logits.shape) == (5, 12)
    np.testing.assert_allclose(
        fw.numpy(out.reconstruction), 1 / (1 + np.exp(-fw.numpy(out.logits))), rtol=1e-6
    )
    mask = fw.numpy(out.mask)
    assert (mask.sum(1) == 3).all()
    code = fw.numpy(out.code)
    assert (code[~mask] == 0).all()


def test_lifetime_topk_acts_in_training_only(fw):
    cfg = SAEConfig(input_dim=4, hidden_dims=(3,), lifetime_k=2)
    sd = fw.init(cfg, 1)
    x = np.random.default_rng(1).uniform(size=(6, 4)).astype(np.float32)
    train = fw.numpy(fw.forward(sd, cfg, x, train=True).mask)
    assert (train.sum(0) == 2).all()
    assert fw.numpy(fw.forward(sd, cfg, x, train=False).mask).all()


def test_per_sample_then_lifetime(fw):
    # With k = 1 per sample and lifetime 1 per unit, the lifetime layer ranks what
    # top-k left: the combined mask is top-k AND lifetime-of-the-top-k-output.
    cfg = SAEConfig(
        input_dim=3,
        hidden_dims=(3,),
        activation="identity",
        code_activation="identity",
        output_activation="identity",
        topk=1,
        lifetime_k=1,
    )
    sd = {
        "encoder.0.weight": np.eye(3),
        "encoder.0.bias": np.zeros(3),
        "decoder.0.weight": np.eye(3),
        "decoder.0.bias": np.zeros(3),
    }
    x = np.array([[3.0, 2.0, 0.0], [1.0, 4.0, 0.0], [5.0, 0.0, 1.0]])
    out = fw.forward(sd, cfg, x, train=True)
    # top-1 per row keeps (0,0)=3, (1,1)=4, (2,0)=5; then per unit: unit 0 keeps 5,
    # unit 1 keeps 4, unit 2 keeps a zero (no sample left it a value).
    np.testing.assert_array_equal(
        fw.numpy(out.code), [[0, 0, 0], [0, 4.0, 0], [5.0, 0, 0]]
    )


def test_tied_encoder_gets_gradient_from_both_paths(fw):
    # recon = (w.x) * w with w a 1x1 weight: d/dw of recon = 2 w x.
    cfg = SAEConfig(
        input_dim=1,
        hidden_dims=(1,),
        activation="identity",
        code_activation="identity",
        output_activation="identity",
        tied=True,
    )
    sd = {
        "encoder.0.weight": np.array([[3.0]]),
        "encoder.0.bias": np.zeros(1),
        "decoder.0.bias": np.zeros(1),
    }
    if fw.name == "jax":
        import jax

        import jaxsae

        params = jaxsae.from_state_dict(sd, cfg)
        g = jax.grad(
            lambda p: (
                jaxsae.Autoencoder(cfg)
                .apply({"params": p}, np.array([[2.0]]))
                .reconstruction.sum()
            )
        )(params)
        grad = np.asarray(g["encoder_0"]["kernel"])
    else:
        import torch

        import torchsae

        model = torchsae.from_state_dict(sd, cfg)
        model(
            torch.tensor([[2.0]], dtype=torch.float64)
        ).reconstruction.sum().backward()
        grad = model.encoder[0].weight.grad.numpy()
    assert grad.item() == 2 * 3.0 * 2.0


def test_untie_keeps_outputs_identical(fw):
    cfg = DEEP.replace(tied=True, lifetime_rate=0.5)
    sd = fw.init(cfg, 3)
    x = np.random.default_rng(2).uniform(size=(8, 12)).astype(np.float32)
    if fw.name == "jax":
        import jaxsae

        params, untied_cfg = jaxsae.untie(jaxsae.from_state_dict(sd, cfg), cfg)
        untied_sd = jaxsae.to_state_dict(params)
    else:
        import torchsae

        model = torchsae.untie(torchsae.from_state_dict(sd, cfg))
        untied_cfg, untied_sd = model.config, torchsae.to_state_dict(model)
    assert untied_cfg == cfg.replace(tied=False)
    assert set(untied_sd) == set(expected_shapes(untied_cfg))
    np.testing.assert_array_equal(
        untied_sd["decoder.0.weight"], sd["encoder.2.weight"].T
    )
    for train in (False, True):
        a = fw.forward(sd, cfg, x, train=train)
        b = fw.forward(untied_sd, untied_cfg, x, train=train)
        np.testing.assert_array_equal(
            fw.numpy(a.reconstruction), fw.numpy(b.reconstruction)
        )
        np.testing.assert_array_equal(fw.numpy(a.mask), fw.numpy(b.mask))


def test_untie_rejects_an_untied_model(fw):
    sd = fw.init(DEEP, 0)
    with pytest.raises(ValueError, match="untie needs a tied model"):
        if fw.name == "jax":
            fw.pkg.untie(fw.pkg.from_state_dict(sd, DEEP), DEEP)
        else:
            fw.pkg.untie(fw.pkg.from_state_dict(sd, DEEP))


@pytest.mark.parametrize("shape", [(4, 11), (4, 13), (12,), (2, 3, 12)])
def test_input_of_the_wrong_shape_is_a_clear_error(fw, shape):
    sd = fw.init(DEEP, 0)
    with pytest.raises(ValueError, match=r"expected input \[batch, 12\], got shape"):
        fw.forward(sd, DEEP, np.zeros(shape, np.float32))


def test_an_empty_batch_is_the_same_clear_error_in_both_packages(fw):
    # jaxsae once returned an empty output, torchsae failed in top-k ("selected
    # index k out of range").
    with pytest.raises(ValueError) as err:
        fw.forward(fw.init(DEEP, 0), DEEP, np.zeros((0, 12), np.float32))
    assert str(err.value) == (
        "x has 0 samples (shape (0, 12)); the model needs at least one"
    )


def test_an_empty_batch_is_refused_under_jit():
    # A static shape check: it fires while tracing (eval_shape compiles nothing).
    import jax

    import jaxsae

    x = jax.ShapeDtypeStruct((0, 12), np.float32)
    with pytest.raises(ValueError, match=r"x has 0 samples \(shape \(0, 12\)\)"):
        jax.eval_shape(jaxsae.Autoencoder(DEEP).init, jax.random.key(0), x)


@pytest.mark.parametrize("architecture", ["conv", "fullconv"])
def test_conv_models_have_the_portable_shapes(fw, architecture):
    cfg = SAEConfig(architecture=architecture)
    sd = fw.init(cfg, 0)
    assert {k: v.shape for k, v in sd.items()} == expected_shapes(cfg)
    if architecture == "fullconv":
        assert sd["decoder.0.weight"].shape == (
            32,
            16,
            3,
            3,
        )  # ConvTranspose2d [in, out]
        # torch's fan_in for ConvTranspose2d is out * k * k = 16 * 9: bound 1/12
        assert np.abs(sd["decoder.0.weight"]).max() <= 1 / 12
        assert np.abs(sd["decoder.0.weight"]).max() > 0.95 / 12
    else:
        assert sd["encoder.0.weight"].shape == (8, 1, 6, 6)
        assert np.abs(sd["encoder.0.weight"]).max() <= 1 / 6  # fan_in 1 * 36
    x = np.random.default_rng(0).uniform(size=(3, 784)).astype(np.float32)
    out = fw.forward(sd, cfg, x)
    assert tuple(out.reconstruction.shape) == (3, 784)
    assert tuple(out.code.shape) == (3, cfg.code_dim)


@pytest.mark.parametrize("shape", [(4, 1, 28, 28), (4, 783), (4, 28, 28)])
def test_conv_input_of_the_wrong_shape_is_a_clear_error(fw, shape):
    cfg = SAEConfig(architecture="fullconv")
    with pytest.raises(
        ValueError, match=r"\[batch, 784\] \(1x28x28 images, flattened\)"
    ):
        fw.forward(fw.init(cfg, 0), cfg, np.zeros(shape, np.float32))
