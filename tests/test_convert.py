"""Converting models between formats (saecommon/foreign, both packages' load_foreign /
save_foreign, scripts/convert.py): a user's own torch and Flax modules, Gemma Scope's
params.npz, bit-exact round trips, one clear error per bad input, and never replacing
a file unasked. The peers' own loaders are checked in parity_tests/."""

from __future__ import annotations

import io
import json
import os
import sys

import flax.linen as fnn
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.numpy import save_file as save_numpy_safetensors
from safetensors.torch import save_file as save_torch_safetensors
from torch import nn

import jaxsae
import jaxsae.dictionary
import torchsae
import torchsae.dictionary
from saecommon import foreign
from saecommon.checkpoint import expected_shapes, read_checkpoint, write_checkpoint
from saecommon.config import SAEConfig
from saecommon.dictionary import load_dictionary, save_dictionary
from saecommon.dictionary_config import DictConfig

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "scripts"))
import convert  # noqa: E402

CLASSIC = {
    "activation": "relu",
    "code_activation": "relu",
    "output_activation": "sigmoid",
    "topk": None,
}


# --------------------------------------------------------------------------- helpers


def images(n: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(size=(n, 784)).astype(np.float32)


def seeded(module: nn.Module, seed: int = 0) -> nn.Module:
    """``module`` with weights drawn from ``seed`` (deterministic per test)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.uniform_(-0.2, 0.2, generator=generator)
    return module.eval()


def torch_out(module: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module(torch.from_numpy(x)).numpy()


def jax_reconstruction(path, x, **kwargs):
    params, config = jaxsae.load_foreign(path, **kwargs)
    out = jaxsae.Autoencoder(config).apply(
        {"params": params}, jnp.asarray(x), train=False
    )
    return np.asarray(out.reconstruction), config


def torch_reconstruction(path, x, **kwargs):
    model, config = torchsae.load_foreign(path, **kwargs)
    with torch.no_grad():
        out = model(torch.from_numpy(x), train=False)
    return out.reconstruction.numpy(), config


def assert_both_packages_match(path, x, expected, atol, **kwargs):
    """Both packages' models read from ``path`` reproduce ``expected`` on ``x``;
    returns their (equal) config."""
    got_jax, config_jax = jax_reconstruction(path, x, **kwargs)
    got_torch, config_torch = torch_reconstruction(path, x, **kwargs)
    assert config_jax == config_torch
    assert got_jax.dtype == got_torch.dtype == np.float32
    np.testing.assert_allclose(got_torch, expected, rtol=0, atol=atol)
    np.testing.assert_allclose(got_jax, expected, rtol=0, atol=atol)
    return config_jax


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    code = convert.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# ------------------------------------------------------- 1. classic models, torch side


class SequentialAE(nn.Module):
    """A user's autoencoder: nn.Sequential halves with activation modules between."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 32), nn.ReLU()
        )
        self.decoder = nn.Sequential(
            nn.Linear(32, 128), nn.ReLU(), nn.Linear(128, 784), nn.Sigmoid()
        )

    def forward(self, x):
        return self.decoder(self.encoder(x))


def flat_sequential() -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(784, 128),
        nn.ReLU(),
        nn.Linear(128, 32),
        nn.ReLU(),
        nn.Linear(32, 128),
        nn.ReLU(),
        nn.Linear(128, 784),
        nn.Sigmoid(),
    )


def _save_plain(module, path):
    torch.save(module.state_dict(), path)


def _save_wrapped(module, path):
    torch.save({"state_dict": module.state_dict(), "epoch": 3}, path)


def _save_training_checkpoint(module, path):
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-3)
    module(torch.rand(2, 784)).sum().backward()
    optimizer.step()  # the optimizer state now holds tensors too
    torch.save(
        {
            "epoch": 3,
            "model_state_dict": module.state_dict(),
            "optimizer_state_dict": optimizer.state_dict(),
            "loss": 0.25,
        },
        path,
    )


def _save_data_parallel(module, path):
    torch.save({f"module.{k}": v for k, v in module.state_dict().items()}, path)


def _save_safetensors(module, path):
    save_torch_safetensors(
        {k: v.contiguous() for k, v in module.state_dict().items()}, str(path)
    )


