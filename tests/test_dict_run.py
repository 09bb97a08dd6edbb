"""Training a dictionary SAE from an activation cache end to end (scripts/train_sae.py,
saecommon/dict_run.py): files written, interruption and bit-exact resume in both
packages, held-out evaluation, and one clear error for each kind of bad input."""

from __future__ import annotations

import json
import os
import signal
import sys
from unittest import mock

import numpy as np
import pytest

from saecommon import rundir
from saecommon.activations import CacheWriter
from saecommon.dictionary import load_dictionary

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "scripts"))
import evaluate_sae  # noqa: E402
import train_sae  # noqa: E402

D_IN = 16


def make_cache(path, tokens=768, shard=256, seed=0, d_in=D_IN) -> np.ndarray:
    """A cache of structured synthetic activations: sparse non-negative mixtures of
    48 directions plus noise."""
    rng = np.random.default_rng(seed)
    dirs = rng.normal(size=(48, d_in))
    codes = rng.exponential(1, (tokens, 48)) * (rng.random((tokens, 48)) < 0.08)
    data = (codes @ dirs + 0.05 * rng.normal(size=(tokens, d_in)) + 1.0).astype(
        np.float32
    )
    writer = CacheWriter(
        path, model="synthetic", layer=0, source="test", d_in=d_in, shard_tokens=shard
    )
    writer.add(data, n_texts=1)
    writer.finish(exhausted=True)
    return data


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    path = tmp_path_factory.mktemp("cache") / "acts"
    make_cache(path)
    return str(path)


FLAGS = [
    "--d-sae", "48", "--k", "4", "--batch-size", "64", "--eval-tokens", "128",
    "--log-every", "5", "--checkpoint-every", "10", "--learning-rate", "0.003",
    "--aux-k", "8", "--dead-tokens", "256", "--warmup-steps", "3",
    "--decay-steps", "5", "--quiet",
]  # fmt: skip


def train(cache, out, *extra):
    return train_sae.main(["--cache", cache, "--out", str(out), *FLAGS, *extra])


@pytest.mark.parametrize("framework", ["jax", "torch"])
def test_interrupted_run_resumes_to_the_same_weights(cache, tmp_path, framework):
    whole = tmp_path / "whole"
    assert train(cache, whole, "--steps", "24", "--framework", framework) == 0
    for name in ("config.json", "model.safetensors", "train_state.safetensors",
                 "metrics.jsonl", "summary.json"):  # fmt: skip
        assert os.path.isfile(whole / name), name
    summary = json.loads((whole / "summary.json").read_text())
    assert summary["eval_tokens"] == 128 and 0 < summary["fvu"] < 1
    assert summary["steps"] == 24 and summary["framework"] == framework
    rows = rundir.read_history(whole)
    assert [r["step"] for r in rows] == [5, 10, 15, 20, 24]
    assert rows[-1]["lr"] == pytest.approx(0.003 * 1 / 5)  # the last decay step

    # Ctrl-C during step 13: the run stops after that step, saved.
    cut = tmp_path / "cut"
    calls = {"n": 0}

    def interrupt_once(metrics_fn):
        def wrapped(metrics):
            calls["n"] += 1
            if calls["n"] == 13:
                os.kill(os.getpid(), signal.SIGINT)
            return metrics_fn(metrics)

        return wrapped

    module = f"{'jaxsae' if framework == 'jax' else 'torchsae'}.dictionary_training"
    target = __import__(module, fromlist=["_"])
    with mock.patch.object(target, "host_metrics", interrupt_once(target.host_metrics)):
        code = train(cache, cut, "--steps", "24", "--framework", framework)
    assert code == train_sae.INTERRUPTED
    assert not os.path.exists(cut / "summary.json")
    _, meta = rundir.read_train_state(cut / "train_state.safetensors")
    assert meta["step"] == 13
    assert train_sae.main(["--out", str(cut), "--resume", "--quiet"]) == 0
    a, config_a = load_dictionary(whole / "model.safetensors")
    b, config_b = load_dictionary(cut / "model.safetensors")
    assert config_a == config_b
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_evaluate_command_and_refusals(cache, tmp_path, capsys):
    run = tmp_path / "run"
    assert train(cache, run, "--steps", "10", "--activation", "batchtopk") == 0
    capsys.readouterr()
    # a second run into the same folder is refused, nothing touched
    before = (run / "model.safetensors").read_bytes()
    assert train(cache, run, "--steps", "10") == 2
    assert "already holds" in capsys.readouterr().err
    assert (run / "model.safetensors").read_bytes() == before
    # evaluation of the run on the cache's held-out tokens
    out = tmp_path / "eval.json"
    code = evaluate_sae.main(
        [
            "--model",
            str(run),
            "--cache",
            cache,
            "--eval-tokens",
            "128",
            "--json",
            str(out),
        ]  # fmt: skip
    )
    assert code == 0
    got = json.loads(out.read_text())
    summary = json.loads((run / "summary.json").read_text())
    for key in ("fvu", "l0", "cosine", "relative_bias", "eval_dead_fraction"):
        assert got[key] == pytest.approx(summary[key], rel=1e-5), key
    # torch evaluates the jax-trained checkpoint to the same numbers
    code = evaluate_sae.main(
        [
            "--model",
            str(run / "model.safetensors"),
            "--cache",
            cache,
            "--eval-tokens",
            "128",
            "--framework",
            "torch",
        ]  # fmt: skip
    )
    assert code == 0
    assert f"fvu {summary['fvu']:.4g}" in capsys.readouterr().out


