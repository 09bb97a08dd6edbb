"""The framework-neutral data layer: IDX files, the shipped MNIST, tensorflow-datasets.

Everything here is numpy. A :class:`Dataset` holds uint8 images ``[n, h, w]`` and
integer labels ``[n]`` for a train and a test split; :func:`prepare_data` turns a run's
dataset into :class:`PreparedData`, the float32 ``[n, features]`` arrays both model
packages train and evaluate on (through :func:`flatten_images`,
:func:`split_validation` and :class:`Normalization`). Every bad input raises
:class:`DataError` with one message that names the file or array and what is wrong.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import math
import numbers
import os
import pathlib
import zlib
from importlib import resources
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # annotations only: importlib.resources.abc is Python 3.11+
    from importlib.resources.abc import Traversable

    from saecommon.train_config import RunConfig

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
"""The four standard IDX file names (MNIST, Fashion-MNIST, KMNIST), without ``.gz``."""
SUMS_FILE = "SHA256SUMS.uncompressed"
"""sha256sum-format list of the sums of the IDX files after gunzip."""

_GZIP_MAGIC = b"\x1f\x8b"
_UINT8 = 0x08
# The other IDX type codes, named so that an unsupported file says what it holds.
_IDX_TYPES = {
    0x09: "int8",
    0x0B: "int16",
    0x0C: "int32",
    0x0D: "float32",
    0x0E: "float64",
}
# The shipped copy, inside the package (pyproject.toml lists it as package data).
_MNIST_RESOURCE = "datasets/mnist"


class DataError(ValueError):
    """A data file, dataset spec or array cannot be used as given."""


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A train and a test split of uint8 images with integer labels.

    ``eq=False``: equality and hashing are by identity, since numpy arrays compare
    elementwise and cannot be hashed.
    """

    name: str
    """Where the data came from: "mnist", a directory, or "tfds:NAME"."""
    train_images: np.ndarray
    """[n_train, h, w] uint8 (or [n_train, h, w, c] for colour images)."""
    train_labels: np.ndarray
    """[n_train] integer class labels (uint8 from IDX files, int64 from tfds)."""
    test_images: np.ndarray
    """[n_test, h, w] uint8, the same image shape as train_images."""
    test_labels: np.ndarray
    """[n_test] integer class labels."""

    def __post_init__(self):
        for split in ("train", "test"):
            images = getattr(self, f"{split}_images")
            labels = getattr(self, f"{split}_labels")
            where = f"dataset {self.name!r}: {split}"
            if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
                raise DataError(
                    f"{where}_images must be a uint8 numpy array, got "
                    f"{_describe(images)}"
                )
            if images.ndim < 3:
                raise DataError(
                    f"{where}_images must be [n, h, w] or [n, h, w, c], got shape "
                    f"{images.shape}"
                )
            if not isinstance(labels, np.ndarray) or labels.ndim != 1:
                raise DataError(
                    f"{where}_labels must be a 1-D numpy array [n], got "
                    f"{_describe(labels)}"
                )
            if not np.issubdtype(labels.dtype, np.integer):
                raise DataError(
                    f"{where}_labels must hold integers, got dtype {labels.dtype}"
                )
            if len(images) != len(labels):
                raise DataError(
                    f"{where}_images has {len(images)} samples but {split}_labels "
                    f"has {len(labels)}"
                )
        if self.train_images.shape[1:] != self.test_images.shape[1:]:
            raise DataError(
                f"dataset {self.name!r}: train images are "
                f"{self.train_images.shape[1:]} but test images are "
                f"{self.test_images.shape[1:]}"
            )

    @property
    def image_shape(self) -> tuple[int, ...]:
        """Shape of one image, e.g. (28, 28); its product is the model's input_dim."""
        return self.train_images.shape[1:]