@pytest.mark.parametrize(
    "make, save, name",
    [
        (SequentialAE, _save_plain, "model.pt"),
        (SequentialAE, _save_wrapped, "checkpoint.pth"),
        (SequentialAE, _save_training_checkpoint, "checkpoint.ckpt"),
        (SequentialAE, _save_data_parallel, "dp.pt"),
        (SequentialAE, _save_safetensors, "model.safetensors"),
        (flat_sequential, _save_plain, "flat.pt"),
        (flat_sequential, _save_data_parallel, "flat-dp.bin"),
    ],
    ids=[
        "sequential",
        "state_dict-wrapper",
        "training-checkpoint",
        "module-prefix",
        "safetensors",
        "flat-sequential",
        "flat-module-prefix",
    ],
)
def test_users_torch_autoencoder_converts_with_identical_outputs(
    tmp_path, make, save, name
):
    module = seeded(make())
    path = tmp_path / name
    save(module, path)
    x = images()
    expected = torch_out(module, x)
    config = assert_both_packages_match(path, x, expected, 1e-6, fields=CLASSIC)
    assert (config.architecture, config.input_dim, config.hidden_dims) == (
        "mlp",
        784,
        (128, 32),
    )
    assert (config.tied, config.topk, config.output_activation) == (
        False,
        None,
        "sigmoid",
    )
    assert foreign.detect(path) == ("torch", str(path))


class SeedDeepAE(nn.Module):
    """The FashionMNIST L1 tutorial's 784-256-128-64-32-16 model, as it is written
    there: one attribute per layer, ReLU everywhere, the output included."""

    def __init__(self):
        super().__init__()
        self.enc1 = nn.Linear(784, 256)
        self.enc2 = nn.Linear(256, 128)
        self.enc3 = nn.Linear(128, 64)
        self.enc4 = nn.Linear(64, 32)
        self.enc5 = nn.Linear(32, 16)
        self.dec1 = nn.Linear(16, 32)
        self.dec2 = nn.Linear(32, 64)
        self.dec3 = nn.Linear(64, 128)
        self.dec4 = nn.Linear(128, 256)
        self.dec5 = nn.Linear(256, 784)

    def forward(self, x):
        for layer in (self.enc1, self.enc2, self.enc3, self.enc4, self.enc5):
            x = F.relu(layer(x))
        for layer in (self.dec1, self.dec2, self.dec3, self.dec4, self.dec5):
            x = F.relu(layer(x))
        return x


def test_seed_tutorial_model_converts_with_its_preset(tmp_path, capsys):
    module = seeded(SeedDeepAE(), seed=1)
    src, dst = tmp_path / "sparse_ae.pth", tmp_path / "deep.safetensors"
    torch.save(module.state_dict(), src)
    code, out, err = run_cli(capsys, src, dst, "--preset", "fashion-l1-deep")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == f"read {src}: mlp autoencoder 784-256-128-64-32-16"
    assert "  numbered layout renamed to encoder.N/decoder.N" in lines
    assert f"wrote sae: {dst}" in lines
    assert lines[-1] == "read back: weights within 0.0e+00"
    x = images()
    expected = torch_out(module, x)
    assert expected.max() > 0  # the ReLU output is not all zeros
    config = assert_both_packages_match(dst, x, expected, 1e-6)
    assert config.hidden_dims == (256, 128, 64, 32, 16)
    assert config.output_activation == "relu"
    assert (config.penalty, config.l1_layers) == ("l1", "hidden")


class IvLabsSeedAE(nn.Module):
    """The IvLabs notebook's fully convolutional autoencoder with its own attribute
    names (scripts/bench.py's IvLabsAE forward, same layers)."""

    def __init__(self):
        super().__init__()
        self.enc1 = nn.Conv2d(1, 8, 3)
        self.enc2 = nn.Conv2d(8, 16, 5)
        self.enc3 = nn.Conv2d(16, 32, 5, stride=2)
        self.pool = nn.MaxPool2d(2)
        self.dec1 = nn.ConvTranspose2d(32, 16, 3, stride=2)
        self.dec2 = nn.ConvTranspose2d(16, 8, 5, stride=2)
        self.dec3 = nn.ConvTranspose2d(8, 1, 8)

    def forward(self, x):  # x [batch, 1, 28, 28]
        h = F.relu(self.enc1(x))
        h = F.relu(self.enc2(h))
        code = self.pool(F.relu(self.enc3(h)))  # [batch, 32, 4, 4]
        h = F.relu(self.dec1(code))
        h = F.relu(self.dec2(h))
        return torch.sigmoid(self.dec3(h))


def test_ivlabs_seed_conv_model_converts_to_fullconv(tmp_path):
    module = seeded(IvLabsSeedAE(), seed=2)
    path = tmp_path / "ivlabs.pt"
    torch.save(module.state_dict(), path)
    x = images(8)
    expected = torch_out(module, torch.from_numpy(x).reshape(-1, 1, 28, 28).numpy())
    assert expected.shape == (8, 1, 28, 28)
    config = assert_both_packages_match(
        path, x, expected.reshape(8, 784), 1e-5, fields=CLASSIC
    )
    assert (config.architecture, config.hidden_dims) == ("fullconv", (512,))


