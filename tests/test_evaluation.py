"""Evaluation: metric formulas against hand-computed values, the probe on cases worked
out by hand, the noise, the histogram, both packages' evaluate_model against their own
forward pass, clear errors, and scripts/evaluate.py on a tiny run directory.

Small synthetic data throughout (16-pixel images, a few hundred samples)."""

import gzip
import importlib.util
import json
import math
import os
import struct
from functools import partial

import numpy as np
import pytest
from matplotlib.image import imread

from saecommon import evaluation as ev
from saecommon.checkpoint import CheckpointError, write_checkpoint
from saecommon.config import ConfigError, SAEConfig
from saecommon.data import DataError, Normalization, PreparedData
from saecommon.metrics import (
    BCE_EPS,
    CodeStats,
    activation_frequency,
    bce_clipped,
    bce_from_logits,
    constant_fraction,
    dead_fraction,
    l0,
    mse,
    psnr,
)
from saecommon.noise import Noise
from saecommon.plots import plot_activation_frequency
from saecommon.probe import PROBE_MAX_ITER, fit_probe
from saecommon.report import format_report, write_report
from saecommon.train_config import RunConfig, TrainConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MODEL = SAEConfig(
    input_dim=16,
    hidden_dims=(8,),
    activation="relu",
    code_activation="relu",
    output_activation="sigmoid",
    topk=3,
)


# --------------------------------------------------------------------------- helpers


def clustered_images(n, seed, classes=3):
    """[n, 4, 4] uint8 images and [n] labels: class c lights pixels 5c..5c+4 (so the
    classes are linearly separable in pixel space), plus a little noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    x = rng.uniform(0, 0.15, (n, 16))
    for c in range(classes):
        x[labels == c, 5 * c : 5 * c + 5] += 0.8
    return np.round(np.clip(x, 0, 1) * 255).astype(np.uint8).reshape(n, 4, 4), labels


def prepared(n_train=240, n_test=60, normalization=None, seed=0):
    """A PreparedData of clustered images, standardized when ``normalization``."""
    (train, y_train), (test, y_test) = (
        clustered_images(n_train, seed),
        clustered_images(n_test, seed + 1),
    )
    train = train.reshape(n_train, 16).astype(np.float32) / 255
    test = test.reshape(n_test, 16).astype(np.float32) / 255
    if normalization is not None:
        train, test = normalization.apply(train), normalization.apply(test)
    return PreparedData(
        train,
        y_train,
        test,
        y_test,
        test,
        y_test,
        (0.0, 1.0),
        (4, 4),
        normalization,
        True,
    )


def write_idx_dataset(folder, n_train=240, n_test=60, shape=(4, 4)):
    """The four IDX files of a clustered dataset (gzip), as load_dataset reads them."""
    folder.mkdir(parents=True, exist_ok=True)
    (train, y_train), (test, y_test) = (
        clustered_images(n_train, 0),
        clustered_images(n_test, 1),
    )
    if shape != (4, 4):
        train = np.resize(train, (n_train, *shape))
        test = np.resize(test, (n_test, *shape))
    arrays = {
        "train-images-idx3-ubyte": train,
        "train-labels-idx1-ubyte": y_train.astype(np.uint8),
        "t10k-images-idx3-ubyte": test,
        "t10k-labels-idx1-ubyte": y_test.astype(np.uint8),
    }
    for name, array in arrays.items():
        header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(
            f">{array.ndim}i", *array.shape
        )
        (folder / f"{name}.gz").write_bytes(gzip.compress(header + array.tobytes()))
    return folder


def torch_weights(config=MODEL, seed=0):
    import torch

    import torchsae

    return torchsae.to_state_dict(
        torchsae.Autoencoder(config, generator=torch.Generator().manual_seed(seed))
    )


def evaluate(framework, state_dict, config, data, **options):
    if framework == "jax":
        import jaxsae
        from jaxsae.evaluation import evaluate_model

        params = jaxsae.from_state_dict(state_dict, config)
        return evaluate_model(params, config, data, **options)
    import torchsae
    from torchsae.evaluation import evaluate_model

    return evaluate_model(torchsae.from_state_dict(state_dict, config), data, **options)


def forward(framework, state_dict, config, x):
    """The framework's own evaluation-mode forward: (reconstruction, logits, code)."""
    if framework == "jax":
        import jax
        import jax.numpy as jnp

        import jaxsae

        params = jaxsae.from_state_dict(state_dict, config)
        apply = jax.jit(partial(jaxsae.Autoencoder(config).apply, train=False))
        out = apply({"params": params}, jnp.asarray(x))
        return tuple(np.asarray(a) for a in out[:3])
    import torch

    import torchsae

    out = torchsae.from_state_dict(state_dict, config)(torch.from_numpy(x), train=False)
    return tuple(t.detach().numpy() for t in out[:3])