@dataclasses.dataclass(frozen=True)
class Normalization:
    """Scalar standardisation ``(x - mean) / std``, fitted on the training split."""

    mean: float
    """Mean over every element of the training array."""
    std: float
    """Standard deviation over every element of the training array; > 0."""

    def __post_init__(self):
        for field in ("mean", "std"):
            value = getattr(self, field)
            if not _is_real(value):
                raise DataError(
                    f"normalization {field} must be a number, got {value!r}"
                )
            if not math.isfinite(value):
                raise DataError(f"normalization {field} must be finite, got {value!r}")
            # A plain float: numpy scalars would change the dtype of apply's result.
            object.__setattr__(self, field, float(value))
        if self.std <= 0:
            raise DataError(f"normalization std must be > 0, got {self.std!r}")

    def apply(self, x: np.ndarray) -> np.ndarray:
        """[...] -> [...] standardised; a float32 input stays float32."""
        return (x - self.mean) / self.std

    def invert(self, x: np.ndarray) -> np.ndarray:
        """Undo :meth:`apply`: [...] -> [...] in the original scale."""
        return x * self.std + self.mean


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read one IDX file, gzip-compressed (detected by its 1f 8b magic) or raw.

    Returns a uint8 array shaped by the header's dims, e.g. [60000, 28, 28].
    Only the uint8 type code (0x08) is supported.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as err:
        raise DataError(f"{path}: cannot read IDX file: {err.strerror}") from None
    return _parse_idx(_gunzip(data, path), path)


def write_idx_dir(directory: str | os.PathLike[str], dataset: Dataset) -> str:
    """Write ``dataset`` as the four raw IDX files into ``directory`` (a new folder
    or an empty one), which ``load_idx_dir`` and ``--dataset DIR`` read back; the
    labels are written as uint8 (0-255). Returns the directory."""
    root = os.fspath(directory)
    os.makedirs(root, exist_ok=True)
    if os.listdir(root):
        raise DataError(f"{root} is not empty; write IDX files into a new folder")
    for field, base in IDX_FILES.items():
        array = getattr(dataset, field)
        if field.endswith("images") and array.ndim != 3:
            raise DataError(
                f"{field}: IDX folders hold [n, rows, cols] images, got shape "
                f"{array.shape}"
            )
        if field.endswith("labels"):
            if array.size and (array.min() < 0 or array.max() > 255):
                raise DataError(f"{field}: labels outside 0-255 do not fit IDX uint8")
            array = array.astype(np.uint8)
        header = bytes([0, 0, _UINT8, array.ndim]) + b"".join(
            int(n).to_bytes(4, "big") for n in array.shape
        )
        with open(os.path.join(root, base), "wb") as f:
            f.write(header + np.ascontiguousarray(array).tobytes())
    return root


def load_idx_dir(directory: str | os.PathLike[str], verify: bool = True) -> Dataset:
    """Load the four standard IDX files from a directory.

    Each file may be gzip-compressed (``NAME.gz``) or raw (``NAME``); if both are
    there the raw one is read. MNIST, Fashion-MNIST and KMNIST all use these names.
    With ``verify`` and a ``SHA256SUMS.uncompressed`` file in the directory, the
    sha256 of each file's uncompressed bytes must match its listed sum.
    """
    root = os.fspath(directory)
    if not os.path.isdir(root):
        problem = "is not a directory" if os.path.exists(root) else "does not exist"
        raise DataError(f"{root} {problem}; expected a directory of IDX files")
    return _load_idx_tree(pathlib.Path(root), root, verify)


def load_dataset(spec: str | os.PathLike[str], verify: bool = True) -> Dataset:
    """Load a dataset by spec.

    - ``"mnist"``: the copy shipped inside this package (works offline);
    - a path to a directory holding the four IDX files: :func:`load_idx_dir`
      (a local folder called ``mnist`` must be written ``./mnist``);
    - ``"tfds:NAME"``: the train and test splits of a tensorflow-datasets dataset,
      read through ``tfds.data_source`` (no TensorFlow needed once prepared).
    """
    if isinstance(spec, os.PathLike):
        spec = os.fspath(spec)
    if not isinstance(spec, str):
        raise DataError(f"dataset spec must be a string, got {spec!r}")
    if spec == "mnist":
        root = resources.files("saecommon")
        for part in _MNIST_RESOURCE.split("/"):  # one part per joinpath on 3.10
            root = root.joinpath(part)
        return _load_idx_tree(root, "mnist", verify, source="the shipped MNIST")
    if spec.startswith("tfds:"):
        return _load_tfds(spec.removeprefix("tfds:"))
    path = os.path.expanduser(spec)
    if os.path.isdir(path):
        return load_idx_dir(path, verify=verify)
    if os.path.exists(path):
        problem = f"dataset {spec!r} is a file, not a directory"
    elif _looks_like_path(spec):
        problem = f"dataset folder {spec!r} does not exist"
    else:
        problem = f"dataset {spec!r} is unknown"
    raise DataError(
        f"{problem}; expected 'mnist' (the shipped copy), a "
        "directory holding the four IDX files (train-images-idx3-ubyte, "
        "train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, "
        "each optionally .gz), or 'tfds:NAME' (tensorflow-datasets)"
    )


