"""The evaluation scripts take models in other formats: scripts/evaluate.py (classic
autoencoders, and dictionary SAEs handed to evaluate_sae.py) and
scripts/evaluate_sae.py --model give the same numbers for a converted model as for
the original; an orbax checkpoint folder reads."""

from __future__ import annotations

import importlib.util
import json
import os
import sys

import numpy as np
import pytest
import torch

from saecommon import foreign
from saecommon.config import SAEConfig

ROOT = os.path.join(os.path.dirname(__file__), "..")
sys.path.insert(0, os.path.join(ROOT, "scripts"))
sys.path.insert(0, os.path.dirname(__file__))
import evaluate_sae  # noqa: E402
import train_sae  # noqa: E402
from test_dict_run import make_cache  # noqa: E402
from test_evaluation import write_idx_dataset  # noqa: E402

CLASSIC = SAEConfig(
    input_dim=784,
    hidden_dims=(32,),
    activation="relu",
    code_activation="relu",
    output_activation="sigmoid",
    topk=8,
)
FIELDS = ["--set", "activation=relu", "--set", "code_activation=relu",
          "--set", "output_activation=sigmoid", "--set", "topk=8"]  # fmt: skip


def evaluate_script():
    spec = importlib.util.spec_from_file_location(
        "evaluate_script", os.path.join(ROOT, "scripts", "evaluate.py")
    )
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


class SeedAE(torch.nn.Module):
    """A user's autoencoder as tutorials write it: Sequential blocks."""

    def __init__(self):
        super().__init__()
        self.encoder = torch.nn.Sequential(torch.nn.Linear(784, 32), torch.nn.ReLU())
        self.decoder = torch.nn.Sequential(torch.nn.Linear(32, 784), torch.nn.Sigmoid())