# -------------------------------------------------------- 1. classic models, Flax side


class FlaxDenseAE(fnn.Module):
    """A user's Flax autoencoder of plain Dense layers (auto-named Dense_0..Dense_3)."""

    @fnn.compact
    def __call__(self, x):
        x = fnn.relu(fnn.Dense(128)(x))
        x = fnn.relu(fnn.Dense(32)(x))
        x = fnn.relu(fnn.Dense(128)(x))
        return fnn.sigmoid(fnn.Dense(784)(x))


def test_flax_dense_autoencoder_converts_with_identical_outputs(tmp_path):
    x = images()
    module = FlaxDenseAE()
    params = module.init(jax.random.key(0), jnp.asarray(x))["params"]
    assert sorted(params) == ["Dense_0", "Dense_1", "Dense_2", "Dense_3"]
    expected = np.asarray(module.apply({"params": params}, jnp.asarray(x)))
    path = tmp_path / "flax_ae.msgpack"
    path.write_bytes(flax.serialization.to_bytes(params))
    config = assert_both_packages_match(path, x, expected, 1e-6, fields=CLASSIC)
    assert config.hidden_dims == (128, 32)
    assert foreign.detect(path) == ("flax", str(path))


@pytest.mark.parametrize(
    "architecture, wrapped, name",
    [
        ("mlp", False, "params.msgpack"),
        ("mlp", True, "state.flax"),
        ("mlp", True, "state.bin"),  # no msgpack extension: sniffed from the bytes
        ("fullconv", True, "conv.msgpack"),
    ],
)
def test_jaxsae_params_msgpack_converts_with_identical_outputs(
    tmp_path, architecture, wrapped, name
):
    config = SAEConfig(
        architecture=architecture,
        hidden_dims=(128, 32) if architecture == "mlp" else None,
        **CLASSIC,
    )
    x = images(8)
    model = jaxsae.Autoencoder(config)
    params = model.init(jax.random.key(1), jnp.asarray(x))["params"]
    expected = np.asarray(
        model.apply({"params": params}, jnp.asarray(x)).reconstruction
    )
    path = tmp_path / name
    path.write_bytes(
        flax.serialization.to_bytes({"params": params} if wrapped else params)
    )
    assert foreign.detect(path) == ("flax", str(path))
    loaded, _ = jaxsae.load_foreign(path, fields=CLASSIC)
    assert jax.tree_util.tree_structure(loaded) == jax.tree_util.tree_structure(params)
    for (key, a), b in zip(
        jax.tree_util.tree_leaves_with_path(params), jax.tree_util.tree_leaves(loaded)
    ):
        assert a.dtype == b.dtype and np.array_equal(a, b), key
    got = assert_both_packages_match(
        path, x, expected, 1e-6 if architecture == "mlp" else 1e-5, fields=CLASSIC
    )
    assert got == config


# ------------------------------------------------------------------- 2. Gemma Scope


def gemmascope_arrays(d_in=16, d_sae=48, seed=0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "W_enc": rng.normal(0, 0.3, (d_in, d_sae)).astype(np.float32),
        "W_dec": rng.normal(0, 0.3, (d_sae, d_in)).astype(np.float32),
        "b_enc": rng.normal(0, 0.2, d_sae).astype(np.float32),
        "b_dec": rng.normal(0, 0.5, d_in).astype(np.float32),
        "threshold": rng.uniform(0.05, 0.6, d_sae).astype(np.float32),
    }


def gemmascope_formula(arrays, x):
    """z and x_hat as Gemma Scope computes them (float64)."""
    a = {k: v.astype(np.float64) for k, v in arrays.items()}
    pre = x.astype(np.float64) @ a["W_enc"] + a["b_enc"]
    z = pre * (pre > a["threshold"])
    return pre, z, z @ a["W_dec"] + a["b_dec"]


def tokens(n=64, d_in=16, seed=1) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d_in)).astype(np.float32)


def dictionary_outputs(path, x, **kwargs):
    """{package: (z, x_hat)} of the SAE at ``path`` as both packages load it, and
    their (equal) config."""
    (params, threshold), config = jaxsae.load_foreign(path, **kwargs)
    z_j, x_hat_j = jaxsae.dictionary.forward(params, jnp.asarray(x), config, threshold)
    (tparams, tthreshold), tconfig = torchsae.load_foreign(path, **kwargs)
    with torch.no_grad():
        z_t, x_hat_t = torchsae.dictionary.forward(
            tparams, torch.from_numpy(x), tconfig, tthreshold
        )
    assert config == tconfig
    return {
        "jax": (np.asarray(z_j), np.asarray(x_hat_j)),
        "torch": (z_t.numpy(), x_hat_t.numpy()),
    }, config