def flatten_images(images: np.ndarray) -> np.ndarray:
    """[n, h, w] (or [n, h, w, c]) uint8 -> [n, h*w(*c)] float32 in [0, 1] (x / 255)."""
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
        raise DataError(
            f"flatten_images expects uint8 images, got {_describe(images)}; "
            "scaling anything else by 1/255 would be wrong"
        )
    if images.ndim not in (3, 4):
        raise DataError(
            f"flatten_images expects [n, h, w] or [n, h, w, c], got shape "
            f"{images.shape}"
        )
    # prod, not -1: an empty [0, h, w] gives [0, h*w] (-1 cannot be inferred from 0)
    flat = images.reshape(len(images), math.prod(images.shape[1:])).astype(np.float32)
    flat /= np.float32(255)
    return flat


def fit_normalization(x_train: np.ndarray) -> Normalization:
    """Scalar mean and std over every element of ``x_train`` ([n, features])."""
    x = np.asarray(x_train)
    if x.size == 0:
        raise DataError("cannot fit a normalization to an empty training array")
    check_finite(x, "x_train")
    # float64 accumulation: 47M float32 elements would lose digits otherwise.
    mean = float(np.mean(x, dtype=np.float64))
    std = float(np.std(x, dtype=np.float64))
    if not std > 0:
        raise DataError(
            f"x_train is constant (every element {mean!r}): its std is 0, so it "
            "cannot be normalized"
        )
    return Normalization(mean=mean, std=std)


def check_finite(x: np.ndarray, name: str) -> None:
    """Raise DataError if ``x`` holds NaN or inf, naming ``name``, the count of each
    and the index of the first bad entry."""
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.inexact):
        return  # integers and booleans are always finite
    bad = ~np.isfinite(x)
    count = int(np.count_nonzero(bad))
    if count == 0:
        return
    n_nan = int(np.count_nonzero(np.isnan(x)))
    first = tuple(int(i) for i in np.unravel_index(int(np.argmax(bad)), x.shape))
    raise DataError(
        f"{name} has {count} non-finite entries ({n_nan} NaN, {count - n_nan} inf) "
        f"of {x.size}; the first is at index {first}"
    )