def test_evaluate_reads_a_torch_state_dict_as_its_checkpoint(tmp_path, capsys):
    torch.manual_seed(0)
    path = tmp_path / "seed_ae.pt"
    torch.save(SeedAE().state_dict(), path)
    model = foreign.read(
        path,
        fields={
            "activation": "relu",
            "code_activation": "relu",
            "output_activation": "sigmoid",
            "topk": 8,
        },
    )
    assert model.config == CLASSIC
    ours = tmp_path / "ours.safetensors"
    foreign.write(model, ours)
    script = evaluate_script()
    data = write_idx_dataset(tmp_path / "data", shape=(28, 28))  # 60 test images
    for framework in ("jax", "torch"):
        a, b = tmp_path / f"a-{framework}", tmp_path / f"b-{framework}"
        argv = [
            "--no-probe",
            "--quiet",
            "--framework",
            framework,
            "--dataset",
            str(data),
        ]
        assert script.main([str(path), "--out", str(a), *argv, *FIELDS]) == 0
        assert script.main([str(ours), "--out", str(b), *argv]) == 0
        got = json.loads((a / "metrics.json").read_text())
        want = json.loads((b / "metrics.json").read_text())
        assert got["metrics"] == want["metrics"]
        assert got["checkpoint"] == os.path.abspath(path)
    # without the fields: one error naming them, exit 2
    capsys.readouterr()
    assert script.main([str(path), "--no-probe", "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "--set code_activation=" in err
    # a dictionary SAE given to evaluate_sae.py's classic twin the other way round
    assert evaluate_sae.main(["--model", str(ours), "--cache", str(tmp_path)]) == 2
    assert "evaluate it with scripts/evaluate.py" in capsys.readouterr().err


@pytest.fixture(scope="module")
def dictionary_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("dict")
    make_cache(root / "acts")
    flags = ["--cache", str(root / "acts"), "--out", str(root / "run"),
             "--d-sae", "48", "--batch-size", "64", "--eval-tokens", "128",
             "--steps", "12", "--activation", "jumprelu", "--quiet"]  # fmt: skip
    assert train_sae.main(flags) == 0
    return root


@pytest.mark.parametrize("target", ["gemmascope", "saelens", "dictionary_learning"])
def test_evaluate_sae_takes_a_converted_dictionary(dictionary_run, tmp_path, target):
    run, cache = dictionary_run / "run", str(dictionary_run / "acts")
    dst = tmp_path / ("params.npz" if target == "gemmascope" else "sae")
    model = foreign.read(run)
    foreign.write(model, dst, target)

    def metrics(path, *extra):
        out = tmp_path / f"m{len(os.listdir(tmp_path))}.json"
        argv = ["--model", str(path), "--cache", cache, "--eval-tokens", "128"]
        assert evaluate_sae.main([*argv, "--json", str(out), *extra]) == 0
        return json.loads(out.read_text())

    want = metrics(run / "model.safetensors")
    for framework in ("jax", "torch"):
        got = metrics(dst, "--framework", framework)
        for key in ("fvu", "l0", "cosine", "relative_bias"):
            assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-7), key


def test_evaluate_hands_a_dictionary_to_evaluate_sae(dictionary_run, tmp_path, capsys):
    run, cache = dictionary_run / "run", str(dictionary_run / "acts")
    dst = tmp_path / "params.npz"
    foreign.write(foreign.read(run), dst, "gemmascope")
    script = evaluate_script()
    capsys.readouterr()
    assert script.main([str(dst), "--cache", cache, "--eval-tokens", "128"]) == 0
    via_evaluate = capsys.readouterr().out
    assert (
        evaluate_sae.main(
            ["--model", str(dst), "--cache", cache, "--eval-tokens", "128"]
        )
        == 0
    )
    assert capsys.readouterr().out == via_evaluate
    assert via_evaluate.startswith("fvu ")
    # the classic models' flags are refused for a dictionary SAE, not ignored
    out = tmp_path / "eval"
    argv = [str(dst), "--cache", cache, "--no-probe", "--out", str(out)]
    assert script.main(argv) == 2
    err = capsys.readouterr().err
    assert "is a dictionary SAE: --out, --no-probe apply to the classic" in err
    assert not out.exists()


def test_an_orbax_checkpoint_folder_reads(tmp_path):
    ocp = pytest.importorskip("orbax.checkpoint", reason="orbax-checkpoint missing")
    rng = np.random.default_rng(0)
    params = {
        "encoder_0": {"kernel": rng.standard_normal((784, 32)), "bias": np.zeros(32)},
        "decoder_0": {"kernel": rng.standard_normal((32, 784)), "bias": np.ones(784)},
    }
    params = {
        m: {k: v.astype(np.float32) for k, v in p.items()} for m, p in params.items()
    }
    ocp.PyTreeCheckpointer().save(str(tmp_path / "orbax"), {"params": params})
    fields = {"activation": "relu", "code_activation": "relu",
              "output_activation": "sigmoid", "topk": 8}  # fmt: skip
    model = foreign.read(tmp_path / "orbax", fields=fields)  # detected: flax
    assert model.config == CLASSIC
    np.testing.assert_array_equal(
        model.state_dict["encoder.0.weight"], params["encoder_0"]["kernel"].T
    )
    np.testing.assert_array_equal(model.state_dict["decoder.0.bias"], np.ones(784))


def test_an_orbax_folder_is_written_when_dst_has_no_suffix(tmp_path, capsys):
    pytest.importorskip("orbax.checkpoint", reason="orbax-checkpoint missing")
    import convert

    torch.manual_seed(1)
    src = tmp_path / "seed_ae.pt"
    torch.save(SeedAE().state_dict(), src)
    ours = tmp_path / "ours.safetensors"
    assert convert.main([str(src), str(ours), *FIELDS]) == 0
    orbax = tmp_path / "orbax-ckpt"
    assert convert.main([str(ours), str(orbax), "--to", "flax"]) == 0
    printed = capsys.readouterr().out
    assert "orbax checkpoint folder" in printed and "weights within 0.0e+00" in printed
    back = tmp_path / "back.safetensors"
    assert convert.main([str(orbax), str(back), *FIELDS]) == 0  # detected: flax
    a, b = foreign.read(ours), foreign.read(back)
    assert a.config == b.config
    for name in a.state_dict:
        np.testing.assert_array_equal(a.state_dict[name], b.state_dict[name])
    # an existing folder is kept unless --overwrite
    capsys.readouterr()
    listing = sorted(os.listdir(orbax))
    assert convert.main([str(ours), str(orbax), "--to", "flax"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert sorted(os.listdir(orbax)) == listing
    assert convert.main([str(ours), str(orbax), "--to", "flax", "--overwrite"]) == 0
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp-")]