def margin(pre, threshold) -> float:
    """How far the nearest pre-activation is from its threshold."""
    return float(np.min(np.abs(pre - threshold)))


def test_gemmascope_params_npz_loads_as_its_formula(tmp_path):
    arrays = gemmascope_arrays()
    path = tmp_path / "params.npz"
    np.savez(path, **arrays)
    assert foreign.detect(path) == ("gemmascope", str(path))
    x = tokens()
    pre, z, x_hat = gemmascope_formula(arrays, x)
    assert margin(pre, arrays["threshold"]) > 1e-4  # no latent on the edge
    assert 0 < np.count_nonzero(z) < z.size
    outputs, config = dictionary_outputs(path, x)
    assert (config.activation, config.subtract_b_dec) == ("jumprelu", False)
    assert (config.d_in, config.d_sae, config.input_scale) == (16, 48, 1.0)
    for package, (got_z, got_x_hat) in outputs.items():
        assert np.array_equal(got_z != 0, z != 0), package
        np.testing.assert_allclose(got_z, z, rtol=1e-5, atol=1e-5, err_msg=package)
        np.testing.assert_allclose(
            got_x_hat, x_hat, rtol=1e-5, atol=1e-5, err_msg=package
        )


def dictionary_state(config: DictConfig, seed=0) -> dict[str, np.ndarray]:
    arrays = gemmascope_arrays(config.d_in, config.d_sae, seed)
    if config.activation == "jumprelu":
        return arrays
    del arrays["threshold"]
    if config.has_threshold:
        arrays["threshold"] = np.array(0.3, dtype=np.float32)
    return arrays


@pytest.mark.parametrize(
    "activation, subtract_b_dec, note",
    [
        ("jumprelu", True, "b_dec's subtraction from the input folded into b_enc"),
        ("jumprelu", False, None),
        ("relu", True, "relu written as JumpReLU with threshold 0 for every latent"),
        (
            "batchtopk",
            True,
            "batchtopk written as JumpReLU with its inference threshold for every "
            "latent",
        ),
    ],
    ids=["jumprelu-subtract-b_dec", "jumprelu", "relu", "batchtopk"],
)
def test_written_to_gemmascope_and_back_encodes_the_same(
    tmp_path, activation, subtract_b_dec, note
):
    config = DictConfig(
        d_in=16,
        d_sae=48,
        activation=activation,
        k=4 if activation == "batchtopk" else None,
        subtract_b_dec=subtract_b_dec,
    )
    sd = dictionary_state(config)
    source = tmp_path / "source.safetensors"
    save_dictionary(source, sd, config)
    x = tokens()
    before, _ = dictionary_outputs(source, x)
    z0 = before["torch"][0]
    assert 0 < np.count_nonzero(z0) < z0.size
    # written through jaxsae's save_foreign, read back by both packages
    model, loaded_config = jaxsae.load_foreign(source)
    path = tmp_path / "params.npz"
    files, notes = jaxsae.save_foreign(model, loaded_config, path, "gemmascope")
    assert files == [str(path)]
    if note is not None:
        assert note in notes
    with np.load(path) as npz:
        written = {k: npz[k] for k in npz.files}
    assert sorted(written) == ["W_dec", "W_enc", "b_dec", "b_enc", "threshold"]
    expected_threshold = {
        "jumprelu": sd.get("threshold"),
        "relu": np.zeros(48, np.float32),
        "batchtopk": np.full(48, 0.3, np.float32),
    }[activation]
    np.testing.assert_array_equal(written["threshold"], expected_threshold)
    after, back = dictionary_outputs(path, x)
    assert (back.activation, back.subtract_b_dec) == ("jumprelu", False)
    # the margin keeps float32 rounding of the folded b_enc from flipping a latent
    xc = x - sd["b_dec"] if subtract_b_dec else x
    pre = xc.astype(np.float64) @ sd["W_enc"] + sd["b_enc"]
    assert margin(pre, expected_threshold) > 1e-4
    for package in ("jax", "torch"):
        for name, a, b in zip(("z", "x_hat"), before[package], after[package]):
            np.testing.assert_allclose(
                b, a, rtol=1e-5, atol=1e-5, err_msg=f"{package} {name}"
            )


# ------------------------------------------------------------ 3. bit-exact round trips


def classic_checkpoint(path) -> SAEConfig:
    config = SAEConfig(
        input_dim=20,
        hidden_dims=(12, 6),
        activation="tanh",
        code_activation="leaky_relu",
        output_activation="identity",
        negative_slope=0.2,
        topk=3,
        penalty="l1",
        penalty_weight=0.01,
    )
    rng = np.random.default_rng(3)
    sd = {
        k: rng.normal(size=shape).astype(np.float32)
        for k, shape in expected_shapes(config).items()
    }
    write_checkpoint(path, sd, config)
    return config