@pytest.fixture(params=["jax", "torch"])
def framework(request):
    return request.param


# --------------------------------------------------------------------------- formulas


def test_reconstruction_metrics_by_hand():
    r = np.array([[0.5, 1.0], [0.0, 0.25]])
    t = np.array([[1.0, 1.0], [0.0, 0.75]])
    # squared errors 0.25, 0, 0, 0.25 -> mean 0.125; PSNR = 10 log10(1 / 0.125)
    assert mse(r, t) == 0.125
    assert psnr(r, t) == pytest.approx(10 * math.log10(8), abs=1e-12)  # 9.0309 dB
    assert psnr(t, t) == math.inf
    assert psnr(r / 255, t / 255, data_range=1 / 255) == pytest.approx(9.0309, 1e-4)
    # from logits: softplus(0) - 0 * 0.5 = ln 2;  softplus(ln 3) - ln 3 = ln(4 / 3)
    z = np.array([0.0, math.log(3)])
    assert bce_from_logits(z, [0.5, 1.0]) == pytest.approx(
        (math.log(2) + math.log(4 / 3)) / 2, abs=1e-15
    )
    # clipped: p = 0.5, t = 0.5 -> ln 2; p = 0.75, t = 1 -> ln(4/3); p = 0 with t = 0
    # and p = 1 with t = 1 cost -log(1 - eps) each; p = 0 with t = 1 costs -log(eps)
    p, target = np.array([0.5, 0.75, 0.0, 1.0]), np.array([0.5, 1.0, 0.0, 1.0])
    eps = BCE_EPS
    expected = (math.log(2) + math.log(4 / 3) - 2 * math.log(1 - eps)) / 4
    assert bce_clipped(p, target) == pytest.approx(expected, abs=1e-15)
    assert bce_clipped([0.0], [1.0]) == pytest.approx(-math.log(eps))  # 16.118
    with pytest.raises(ValueError, match=r"one shape, got \(2, 2\) and \(2,\)"):
        mse(r, [1.0, 2.0])


def test_sparsity_on_a_hand_built_code():
    code = np.array(
        [
            [0.0, 1.5, 0.0, -2.0],
            [0.0, 0.0, 0.0, 3.0],
            [0.0, 1e-30, 0.0, 0.0],  # tiny but not zero: active
        ]
    )
    np.testing.assert_array_equal(activation_frequency(code), [0, 2 / 3, 0, 2 / 3])
    assert l0(code) == pytest.approx(4 / 3)  # (2 + 1 + 1) / 3 samples
    assert dead_fraction(code) == 0.5  # units 0 and 2
    assert constant_fraction(code) == 0.5  # the same two: units 1 and 3 vary
    code[:, 3] = 7.0  # on for every sample, always the same: constant, not dead
    assert dead_fraction(code) == 0.5 and constant_fraction(code) == 0.75
    with pytest.raises(ValueError, match="code must be"):
        activation_frequency(np.zeros(4))