def test_bad_input_gets_one_clear_error(cache, tmp_path, capsys):
    def error(*args):
        if "--eval-tokens" not in args:
            args = (*args, "--eval-tokens", "128")
        assert train_sae.main(list(args)) == 2
        return capsys.readouterr().err.strip()

    out = str(tmp_path / "x")
    assert "d_in 16" in error("--cache", cache, "--out", out, "--d-in", "32", "--quiet")
    assert "k=99 is larger" in error(
        "--cache", cache, "--out", out, "--d-sae", "64", "--k", "99"
    )
    assert "k must be >= 1" in error("--cache", cache, "--out", out, "--k", "0")
    assert "must increase strictly" in error(
        "--cache", cache, "--out", out, "--activation", "matryoshka",
        "--matryoshka-widths", "32,16", "--d-sae", "64",
    )  # fmt: skip
    # NaN in a shard: the error names the shard file and the row
    bad = tmp_path / "nan-cache"
    data = make_cache(bad)
    shard = bad / "shard-00001.npy"
    arr = np.load(shard)
    arr[37, 3] = np.nan
    np.save(shard, arr)
    msg = error(
        "--cache",
        str(bad),
        "--out",
        out,
        "--d-sae",
        "32",
        "--k",
        "4",
        "--batch-size",
        "64",
        "--steps",
        "20",
        "--quiet",
        "--eval-tokens",
        "0",
    )
    assert "shard-00001.npy" in msg and "37" in msg, msg
    assert not os.path.exists(os.path.join(out, "model.safetensors"))
    # a truncated shard: the manifest and the shard disagree
    shard.write_bytes(shard.read_bytes()[:1000])
    msg = error("--cache", str(bad), "--out", out)
    assert "shard-00001.npy" in msg, msg
    assert data.shape == (768, D_IN)


def test_minilm_cache_to_trained_sae_and_its_downstream_effect(tmp_path):
    """The README's three commands on a real transformer (a few hundred tokens of
    MiniLM's layer 3): the spliced reconstruction keeps the sentence embeddings
    closer to the model's own than zeroing the layer does."""
    pytest.importorskip("transformers", reason="the lm extra is not installed")
    import cache_activations

    cache = tmp_path / "cache"
    args = ["--out", str(cache), "--max-tokens", "640", "--shard-tokens", "256"]
    assert cache_activations.main([*args, "--quiet"]) == 0
    run = tmp_path / "run"
    code = train_sae.main(
        [
            "--cache",
            str(cache),
            "--out",
            str(run),
            "--d-sae",
            "96",
            "--k",
            "8",
            "--batch-size",
            "64",
            "--steps",
            "30",
            "--eval-tokens",
            "128",
            "--learning-rate",
            "0.003",
            "--quiet",
        ]  # fmt: skip
    )
    assert code == 0
    out = tmp_path / "eval.json"
    code = evaluate_sae.main(
        ["--model", str(run), "--splice-texts", "4", "--json", str(out)]
    )
    assert code == 0
    got = json.loads(out.read_text())
    assert got["splice_texts"] == 4 and got["eval_tokens"] == 128
    assert got["splice_cosine_zero_ablation"] < got["splice_cosine"] <= 1 + 1e-6
    assert 0 < got["fvu"] < 1