def topk_checkpoint(path) -> DictConfig:
    config = DictConfig(d_in=16, d_sae=48, activation="topk", k=5)
    save_dictionary(path, dictionary_state(config, seed=4), config)
    return config


def read_ours(path):
    sd, config = (
        load_dictionary(path)
        if foreign.read(path, "sae").kind == "dictionary"
        else read_checkpoint(path)
    )
    return sd, config


@pytest.mark.parametrize("kind", ["classic", "topk"])
@pytest.mark.parametrize(
    "fmt, name",
    [("torch", "w.pt"), ("torch", "w.safetensors"), ("flax", "w.msgpack")],
)
def test_round_trip_through_bare_weights_is_bit_exact(
    tmp_path, capsys, kind, fmt, name
):
    source = tmp_path / "source.safetensors"
    config = (classic_checkpoint if kind == "classic" else topk_checkpoint)(source)
    config_file = tmp_path / "config.json"
    config_file.write_text(config.to_json())
    middle, back = tmp_path / name, tmp_path / "back.safetensors"
    read_back = (
        "read back: weights within 0.0e+00"
        if kind == "classic"
        else "read back: z within 0.0e+00 (relative), x_hat within 0.0e+00 (relative)"
    )

    code, out, err = run_cli(capsys, source, middle, "--to", fmt)
    assert (code, err) == (0, "")
    assert out.splitlines()[-1] == read_back
    assert foreign.detect(middle)[0] == fmt
    code, out, err = run_cli(capsys, middle, back, "--config", config_file)
    assert (code, err) == (0, "")
    assert out.splitlines()[-1] == read_back

    sd_a, config_a = read_ours(source)
    sd_b, config_b = read_ours(back)
    assert config_b == config_a == config
    assert sorted(sd_a) == sorted(sd_b)
    for key in sd_a:
        assert sd_a[key].dtype == sd_b[key].dtype, key
        assert np.array_equal(sd_a[key], sd_b[key]), key


@pytest.mark.parametrize("kind", ["classic", "topk"])
def test_round_trip_through_both_packages_save_foreign_is_bit_exact(tmp_path, kind):
    source = tmp_path / "source.safetensors"
    config = (classic_checkpoint if kind == "classic" else topk_checkpoint)(source)
    fields = {
        k: v
        for k, v in json.loads(config.to_json()).items()
        if k not in ("version", "kind")
    }
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
    for package, fmt, name in (
        (torchsae, "torch", "t.pt"),
        (jaxsae, "flax", "j.msgpack"),
        (torchsae, "flax", "t.msgpack"),
        (jaxsae, "torch", "j.safetensors"),
    ):
        model, got = package.load_foreign(source)
        assert got == config
        package.save_foreign(model, got, tmp_path / name, fmt)
        model, got = package.load_foreign(tmp_path / name, fields=fields)
        assert got == config
        back = tmp_path / f"back-{name}.safetensors"
        package.save_foreign(model, got, back)
        sd_a, _ = read_ours(source)
        sd_b, config_b = read_ours(back)
        assert config_b == config
        for key in sd_a:
            assert np.array_equal(sd_a[key], sd_b[key]), (package.__name__, fmt, key)


# ------------------------------------------------------------------- 4. bad input


def out(tmp):
    """Where the command line is asked to write (nothing may appear there)."""
    return tmp / "cli-out.safetensors"


