"""Checkpoints move between the packages: bit-exact round trips, same outputs."""

import jax
import numpy as np
import pytest
import torch
from safetensors import safe_open

import jaxsae
import torchsae
from conftest import _framework
from parity_tests.harness import compare, run_jax, run_torch
from saecommon.config import SAEConfig

CONFIGS = [
    SAEConfig(input_dim=20, hidden_dims=(16, 12, 8), activation="leaky_relu", topk=3),
    SAEConfig(
        input_dim=20,
        hidden_dims=(10,),
        code_activation="sigmoid",
        tied=True,
        penalty="kl",
        penalty_weight=0.1,
        lifetime_rate=0.5,
        loss="bce",
    ),
    SAEConfig(architecture="conv", activation="leaky_relu", topk=20),
    SAEConfig(architecture="fullconv", loss="bce", penalty="l1", penalty_weight=1e-3),
]
IDS = ["untied", "tied", "conv", "fullconv"]


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_jax_torch_jax_round_trip_is_bit_exact(config, tmp_path):
    params = jaxsae.Autoencoder(config).init(
        jax.random.key(0), np.zeros((1, config.input_dim))
    )["params"]
    jaxsae.save_checkpoint(tmp_path / "a.safetensors", params, config)
    model, cfg = torchsae.load_checkpoint(tmp_path / "a.safetensors")
    torchsae.save_checkpoint(tmp_path / "b.safetensors", model)
    back, cfg2 = jaxsae.load_checkpoint(tmp_path / "b.safetensors")
    assert cfg == cfg2 == config
    assert jax.tree.structure(back) == jax.tree.structure(params)
    for path, a, b in zip(
        jax.tree_util.tree_leaves_with_path(params),
        jax.tree.leaves(params),
        jax.tree.leaves(back),
    ):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(
            np.asarray(a), np.asarray(b), err_msg=str(path[0])
        )
    # Same weights and config: both packages write the same metadata and tensor bytes
    # (the files' bytes differ only in the order safetensors writes its metadata map).
    with (
        safe_open(tmp_path / "a.safetensors", "np") as a,
        safe_open(tmp_path / "b.safetensors", "np") as b,
    ):
        assert a.metadata() == b.metadata()
        assert sorted(a.keys()) == sorted(b.keys())
        for k in a.keys():
            assert a.get_tensor(k).tobytes() == b.get_tensor(k).tobytes(), k


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_torch_jax_torch_round_trip_is_bit_exact(config, tmp_path):
    model = torchsae.Autoencoder(config, generator=torch.Generator().manual_seed(0))
    torchsae.save_checkpoint(tmp_path / "a.safetensors", model)
    params, _ = jaxsae.load_checkpoint(tmp_path / "a.safetensors")
    jaxsae.save_checkpoint(tmp_path / "b.safetensors", params, config)
    back, _ = torchsae.load_checkpoint(tmp_path / "b.safetensors")
    for (name, a), (name_b, b) in zip(
        model.state_dict().items(), back.state_dict().items()
    ):
        assert name == name_b
        assert torch.equal(a, b), name


@pytest.mark.parametrize("writer", ["jax", "torch"])
@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_a_checkpoint_from_either_package_gives_the_same_outputs(
    config, writer, tmp_path
):
    sd = _framework(writer).init(config, 7)
    path = tmp_path / "m.safetensors"
    if writer == "jax":
        jaxsae.save_checkpoint(path, jaxsae.from_state_dict(sd, config), config)
    else:
        torchsae.save_checkpoint(path, torchsae.from_state_dict(sd, config))
    params, cfg_j = jaxsae.load_checkpoint(path)
    model, cfg_t = torchsae.load_checkpoint(path)
    x = np.random.default_rng(0).uniform(size=(6, config.input_dim)).astype(np.float32)
    for train in (True, False):
        compare(
            run_jax(jaxsae.to_state_dict(params), cfg_j, x, train),
            run_torch(torchsae.to_state_dict(model), cfg_t, x, train),
            np.float32,
            f"{writer} checkpoint train={train}",
        )
