"""An on-disk cache of a model's activations, streamed in shuffled batches for SAE
training. Framework-neutral (numpy only); jaxsae and torchsae read the same cache.

A cache is a directory::

    manifest.json       what the cache holds (schema below)
    shard-00000.npy     [shard_tokens, d_in] activations, float32 or float16
    shard-00001.npy     ...  (every shard holds ``shard_tokens`` rows but the last)

Rows are tokens in the order the text source gave them (text by text, position by
position). The manifest (JSON) holds:

- ``format`` ("sae-activations"), ``format_version`` ("1")
- ``model``, ``layer``, ``source`` (the text source's description), ``settings``
  (anything else that determines the rows, e.g. max_length and batch_size), ``d_in``,
  ``dtype``, ``shard_tokens``: what wrote the cache; a resume must match them all
- ``n_tokens``: the rows in all shards
- ``shards``: one entry per shard in order: ``file``, ``tokens``, ``bytes`` (file size)
  and the resume point after it, ``next_text`` and ``skip_tokens``: the text stream
  continues at text ``next_text`` (the start of a batch of texts), of whose batch the
  first ``skip_tokens`` tokens are already in the shards
- ``texts_done``: texts whose every token is in the shards (the last resume point's
  ``next_text``)
- ``complete``: the writer finished (the last shard may then be short);
  ``exhausted``: it finished because the text source ran out
- ``created``, ``updated``: UTC times (ISO 8601)

The manifest is rewritten atomically after every shard, so a run killed at any
moment leaves a valid cache of its complete shards and resumes after the last one.
"""

from __future__ import annotations

import datetime
import io
import json
import os
import queue
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping

import numpy as np

from saecommon.checkpoint import atomic_write

FORMAT = "sae-activations"
FORMAT_VERSION = "1"
MANIFEST = "manifest.json"
DTYPES = ("float32", "float16")
DEFAULT_SHARD_TOKENS = 32768
"""Rows per shard: 48 MiB of float32 at d_in 384."""
DEFAULT_WINDOW_SHARDS = 4
"""Shards shuffled together by :meth:`ActivationCache.batches` (held in memory as
float32: window_shards * shard_tokens * d_in * 4 bytes)."""

_SHARD = re.compile(r"shard-(\d{5,})\.npy")
_IDENTITY = ("model", "layer", "source", "settings", "d_in", "dtype", "shard_tokens")


class ActivationCacheError(ValueError):
    """An activation cache cannot be written, read, or used as asked."""


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.npy"


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def read_manifest(path: str | os.PathLike) -> dict:
    """The manifest of the cache at ``path``; ActivationCacheError if there is none
    or it is not an activation cache's."""
    path = os.fspath(path)
    file = os.path.join(path, MANIFEST)
    if not os.path.isfile(file):
        raise ActivationCacheError(f"no activation cache at {path} (no {MANIFEST})")
    try:
        with open(file, encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, ValueError) as err:
        raise ActivationCacheError(f"{file} is not readable JSON: {err}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ActivationCacheError(
            f"{file} is not an activation cache's manifest (no 'format': '{FORMAT}')"
        )
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ActivationCacheError(
            f"{file} has format_version {manifest.get('format_version')!r}; this code "
            f"reads format_version {FORMAT_VERSION!r} only"
        )
    return manifest