def test_code_stats_merge_batch_by_batch_as_the_trainers_do():
    """Per-batch statistics merged (as each trainer reduces its batches on the device)
    give the whole code's: the counts, extremes and every metric read from them."""
    code = np.array(
        [
            [0.0, 1.5, 0.5, -2.0],
            [0.0, 0.0, 0.5, 3.0],
            [0.0, 2.0, 0.5, 0.0],
            [0.0, 0.0, 0.5, 1.0],
            [0.0, 0.0, 0.5, 0.0],
        ]
    )
    whole = CodeStats.of(code)
    merged = CodeStats.of(code[:2]).merge(CodeStats.of(code[2:4]))
    merged = merged.merge(CodeStats.of(code[4:]))  # a remainder batch of one
    assert merged.samples == whole.samples == 5
    np.testing.assert_array_equal(merged.active, [0, 2, 5, 3])
    np.testing.assert_array_equal(merged.low, [0.0, 0.0, 0.5, -2.0])
    np.testing.assert_array_equal(merged.high, [0.0, 2.0, 0.5, 3.0])
    assert (
        merged.metrics()
        == whole.metrics()
        == {
            "l0": 10 / 5,  # 0 + 2 + 5 + 3 non-zero entries over 5 samples
            "dead_fraction": 0.25,  # unit 0
            "constant_fraction": 0.5,  # units 0 and 2
        }
    )
    with pytest.raises(ValueError, match=">= 1 sample"):
        CodeStats(0, np.zeros(4), np.zeros(4), np.zeros(4))
    with pytest.raises(ValueError, match="must be \\[code\\] each"):
        CodeStats(2, np.zeros(4), np.zeros(3), np.zeros(4))


# --------------------------------------------------------------------------- probe


def test_probe_by_hand():
    """x = -1 (label 0) and x = 1 (label 1): standardization leaves them as they are,
    the bias stays 0 by symmetry, and the weights are -w, +w with the stationarity
    condition l2 * w = 1 - sigmoid(2w). With l2 = 1 / (2 ln 3) the solution is
    w = ln(3) / 2: each point gets probability sigmoid(ln 3) = 3/4 of its label."""
    probe = fit_probe([[-1.0], [1.0]], [0, 1], l2=1 / (2 * math.log(3)))
    np.testing.assert_allclose(
        probe.probabilities([[-1.0], [1.0]]), [[0.75, 0.25], [0.25, 0.75]], atol=1e-6
    )
    assert probe.weights[0, 1] - probe.weights[0, 0] == pytest.approx(
        math.log(3), abs=1e-5
    )
    np.testing.assert_allclose(probe.bias, 0, atol=1e-9)
    assert probe.accuracy([[-3.0], [0.5]], [0, 1]) == 1.0


def test_probe_separates_separable_data_and_is_deterministic():
    rng = np.random.default_rng(0)
    centers = rng.normal(0, 5, (3, 5))
    labels = np.array([2, 5, 7])  # not 0..k-1: predictions come back as these
    y = rng.integers(0, 3, 200)
    x = centers[y] + rng.normal(0, 0.3, (200, 5))
    x[:, 4] = 2.0  # a constant feature: standardized to 0, its weights stay 0
    probe = fit_probe(x[:150], labels[y[:150]])
    assert probe.accuracy(x[:150], labels[y[:150]]) == 1.0
    assert probe.accuracy(x[150:], labels[y[150:]]) == 1.0
    assert set(probe.predict(x)) == {2, 5, 7}
    np.testing.assert_array_equal(probe.weights[4], 0)
    again = fit_probe(x[:150], labels[y[:150]])
    np.testing.assert_array_equal(again.weights, probe.weights)  # bit for bit
    assert 0 < probe.iterations <= PROBE_MAX_ITER


def test_probe_rejects_bad_input():
    x = np.ones((4, 2))
    with pytest.raises(DataError, match="non-finite"):
        fit_probe(np.where(np.eye(4, 2) > 0, np.nan, x), [0, 1, 0, 1])
    with pytest.raises(ValueError, match="at least two classes"):
        fit_probe(x, [3, 3, 3, 3])
    with pytest.raises(ValueError, match=r"labels must be \[n\] = \[4\]"):
        fit_probe(x, [0, 1])
    with pytest.raises(ConfigError, match="probe l2 must be >= 0"):
        fit_probe(x, [0, 1, 0, 1], l2=-1.0)


# --------------------------------------------------------------------------- noise


