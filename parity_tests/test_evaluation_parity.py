"""The same checkpoint evaluated by jaxsae and by torchsae gives the same numbers.

The metrics, the probe and the noise are saecommon's, so the packages can differ only
through the codes and reconstructions their models compute. Tolerances: reconstruction
and denoising metrics (mse, bce, psnr, noisy/denoised psnr) agree to rtol 1e-5 in
float32 and 1e-12 in float64; L0, the dead and constant fractions and every unit's
activation frequency are exact (the codes' zero patterns must match: none of these cases
has a near-tie at the top-k boundary or a pre-activation within rounding of 0); the
probe accuracies are exact here (the probe is deterministic and strongly convex, so
codes that agree to ~1e-7 move a prediction only for a point within ~1e-6 of a decision
boundary; in general allow one test sample).
"""

import importlib.util
import inspect
import json
import os

import jax
import numpy as np
import pytest
import torch

import jaxsae
import torchsae
from jaxsae import evaluation as jev
from saecommon import evaluation as ev
from saecommon.config import SAEConfig
from saecommon.data import PreparedData
from saecommon.train_config import RunConfig, TrainConfig
from torchsae import evaluation as tev

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = SAEConfig(
    input_dim=16,
    hidden_dims=(12, 8),
    activation="leaky_relu",
    code_activation="relu",
    output_activation="sigmoid",
    topk=3,
)
EXACT = ("l0", "dead_fraction", "constant_fraction")
PROBES = (
    "probe_accuracy",
    "probe_train_accuracy",
    "pixel_probe_accuracy",
    "pixel_probe_train_accuracy",
)