def check_cache_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds an activation cache (True) or is new or empty (False);
    ActivationCacheError if it is a non-empty directory of anything else (a user's
    files are never written over) or not a directory at all."""
    path = os.fspath(path)
    if not os.path.exists(path):
        return False
    if not os.path.isdir(path):
        raise ActivationCacheError(f"{path} exists and is not a directory")
    if not os.listdir(path):
        return False
    if not os.path.exists(os.path.join(path, MANIFEST)):
        raise ActivationCacheError(
            f"{path} is not empty and is not an activation cache (no {MANIFEST}); "
            "choose a new or empty directory"
        )
    read_manifest(path)
    return True


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


class CacheWriter:
    """Appends activations to the cache at ``path`` in shards of ``shard_tokens``
    rows, rewriting the manifest after each shard. A new or empty directory gets a
    new cache; an existing cache with the same identity (model, layer, source,
    settings, d_in, dtype, shard_tokens) is resumed; anything else is an error.

    Resuming: feed :meth:`add` the source's batches from text :attr:`resume_text`
    on, batched exactly as before (same batch size, so the batches and hence the
    rows are identical); the writer drops the rows already in shards. Rows after
    the last complete shard of an interrupted run were never recorded and are
    simply computed again. A finished cache whose last shard is short is reopened
    to grow (a larger ``max_tokens``) by rewriting that shard.

    ``max_tokens`` (None: no limit) caps the rows; :attr:`full` says it is reached.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        model: str,
        layer: int,
        source: str,
        d_in: int,
        dtype: str = "float32",
        shard_tokens: int = DEFAULT_SHARD_TOKENS,
        settings: Mapping[str, object] | None = None,
        max_tokens: int | None = None,
    ):
        if dtype not in DTYPES:
            raise ActivationCacheError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        if shard_tokens < 1 or d_in < 1:
            raise ActivationCacheError(
                f"shard_tokens and d_in must be positive, got {shard_tokens}, {d_in}"
            )
        if max_tokens is not None and max_tokens < 1:
            raise ActivationCacheError(f"max_tokens must be positive, got {max_tokens}")
        self.path = os.fspath(path)
        self.max_tokens = max_tokens
        identity = {
            "model": model,
            "layer": int(layer),
            "source": source,
            # JSON round trip: what a resume compares is what the manifest holds
            "settings": json.loads(json.dumps(dict(settings or {}))),
            "d_in": int(d_in),
            "dtype": dtype,
            "shard_tokens": int(shard_tokens),
        }
        if check_cache_dir(self.path):
            self.manifest = read_manifest(self.path)
            _check_identity(self.path, self.manifest, identity)
            self._remove_leftovers()
        else:
            os.makedirs(self.path, exist_ok=True)
            now = _now()
            self.manifest = {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                **identity,
                "n_tokens": 0,
                "texts_done": 0,
                "complete": False,
                "exhausted": False,
                "created": now,
                "updated": now,
                "shards": [],
            }
            self._write_manifest()
        shards = self.manifest["shards"]
        # A finished cache's short last shard is rewritten if the cache grows.
        self._reopen = bool(shards) and shards[-1]["tokens"] < shard_tokens
        kept = shards[:-1] if self._reopen else shards
        self.resume_text, self._skip = (
            (kept[-1]["next_text"], kept[-1]["skip_tokens"]) if kept else (0, 0)
        )
        self._texts = self.resume_text  # texts before the next batch
        self._buffer: list[np.ndarray] = []
        self._buffered = 0

    @property
    def finished(self) -> bool:
        """The cache was finished (by :meth:`finish`) and nothing has been added since."""
        return self.manifest["complete"]

    @property
    def exhausted(self) -> bool:
        """The cache was finished because its text source ran out."""
        return self.manifest["exhausted"]

    @property
    def n_tokens(self) -> int:
        """Rows in the shards plus rows buffered for the next shard."""
        return self.manifest["n_tokens"] + self._buffered

    @property
    def full(self) -> bool:
        return self.max_tokens is not None and self.n_tokens >= self.max_tokens

    def add(self, activations: np.ndarray, n_texts: int) -> int:
        """Append one batch: ``activations`` [tokens, d_in], the rows of ``n_texts``
        texts. Returns the rows taken (after a resume's skip and ``max_tokens``)."""
        activations = np.asarray(activations)
        d_in = self.manifest["d_in"]
        if activations.ndim != 2 or activations.shape[1] != d_in:
            raise ActivationCacheError(
                f"activations must be [tokens, {d_in}], got {activations.shape}"
            )
        if self._reopen:
            self._drop_short_shard()
        batch_tokens = len(activations)
        drop = min(self._skip, batch_tokens)
        self._skip -= drop
        rows = activations[drop:]
        if self.max_tokens is not None:
            rows = rows[: max(self.max_tokens - self.n_tokens, 0)]
        if len(rows):
            self._buffer.append(rows.astype(self.manifest["dtype"]))
            self._buffered += len(rows)
        shard_tokens = self.manifest["shard_tokens"]
        while self._buffered >= shard_tokens:
            # Every row left after the cut is from this batch, so the resume point
            # is this batch's start and the rows of it consumed so far.
            left = self._buffered - shard_tokens
            consumed = drop + len(rows) - left
            self._write_shard(shard_tokens, self._texts, consumed)
        self._texts += n_texts
        return len(rows)

    def finish(self, exhausted: bool) -> None:
        """Write the buffered rows as the last (short) shard and mark the cache
        complete; ``exhausted``: the text source ran out (a rerun has nothing to add).
        """
        if self._buffered:
            self._write_shard(self._buffered, self._texts, 0)
        if self.manifest["n_tokens"] == 0:
            raise ActivationCacheError(
                f"nothing to write to {self.path}: the text source gave no tokens"
            )
        self.manifest["complete"] = True
        self.manifest["exhausted"] = bool(exhausted)
        self._write_manifest()

    def _write_shard(self, n_rows: int, next_text: int, skip_tokens: int) -> None:
        data = (
            np.concatenate(self._buffer) if len(self._buffer) > 1 else self._buffer[0]
        )
        shard, rest = data[:n_rows], data[n_rows:]
        self._buffer = [rest.copy()] if len(rest) else []
        self._buffered = len(rest)
        name = shard_name(len(self.manifest["shards"]))
        payload = _npy_bytes(np.ascontiguousarray(shard))
        atomic_write(os.path.join(self.path, name), payload)
        self.manifest["shards"].append(
            {
                "file": name,
                "tokens": int(n_rows),
                "bytes": len(payload),
                "next_text": int(next_text),
                "skip_tokens": int(skip_tokens),
            }
        )
        self.manifest["n_tokens"] += int(n_rows)
        self.manifest["texts_done"] = int(next_text)
        self.manifest["complete"] = self.manifest["exhausted"] = False
        self._write_manifest()

    def _drop_short_shard(self) -> None:
        """Forget the finished cache's short last shard: the manifest first, so a
        kill between the two steps leaves a valid cache."""
        self._reopen = False
        last = self.manifest["shards"].pop()
        self.manifest["n_tokens"] -= last["tokens"]
        shards = self.manifest["shards"]
        self.manifest["texts_done"] = shards[-1]["next_text"] if shards else 0
        self.manifest["complete"] = self.manifest["exhausted"] = False
        self._write_manifest()
        os.remove(os.path.join(self.path, last["file"]))

    def _remove_leftovers(self) -> None:
        """Remove an interrupted run's temp files and shards the manifest does not
        list (written just before the kill): this directory is the cache's."""
        listed = {s["file"] for s in self.manifest["shards"]}
        for name in os.listdir(self.path):
            ours = _SHARD.fullmatch(name) or (
                name.startswith(".tmp-") and name.endswith((".npy", MANIFEST))
            )
            if ours and name not in listed:
                os.remove(os.path.join(self.path, name))

    def _write_manifest(self) -> None:
        self.manifest["updated"] = _now()
        text = json.dumps(self.manifest, indent=1) + "\n"
        atomic_write(os.path.join(self.path, MANIFEST), text.encode("utf-8"))