def split_validation(
    images: np.ndarray, labels: np.ndarray, fraction: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Hold out the LAST ``round(fraction * n)`` samples as validation (no RNG).

    images [n, ...], labels [n] -> (train_images [n - v, ...], train_labels [n - v],
    val_images [v, ...], val_labels [v]); the results are views, not copies.
    ``fraction`` is in [0, 1); 0 gives empty validation arrays. ``round`` is
    Python's (halves go to the even number).
    """
    if not _is_real(fraction):
        raise DataError(f"validation fraction must be a number, got {fraction!r}")
    if not 0 <= fraction < 1:
        raise DataError(f"validation fraction must be in [0, 1), got {fraction!r}")
    if len(images) != len(labels):
        raise DataError(
            f"images has {len(images)} samples but labels has {len(labels)}"
        )
    n = len(images)
    n_val = round(fraction * n)
    if n_val == n and n > 0:
        raise DataError(
            f"validation fraction {fraction} of {n} samples keeps {n_val} for "
            "validation and none for training"
        )
    cut = n - n_val
    return images[:cut], labels[:cut], images[cut:], labels[cut:]


@dataclasses.dataclass(frozen=True)
class PreparedData:
    """A run's data as its trainer uses it: flattened float32 arrays [n, features]
    (scaled to [0, 1], then standardized when the run normalizes or mapped to [-1, 1]
    with pixel_scale symmetric) and their labels."""

    train: np.ndarray
    train_labels: np.ndarray
    val: np.ndarray
    """Validation inputs: held out from train, or the test split when val_fraction=0."""
    val_labels: np.ndarray
    test: np.ndarray
    test_labels: np.ndarray
    pixel_range: tuple[float, float]
    """The values that pixel 0 and pixel 1 take after preprocessing (noise clips here)."""
    image_shape: tuple[int, ...]
    normalization: Normalization | None
    """The affine map from [0, 1] pixels to the model's input: the training split's
    standardization (normalize), the fixed (x - 0.5) / 0.5 of pixel_scale symmetric,
    or None when the model sees [0, 1] pixels."""
    val_is_test: bool

    def __post_init__(self):
        # The one check of data handed to a trainer or an evaluation (prepare_data's
        # included): a NaN here would surface later as "the loss became nan".
        width = None
        for split in ("train", "val", "test"):
            x, labels = getattr(self, split), getattr(self, f"{split}_labels")
            if not isinstance(x, np.ndarray) or x.ndim != 2:
                raise DataError(
                    f"PreparedData.{split} must be a 2-D numpy array [n, features], "
                    f"got {_describe(x)}"
                )
            if not np.issubdtype(x.dtype, np.floating):
                raise DataError(
                    f"PreparedData.{split} must hold floats, got dtype {x.dtype}"
                )
            if width is not None and x.shape[1] != width:
                raise DataError(
                    f"PreparedData.{split} has {x.shape[1]} features per sample but "
                    f"train has {width}"
                )
            width = x.shape[1]
            n_labels = len(np.asarray(labels))
            if n_labels != len(x):
                raise DataError(
                    f"PreparedData.{split} has {len(x)} samples but {split}_labels "
                    f"has {n_labels}"
                )
            if not (split == "val" and x is self.test):  # val_is_test: checked once
                check_finite(x, f"PreparedData.{split}")

    def to_pixels(self, x: np.ndarray) -> np.ndarray:
        """Model-space [n, features] -> [0, 1] pixel space (the normalization or the
        symmetric scaling undone, not clipped): what pictures and PSNR are made of."""
        return x if self.normalization is None else self.normalization.invert(x)


def prepare_data(run: RunConfig) -> PreparedData:
    """Load ``run.train.dataset``, scale to [0, 1], hold out ``val_fraction``, and
    standardize with the training split's statistics when ``normalize`` or map to
    [-1, 1] when ``pixel_scale`` is symmetric (the config allows one or the other); a
    pixel count other than ``run.model.input_dim`` is a DataError."""
    tcfg, mcfg = run.train, run.model
    ds = load_dataset(tcfg.dataset)
    image_shape = tuple(ds.train_images.shape[1:])
    train, test = flatten_images(ds.train_images), flatten_images(ds.test_images)
    if train.shape[1] != mcfg.input_dim:
        raise DataError(
            f"dataset {tcfg.dataset!r} has {train.shape[1]} pixels per sample "
            f"(images {image_shape}) but the model's input_dim is {mcfg.input_dim}; "
            "use the kind of data the model takes (--dataset/--data-dir)"
        )
    train_labels, test_labels = ds.train_labels, ds.test_labels
    val_is_test = tcfg.val_fraction == 0
    if val_is_test:
        val, val_labels = test, test_labels
    else:
        train, train_labels, val, val_labels = split_validation(
            train, train_labels, tcfg.val_fraction
        )
    norm = None
    if tcfg.normalize:
        norm = fit_normalization(train)
    elif tcfg.pixel_scale == "symmetric":
        # [0, 1] -> [-1, 1], torchvision's Normalize((0.5,), (0.5,)): a fixed map, so
        # to_pixels undoes it as it undoes a fitted one.
        norm = Normalization(mean=0.5, std=0.5)
    if norm is not None:
        train, val, test = norm.apply(train), norm.apply(val), norm.apply(test)
    lo, hi = (
        (norm.apply(np.float32(0)), norm.apply(np.float32(1))) if norm else (0.0, 1.0)
    )
    return PreparedData(  # which checks that every split is finite
        train.astype(np.float32),
        train_labels,
        val.astype(np.float32),
        val_labels,
        test.astype(np.float32),
        test_labels,
        (float(lo), float(hi)),
        image_shape,
        norm,
        val_is_test,
    )


def _gunzip(data: bytes, source: str) -> bytes:
    """Decompress gzip data (recognised by its 1f 8b magic); other bytes pass as is."""
    if data[:2] != _GZIP_MAGIC:
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"{source}: broken gzip data: {err}") from None


def _parse_idx(data: bytes, source: str) -> np.ndarray:
    """Uncompressed IDX bytes -> uint8 array shaped by the header."""
    if len(data) < 4:
        raise DataError(
            f"{source}: {len(data)} bytes is too short for an IDX header (4+ bytes)"
        )
    if data[0] != 0 or data[1] != 0:
        raise DataError(
            f"{source}: not an IDX file: magic starts with {data[:4].hex()}, "
            "expected 0000 then a type code and the number of dims (e.g. 00000803)"
        )
    type_code, ndim = data[2], data[3]
    if type_code != _UINT8:
        kind = _IDX_TYPES.get(type_code)
        what = f"holds {kind}" if kind else "is not an IDX type code"
        raise DataError(
            f"{source}: type code 0x{type_code:02x} {what}; only uint8 (0x08) is "
            "supported"
        )
    if ndim == 0:
        raise DataError(f"{source}: header says 0 dims; expected at least 1")
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise DataError(
            f"{source}: header says {ndim} dims ({header_len} header bytes), file has "
            f"{len(data)} bytes"
        )
    dims = tuple(
        int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)
    )
    expected = math.prod(dims)
    actual = len(data) - header_len
    if actual != expected:
        raise DataError(
            f"{source}: header says {expected} bytes of data (dims "
            f"{' x '.join(map(str, dims))}), file has {actual}"
        )
    # copy(): a writable array that owns its memory, not a view of the bytes.
    return np.frombuffer(data, np.uint8, offset=header_len).reshape(dims).copy()


def _load_idx_tree(
    root: Traversable, name: str, verify: bool, source: str | None = None
) -> Dataset:
    """The four IDX files under ``root`` (a directory or package resource)."""
    source = source or str(root)
    present = {entry.name for entry in root.iterdir() if entry.is_file()}
    chosen = {}
    for field, base in IDX_FILES.items():
        # The raw file first: no gunzip, and what a user who unpacked it means.
        for candidate in (base, base + ".gz"):
            if candidate in present:
                chosen[field] = candidate
                break
    missing = [base for field, base in IDX_FILES.items() if field not in chosen]
    if missing:
        found = ", ".join(sorted(present)) or "nothing"
        raise DataError(
            f"{source}: missing {', '.join(missing)} (each may also end in .gz); "
            f"found: {found}"
        )
    sums = None
    if verify and SUMS_FILE in present:
        sums = _read_sums(root.joinpath(SUMS_FILE), f"{source}/{SUMS_FILE}")
    arrays = {}
    for field, filename in chosen.items():
        where = f"{source}/{filename}"
        data = _gunzip(root.joinpath(filename).read_bytes(), where)
        array = _parse_idx(data, where)
        if sums is not None:
            _verify_sum(data, IDX_FILES[field], sums, where)
        want = 3 if field.endswith("images") else 1
        if array.ndim != want:
            layout = "[n, rows, cols]" if want == 3 else "[n]"
            raise DataError(
                f"{where}: expected {want} dims {layout}, header has {array.ndim} "
                f"(shape {array.shape})"
            )
        if len(array) == 0:
            what = "images" if want == 3 else "labels"
            raise DataError(
                f"{where} is empty: its header says shape {array.shape}, 0 {what}; "
                "every split needs at least one sample"
            )
        arrays[field] = array
    for split in ("train", "test"):
        n_images = len(arrays[f"{split}_images"])
        n_labels = len(arrays[f"{split}_labels"])
        if n_images != n_labels:
            raise DataError(
                f"{source}: {chosen[f'{split}_images']} has {n_images} images but "
                f"{chosen[f'{split}_labels']} has {n_labels} labels"
            )
    return Dataset(name=name, **arrays)


def _read_sums(path: Traversable, where: str) -> dict[str, str]:
    """sha256sum output ("HEX  NAME" or "HEX *NAME" per line) -> {NAME: hex}."""
    sums = {}
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        digest = parts[0].lower()
        if len(parts) != 2 or len(digest) != 64 or not _is_hex(digest):
            raise DataError(
                f"{where}: line {lineno} is not '<sha256 hex>  <file name>': {line!r}"
            )
        sums[parts[1].strip().lstrip("*")] = digest
    return sums


def _verify_sum(data: bytes, base: str, sums: dict[str, str], where: str) -> None:
    """Check the sha256 of the uncompressed bytes of one IDX file."""
    if base not in sums:
        raise DataError(f"{where}: {SUMS_FILE} lists no sum for {base}")
    got = hashlib.sha256(data).hexdigest()
    if got != sums[base]:
        raise DataError(
            f"{where}: sha256 of the uncompressed data is {got}, but {SUMS_FILE} "
            f"says {sums[base]}; the file is corrupt or not the listed one"
        )


def _load_tfds(name: str) -> Dataset:
    """The train and test splits of tensorflow-datasets' ``name``, via data_source."""
    spec = f"tfds:{name}"
    if not name:
        raise DataError("'tfds:' needs a dataset name, e.g. 'tfds:fashion_mnist'")
    try:
        import tensorflow_datasets as tfds  # lazy: an optional, heavy dependency
    except ImportError as err:
        raise DataError(
            f"{spec!r} needs tensorflow-datasets, which cannot be imported ({err}); "
            "pip install tensorflow-datasets"
        ) from None
    splits = {}
    for split in ("train", "test"):
        try:
            source = tfds.data_source(name, split=split)
        except tfds.core.DatasetNotFoundError:
            raise DataError(
                f"{spec!r}: tensorflow-datasets has no dataset named {name!r} "
                "(see tfds.list_builders() or "
                "https://www.tensorflow.org/datasets/catalog/overview)"
            ) from None
        except ImportError as err:
            # The first call downloads and converts the data; that step imports
            # TensorFlow (and helpers) that reading the prepared files does not need.
            extra = "" if err.name in (None, "tensorflow") else f" {err.name}"
            raise DataError(
                f"{spec!r}: preparing this dataset (its first download and "
                f"conversion) needs TensorFlow and the network, and an import "
                f"failed: {err}. Install the optional extra "
                "(pip install 'jax-torch-sae[tfds-prepare]', or pip install "
                f"tensorflow{extra}), then run again; later loads read the prepared "
                "files without TensorFlow"
            ) from None
        except (ValueError, AssertionError) as err:
            # tfds raises ValueError for a malformed name or split and
            # AssertionError for a version it does not have; its first line says why.
            text = str(err).strip()
            why = text.splitlines()[0] if text else type(err).__name__
            raise DataError(
                f"{spec!r}: tensorflow-datasets cannot load the {split!r} split: {why}"
            ) from None
        splits[split] = _tfds_arrays(source, f"{spec} {split} split")
    (train_images, train_labels), (test_images, test_labels) = splits.values()
    return Dataset(
        name=spec,
        train_images=train_images,
        train_labels=train_labels,
        test_images=test_images,
        test_labels=test_labels,
    )


def _tfds_arrays(source: Any, where: str) -> tuple[np.ndarray, np.ndarray]:
    """A tfds data source of {"image", "label"} records -> ([n, h, w], [n] int64)."""
    n = len(source)
    if n == 0:
        raise DataError(f"{where} is empty")
    first = source[0]
    if not isinstance(first, dict) or not {"image", "label"} <= first.keys():
        keys = ", ".join(sorted(first)) if isinstance(first, dict) else repr(first)
        raise DataError(f"{where}: records need 'image' and 'label', got {keys}")
    image = np.asarray(first["image"])
    if image.dtype != np.uint8:
        raise DataError(f"{where}: images must be uint8, got {image.dtype}")
    label = np.asarray(first["label"])
    if label.ndim != 0 or not np.issubdtype(label.dtype, np.integer):
        raise DataError(
            f"{where}: labels must be integer class ids, got {_describe(label)}"
        )
    images = np.empty((n, *image.shape), np.uint8)
    labels = np.empty(n, np.int64)
    for i in range(n):
        record = first if i == 0 else source[i]
        image = np.asarray(record["image"])
        if image.shape != images.shape[1:]:
            raise DataError(
                f"{where}: image {i} has shape {image.shape}, image 0 has "
                f"{images.shape[1:]}"
            )
        images[i] = image
        labels[i] = record["label"]
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]  # [n, h, w, 1] -> [n, h, w], as the IDX files
    return images, labels


def _looks_like_path(spec: str) -> bool:
    """A spec meant as a folder (``./mnist``, ``~/data``, ``a/b``), not a name."""
    separators = {os.sep, os.altsep or os.sep, "/"}
    return spec.startswith((".", "~")) or any(sep in spec for sep in separators)


def _is_real(value: Any) -> bool:
    """A real number (Python or numpy), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)


def _describe(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"{value.dtype} array of shape {value.shape}"
    return type(value).__name__