def test_noise_is_numpy_seeded_and_follows_the_training_rules():
    x = np.random.default_rng(1).uniform(size=(50, 16)).astype(np.float32)
    gauss = Noise("gaussian", std=0.3, seed=7)
    expected = np.clip(
        x
        + np.float32(0.3)
        * np.random.default_rng(7).standard_normal(x.shape, np.float32),
        0,
        1,
    )
    np.testing.assert_array_equal(gauss.apply(x), expected)
    masked = Noise("masking", mask_fraction=0.25).apply(x)
    zeroed = masked != x
    assert np.all(masked[zeroed] == 0)
    assert zeroed.mean() == pytest.approx(0.25, abs=0.04)
    np.testing.assert_array_equal(masked, Noise("masking").apply(x))  # seed 0
    assert Noise.of(TrainConfig()) is None
    assert Noise.of(TrainConfig(noise="masking", mask_fraction=0.5), seed=3) == (
        Noise("masking", 0.1, 0.5, 3)
    )
    with pytest.raises(ConfigError, match="'gaussian' or 'masking'"):
        Noise("salt")


# --------------------------------------------------------------------------- histogram


def test_activation_frequency_histogram_is_a_png_showing_dead_units(tmp_path):
    frequency = np.array([0.0, 0.0, 0.01, 0.2, 0.25, 0.3, 0.9, 1.0])
    path = plot_activation_frequency(frequency, tmp_path / "sub" / "hist.png")
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    rgb = imread(path)[..., :3]
    assert rgb.ndim == 3 and rgb.shape[0] > 100 and rgb.shape[1] > 100
    red = np.all(np.abs(rgb - np.array([0.839, 0.153, 0.157])) < 0.06, axis=-1)
    assert red.sum() > 200  # tab:red: the dead-unit bar
    alive = plot_activation_frequency(frequency[2:], tmp_path / "alive.png")
    rgb = imread(alive)[..., :3]
    red = np.all(np.abs(rgb - np.array([0.839, 0.153, 0.157])) < 0.06, axis=-1)
    assert red.sum() == 0  # no dead units, no red bar
    with pytest.raises(ValueError, match=r"shares in \[0, 1\]"):
        plot_activation_frequency([0.5, 1.5], tmp_path / "bad.png")


# --------------------------------------------------------------------------- models


def test_evaluate_model_matches_the_forward_pass(framework):
    """Every number from evaluate_model is the formula applied to the package's own
    forward pass (float32, rtol 1e-6), the probe included."""
    weights, data = torch_weights(), prepared()
    noise = Noise("gaussian", std=0.2)
    result = evaluate(framework, weights, MODEL, data, noise=noise, batch_size=25)
    m = result.metrics
    recon, logits, code = forward(framework, weights, MODEL, data.test)
    assert m["mse"] == pytest.approx(np.mean((recon - data.test) ** 2), rel=1e-6)
    assert m["psnr"] == pytest.approx(-10 * np.log10(m["mse"]), rel=1e-12)
    assert m["bce"] == pytest.approx(bce_from_logits(logits, data.test), rel=1e-6)
    assert result.info["bce_from"] == "logits"
    assert m["l0"] == l0(code) and 0 < m["l0"] <= 3  # top-3 of relu codes
    assert m["dead_fraction"] == dead_fraction(code)
    assert m["constant_fraction"] == constant_fraction(code)
    np.testing.assert_array_equal(
        result.activation_frequency, activation_frequency(code)
    )
    noisy = noise.apply(data.test)
    denoised = forward(framework, weights, MODEL, noisy)[0]
    assert m["noisy_psnr"] == pytest.approx(psnr(noisy, data.test), rel=1e-12)
    assert m["denoised_psnr"] == pytest.approx(psnr(denoised, data.test), rel=1e-6)
    train_code = forward(framework, weights, MODEL, data.train)[2]
    probe = fit_probe(train_code, data.train_labels)
    assert m["probe_accuracy"] == probe.accuracy(code, data.test_labels)
    assert m["pixel_probe_accuracy"] == 1.0  # the clusters are linearly separable
    assert m["pixel_probe_train_accuracy"] == 1.0
    assert result.info["n_train"] == 240 and result.info["n_test"] == 60