def _check_identity(path: str, manifest: dict, identity: dict) -> None:
    differ = [
        f"{key} {manifest.get(key)!r} (this run: {identity[key]!r})"
        for key in _IDENTITY
        if manifest.get(key) != identity[key]
    ]
    if differ:
        raise ActivationCacheError(
            f"the activation cache at {path} was written with different settings: "
            + "; ".join(differ)
            + "; resume with the same settings or write to another directory"
        )


class ActivationCache:
    """A cache opened for reading, checked on open: the manifest, and every shard's
    presence, file size, shape and dtype (memory-mapped, not read). Values are
    checked for NaN/inf as they are first read.

    ``eval_tokens``: the last ``eval_tokens`` rows of the cache are held out for
    evaluation (:meth:`held_out`, :meth:`eval_batches`) and never appear in
    :meth:`batches` or :meth:`sample`.
    """

    def __init__(self, path: str | os.PathLike, *, eval_tokens: int = 0):
        self.path = os.fspath(path)
        self.manifest = read_manifest(self.path)
        self._shards = self.manifest.get("shards", [])
        self._arrays = [self._open_shard(s) for s in self._shards]
        counts = [len(a) for a in self._arrays]
        self._starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        if int(self._starts[-1]) != self.manifest.get("n_tokens"):
            raise ActivationCacheError(
                f"{self.path}: the manifest's n_tokens {self.manifest.get('n_tokens')} "
                f"differs from its shards' {int(self._starts[-1])} tokens"
            )
        if not 0 <= eval_tokens < self.n_tokens:
            raise ActivationCacheError(
                f"eval_tokens must be in [0, {self.n_tokens}) for the cache at "
                f"{self.path} ({self.n_tokens} tokens), got {eval_tokens}"
            )
        self.n_eval = int(eval_tokens)
        self.n_train = self.n_tokens - self.n_eval
        self._checked: set[int] = set()

    def _open_shard(self, shard: dict) -> np.ndarray:
        file = os.path.join(self.path, shard["file"])
        tokens, d_in, dtype = shard["tokens"], self.d_in, self.dtype
        expected = f"{tokens} tokens x {d_in} {dtype}, {shard['bytes']} bytes"
        if not os.path.isfile(file):
            raise ActivationCacheError(f"shard {file} is missing (expected {expected})")
        size = os.path.getsize(file)
        if size != shard["bytes"]:
            raise ActivationCacheError(
                f"shard {file} is {size} bytes, the manifest records {expected}: "
                "truncated or overwritten"
            )
        try:
            array = np.load(file, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as err:
            raise ActivationCacheError(
                f"shard {file} is not a readable .npy file (expected {expected}): {err}"
            ) from None
        if array.shape != (tokens, d_in) or array.dtype != np.dtype(dtype):
            raise ActivationCacheError(
                f"shard {file} holds {array.shape} {array.dtype}, the manifest "
                f"records ({tokens}, {d_in}) {dtype}"
            )
        return array

    @property
    def d_in(self) -> int:
        return int(self.manifest["d_in"])

    @property
    def n_tokens(self) -> int:
        return int(self.manifest["n_tokens"])

    @property
    def dtype(self) -> str:
        return self.manifest["dtype"]

    def check_width(self, d_in: int) -> None:
        """ActivationCacheError if an SAE of input width ``d_in`` cannot read this."""
        if d_in != self.d_in:
            raise ActivationCacheError(
                f"the activation cache at {self.path} has d_in {self.d_in}, the SAE "
                f"expects {d_in}"
            )

    def _check_finite(self, i: int) -> None:
        """Scan shard ``i`` for NaN/inf once, the first time it is read."""
        if i in self._checked:
            return
        array, step = self._arrays[i], 1 << 16
        for lo in range(0, len(array), step):
            self._check_rows(i, lo, np.asarray(array[lo : lo + step]))
        self._checked.add(i)

    def _check_rows(self, i: int, first_row: int | np.ndarray, rows: np.ndarray):
        """``rows``: rows of shard ``i``, from ``first_row`` on (or at those rows)."""
        bad = ~np.isfinite(rows).all(axis=1)
        if bad.any():
            k = int(np.argmax(bad))
            row = first_row + k if np.isscalar(first_row) else int(first_row[k])
            file = os.path.join(self.path, self._shards[i]["file"])
            raise ActivationCacheError(
                f"shard {file} row {row} holds non-finite activations "
                f"({int(np.count_nonzero(~np.isfinite(rows[k])))} NaN/inf values); "
                "the model or the cache is broken"
            )

    def _read(self, i: int, lo: int, hi: int) -> np.ndarray:
        """Rows [lo, hi) of shard ``i`` as float32 in memory."""
        self._check_finite(i)
        return np.asarray(self._arrays[i][lo:hi], dtype=np.float32)

    def _train_rows(self, i: int) -> int:
        """Training rows of shard ``i`` (its first rows; the held-out ones follow)."""
        return int(np.clip(self.n_train - self._starts[i], 0, len(self._arrays[i])))

    def sample(self, n: int, seed: int) -> np.ndarray:
        """``n`` distinct training tokens drawn uniformly, float32 [n, d_in]:
        rows ``np.random.default_rng(seed).choice(n_train, n, replace=False)`` in
        that order. Only the drawn rows are read (and checked for NaN/inf)."""
        if not 0 < n <= self.n_train:
            raise ActivationCacheError(
                f"cannot sample {n} tokens from {self.n_train} training tokens"
            )
        rows = np.random.default_rng(seed).choice(self.n_train, n, replace=False)
        return self._gather(rows)

    def _gather(self, rows: np.ndarray) -> np.ndarray:
        """Cache rows ``rows`` (ids, any order) as float32 [len(rows), d_in]; only
        those rows are read (in file order) and checked for NaN/inf."""
        out = np.empty((len(rows), self.d_in), np.float32)
        shard_of = np.searchsorted(self._starts, rows, side="right") - 1
        for i in np.unique(shard_of):
            where = np.flatnonzero(shard_of == i)
            local = rows[where] - self._starts[i]
            order = np.argsort(local)  # memory-mapped reads in file order
            values = np.asarray(self._arrays[i][local[order]], dtype=np.float32)
            self._check_rows(int(i), local[order], values)
            out[where[order]] = values
        return out

    def batches(
        self,
        batch_size: int,
        seed: int,
        *,
        start_step: int = 0,
        window_shards: int = DEFAULT_WINDOW_SHARDS,
        rows: tuple[int, int] | None = None,
    ) -> Iterator[np.ndarray]:
        """Training batches, float32 [batch_size, d_in], forever (epoch after epoch).

        The shuffle, exactly: the training rows (all but the held-out tail) form a
        stream, epoch after epoch. Epoch ``e`` permutes the shards that hold
        training rows with ``np.random.default_rng([seed, e]).permutation``, cuts
        that order into windows of ``window_shards`` shards (the last may be
        smaller), and for window ``w`` concatenates its shards' training rows in
        that order and emits them permuted by
        ``np.random.default_rng([seed, e, w]).permutation``. Every training token
        appears exactly once per epoch. Batch ``s`` is rows
        ``[s * batch_size, (s + 1) * batch_size)`` of the stream, so a batch may
        span two epochs.

        ``rows`` = (lo, hi) yields rows [lo, hi) of each of those batches only, and
        reads only them (one process's part of a global batch split over several:
        each reads its slice of the cache); memory then is one batch's row ids.

        Deterministic in (seed, window_shards, the cache, eval_tokens):
        ``start_step=s`` yields exactly batches s, s+1, ... of a run from step 0,
        without reading the epochs and windows before the one batch s starts in.
        Memory: one window as float32.
        """
        if batch_size < 1 or window_shards < 1 or start_step < 0 or seed < 0:
            raise ActivationCacheError(
                "batch_size and window_shards must be positive, start_step and seed "
                f"non-negative; got {batch_size}, {window_shards}, {start_step}, {seed}"
            )
        if rows is not None and not 0 <= rows[0] < rows[1] <= batch_size:
            raise ActivationCacheError(
                f"rows must be (lo, hi) with 0 <= lo < hi <= {batch_size}, got {rows}"
            )
        start = start_step * batch_size
        if rows is None:
            chunks = self._stream(seed, start, window_shards)
        else:
            chunks = self._id_stream(seed, start, window_shards)
        parts: list[np.ndarray] = []
        have = 0
        for chunk in chunks:
            while len(chunk):
                take = min(batch_size - have, len(chunk))
                parts.append(chunk[:take])
                chunk = chunk[take:]
                have += take
                if have == batch_size:
                    batch = parts[0] if len(parts) == 1 else np.concatenate(parts)
                    yield batch if rows is None else self._gather(batch[slice(*rows)])
                    parts, have = [], 0

    def _windows(self, seed: int, start: int, window_shards: int):
        """(shards, perm, offset) for each window from stream row ``start`` on: the
        window's training rows, concatenated in ``shards`` order, are emitted in the
        order ``perm[offset:]`` (the shuffle :meth:`batches` states)."""
        shards = [i for i in range(len(self._arrays)) if self._train_rows(i)]
        epoch, offset = divmod(start, self.n_train)
        while True:
            order = np.random.default_rng([seed, epoch]).permutation(len(shards))
            for w, lo in enumerate(range(0, len(order), window_shards)):
                window = [shards[k] for k in order[lo : lo + window_shards]]
                size = sum(self._train_rows(i) for i in window)
                if offset >= size:  # skipped without reading
                    offset -= size
                    continue
                yield (
                    window,
                    np.random.default_rng([seed, epoch, w]).permutation(size),
                    offset,
                )
                offset = 0
            epoch += 1

    def _stream(
        self, seed: int, start: int, window_shards: int
    ) -> Iterator[np.ndarray]:
        """The shuffled training rows from stream row ``start`` on, in chunks."""
        chunk = 1 << 13
        for window, perm, offset in self._windows(seed, start, window_shards):
            data = np.concatenate(
                [self._read(i, 0, self._train_rows(i)) for i in window]
            )
            for a in range(offset, len(perm), chunk):
                yield data[perm[a : a + chunk]]

    def _id_stream(
        self, seed: int, start: int, window_shards: int
    ) -> Iterator[np.ndarray]:
        """The cache row ids of :meth:`_stream`'s rows, one window at a time (no
        row is read)."""
        for window, perm, offset in self._windows(seed, start, window_shards):
            ids = np.concatenate(
                [self._starts[i] + np.arange(self._train_rows(i)) for i in window]
            )
            yield ids[perm[offset:]]

    def held_out(self) -> np.ndarray:
        """The held-out tail, float32 [n_eval, d_in], in cache order."""
        return self.rows(self.n_train, self.n_tokens)

    def eval_batches(self, batch_size: int) -> Iterator[np.ndarray]:
        """The held-out tail in cache order, float32 [<= batch_size, d_in] batches
        (the last may be smaller)."""
        for lo in range(self.n_train, self.n_tokens, batch_size):
            yield self.rows(lo, min(lo + batch_size, self.n_tokens))

    def rows(self, lo: int, hi: int) -> np.ndarray:
        """Cache rows [lo, hi) as float32."""
        parts = []
        for i in range(len(self._arrays)):
            a, b = max(lo, self._starts[i]), min(hi, self._starts[i + 1])
            if a < b:
                parts.append(self._read(i, a - self._starts[i], b - self._starts[i]))
        if not parts:
            return np.empty((0, self.d_in), np.float32)
        return np.concatenate(parts)


_ITEM, _END, _ERROR = "item", "end", "error"


class Prefetcher:
    """Iterates ``iterable`` on a background thread, applying ``put`` (e.g.
    ``jax.device_put`` or ``torch.from_numpy``) and keeping up to ``depth`` results
    ready, so loading overlaps the consumer's work. Yields the results in order; an
    exception in the iterable or in ``put`` is raised in the consumer at the point
    it would have been reached. Close it (or use it as a context manager) to stop
    the thread early.
    """

    def __init__(self, iterable: Iterable, put: Callable = lambda x: x, depth: int = 2):
        if depth < 1:
            raise ValueError(f"depth must be positive, got {depth}")
        self._iterator = iter(iterable)
        self._put = put
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(
            target=self._run, name="Prefetcher", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        try:
            for item in self._iterator:
                if not self._offer((_ITEM, self._put(item))):
                    return
            self._offer((_END, None))
        except BaseException as err:  # handed to the consumer
            self._offer((_ERROR, err))

    def _offer(self, message: tuple) -> bool:
        """Queue ``message`` unless closed first; False if closed."""
        while not self._stop.is_set():
            try:
                self._queue.put(message, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Prefetcher:
        return self

    def __next__(self):
        if self._done:
            raise StopIteration
        kind, value = self._queue.get()
        if kind == _ITEM:
            return value
        self._done = True
        self._thread.join()
        if kind == _ERROR:
            raise value
        raise StopIteration

    def close(self) -> None:
        """Stop the thread (waiting for the item it is loading) and close the
        iterable if it is a generator."""
        self._done = True
        self._stop.set()
        self._thread.join()
        while not self._queue.empty():
            self._queue.get_nowait()
        close = getattr(self._iterator, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
