"""scripts/reproduce.py and saecommon/reproduction.py: the entries hold the published
setups, the measured figures and the comparison are computed as stated, and the README
table comes from the stored results."""

import importlib.util
import json
import pathlib
from types import SimpleNamespace

import numpy as np
import pytest
from test_data import write_idx

from saecommon import reproduction
from saecommon.config import SAEConfig
from saecommon.data import IDX_FILES, PreparedData
from saecommon.train_config import RunConfig, TrainConfig

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load_command():
    """scripts/reproduce.py as a module (it owns the results folder and the README)."""
    spec = importlib.util.spec_from_file_location(
        "reproduce_command", ROOT / "scripts" / "reproduce.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


command = _load_command()


def test_entries_hold_the_published_setups():
    l1 = reproduction.ENTRIES["ivlabs-l1"].run
    assert (l1.model.architecture, l1.model.loss, l1.model.penalty) == (
        "fullconv",
        "bce",
        "l1",
    )
    assert (l1.model.penalty_weight, l1.model.l1_layers) == (4e-5, "hidden")
    assert (l1.train.learning_rate, l1.train.batch_size, l1.train.epochs) == (
        9e-3,
        1200,
        20,
    )
    assert (l1.train.seed, l1.train.optimizer, l1.train.normalize) == (
        42,
        "adam",
        False,
    )
    for name in ("ivlabs-l1", "ivlabs-kl"):  # one init for both frameworks
        entry = reproduction.ENTRIES[name]
        assert entry.torch_init and entry.run.train.shuffle_source == "framework"
    assert not reproduction.ENTRIES["mnist-topk"].torch_init
    kl = reproduction.ENTRIES["ivlabs-kl"].run.model
    assert (kl.penalty, kl.penalty_weight, kl.kl_rho, kl.code_activation) == (
        "kl",
        0.005,
        0.08,
        "sigmoid",
    )
    assert reproduction.ENTRIES["ivlabs-l1"].published == {
        "train_loss": 0.0809,
        "test_bce_1200": 0.07757,
    }
    assert reproduction.ENTRIES["ivlabs-kl"].published == {
        "train_loss": 0.0862,
        "test_bce_1200": 0.0771,
    }
    for name in ("mnist-topk", "mnist-kl", "mnist-denoise"):
        t = reproduction.ENTRIES[name].run.train
        assert (t.epochs, t.schedule, t.plateau_factor, t.plateau_patience) == (
            100,
            "plateau",
            0.1,
            10,
        )
    deep = reproduction.ENTRIES["fashion-l1-deep"]
    assert deep.run.train.epochs == 25 and deep.needs_fashion
    assert deep.published == {"train_mse": 0.025, "val_mse": 0.032}
    for entry in reproduction.ENTRIES.values():
        assert set(entry.published) <= set(entry.report), entry.name


def test_measure_by_hand():
    entry = reproduction.ENTRIES["ivlabs-l1"]
    rng = np.random.default_rng(0)
    test = rng.uniform(size=(1500, 4)).astype(np.float32)
    logits = rng.normal(size=(1500, 4))
    data = PreparedData(
        test,
        np.zeros(1500),
        test,
        np.zeros(1500),
        test,
        np.zeros(1500),
        (0, 1),
        (2, 2),
        None,
        True,
    )
    evaluation = SimpleNamespace(
        metrics={"mse": 0.5, "l0": 3.0, "bce": 0.7, "dead_fraction": 0.0},
        test=SimpleNamespace(logits=logits),
    )
    history = [
        {"train/loss": 9.0, "train/recon": 8.0, "test/recon": 7.0},
        {"train/loss": 0.25, "train/recon": 0.2, "test/recon": 0.3},
    ]
    measured = reproduction.measure(entry, history, evaluation, data)
    z, t = logits[:1200], test[:1200].astype(np.float64)
    by_hand = np.mean(np.log1p(np.exp(z)) - z * t)
    assert measured["test_bce_1200"] == pytest.approx(by_hand, rel=1e-9)
    assert measured["train_loss"] == 0.25 and measured["mse"] == 0.5
    assert measured["test_bce"] == 0.7  # the whole test set, beside the first 1200
    assert "train_mse" not in measured  # a BCE model has no MSE training figure
    deep = reproduction.measure(
        reproduction.ENTRIES["fashion-l1-deep"], history, evaluation, data
    )
    assert (deep["train_mse"], deep["val_mse"]) == (0.2, 0.3)


def result(entry, framework, **measured):
    return {
        "entry": entry,
        "framework": framework,
        "dataset": "mnist",
        "epochs": 20,
        "measured": measured,
        "published": {},
        "seconds": {"train": 100.0, "evaluate": 20.5},
        "machine": "CPU, 2 cores (x86_64)",
        "notes": [],
    }


def test_the_comparison_and_the_readme_table(tmp_path):
    assert reproduction.relative_gap(1.0, 1.02) == pytest.approx(0.02 / 1.01)
    assert reproduction.relative_gap(0.0, 0.0) == 0.0
    for r in (
        result("ivlabs-l1", "jax", train_loss=0.08, test_bce_1200=0.0770),
        result("ivlabs-l1", "torch", train_loss=0.082, test_bce_1200=0.0770),
    ):
        reproduction.write_result(r, tmp_path)
    stored = reproduction.read_results(tmp_path)
    assert set(stored) == {("ivlabs-l1", "jax"), ("ivlabs-l1", "torch")}
    entry = reproduction.ENTRIES["ivlabs-l1"]
    rows = reproduction.comparison(
        entry, {fw: stored["ivlabs-l1", fw] for fw in ("jax", "torch")}
    )
    assert rows[0] == ["train_loss", "0.0809", "0.08", "0.082", "2.47%"]
    assert rows[1] == ["test_bce_1200", "0.07757", "0.077", "0.077", "0.00%"]
    assert rows[2][1:] == ["-", "-", "-", "-"]  # not measured, not published
    shares = reproduction.comparison(
        reproduction.ENTRIES["mnist-topk"],
        {
            "jax": result("mnist-topk", "jax", dead_fraction=0.0),
            "torch": result("mnist-topk", "torch", dead_fraction=1 / 64),
        },
    )
    assert shares[3] == ["dead_fraction", "-", "0", "0.01562", "1.56 pts"]
    table = reproduction.results_table(stored)
    assert (
        "| ivlabs-l1 | train_loss | 0.0809 | 0.08 | 0.082 | 2.47% | 120s / 120s |"
        in (table)
    )
    assert "| mnist-topk | not run yet | | | | | |" in table
    text = reproduction.format_comparison(
        entry, {fw: stored["ivlabs-l1", fw] for fw in ("jax", "torch")}
    )
    assert "first 1200 test images" in text
    assert "goal: jax train_loss 0.08 is at or below the published 0.0809" in text
    assert "goal: torch train_loss 0.082 is ABOVE the published 0.0809" in text
    assert "goal: jaxsae and torchsae more than 2% apart on train_loss" in text

    deep = {"jax": {**result("fashion-l1-deep", "jax", train_mse=0.01)}}
    assert reproduction.verdicts(reproduction.ENTRIES["fashion-l1-deep"], deep) == [
        "goal: jax ran on MNIST; the published figures are for Fashion-MNIST, so they "
        "are not compared"
    ]

    readme = tmp_path / "README.md"
    readme.write_text(
        f"# x\nbefore\n{command.TABLE_START}\nold\n{command.TABLE_END}\nafter\n"
    )
    command.update_readme(table, readme)
    assert readme.read_text() == (
        f"# x\nbefore\n{command.TABLE_START}\n{table}\n{command.TABLE_END}\nafter\n"
    )
    readme.write_text("no markers")
    with pytest.raises(ValueError, match="has no <!-- reproduce:start"):
        command.update_readme(table, readme)


def test_the_readme_table_is_the_one_the_results_give():
    text = (ROOT / "README.md").read_text()
    table = reproduction.results_table(reproduction.read_results(command.RESULTS_DIR))
    assert f"{command.TABLE_START}\n{table}\n{command.TABLE_END}" in text


def test_fashion_falls_back_to_mnist_and_says_so():
    import tensorflow_datasets as tfds

    assert reproduction.fashion_dataset("/some/idx") == ("/some/idx", None)
    with tfds.testing.mock_data(num_examples=4):
        assert reproduction.fashion_dataset(None) == ("tfds:fashion_mnist", None)


def test_reproduce_command_trains_once_then_reuses(tmp_path, capsys):
    argv = [
        "mnist-topk",
        "--framework",
        "jax",
        "--epochs",
        "1",
        "--out",
        str(tmp_path / "runs"),
        "--results",
        str(tmp_path / "results"),
        "--quiet",
    ]
    assert command.main(argv) == 0
    first = capsys.readouterr().out
    assert "mnist-topk: training with jax" in first
    assert "1 epochs instead of the published 100" in first
    assert (tmp_path / "runs" / "mnist-topk-jax-epochs1" / "model.safetensors").exists()
    stored = json.loads((tmp_path / "results" / "mnist-topk-jax.json").read_text())
    assert stored["epochs"] == 1 and stored["measured"]["l0"] <= 16
    assert 0.8 < stored["measured"]["pixel_probe_accuracy"] < 0.95
    assert command.main(argv) == 0  # finished: evaluated again, not retrained
    assert "training with" not in capsys.readouterr().out


def test_a_torch_init_entry_starts_both_frameworks_from_torchs_draw(
    tmp_path, monkeypatch, capsys
):
    import jaxsae.training
    import torchsae.training
    from saecommon.checkpoint import read_checkpoint, write_checkpoint

    rng = np.random.default_rng(0)
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    for field, name in IDX_FILES.items():  # 300 train and 100 test images of noise
        n = 300 if "train" in field else 100
        shape = (n, 28, 28) if "images" in field else (n,)
        write_idx(tiny / name, rng.integers(0, 256 if "images" in field else 10, shape))
    run = RunConfig(
        SAEConfig(hidden_dims=(16,), code_activation="sigmoid"),
        TrainConfig(dataset=str(tiny), epochs=1, batch_size=100, seed=7),
    )
    entry = reproduction.Entry("tiny", run, "a test", {}, ("mse",), torch_init=True)
    monkeypatch.setitem(reproduction.ENTRIES, "tiny", entry)
    seen = {}
    for module, name in ((jaxsae.training, "jax"), (torchsae.training, "torch")):

        def spy(*args, _train=module.train, _name=name, **kwargs):
            seen[_name] = kwargs["init"]
            return _train(*args, **kwargs)

        monkeypatch.setattr(module, "train", spy)
    out, results = tmp_path / "runs", tmp_path / "results"
    argv = ["tiny", "--out", str(out), "--results", str(results), "--quiet"]

    assert command.main(argv) == 0
    torch_draw = torchsae.training.init_state_dict(run.model, 7)
    assert set(seen) == {"jax", "torch"}
    for framework in ("jax", "torch"):
        saved, config = read_checkpoint(out / f"tiny-{framework}" / "init.safetensors")
        assert config == run.model and saved.keys() == torch_draw.keys()
        for key, value in torch_draw.items():
            np.testing.assert_array_equal(seen[framework][key], value)
            np.testing.assert_array_equal(saved[key], value)
    # torch from torch's draw is the run torch trains without one, bit for bit
    torchsae.training.train(run, tmp_path / "alone", progress=False, init=None)
    alone = read_checkpoint(tmp_path / "alone" / "model.safetensors")[0]
    ours = read_checkpoint(out / "tiny-torch" / "model.safetensors")[0]
    for key, value in ours.items():
        np.testing.assert_array_equal(value, alone[key])

    seen.clear()
    assert command.main(argv) == 0  # finished from the same init: evaluated only
    assert seen == {}
    capsys.readouterr()
    other = {k: v + 1 for k, v in torch_draw.items()}
    write_checkpoint(out / "tiny-jax" / "init.safetensors", other, run.model)
    assert command.main(argv) == 2
    assert "holds other initial weights than torch's seed-7 draw" in (
        capsys.readouterr().err
    )
    (out / "tiny-jax" / "init.safetensors").unlink()
    assert command.main(argv + ["--framework", "jax"]) == 2
    assert "holds a run without init.safetensors" in capsys.readouterr().err