def test_normalized_models_are_scored_in_pixel_space(framework):
    norm = Normalization(mean=0.3, std=0.4)
    weights, data = torch_weights(), prepared(normalization=norm)
    result = evaluate(framework, weights, MODEL, data, probe=False)
    recon = forward(framework, weights, MODEL, data.test)[0]
    pixels, target = norm.invert(recon), norm.invert(data.test)
    assert result.metrics["mse"] == pytest.approx(np.mean((pixels - target) ** 2), 1e-6)
    # not the mse in the model's (normalized) space, which is 1 / 0.4^2 times larger
    assert result.metrics["mse"] == pytest.approx(
        np.mean((recon - data.test) ** 2) * 0.4**2, 1e-5
    )
    assert result.info["bce_from"].startswith("clipped")
    assert result.metrics["bce"] == pytest.approx(bce_clipped(pixels, target), 1e-6)
    assert "probe_accuracy" not in result.metrics and "n_train" not in result.info


def symmetric(data):
    """``data`` as pixel_scale symmetric prepares it: (p - 0.5) / 0.5 in [-1, 1]."""
    import dataclasses

    norm = Normalization(mean=0.5, std=0.5)
    return dataclasses.replace(
        data,
        train=norm.apply(data.train),
        val=norm.apply(data.val),
        test=norm.apply(data.test),
        pixel_range=(-1.0, 1.0),
        normalization=norm,
    )


def test_symmetric_data_is_scored_and_noised_by_hand():
    """A [-1, 1] model's reconstruction 0.2 off everywhere is 0.1 off in [0, 1] pixels:
    mse 0.01, psnr 10 log10(1 / 0.01) = 20 dB (not the model-space 0.04, 13.98 dB).
    Gaussian noise of std 1 acts in [-1, 1]: std 0.5 on pixels, clipped to [0, 1]."""
    pixels = prepared()
    data = symmetric(pixels)

    def encode(x, code_only):
        return ev.Encoded(x + 0.2, x + 0.2, np.maximum(x[:, :2], 0))

    config = MODEL.replace(topk=None, hidden_dims=(2,), output_activation="tanh")
    noise = Noise("gaussian", std=1.0)
    result = ev.evaluate_with(
        encode, config, data, framework="numpy", probe=False, noise=noise
    )
    m = result.metrics
    assert m["mse"] == pytest.approx(0.01, rel=1e-5)
    assert m["psnr"] == pytest.approx(20.0, rel=1e-5)
    assert result.info["bce_from"].startswith("clipped")
    draw = np.random.default_rng(0).standard_normal(pixels.test.shape, np.float32)
    noisy = np.clip(pixels.test + 0.5 * draw, 0, 1)  # std 1 in [-1, 1] = 0.5 in [0, 1]
    np.testing.assert_allclose(result.noisy, noisy, rtol=0, atol=1e-6)
    assert 0 < (result.noisy == 0).mean() and 0 < (result.noisy == 1).mean()
    assert m["noisy_psnr"] == pytest.approx(psnr(noisy, pixels.test), rel=1e-5)
    np.testing.assert_allclose(result.denoised, noisy + 0.1, rtol=0, atol=1e-6)
    assert m["denoised_psnr"] == pytest.approx(psnr(noisy + 0.1, pixels.test), 1e-5)
    masked = ev.evaluate_with(
        encode, config, data, framework="numpy", probe=False, noise=Noise("masking")
    ).noisy
    keep = np.random.default_rng(0).random(pixels.test.shape, np.float32) >= 0.25
    # masked pixels are pixel 0 (-1 in the model's space, 0 after to_pixels)
    np.testing.assert_allclose(masked, np.where(keep, pixels.test, 0), atol=1e-7)
    assert np.all(masked[~keep] == 0)