class WholeModule(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Linear(8, 4)
        self.decoder = nn.Linear(4, 8)


def _random_bytes(tmp):
    path = tmp / "weights.bin"
    data = np.random.default_rng(0).bytes(256)
    path.write_bytes(b"\x00\x13" + data)  # not a pickle, msgpack or zip header
    return [path, out(tmp)], lambda: foreign.read(path)


def _json_file(tmp):
    path = tmp / "model.json"
    path.write_text(json.dumps({"d_in": 16, "d_sae": 48}))
    return [path, out(tmp)], lambda: foreign.read(path)


def _empty_file(tmp):
    path = tmp / "empty.pt"
    path.write_bytes(b"")
    return [path, out(tmp)], lambda: foreign.read(path)


def _whole_module_pickle(tmp):
    path = tmp / "whole.pt"
    torch.save(WholeModule(), path)
    return [path, out(tmp)], lambda: foreign.read(path)


def _truncated_torch_file(tmp):
    """torch.save's legacy (non-zip) serialization cut short, as by an interrupted
    download: torch.load raises an EOFError with an empty message."""
    path = tmp / "cut.pt"
    buffer = io.BytesIO()
    torch.save(
        SequentialAE().state_dict(), buffer, _use_new_zipfile_serialization=False
    )
    path.write_bytes(buffer.getvalue()[:40])
    return [path, out(tmp)], lambda: foreign.read(path)


def _saelens_folder(tmp, cfg):
    folder = tmp / "saelens"
    folder.mkdir()
    arrays = gemmascope_arrays()
    del arrays["threshold"]
    save_numpy_safetensors(arrays, str(folder / "sae_weights.safetensors"))
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return [folder, out(tmp)], lambda: foreign.read(folder)


def _saelens_gated(tmp):
    return _saelens_folder(
        tmp, {"architecture": "gated", "d_in": 16, "d_sae": 48, "dtype": "float32"}
    )


def _saelens_pre_6(tmp):
    return _saelens_folder(tmp, {"d_in": 16, "d_sae": 48, "dtype": "float32"})


def _sparsify_two_hookpoints(tmp):
    run = tmp / "sparsify-run"
    arrays = gemmascope_arrays()
    for hookpoint in ("layers.0", "layers.1"):
        (run / hookpoint).mkdir(parents=True)
        save_numpy_safetensors(
            {
                "encoder.weight": np.ascontiguousarray(arrays["W_enc"].T),
                "encoder.bias": arrays["b_enc"],
                "W_dec": arrays["W_dec"],
                "b_dec": arrays["b_dec"],
            },
            str(run / hookpoint / "sae.safetensors"),
        )
        (run / hookpoint / "cfg.json").write_text(
            json.dumps({"activation": "topk", "k": 4, "d_in": 16, "num_latents": 48})
        )
    return [run, out(tmp)], lambda: foreign.read(run)


def _topk_to_gemmascope(tmp):
    source = tmp / "topk.safetensors"
    topk_checkpoint(source)
    dst = tmp / "params.npz"
    return (
        [source, dst, "--to", "gemmascope"],
        lambda: foreign.write(foreign.read(source), dst, "gemmascope"),
    )


def _classic_to_saelens(tmp):
    source = tmp / "classic.safetensors"
    classic_checkpoint(source)
    dst = tmp / "saelens-out"
    return (
        [source, dst, "--to", "saelens"],
        lambda: foreign.write(foreign.read(source), dst, "saelens"),
    )


def _user_state_dict(tmp, state_dict=None):
    path = tmp / "user.pt"
    if state_dict is None:
        state_dict = flat_sequential().state_dict()
    torch.save(state_dict, path)
    return path


def _preset_disagrees(tmp):
    from saecommon.convert_cli import preset_fields

    path = _user_state_dict(tmp)
    return (
        [path, out(tmp), "--preset", "mnist-kl"],
        lambda: foreign.read(path, fields=preset_fields("mnist-kl")),
    )


def _fields_missing(tmp):
    path = _user_state_dict(tmp)
    return [path, out(tmp)], lambda: foreign.read(path)


def _unknown_layout(tmp):
    path = _user_state_dict(
        tmp,
        {
            "fc_in.weight": torch.zeros(32, 784),
            "fc_in.bias": torch.zeros(32),
            "fc_out.weight": torch.zeros(784, 32),
            "fc_out.bias": torch.zeros(784),
        },
    )
    argv = [path, out(tmp), "--set", "activation=relu", "--set", "code_activation=relu"]
    argv += ["--set", "output_activation=sigmoid", "--set", "topk=none"]
    return argv, lambda: foreign.read(path, fields=CLASSIC)


BAD_INPUTS = {
    "random-bytes": (
        _random_bytes,
        [
            "weights.bin is a file of unknown kind (it starts with b'\\x00\\x13",
            "which is none of the formats read here (sae, saelens, sparsify, "
            "dictionary_learning, gemmascope, torch, flax); give --from",
        ],
    ),
    "json": (
        _json_file,
        ["model.json is a JSON file, which is none of the formats read here"],
    ),
    "empty": (
        _empty_file,
        ["empty.pt is an empty file, which is none of the formats read here"],
    ),
    "whole-module-pickle": (
        _whole_module_pickle,
        [
            "whole.pt is a pickle that needs the Python object ",
            "WholeModule, not only tensors",
            "unpickling it could run code from the file, so it is refused",
            "torch.save(model.state_dict(), path)",
        ],
    ),
    "truncated-torch-file": (
        _truncated_torch_file,
        ["cut.pt could not be read by torch.load (a Python pickle)"],
    ),
    "saelens-gated": (
        _saelens_gated,
        [
            "SAELens architecture 'gated' is not supported; these are: standard, "
            "topk, jumprelu, batchtopk, matryoshka_batchtopk"
        ],
    ),
    "saelens-pre-6": (
        _saelens_pre_6,
        [
            "cfg.json has no 'architecture': a SAELens config from before 6.0",
            "Load it with SAELens 6",
        ],
    ),
    "sparsify-two-hookpoints": (
        _sparsify_two_hookpoints,
        [
            "is a sparsify run with 2 hookpoints (layers.0, layers.1); choose one "
            "with --hookpoint NAME"
        ],
    ),
    "topk-to-gemmascope": (
        _topk_to_gemmascope,
        [
            "Gemma Scope's format holds JumpReLU SAEs",
            "a topk SAE selects k latents per token and has no threshold",
        ],
    ),
    "classic-to-saelens": (
        _classic_to_saelens,
        [
            "saelens holds dictionary SAEs; this is a classic mlp autoencoder: "
            "write it as sae, torch or flax"
        ],
    ),
    "preset-shapes-disagree": (
        _preset_disagrees,
        [
            "the given config disagrees with the weights: hidden_dims: given (64,), "
            "the weights say (128, 32)"
        ],
    ),
    "fields-missing": (
        _fields_missing,
        [
            "holds weights only; the model's activation, code_activation, "
            "output_activation, topk are not in it: give them (--set activation=..., "
            "--set code_activation=..., --set output_activation=..., "
            "--set topk=...), or --preset NAME, or --config FILE.json"
        ],
    ),
    "unknown-key-layout": (
        _unknown_layout,
        [
            "keys fc_in.bias, fc_in.weight, fc_out.bias, fc_out.weight fit none of "
            "the layouts read here"
        ],
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_gives_one_clear_error(tmp_path, capsys, case):
    make, phrases = BAD_INPUTS[case]
    argv, call = make(tmp_path)
    with pytest.raises(foreign.ForeignError) as raised:
        call()
    message = str(raised.value)
    assert isinstance(raised.value, ValueError)
    for phrase in phrases:
        assert phrase in message
    # the command line: exit 2, one "error:" line, the same message
    code, out, err = run_cli(capsys, *argv)
    assert code == 2
    assert err.endswith("\n") and len(err.splitlines()) == 1
    assert err.startswith("error: ")
    for phrase in phrases:
        assert phrase in err
    assert "Traceback" not in out + err
    # nothing was written
    written = sorted(p.name for p in tmp_path.iterdir())
    assert "cli-out.safetensors" not in written
    assert "params.npz" not in written and "saelens-out" not in written


def test_sparsify_hookpoint_is_chosen_by_name(tmp_path, capsys):
    (run, _), _ = _sparsify_two_hookpoints(tmp_path)
    model = foreign.read(run, hookpoint="layers.1")
    assert (model.config.activation, model.config.k, model.config.d_sae) == (
        "topk",
        4,
        48,
    )
    code, _, err = run_cli(capsys, run, tmp_path / "x.safetensors", "--hookpoint", "l9")
    assert code == 2
    assert err == (f"error: {run} has no hookpoint 'l9'; it has: layers.0, layers.1\n")


# ---------------------------------------------------------------- 5. never overwrite


def test_an_existing_file_is_never_replaced_unasked(tmp_path, capsys):
    source = tmp_path / "source.safetensors"
    classic_checkpoint(source)
    for name, fmt in (
        ("w.pt", "torch"),
        ("w.msgpack", "flax"),
        ("c.safetensors", "sae"),
    ):
        dst = tmp_path / name
        dst.write_bytes(b"precious bytes")
        code, _, err = run_cli(capsys, source, dst, "--to", fmt)
        assert code == 2
        assert err == (
            f"error: {dst} already exists; choose another destination, or "
            "overwrite it (--overwrite)\n"
        )
        assert dst.read_bytes() == b"precious bytes"
        model, config = torchsae.load_foreign(source)
        with pytest.raises(foreign.ForeignError, match="already exists"):
            torchsae.save_foreign(model, config, dst, fmt)
        params, config = jaxsae.load_foreign(source)
        with pytest.raises(foreign.ForeignError, match="already exists"):
            jaxsae.save_foreign(params, config, dst, fmt)
        assert dst.read_bytes() == b"precious bytes"
        # --overwrite replaces it with the model, read back equal
        code, out, err = run_cli(capsys, source, dst, "--to", fmt, "--overwrite")
        assert (code, err) == (0, "")
        assert out.splitlines()[-1] == "read back: weights within 0.0e+00"
        assert foreign.detect(dst)[0] == fmt
    # no temporary files left behind
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp-")]


def test_folder_formats_keep_other_files_and_never_replace(tmp_path, capsys):
    source = tmp_path / "topk.safetensors"
    topk_checkpoint(source)
    dst = tmp_path / "out"
    dst.mkdir()
    (dst / "README.md").write_text("my notes")
    (dst / "other.safetensors").write_bytes(b"other model")
    code, out, err = run_cli(capsys, source, dst, "--to", "saelens")
    assert (code, err) == (0, "")
    assert sorted(os.listdir(dst)) == [
        "README.md",
        "cfg.json",
        "other.safetensors",
        "sae_weights.safetensors",
    ]
    assert (dst / "README.md").read_text() == "my notes"
    assert (dst / "other.safetensors").read_bytes() == b"other model"
    assert out.splitlines()[-1].startswith("read back: z within 0.0e+00")

    # a second write finds the files and touches nothing
    cfg = (dst / "cfg.json").read_bytes()
    (dst / "sae_weights.safetensors").write_bytes(b"stale weights")
    code, _, err = run_cli(capsys, source, dst, "--to", "saelens")
    assert code == 2
    assert err.startswith("error: ") and len(err.splitlines()) == 1
    assert "sae_weights.safetensors, " in err and "cfg.json already exist;" in err
    assert "(--overwrite)" in err
    assert (dst / "sae_weights.safetensors").read_bytes() == b"stale weights"
    assert (dst / "cfg.json").read_bytes() == cfg

    # sparsify into a folder holding only a foreign cfg.json: refused, kept
    other = tmp_path / "sparsify-out"
    other.mkdir()
    (other / "cfg.json").write_text("{}")
    code, _, err = run_cli(capsys, source, other, "--to", "sparsify")
    assert code == 2
    assert err == (
        f"error: {other / 'cfg.json'} already exists; choose another destination, "
        "or overwrite it (--overwrite)\n"
    )
    assert sorted(os.listdir(other)) == ["cfg.json"]
    assert (other / "cfg.json").read_text() == "{}"

    # --overwrite replaces the model's files only
    code, _, err = run_cli(capsys, source, dst, "--to", "saelens", "--overwrite")
    assert (code, err) == (0, "")
    assert (dst / "README.md").read_text() == "my notes"
    assert (dst / "other.safetensors").read_bytes() == b"other model"
    assert foreign.detect(dst)[0] == "saelens"


def test_half_precision_and_a_fractional_batch_k_are_said(tmp_path):
    """bfloat16 weights read as float32 exactly, with a note; SAELens's float k of a
    batch rule becomes an int (its ceiling when fractional, with a note)."""
    rng = np.random.default_rng(3)
    folder = tmp_path / "bf16"
    folder.mkdir()
    weights = {
        "W_enc": torch.from_numpy(rng.standard_normal((8, 24)).astype(np.float32)),
        "b_enc": torch.zeros(24),
        "W_dec": torch.from_numpy(rng.standard_normal((24, 8)).astype(np.float32)),
        "b_dec": torch.zeros(8),
        "topk_threshold": torch.tensor(0.25),
    }
    save_torch_safetensors(
        {k: v.to(torch.bfloat16) for k, v in weights.items()},
        folder / "sae_weights.safetensors",
    )
    cfg = {"architecture": "batchtopk", "d_in": 8, "d_sae": 24, "k": 2.5}
    (folder / "cfg.json").write_text(json.dumps(cfg))
    model = foreign.read(folder)
    assert model.config.activation == "batchtopk" and model.config.k == 3
    assert any("k 2.5" in n and "kept as 3" in n for n in model.notes)
    assert any("read from half precision as float32" in n for n in model.notes)
    for name in ("W_enc", "W_dec"):
        want = weights[name].to(torch.bfloat16).float().numpy()
        assert model.state_dict[name].dtype == np.float32
        np.testing.assert_array_equal(model.state_dict[name], want)
    assert float(model.state_dict["threshold"]) == 0.25
    cfg["k"] = 4.0  # a whole float k: that int, nothing to say about it
    (folder / "cfg.json").write_text(json.dumps(cfg))
    model = foreign.read(folder)
    assert model.config.k == 4 and not any("kept as" in n for n in model.notes)


def test_every_tensor_is_checked_against_the_config_it_builds(tmp_path):
    """A bare dictionary state dict with a missing, a mis-shaped and an unexpected
    tensor: one error naming all three."""
    path = tmp_path / "sae.pt"
    torch.save(
        {
            "encoder.weight": torch.zeros(8, 4),  # sparsify's names; no encoder.bias
            "W_dec": torch.zeros(8, 4),
            "b_dec": torch.zeros(5),
            "W_skip": torch.zeros(4, 4),
        },
        path,
    )
    fields = {"activation": "topk", "k": 2, "subtract_b_dec": True}
    with pytest.raises(ValueError) as err:
        foreign.read(path, fields=fields)
    message = str(err.value)
    assert "missing b_enc (8,)" in message
    assert "b_dec is (5,), the config says (4,)" in message
    assert "unexpected W_skip" in message
