"""scripts/train.py: flags -> RunConfig, presets, --resume rules, and end-to-end runs."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from saecommon.architectures import train_step_flops
from saecommon.cli import build_parser, run_config_from_args, run_flags
from saecommon.config import ConfigError
from saecommon.presets import PRESETS
from saecommon.reproduction import ENTRIES
from saecommon.schedules import epoch_order
from saecommon.train_config import RunConfig, TrainConfig

ROOT = pathlib.Path(__file__).resolve().parents[1]


def parse(*argv):
    return run_config_from_args(build_parser().parse_args(list(argv)))


def test_presets_match_the_published_setups():
    deep = PRESETS["fashion-l1-deep"]
    assert deep.model.hidden_dims == (256, 128, 64, 32, 16)
    assert (deep.model.activation, deep.model.penalty, deep.model.l1_layers) == (
        "relu",
        "l1",
        "hidden",
    )
    assert (deep.model.penalty_weight, deep.model.loss) == (1e-3, "mse")
    assert (deep.train.optimizer, deep.train.learning_rate, deep.train.batch_size) == (
        "adam",
        1e-3,
        32,
    )
    topk = PRESETS["mnist-topk"]
    assert (
        topk.model.hidden_dims == (64,) and topk.model.code_activation == "leaky_relu"
    )
    assert (topk.model.topk, topk.model.lifetime_rate, topk.train.batch_size) == (
        16,
        0.25,
        512,
    )
    kl = PRESETS["mnist-kl"]
    assert (kl.model.code_activation, kl.model.output_activation) == (
        "sigmoid",
        "sigmoid",
    )
    assert (kl.model.kl_rho, kl.model.penalty_weight, kl.model.kl_reduction) == (
        0.05,
        0.1,
        "mean",
    )
    denoise = PRESETS["mnist-denoise"]
    assert (denoise.train.noise, denoise.train.mask_fraction) == ("masking", 0.25)
    for run in PRESETS.values():
        assert RunConfig.from_json(run.to_json()) == run


def test_the_tanh_presets_are_the_tutorials():
    tanh, denoise = PRESETS["mnist-tanh-kl"], PRESETS["mnist-tanh-kl-denoise"]
    assert tanh.model == denoise.model
    m = tanh.model
    assert (m.input_dim, m.hidden_dims, m.code_activation, m.output_activation) == (
        784,
        (64,),
        "sigmoid",
        "tanh",
    )
    assert (m.penalty, m.loss, tanh.train.pixel_scale) == ("kl", "mse", "symmetric")
    assert (tanh.train.noise, denoise.train.noise, denoise.train.noise_std) == (
        "none",
        "gaussian",
        1.0,
    )
    assert denoise.train.pixel_scale == "symmetric"
    run = parse("--preset", "mnist-tanh-kl", "--pixel-scale", "unit")
    assert run.train.pixel_scale == "unit" and run.model.output_activation == "tanh"


def test_every_config_field_is_a_flag():
    run = parse(
        "--preset",
        "mnist-topk",
        "--hidden-dims",
        "128,32",
        "--topk",
        "8",
        "--lifetime-rate",
        "none",
        "--lifetime-k",
        "5",
        "--tied",
        "true",
        "--negative-slope",
        "0.2",
        "--optimizer",
        "sgd",
        "--schedule",
        "cosine",
        "--epochs",
        "3",
        "--seed",
        "9",
        "--dataset",
        "./somewhere",
    )
    assert run.model.hidden_dims == (128, 32)
    assert (run.model.topk, run.model.lifetime_rate, run.model.lifetime_k) == (
        8,
        None,
        5,
    )
    assert run.model.tied is True and run.model.negative_slope == 0.2
    assert run.model.activation == "leaky_relu"  # from the preset
    assert (run.train.optimizer, run.train.schedule, run.train.epochs) == (
        "sgd",
        "cosine",
        3,
    )
    assert (run.train.seed, run.train.dataset, run.train.batch_size) == (
        9,
        "./somewhere",
        512,
    )


def test_run_flags_give_the_config_back():
    """run_flags(run) parsed by train.py's parser is run again: every preset, every
    published entry (conv architectures, None fields), an empty layer-wise tuple, and
    whatever --preset comes before."""
    runs = [*PRESETS.values(), *(entry.run for entry in ENTRIES.values())]
    runs.append(
        RunConfig(train=TrainConfig(layerwise_epochs=(3, 2), learning_rate=1 / 3))
    )
    for run in runs:
        assert parse(*run_flags(run)) == run
        assert parse("--preset", "mnist-topk", *run_flags(run)) == run
    assert run_flags(RunConfig())[:2] == ["--architecture", "mlp"]


def test_a_conv_architecture_flag_brings_its_own_code_width():
    assert parse("--architecture", "fullconv").model.hidden_dims == (512,)
    assert parse("--architecture", "conv").model.hidden_dims == (128,)
    with pytest.raises(ConfigError, match="leave hidden_dims unset"):
        parse("--architecture", "conv", "--hidden-dims", "64")


def test_data_dir_is_the_dataset(tmp_path):
    assert parse("--data-dir", str(tmp_path)).train.dataset == str(tmp_path)


def test_bad_flags_are_clear():
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--topk", "many"])
    with pytest.raises(ConfigError, match="topk=100 is larger than the code"):
        parse("--preset", "mnist-topk", "--topk", "100")
    with pytest.raises(ConfigError, match="rho must be in"):
        parse("--preset", "mnist-kl", "--kl-rho", "1.5")


def test_resume_takes_the_run_config_and_only_epochs(tmp_path):
    (tmp_path / "config.json").write_text(PRESETS["mnist-kl"].to_json())
    run = parse("--out", str(tmp_path), "--resume", "--epochs", "40")
    assert run.model == PRESETS["mnist-kl"].model and run.train.epochs == 40
    with pytest.raises(ConfigError, match="drop learning_rate"):
        parse("--out", str(tmp_path), "--resume", "--learning-rate", "0.1")
    with pytest.raises(ConfigError, match="no run to continue"):
        parse("--out", str(tmp_path / "nothing"), "--resume")


def test_flop_count_by_hand():
    run = PRESETS["mnist-topk"]  # 784 -> 64 -> 784: 2 * 784 * 64 weights
    assert train_step_flops(run.model, 10) == 6 * 10 * 2 * 784 * 64


@pytest.mark.parametrize("framework", ["jax", "torch"])
def test_train_command_end_to_end(framework, tmp_path):
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "scripts/train.py",
        "--preset",
        "mnist-kl",
        "--framework",
        framework,
        "--epochs",
        "1",
        "--out",
        str(out),
        "--batch-size",
        "1000",
    ]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "epoch 1/1" in done.stdout and "trained 1 epochs" in done.stdout
    row = json.loads((out / "metrics.jsonl").read_text())
    assert row["test/recon"] < 0.12  # better than predicting a blank image (~0.11)
    assert {p.name for p in out.iterdir()} >= {
        "config.json",
        "metrics.jsonl",
        "model.safetensors",
        "train_state.safetensors",
        "summary.json",
        "loss_curves.png",
        "reconstructions.png",
        "dictionary.png",
        "codes.png",
    }
    bad = subprocess.run(
        [
            sys.executable,
            "scripts/train.py",
            "--dataset",
            "tfds:no_such_data_xyz",
            "--out",
            str(tmp_path / "bad"),
            "--framework",
            framework,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2
    assert "error: 'tfds:no_such_data_xyz'" in bad.stderr


def test_tied_then_untied_from_the_command_line(tmp_path):
    common = [
        sys.executable,
        "scripts/train.py",
        "--preset",
        "mnist-topk",
        "--epochs",
        "1",
        "--batch-size",
        "2000",
        "--quiet",
    ]
    tied = subprocess.run(
        [*common, "--tied", "true", "--out", str(tmp_path / "tied")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert tied.returncode == 0, tied.stderr
    untied = subprocess.run(
        [
            *common,
            "--init-from",
            str(tmp_path / "tied" / "model.safetensors"),
            "--out",
            str(tmp_path / "untied"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert untied.returncode == 0, untied.stderr
    first = json.loads((tmp_path / "untied" / "metrics.jsonl").read_text())
    tied_row = json.loads((tmp_path / "tied" / "metrics.jsonl").read_text())
    assert first["test/loss"] < tied_row["test/loss"]  # it went on from the tied model
    wrong = subprocess.run(
        [
            *common,
            "--hidden-dims",
            "32",
            "--topk",
            "8",
            "--init-from",
            str(tmp_path / "tied" / "model.safetensors"),
            "--out",
            str(tmp_path / "wrong"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert wrong.returncode == 2 and "mis-shaped keys: encoder.0.weight" in wrong.stderr


def test_a_numpy_shuffle_is_drawn_once_per_seed_and_epoch():
    run = parse("--shuffle-source", "numpy", "--seed", "4")
    assert run.train.shuffle_source == "numpy"
    first = epoch_order(run.train, 0, 10)
    np.testing.assert_array_equal(first, np.random.default_rng([4, 0]).permutation(10))
    assert sorted(first) == list(range(10))
    np.testing.assert_array_equal(epoch_order(run.train, 0, 10), first)  # on resume
    assert not np.array_equal(epoch_order(run.train, 1, 10), first)
    assert epoch_order(TrainConfig(), 0, 10) is None  # the framework draws it
    with pytest.raises(ConfigError, match="unknown shuffle_source 'torch'"):
        TrainConfig(shuffle_source="torch")
    with pytest.raises(ConfigError, match="shuffle_source numpy draws a shuffle"):
        TrainConfig(shuffle_source="numpy", shuffle=False)