def test_a_tanh_model_on_symmetric_data_is_scored_in_pixel_space(framework):
    config = MODEL.replace(output_activation="tanh")
    weights, data = torch_weights(config), symmetric(prepared())
    result = evaluate(framework, weights, config, data, probe=False)
    recon = forward(framework, weights, config, data.test)[0]
    assert recon.min() < 0  # tanh's range, mapped back below
    pixels, target = (recon + 1) / 2, (data.test + 1) / 2
    assert result.metrics["mse"] == pytest.approx(np.mean((pixels - target) ** 2), 1e-6)
    assert result.metrics["psnr"] == pytest.approx(
        -10 * math.log10(result.metrics["mse"]), rel=1e-12
    )


def test_the_report_of_a_2d_code(tmp_path):
    """write_report adds the scatter of every test code for a 2-D code, and
    metrics.json and the table hold the numbers of the Evaluation."""
    import torchsae
    from torchsae.evaluation import evaluate_model

    config = SAEConfig(input_dim=16, hidden_dims=(6, 2), code_activation="identity")
    weights, data = torch_weights(config), prepared()
    result = evaluate_model(
        torchsae.from_state_dict(weights, config), data, probe=False
    )
    source = ev.Source(weights, RunConfig(config, TrainConfig()))
    paths = write_report(tmp_path, result, data, source)
    assert [p.name for p in paths] == [
        "metrics.json",
        "reconstructions.png",
        "dictionary.png",
        "codes.png",
        "activation_frequency.png",
        "code_scatter.png",  # no loss_curves.png: no history
    ]
    assert (tmp_path / "code_scatter.png").read_bytes()[:8] == PNG_SIGNATURE
    report = json.loads((tmp_path / "metrics.json").read_text())
    assert report["metrics"] == result.metrics
    assert report["checkpoint"] is None and report["code_dim"] == 2
    assert result.metrics["l0"] == 2.0 and result.metrics["dead_fraction"] == 0.0
    table = format_report(result, source)
    assert f"mse                {result.metrics['mse']:.6f}" in table
    assert "l0                    2.000  active units per sample, of 2" in table
    assert "constant fraction    0.0000  0 of 2 take one value on every input" in table


# --------------------------------------------------------------------------- errors


def test_bad_data_is_a_clear_error(framework):
    weights, data = torch_weights(), prepared()
    wide = SAEConfig(input_dim=9, hidden_dims=(8,), topk=3)
    with pytest.raises(DataError, match=r"is \(60, 16\) but the model takes \[n, 9\]"):
        evaluate(framework, torch_weights(wide), wide, data)
    data.test[3, 5] = np.nan
    with pytest.raises(DataError, match=r"test data has 1 non-finite .* \(3, 5\)"):
        evaluate(framework, weights, MODEL, data)


def encode(framework, state_dict, config, x, **options):
    if framework == "jax":
        import jaxsae
        from jaxsae.evaluation import encode

        return encode(jaxsae.from_state_dict(state_dict, config), config, x, **options)
    import torchsae
    from torchsae.evaluation import encode

    return encode(torchsae.from_state_dict(state_dict, config), x, **options)


@pytest.mark.parametrize(
    "shape, batch_size", [((8, 100), 1000), ((2500, 15), 1000), ((8, 16, 1), 4)]
)
def test_encode_reports_the_users_shape(framework, shape, batch_size):
    # jaxsae pads the last batch to batch_size rows: its error once said (1000, 100).
    with pytest.raises(ValueError) as err:
        encode(
            framework,
            torch_weights(),
            MODEL,
            np.zeros(shape, np.float32),
            batch_size=batch_size,
        )
    assert str(err.value) == f"expected input [batch, 16], got shape {shape}"


def test_encode_refuses_empty_non_finite_and_integer_input(framework):
    weights = torch_weights()
    with pytest.raises(ValueError) as err:
        encode(framework, weights, MODEL, np.zeros((0, 16), np.float32))
    assert str(err.value) == (
        "x has 0 samples (shape (0, 16)); the model needs at least one"
    )
    x = prepared().test[:8].copy()
    x[3, 5] = np.nan  # a top-k model once gave this sample an all-zero code
    x[6, 0] = np.inf
    with pytest.raises(DataError) as err:
        encode(framework, weights, MODEL, x, batch_size=5)
    assert str(err.value) == (
        "x has 2 non-finite entries (1 NaN, 1 inf) of 128; the first is at index (3, 5)"
    )
    with pytest.raises(DataError) as err:
        encode(framework, weights, MODEL, np.zeros((8, 16), np.uint8))
    assert str(err.value) == (
        "x must be a floating-point array [n, 16] scaled as the model's training "
        "data, got dtype uint8"
    )
    x[3, 5] = x[6, 0] = 0.5
    code = encode(framework, weights, MODEL, x, batch_size=5, code_only=True).code
    assert code.shape == (8, 8) and (np.count_nonzero(code, axis=1) <= 3).all()


