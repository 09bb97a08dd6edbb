"""scripts/reproduce.py and saecommon/reproduce.py: the entries hold the published
setups, the measured figures and the comparison are computed as stated, and the README
table comes from the stored results."""

import json
import pathlib
import sys
from types import SimpleNamespace

import numpy as np
import pytest
from test_data import write_idx

from saecommon import reproduce
from saecommon.config import SAEConfig
from saecommon.data import IDX_FILES
from saecommon.runs import PreparedData
from saecommon.train_config import RunConfig, TrainConfig

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_entries_hold_the_published_setups():
    l1 = reproduce.ENTRIES["ivlabs-l1"].run
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
        entry = reproduce.ENTRIES[name]
        assert entry.torch_init and entry.run.train.shuffle_source == "framework"
    assert not reproduce.ENTRIES["mnist-topk"].torch_init
    kl = reproduce.ENTRIES["ivlabs-kl"].run.model
    assert (kl.penalty, kl.penalty_weight, kl.kl_rho, kl.code_activation) == (
        "kl",
        0.005,
        0.08,
        "sigmoid",
    )
    assert reproduce.ENTRIES["ivlabs-l1"].published == {
        "train_loss": 0.0809,
        "test_bce_1200": 0.07757,
    }
    assert reproduce.ENTRIES["ivlabs-kl"].published == {
        "train_loss": 0.0862,
        "test_bce_1200": 0.0771,
    }
    for name in ("mnist-topk", "mnist-kl", "mnist-denoise"):
        t = reproduce.ENTRIES[name].run.train
        assert (t.epochs, t.schedule, t.plateau_factor, t.plateau_patience) == (
            100,
            "plateau",
            0.1,
            10,
        )
    deep = reproduce.ENTRIES["fashion-l1-deep"]
    assert deep.run.train.epochs == 25 and deep.needs_fashion
    assert deep.published == {"train_mse": 0.025, "val_mse": 0.032}
    for entry in reproduce.ENTRIES.values():
        assert set(entry.published) <= set(entry.report), entry.name


def test_measure_by_hand():
    entry = reproduce.ENTRIES["ivlabs-l1"]
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
    measured = reproduce.measure(entry, history, evaluation, data)
    z, t = logits[:1200], test[:1200].astype(np.float64)
    by_hand = np.mean(np.log1p(np.exp(z)) - z * t)
    assert measured["test_bce_1200"] == pytest.approx(by_hand, rel=1e-9)
    assert measured["train_loss"] == 0.25 and measured["mse"] == 0.5
    assert measured["test_bce"] == 0.7  # the whole test set, beside the first 1200
    assert "train_mse" not in measured  # a BCE model has no MSE training figure
    deep = reproduce.measure(
        reproduce.ENTRIES["fashion-l1-deep"], history, evaluation, data
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
    assert reproduce.relative_gap(1.0, 1.02) == pytest.approx(0.02 / 1.01)
    assert reproduce.relative_gap(0.0, 0.0) == 0.0
    for r in (
        result("ivlabs-l1", "jax", train_loss=0.08, test_bce_1200=0.0770),
        result("ivlabs-l1", "torch", train_loss=0.082, test_bce_1200=0.0770),
    ):
        reproduce.write_result(r, tmp_path)
    stored = reproduce.read_results(tmp_path)
    assert set(stored) == {("ivlabs-l1", "jax"), ("ivlabs-l1", "torch")}
    entry = reproduce.ENTRIES["ivlabs-l1"]
    rows = reproduce.comparison(
        entry, {fw: stored["ivlabs-l1", fw] for fw in ("jax", "torch")}
    )
    assert rows[0] == ["train_loss", "0.0809", "0.08", "0.082", "2.47%"]
    assert rows[1] == ["test_bce_1200", "0.07757", "0.077", "0.077", "0.00%"]
    assert rows[2][1:] == ["-", "-", "-", "-"]  # not measured, not published
    shares = reproduce.comparison(
        reproduce.ENTRIES["mnist-topk"],
        {
            "jax": result("mnist-topk", "jax", dead_fraction=0.0),
            "torch": result("mnist-topk", "torch", dead_fraction=1 / 64),
        },
    )
    assert shares[3] == ["dead_fraction", "-", "0", "0.01562", "1.56 pts"]
    table = reproduce.results_table(stored)
    assert (
        "| ivlabs-l1 | train_loss | 0.0809 | 0.08 | 0.082 | 2.47% | 120s / 120s |"
        in (table)
    )
    assert "| mnist-topk | not run yet | | | | | |" in table
    text = reproduce.format_comparison(
        entry, {fw: stored["ivlabs-l1", fw] for fw in ("jax", "torch")}
    )
    assert "first 1200 test images" in text
    assert "goal: jax train_loss 0.08 is at or below the published 0.0809" in text
    assert "goal: torch train_loss 0.082 is ABOVE the published 0.0809" in text
    assert "goal: jaxsae and torchsae more than 2% apart on train_loss" in text

    deep = {"jax": {**result("fashion-l1-deep", "jax", train_mse=0.01)}}
    assert reproduce.verdicts(reproduce.ENTRIES["fashion-l1-deep"], deep) == [
        "goal: jax ran on MNIST; the published figures are for Fashion-MNIST, so they "
        "are not compared"
    ]

    readme = tmp_path / "README.md"
    readme.write_text(
        f"# x\nbefore\n{reproduce.TABLE_START}\nold\n{reproduce.TABLE_END}\nafter\n"
    )
    reproduce.update_readme(table, readme)
    assert readme.read_text() == (
        f"# x\nbefore\n{reproduce.TABLE_START}\n{table}\n{reproduce.TABLE_END}\nafter\n"
    )
    readme.write_text("no markers")
    with pytest.raises(ValueError, match="has no <!-- reproduce:start"):
        reproduce.update_readme(table, readme)


def test_the_readme_table_is_the_one_the_results_give():
    text = (ROOT / "README.md").read_text()
    table = reproduce.results_table(reproduce.read_results())
    assert f"{reproduce.TABLE_START}\n{table}\n{reproduce.TABLE_END}" in text


def test_fashion_falls_back_to_mnist_and_says_so():
    import tensorflow_datasets as tfds

    assert reproduce.fashion_dataset("/some/idx") == ("/some/idx", None)
    with tfds.testing.mock_data(num_examples=4):
        assert reproduce.fashion_dataset(None) == ("tfds:fashion_mnist", None)


def test_reproduce_command_trains_once_then_reuses(tmp_path, capsys):
    sys.path.insert(0, str(ROOT / "scripts"))
    import reproduce as command

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
    sys.path.insert(0, str(ROOT / "scripts"))
    import reproduce as command

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
    entry = reproduce.Entry("tiny", run, "a test", {}, ("mse",), torch_init=True)
    monkeypatch.setitem(reproduce.ENTRIES, "tiny", entry)
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
