"""The portable checkpoint in both packages: round trip, bad files, atomic writes."""

import os
import pickle

import numpy as np
import pytest
from safetensors.numpy import save_file

from saecommon.checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    read_checkpoint,
    write_checkpoint,
)
from saecommon.config import SAEConfig

CFG = SAEConfig(input_dim=12, hidden_dims=(10, 6), topk=2, tied=True)


def metadata(config_json, version=FORMAT_VERSION):
    """The metadata write_checkpoint puts in a checkpoint's header."""
    return {
        "format": "sae-checkpoint",
        "format_version": version,
        "config": config_json,
    }


def save(fw, path, sd, cfg):
    if fw.name == "jax":
        fw.pkg.save_checkpoint(path, fw.pkg.from_state_dict(sd, cfg), cfg)
    else:
        fw.pkg.save_checkpoint(path, fw.pkg.from_state_dict(sd, cfg))


def load(fw, path):
    params_or_model, cfg = fw.pkg.load_checkpoint(path)
    return fw.pkg.to_state_dict(params_or_model), cfg


def test_save_load_round_trip_is_bit_exact(fw, tmp_path):
    sd = fw.init(CFG, 0)
    path = tmp_path / "model.safetensors"
    save(fw, path, sd, CFG)
    back, cfg = load(fw, path)
    assert cfg == CFG
    assert back.keys() == sd.keys()
    for k in sd:
        assert back[k].dtype == sd[k].dtype
        np.testing.assert_array_equal(back[k], sd[k], err_msg=k)


def test_float64_checkpoints_stay_float64(fw, tmp_path):
    sd = {k: v.astype(np.float64) for k, v in fw.init(CFG, 0).items()}
    write_checkpoint(tmp_path / "m.safetensors", sd, CFG)
    back, _ = load(fw, tmp_path / "m.safetensors")
    assert all(v.dtype == np.float64 for v in back.values())


def test_another_architecture_names_every_bad_key(fw, tmp_path):
    sd = fw.init(CFG, 0)
    other = CFG.replace(hidden_dims=(10, 5), tied=False)
    with pytest.raises(CheckpointError) as err:
        fw.pkg.from_state_dict(sd, other)
    msg = str(err.value)
    assert "missing keys: decoder.0.weight, decoder.1.weight" in msg
    assert "mis-shaped keys: encoder.1.weight: checkpoint (6, 10), model (5, 10)" in msg
    assert "encoder.1.bias: checkpoint (6,), model (5,)" in msg
    sd["encoder.2.weight"] = np.zeros((2, 2), np.float32)
    with pytest.raises(CheckpointError, match="unexpected keys: encoder.2.weight"):
        fw.pkg.from_state_dict(sd, CFG)


def test_file_whose_tensors_contradict_its_config(fw, tmp_path):
    sd = fw.init(CFG, 0)
    sd["encoder.0.bias"] = np.zeros(7, np.float32)
    path = tmp_path / "bad.safetensors"
    save_file(sd, path, metadata=metadata(CFG.to_json()))
    with pytest.raises(
        CheckpointError, match=r"encoder.0.bias: checkpoint \(7,\), model \(10,\)"
    ):
        fw.pkg.load_checkpoint(path)


@pytest.mark.parametrize("keep", [0, 7, 100, -10])
def test_truncated_file_is_a_clear_error(fw, tmp_path, keep):
    path = tmp_path / "model.safetensors"
    save(fw, path, fw.init(CFG, 0), CFG)
    data = path.read_bytes()
    path.write_bytes(data[:keep] if keep >= 0 else data[:keep])
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        fw.pkg.load_checkpoint(path)


def test_foreign_safetensors_and_missing_files(fw, tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"w": np.zeros(3, np.float32)}, path)
    with pytest.raises(CheckpointError, match="not an SAE checkpoint"):
        fw.pkg.load_checkpoint(path)
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        fw.pkg.load_checkpoint(tmp_path / "absent.safetensors")
    save_file(fw.init(CFG, 0), path, metadata=metadata('{"topk": 0}'))
    with pytest.raises(
        CheckpointError, match="holds an invalid config: topk must be >= 1"
    ):
        fw.pkg.load_checkpoint(path)


def test_loading_never_unpickles(fw, tmp_path, monkeypatch):
    path = tmp_path / "model.safetensors"
    save(fw, path, fw.init(CFG, 0), CFG)

    def refuse(*args, **kwargs):
        raise AssertionError("a checkpoint load reached pickle")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    import torch

    monkeypatch.setattr(torch, "load", refuse)
    back, cfg = load(fw, path)
    assert cfg == CFG and back.keys() == fw.init(CFG, 0).keys()


def test_a_failed_write_leaves_the_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "model.safetensors"
    sd = {
        k: np.ones(s, np.float32)
        for k, s in {
            "encoder.0.weight": (10, 12),
            "encoder.0.bias": (10,),
            "encoder.1.weight": (6, 10),
            "encoder.1.bias": (6,),
            "decoder.0.bias": (10,),
            "decoder.1.bias": (12,),
        }.items()
    }
    write_checkpoint(path, sd, CFG)
    before = path.read_bytes()

    def crash(src, dst):
        raise KeyboardInterrupt  # a kill between writing the temp file and renaming it

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        write_checkpoint(path, {k: v * 2 for k, v in sd.items()}, CFG)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["model.safetensors"]  # no temp file left behind
    back, _ = read_checkpoint(path)
    np.testing.assert_array_equal(back["encoder.0.weight"], sd["encoder.0.weight"])


def test_atomic_writes_are_readable_like_open_writes(tmp_path):
    import os

    from saecommon.checkpoint import atomic_write

    atomic_write(tmp_path / "a.bin", b"x")
    with open(tmp_path / "b.bin", "wb") as f:
        f.write(b"x")
    mode = lambda p: os.stat(p).st_mode & 0o777  # noqa: E731
    assert mode(tmp_path / "a.bin") == mode(tmp_path / "b.bin")
    assert (tmp_path / "a.bin").read_bytes() == b"x"


@pytest.mark.parametrize(
    "bad, counts", [(np.nan, "1 NaN, 0 inf"), (np.inf, "0 NaN, 1 inf")]
)
def test_non_finite_weights_are_refused_naming_the_tensor(fw, tmp_path, bad, counts):
    sd = fw.init(CFG, 0)
    sd["encoder.1.weight"][2, 3] = bad
    path = tmp_path / "diverged.safetensors"
    save_file(sd, path, metadata=metadata(CFG.to_json()))
    with pytest.raises(CheckpointError) as err:
        fw.pkg.load_checkpoint(path)
    assert str(err.value) == (
        f"{path} holds non-finite weights: encoder.1.weight ({counts} of 60 values); "
        "the run that wrote it diverged or the file is corrupt"
    )


@pytest.mark.parametrize("version", ["2", "0", None])
def test_an_unknown_format_version_is_refused(fw, tmp_path, version):
    path = tmp_path / "future.safetensors"
    header = metadata(CFG.to_json(), version)
    if version is None:
        del header["format_version"]
    save_file(fw.init(CFG, 0), path, metadata=header)
    found = "no format_version" if version is None else f"format_version {version!r}"
    with pytest.raises(CheckpointError) as err:
        fw.pkg.load_checkpoint(path)
    assert str(err.value) == (
        f"{path} has {found}; this code reads format_version '1' only"
    )