def test_missing_and_mismatched_checkpoints_are_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint at .*nothing"):
        ev.load_source(tmp_path / "nothing")
    with pytest.raises(CheckpointError, match="has no model.safetensors"):
        ev.load_source(tmp_path)
    # a run directory whose config.json describes another architecture
    write_checkpoint(tmp_path / "model.safetensors", torch_weights(), MODEL)
    other = RunConfig(MODEL.replace(hidden_dims=(6,), topk=2), TrainConfig())
    (tmp_path / "config.json").write_text(other.to_json())
    with pytest.raises(CheckpointError, match="another architecture .*hidden_dims"):
        ev.load_source(tmp_path)
    # the same checkpoint under another name is evaluated alone, with flags
    os.rename(tmp_path / "model.safetensors", tmp_path / "copy.safetensors")
    source = ev.load_source(tmp_path / "copy.safetensors", {"normalize": True})
    assert source.run.model == MODEL and source.run.train.normalize
    with pytest.raises(ConfigError, match="cannot override epochs"):
        ev.load_source(tmp_path / "copy.safetensors", {"epochs": 3})


# --------------------------------------------------------------------------- command


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A one-epoch jaxsae run on a tiny IDX dataset (its config.json names it)."""
    from jaxsae.training import train

    root = tmp_path_factory.mktemp("evalrun")
    dataset = write_idx_dataset(root / "data")
    run = RunConfig(
        MODEL,
        TrainConfig(dataset=str(dataset), epochs=1, batch_size=32, eval_batch_size=64),
    )
    train(run, root / "run", progress=False)
    return root


def test_evaluate_command_on_a_run_directory(run_dir, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location(
        "evaluate_script", os.path.join(ROOT, "scripts", "evaluate.py")
    )
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "eval"
    assert script.main([str(run_dir / "run"), "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "mse" in printed and "pixel probe accuracy" in printed
    report = json.loads((out / "metrics.json").read_text())
    m = report["metrics"]
    final = json.loads((run_dir / "run" / "summary.json").read_text())["final"]
    assert m["mse"] == pytest.approx(final["test/recon"], rel=1e-5)  # the trainer's
    assert m["l0"] == pytest.approx(final["test/l0"], rel=1e-6)
    assert m["dead_fraction"] == final["test/dead_fraction"]
    assert m["constant_fraction"] == final["test/constant_fraction"]
    assert m["psnr"] == pytest.approx(-10 * math.log10(m["mse"]))
    assert m["pixel_probe_accuracy"] == 1.0
    assert 0 <= m["probe_accuracy"] <= 1
    assert len(report["activation_frequency"]) == 8
    assert sum(report["activation_frequency"]) == pytest.approx(m["l0"])
    assert report["framework"] == "jax" and report["n_test"] == 60
    for name in (
        "reconstructions.png",
        "dictionary.png",
        "codes.png",
        "activation_frequency.png",
        "loss_curves.png",
    ):
        assert (out / name).read_bytes()[:8] == PNG_SIGNATURE, name

    # a dataset of another image size, and a missing checkpoint: exit 2, a message
    wrong = write_idx_dataset(tmp_path / "wide", shape=(5, 5))
    assert script.main([str(run_dir / "run"), "--data-dir", str(wrong)]) == 2
    err = capsys.readouterr().err
    assert "25 pixels per sample" in err and "--dataset/--data-dir" in err
    assert script.main([str(tmp_path / "missing"), "--no-probe"]) == 2
    assert "error: no checkpoint at" in capsys.readouterr().err