def clustered(n, seed, dtype=np.float32):
    """[n, 16] pixels in [0, 1] and [n] labels of 3 overlapping clusters."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    x = rng.uniform(0, 0.5, (n, 16))
    for c in range(3):
        x[labels == c, 4 * c : 4 * c + 6] += 0.4
    return np.clip(x, 0, 1).astype(dtype), labels


def prepared(dtype=np.float32) -> PreparedData:
    (train, y_train), (test, y_test) = clustered(300, 0, dtype), clustered(80, 1, dtype)
    return PreparedData(
        train, y_train, test, y_test, test, y_test, (0.0, 1.0), (4, 4), None, True
    )


def assert_same_numbers(jax_metrics, torch_metrics, rtol):
    assert jax_metrics.keys() == torch_metrics.keys()
    for name, a in jax_metrics.items():
        b = torch_metrics[name]
        if name in EXACT or name in PROBES:
            assert a == b, f"{name}: jax {a!r}, torch {b!r} (must be equal)"
        else:
            assert a == pytest.approx(b, rel=rtol), (
                f"{name}: jax {a!r}, torch {b!r}, rel diff {abs(a - b) / abs(b):.3g} "
                f"(rtol {rtol:g})"
            )


def test_the_evaluation_modules_mirror_each_other():
    def public(module):
        return {
            n
            for n, obj in vars(module).items()
            if not n.startswith("_") and inspect.getmodule(obj) is module
        }

    assert (
        public(jev)
        == public(tev)
        == {"encode", "evaluate_model", "evaluate_checkpoint"}
    )
    assert jev.FRAMEWORK == "jax" and tev.FRAMEWORK == "torch"

    def arguments(function, drop):
        names = list(inspect.signature(function).parameters)
        assert names[: len(drop)] == drop, f"{function.__qualname__}: {names}"
        return names[len(drop) :]

    # JAX passes (params, config), torch the module that holds its config.
    for name in ("encode", "evaluate_model"):
        a = arguments(getattr(jev, name), ["params", "config"])
        b = arguments(getattr(tev, name), ["model"])
        assert a == b, f"{name}: jaxsae {a} vs torchsae {b}"
    a = arguments(jev.evaluate_checkpoint, [])
    assert arguments(tev.evaluate_checkpoint, []) == a + ["device"]


def test_the_same_checkpoint_gives_the_same_numbers(tmp_path):
    """A JAX-initialised float32 checkpoint on disk, loaded and evaluated by each
    package, with masking noise and both probes."""
    x = jax.numpy.zeros((1, MODEL.input_dim))
    init = jax.jit(jaxsae.Autoencoder(MODEL).init)  # one compile, not one per op
    params = init(jax.random.key(4), x)["params"]
    jaxsae.save_checkpoint(tmp_path / "model.safetensors", params, MODEL)
    data, noise = prepared(), ev.Noise("masking", mask_fraction=0.3, seed=5)
    jax_params, config = jaxsae.load_checkpoint(tmp_path / "model.safetensors")
    model, _ = torchsae.load_checkpoint(tmp_path / "model.safetensors")
    a = jev.evaluate_model(jax_params, config, data, noise=noise, batch_size=64)
    b = tev.evaluate_model(model, data, noise=noise, batch_size=64)
    np.testing.assert_array_equal(a.test.code != 0, b.test.code != 0)
    np.testing.assert_array_equal(a.activation_frequency, b.activation_frequency)
    assert set(a.metrics) >= {"noisy_psnr", "denoised_psnr", *PROBES}
    assert_same_numbers(a.metrics, b.metrics, rtol=1e-5)
    assert a.metrics["noisy_psnr"] == b.metrics["noisy_psnr"]  # the same noisy inputs
    # every test code keeps all 3 top-k units positive: L0 is exactly 3 (summing the
    # units' frequencies, as the evaluation once did, gave 2.9999999999999996)
    assert np.all(np.sum(a.test.code != 0, axis=1) == 3)
    assert a.metrics["l0"] == 3.0


def test_float64_agrees_to_rounding():
    """float64 weights and data: the two packages do the same math (rtol 1e-12)."""
    weights = {
        k: v.astype(np.float64)
        for k, v in torchsae.to_state_dict(
            torchsae.Autoencoder(MODEL, generator=torch.Generator().manual_seed(2))
        ).items()
    }
    data = prepared(np.float64)
    noise = ev.Noise("gaussian", std=0.2, seed=1)
    with jax.enable_x64(True):
        params = jaxsae.from_state_dict(weights, MODEL)
        a = jev.evaluate_model(params, MODEL, data, probe=False, noise=noise)
    b = tev.evaluate_model(
        torchsae.from_state_dict(weights, MODEL), data, probe=False, noise=noise
    )
    assert a.test.reconstruction.dtype == b.test.reconstruction.dtype == np.float64
    assert_same_numbers(a.metrics, b.metrics, rtol=1e-12)


def test_the_command_gives_the_same_numbers_in_both_frameworks(tmp_path):
    """A run directory holding a torchsae checkpoint of a denoising run whose
    config.json names an IDX dataset, evaluated by scripts/evaluate.py with
    --framework jax and --framework torch: the two metrics.json agree."""
    folder = tmp_path / "data"
    folder.mkdir()
    (train_x, y_train), (test_x, y_test) = clustered(300, 0), clustered(80, 1)
    for name, array in (
        ("train-images-idx3-ubyte", train_x),
        ("train-labels-idx1-ubyte", y_train),
        ("t10k-images-idx3-ubyte", test_x),
        ("t10k-labels-idx1-ubyte", y_test),
    ):
        if array.ndim == 2:  # pixels -> [n, 4, 4] uint8 images
            array = np.round(array * 255).reshape(-1, 4, 4)
        array = array.astype(np.uint8)
        dims = b"".join(int(d).to_bytes(4, "big") for d in array.shape)
        (folder / name).write_bytes(
            bytes([0, 0, 8, array.ndim]) + dims + array.tobytes()
        )
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    run = RunConfig(MODEL, TrainConfig(dataset=str(folder), noise="gaussian"))
    (run_dir / "config.json").write_text(run.to_json())
    model = torchsae.Autoencoder(MODEL, generator=torch.Generator().manual_seed(6))
    torchsae.save_checkpoint(run_dir / "model.safetensors", model)

    spec = importlib.util.spec_from_file_location(
        "evaluate_script", os.path.join(ROOT, "scripts", "evaluate.py")
    )
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    reports = {}
    for framework in ("jax", "torch"):
        out = tmp_path / framework
        argv = [str(run_dir), "--framework", framework, "--out", str(out), "--quiet"]
        assert script.main(argv) == 0
        reports[framework] = json.loads((out / "metrics.json").read_text())
    a, b = reports["jax"], reports["torch"]
    assert a["run"]["train"]["dataset"] == str(folder)
    assert (
        a["noise"]
        == b["noise"]
        == {
            "kind": "gaussian",
            "std": 0.1,
            "mask_fraction": 0.25,
            "seed": 0,
        }
    )
    assert a["activation_frequency"] == b["activation_frequency"]
    assert_same_numbers(a["metrics"], b["metrics"], rtol=1e-5)
    assert (tmp_path / "jax" / "denoising.png").is_file()
