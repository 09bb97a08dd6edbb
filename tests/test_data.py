"""The data layer: IDX parsing, the shipped MNIST, tfds, scaling and splits."""

import gzip
import hashlib
import struct
import sys
from importlib import resources

import numpy as np
import pytest

from saecommon.data import (
    IDX_FILES,
    SUMS_FILE,
    DataError,
    Dataset,
    Normalization,
    PreparedData,
    check_finite,
    fit_normalization,
    flatten_images,
    load_dataset,
    load_idx_dir,
    read_idx,
    split_validation,
    write_idx_dir,
)


def idx_bytes(array, type_code=0x08):
    """Hand-built IDX: 00 00 type ndim, big-endian int32 dims, then the data."""
    array = np.asarray(array, np.uint8)
    header = bytes([0, 0, type_code, array.ndim])
    header += struct.pack(f">{array.ndim}i", *array.shape)
    return header + array.tobytes()


def write_idx(path, array, compress=False):
    data = idx_bytes(array)
    path.write_bytes(gzip.compress(data) if compress else data)
    return data


# A tiny fake dataset: 3 train and 2 test images of 2x3 pixels.
TRAIN_IMAGES = np.arange(18, dtype=np.uint8).reshape(3, 2, 3)
TRAIN_LABELS = np.array([7, 0, 9], np.uint8)
TEST_IMAGES = np.array([[[255, 0, 1], [2, 3, 4]], [[5, 6, 7], [8, 9, 10]]], np.uint8)
TEST_LABELS = np.array([1, 2], np.uint8)
FAKE = {
    "train_images": TRAIN_IMAGES,
    "train_labels": TRAIN_LABELS,
    "test_images": TEST_IMAGES,
    "test_labels": TEST_LABELS,
}


def fake_dir(path, sums=False):
    """The four files, mixed raw and .gz, with an optional SHA256SUMS file."""
    lines = []
    for i, (field, name) in enumerate(IDX_FILES.items()):
        compress = i % 2 == 1
        data = write_idx(
            path / (name + ".gz" if compress else name), FAKE[field], compress
        )
        lines.append(f"{hashlib.sha256(data).hexdigest()}  {name}\n")
    if sums:
        (path / SUMS_FILE).write_text("".join(lines))
    return path


# --- the shipped MNIST --------------------------------------------------------------


@pytest.fixture(scope="module")
def mnist():
    return load_dataset("mnist")


def test_shipped_mnist_shapes_and_dtypes(mnist):
    assert mnist.name == "mnist"
    assert mnist.train_images.shape == (60000, 28, 28)
    assert mnist.train_labels.shape == (60000,)
    assert mnist.test_images.shape == (10000, 28, 28)
    assert mnist.test_labels.shape == (10000,)
    for array in (mnist.train_images, mnist.train_labels, mnist.test_images):
        assert array.dtype == np.uint8
    assert mnist.test_labels.dtype == np.uint8
    assert mnist.image_shape == (28, 28)


def test_shipped_mnist_labels_and_pixels(mnist):
    # Counted once from the gzip files with numpy (np.bincount of the label bytes).
    train_counts = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    test_counts = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert np.bincount(mnist.train_labels).tolist() == train_counts
    assert np.bincount(mnist.test_labels).tolist() == test_counts
    assert mnist.train_labels[:5].tolist() == [5, 0, 4, 1, 9]
    assert mnist.test_labels[:5].tolist() == [7, 2, 1, 0, 4]
    assert int(mnist.train_images.sum(dtype=np.int64)) == 1567298545
    assert int(mnist.test_images.sum(dtype=np.int64)) == 264923200
    # Row 14 of the first training image (a 5).
    assert mnist.train_images[0, 14, 12:19].tolist() == [0, 81, 240, 253, 253, 119, 25]


def test_shipped_mnist_normalization_is_the_well_known_one(mnist):
    # The mean and std of MNIST's training pixels in [0, 1] everyone quotes.
    norm = fit_normalization(flatten_images(mnist.train_images))
    assert norm.mean == pytest.approx(0.1306605, abs=1e-6)
    assert norm.std == pytest.approx(0.3081078, abs=1e-6)


def test_shipped_mnist_sums_match_and_are_checked(tmp_path):
    root = resources.files("saecommon").joinpath("datasets", "mnist")
    names = sorted(entry.name for entry in root.iterdir())
    assert names == [
        "README.md",
        SUMS_FILE,
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
    ]
    sums = {}
    for line in root.joinpath(SUMS_FILE).read_text().splitlines():
        digest, name = line.split()
        sums[name] = digest
    assert sorted(sums) == sorted(IDX_FILES.values())
    for name in ("t10k-labels-idx1-ubyte", "train-labels-idx1-ubyte"):
        data = gzip.decompress(root.joinpath(name + ".gz").read_bytes())
        assert hashlib.sha256(data).hexdigest() == sums[name], name
    # The loader checks them: the shipped files beside a sums file with one wrong sum.
    for name in sums:
        (tmp_path / (name + ".gz")).symlink_to(root.joinpath(name + ".gz"))
    sums["t10k-labels-idx1-ubyte"] = "f" * 64
    (tmp_path / SUMS_FILE).write_text("".join(f"{d}  {n}\n" for n, d in sums.items()))
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz: sha256 of the"):
        load_idx_dir(tmp_path)


# --- read_idx -----------------------------------------------------------------------


def test_write_idx_dir_reads_back(tmp_path):
    rng = np.random.default_rng(0)
    data = Dataset(
        "mine",
        rng.integers(0, 256, (5, 3, 4), dtype=np.uint8),
        np.array([0, 9, 255, 3, 1]),
        rng.integers(0, 256, (2, 3, 4), dtype=np.uint8),
        np.array([7, 2]),
    )
    folder = write_idx_dir(tmp_path / "idx", data)
    back = load_idx_dir(folder)
    for field in IDX_FILES:
        np.testing.assert_array_equal(getattr(back, field), getattr(data, field))
    assert back.train_labels.dtype == np.uint8
    header = (tmp_path / "idx" / "train-images-idx3-ubyte").read_bytes()[:16]
    assert header == bytes([0, 0, 8, 3, 0, 0, 0, 5, 0, 0, 0, 3, 0, 0, 0, 4])
    with pytest.raises(DataError, match="is not empty"):
        write_idx_dir(folder, data)
    wide = Dataset(
        "w",
        data.train_images,
        np.array([0, 1, 2, 3, 256]),
        data.test_images,
        data.test_labels,
    )
    with pytest.raises(DataError, match="outside 0-255"):
        write_idx_dir(tmp_path / "wide", wide)


def test_read_idx_raw_and_gzip_give_the_same_array(tmp_path):
    write_idx(tmp_path / "raw", TRAIN_IMAGES)
    # A misleading name: gzip is recognised by its magic bytes, not the suffix.
    write_idx(tmp_path / "packed.idx", TRAIN_IMAGES, compress=True)
    raw, packed = read_idx(tmp_path / "raw"), read_idx(tmp_path / "packed.idx")
    assert raw.dtype == packed.dtype == np.uint8
    assert raw.shape == (3, 2, 3)
    np.testing.assert_array_equal(raw, TRAIN_IMAGES)
    np.testing.assert_array_equal(packed, TRAIN_IMAGES)
    assert raw.flags.writeable  # owns its memory, not a read-only view of bytes
    write_idx(tmp_path / "labels.gz", TRAIN_LABELS, compress=False)  # raw despite .gz
    assert read_idx(tmp_path / "labels.gz").tolist() == [7, 0, 9]


def test_read_idx_header_bytes_by_hand(tmp_path):
    # Magic 2049 = 0x00000801 (uint8, 1 dim), count 4, then the labels.
    (tmp_path / "f").write_bytes(struct.pack(">ii", 2049, 4) + bytes([3, 1, 4, 1]))
    assert read_idx(tmp_path / "f").tolist() == [3, 1, 4, 1]
    # Magic 2051 = 0x00000803: the 16-byte image header.
    header = struct.pack(">iiii", 2051, 2, 1, 2)
    (tmp_path / "g").write_bytes(header + bytes([10, 20, 30, 40]))
    assert read_idx(tmp_path / "g").tolist() == [[[10, 20]], [[30, 40]]]


@pytest.mark.parametrize(
    "data, message",
    [
        (b"\x01\x00\x08\x01" + struct.pack(">i", 1) + b"\x00", "not an IDX file"),
        (
            b"\x00\x00\x0d\x01" + struct.pack(">i", 1) + b"\x00" * 4,
            "0x0d holds float32",
        ),
        (b"\x00\x00\x42\x01" + struct.pack(">i", 1) + b"\x00", "not an IDX type code"),
        (b"\x00\x00\x08\x03" + struct.pack(">i", 5), "header says 3 dims"),
        (b"\x00\x00", "2 bytes is too short for an IDX header"),
        (b"\x00\x00\x08\x00", "header says 0 dims"),
    ],
)
def test_read_idx_bad_headers(tmp_path, data, message):
    path = tmp_path / "bad"
    path.write_bytes(data)
    with pytest.raises(DataError, match=message) as err:
        read_idx(path)
    assert str(path) in str(err.value)


def test_read_idx_truncated_and_oversized(tmp_path):
    data = idx_bytes(TRAIN_IMAGES)  # 16 header bytes + 18 data bytes
    (tmp_path / "short").write_bytes(data[:-5])
    with pytest.raises(
        DataError, match=r"header says 18 bytes of data \(dims 3 x 2 x 3\), file has 13"
    ):
        read_idx(tmp_path / "short")
    (tmp_path / "long.gz").write_bytes(gzip.compress(data + b"\x00\x00"))
    with pytest.raises(DataError, match="header says 18 bytes of data .*, file has 20"):
        read_idx(tmp_path / "long.gz")
    (tmp_path / "cut.gz").write_bytes(gzip.compress(data)[:-10])
    with pytest.raises(DataError, match="cut.gz: broken gzip data"):
        read_idx(tmp_path / "cut.gz")
    with pytest.raises(DataError, match="cannot read IDX file: No such file"):
        read_idx(tmp_path / "absent")


# --- load_idx_dir -------------------------------------------------------------------


def test_load_idx_dir_mixed_raw_and_gzip(tmp_path):
    ds = load_idx_dir(fake_dir(tmp_path, sums=True))
    assert (tmp_path / "train-labels-idx1-ubyte.gz").exists()
    assert (tmp_path / "train-images-idx3-ubyte").exists()
    assert ds.name == str(tmp_path)
    for field, expected in FAKE.items():
        np.testing.assert_array_equal(getattr(ds, field), expected, err_msg=field)
    assert ds.image_shape == (2, 3)
    # load_dataset sends a directory to the same loader.
    again = load_dataset(str(tmp_path))
    np.testing.assert_array_equal(again.test_images, TEST_IMAGES)


def test_load_idx_dir_names_the_missing_files(tmp_path):
    fake_dir(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    (tmp_path / "train-images-idx3-ubyte").unlink()
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(DataError) as err:
        load_idx_dir(tmp_path)
    assert str(err.value) == (
        f"{tmp_path}: missing train-images-idx3-ubyte, t10k-labels-idx1-ubyte "
        "(each may also end in .gz); found: notes.txt, t10k-images-idx3-ubyte, "
        "train-labels-idx1-ubyte.gz"
    )
    with pytest.raises(DataError, match="does not exist; expected a directory"):
        load_idx_dir(tmp_path / "nowhere")


def test_load_idx_dir_sha256_mismatch(tmp_path):
    fake_dir(tmp_path, sums=True)
    sums = (tmp_path / SUMS_FILE).read_text().splitlines()
    good = sums[3].split()[0]
    sums[3] = "0" * 64 + "  t10k-labels-idx1-ubyte"  # the .gz file: sums are of gunzip
    (tmp_path / SUMS_FILE).write_text("\n".join(sums) + "\n")
    with pytest.raises(DataError) as err:
        load_idx_dir(tmp_path)
    assert str(err.value) == (
        f"{tmp_path}/t10k-labels-idx1-ubyte.gz: sha256 of the uncompressed data is "
        f"{good}, but {SUMS_FILE} says {'0' * 64}; the file is corrupt or not the "
        "listed one"
    )
    # verify=False skips the sums (and so loads the data).
    assert load_idx_dir(tmp_path, verify=False).test_labels.tolist() == [1, 2]
    (tmp_path / SUMS_FILE).write_text("not a sum line\n")
    with pytest.raises(DataError, match="line 1 is not '<sha256 hex>  <file name>'"):
        load_idx_dir(tmp_path)
    (tmp_path / SUMS_FILE).write_text(f"{good}  t10k-labels-idx1-ubyte\n")
    with pytest.raises(DataError, match="lists no sum for train-images-idx3-ubyte"):
        load_idx_dir(tmp_path)


def test_load_idx_dir_inconsistent_files(tmp_path):
    fake_dir(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.array([1, 2, 3]), True)
    with pytest.raises(
        DataError,
        match="t10k-images-idx3-ubyte has 2 images but "
        "t10k-labels-idx1-ubyte.gz has 3 labels",
    ):
        load_idx_dir(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros((2, 1)), True)
    with pytest.raises(DataError, match=r"expected 1 dims \[n\], header has 2"):
        load_idx_dir(tmp_path)


def test_load_dataset_rejects_unknown_specs(tmp_path):
    with pytest.raises(DataError) as err:
        load_dataset("cifar")
    msg = str(err.value)
    assert msg.startswith(
        "dataset 'cifar' is unknown; expected 'mnist' (the shipped copy)"
    )
    assert "'tfds:NAME' (tensorflow-datasets)" in msg
    (tmp_path / "file").write_text("")
    with pytest.raises(DataError, match="is a file, not a directory"):
        load_dataset(str(tmp_path / "file"))
    with pytest.raises(DataError, match="needs a dataset name"):
        load_dataset("tfds:")


# --- tensorflow-datasets --------------------------------------------------------------


def test_tfds_through_mock_data():
    tfds = pytest.importorskip("tensorflow_datasets")
    # USE_CODE: the dataset's own class gives the features; no metadata files, no
    # network and no TensorFlow (data_source is mocked, as_dataset is not used).
    with tfds.testing.mock_data(
        num_examples=7, policy=tfds.testing.MockPolicy.USE_CODE
    ):
        ds = load_dataset("tfds:fashion_mnist")
        raw = tfds.data_source("fashion_mnist", split="test")
        first = raw[0]
        last = raw[6]
    assert ds.name == "tfds:fashion_mnist"
    assert ds.train_images.shape == (7, 28, 28)
    assert ds.test_images.shape == (7, 28, 28)
    assert ds.train_images.dtype == ds.test_images.dtype == np.uint8
    assert ds.train_labels.shape == ds.test_labels.shape == (7,)
    assert ds.train_labels.dtype == np.int64
    assert first["image"].shape == (28, 28, 1)  # tfds's channel axis, squeezed by us
    np.testing.assert_array_equal(ds.test_images[0], first["image"][..., 0])
    np.testing.assert_array_equal(ds.test_images[6], last["image"][..., 0])
    assert ds.test_labels[6] == last["label"]
    assert ds.train_labels.min() >= 0 and ds.train_labels.max() < 10


def test_tfds_unknown_name():
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(DataError) as err:
        load_dataset("tfds:not_a_dataset_xyz")
    assert str(err.value).startswith(
        "'tfds:not_a_dataset_xyz': tensorflow-datasets has no dataset named "
        "'not_a_dataset_xyz'"
    )


def test_tfds_bad_name_or_version():
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(DataError) as err:
        load_dataset("tfds:Bad Name")
    assert str(err.value) == (
        "'tfds:Bad Name': tensorflow-datasets cannot load the 'train' split: "
        "Parsing builder name string Bad Name failed."
    )
    with pytest.raises(DataError, match="cannot be loaded at version 99.0.0"):
        load_dataset("tfds:mnist:99.0.0")


def test_tfds_record_without_images():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(
        num_examples=2, policy=tfds.testing.MockPolicy.USE_CODE
    ):
        with pytest.raises(
            DataError, match="records need 'image' and 'label', got label, text"
        ):
            load_dataset("tfds:imdb_reviews")


def test_tfds_prepare_needs_tensorflow(monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")

    def no_tensorflow(name, split):
        # What a first download_and_prepare raises where TensorFlow is missing.
        raise ModuleNotFoundError("No module named 'tensorflow'", name="tensorflow")

    monkeypatch.setattr(tfds, "data_source", no_tensorflow)
    with pytest.raises(DataError) as err:
        load_dataset("tfds:kmnist")
    msg = str(err.value)
    assert "'tfds:kmnist': preparing this dataset" in msg
    assert "needs TensorFlow and the network" in msg
    assert "pip install 'jax-torch-sae[tfds-prepare]'" in msg
    assert "pip install tensorflow), then run again" in msg


def test_tfds_not_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # import fails
    with pytest.raises(DataError, match="pip install tensorflow-datasets$"):
        load_dataset("tfds:mnist")


# --- scaling, normalization, finiteness, splits -------------------------------------


def test_flatten_images_scales_to_unit_interval():
    images = np.array([[[0, 255], [51, 102]], [[1, 2], [3, 4]]], np.uint8)
    flat = flatten_images(images)
    assert flat.dtype == np.float32
    assert flat.shape == (2, 4)
    np.testing.assert_allclose(flat[0], [0.0, 1.0, 0.2, 0.4], rtol=0, atol=1e-7)
    assert flat[0, 0] == 0.0 and flat[0, 1] == 1.0
    np.testing.assert_array_equal(flatten_images(images[..., None]), flat)
    with pytest.raises(
        DataError, match="expects uint8 images, got float32 array of shape"
    ):
        flatten_images(flat.reshape(2, 2, 2))
    with pytest.raises(
        DataError, match=r"expects \[n, h, w\] or \[n, h, w, c\], got shape \(2, 4\)"
    ):
        flatten_images(images.reshape(2, 4))


def test_normalization_fit_apply_invert():
    x = np.array([[0.0, 0.5], [0.5, 1.0]], np.float32)
    norm = fit_normalization(x)
    # mean = 2 / 4 = 0.5; variance = (0.25 + 0 + 0 + 0.25) / 4 = 0.125
    assert norm == Normalization(mean=0.5, std=0.125**0.5)
    z = norm.apply(x)
    assert z.dtype == np.float32
    s = 1 / 0.125**0.5  # 2.8284...
    np.testing.assert_allclose(z, [[-0.5 * s, 0.0], [0.0, 0.5 * s]], rtol=1e-6)
    np.testing.assert_allclose(norm.invert(z), x, rtol=0, atol=1e-7)
    assert float(z.mean()) == pytest.approx(0.0, abs=1e-7)
    assert float(z.std()) == pytest.approx(1.0, rel=1e-6)


@pytest.mark.parametrize("scale", ["unit", "symmetric"])
def test_prepare_data_pixel_scale(monkeypatch, scale):
    """symmetric: (p / 255 - 0.5) / 0.5 in [-1, 1], pixel_range (-1, 1), and
    to_pixels gives back p / 255; unit leaves [0, 1] pixels as they are."""
    from saecommon import data as data_layer
    from saecommon.config import SAEConfig
    from saecommon.train_config import RunConfig, TrainConfig

    train = np.array([[[0, 255], [51, 102]], [[255, 0], [204, 153]]], np.uint8)
    test = np.array([[[0, 51], [255, 102]]], np.uint8)
    fake = Dataset("fake", train, np.array([1, 2]), test, np.array([3]))
    monkeypatch.setattr(data_layer, "load_dataset", lambda spec: fake)
    model = SAEConfig(input_dim=4, hidden_dims=(2,), output_activation="tanh")
    data = data_layer.prepare_data(RunConfig(model, TrainConfig(pixel_scale=scale)))
    pixels = flatten_images(train)  # [0, 0.2, 0.4, 0.6, 0.8, 1]: exact k / 5
    if scale == "unit":
        assert data.pixel_range == (0.0, 1.0) and data.normalization is None
        np.testing.assert_array_equal(data.train, pixels)
        return
    assert data.pixel_range == (-1.0, 1.0)
    assert data.normalization == Normalization(mean=0.5, std=0.5)
    assert data.train.dtype == np.float32
    # 0 -> -1, 51 -> -0.6, 102 -> -0.2, 153 -> 0.2, 204 -> 0.6, 255 -> 1
    expected = [[-1.0, 1.0, -0.6, -0.2], [1.0, -1.0, 0.6, 0.2]]
    np.testing.assert_allclose(data.train, expected, rtol=0, atol=1e-7)
    assert data.train.min() == -1.0 and data.train.max() == 1.0
    np.testing.assert_allclose(data.test, [[-1.0, -0.6, 1.0, -0.2]], atol=1e-7)
    np.testing.assert_allclose(data.to_pixels(data.train), pixels, rtol=0, atol=1e-7)
    np.testing.assert_allclose(
        data.to_pixels(data.test), flatten_images(test), rtol=0, atol=1e-7
    )


def test_normalization_errors():
    with pytest.raises(DataError, match=r"x_train is constant \(every element 0.25\)"):
        fit_normalization(np.full((3, 2), 0.25))
    with pytest.raises(DataError, match="empty training array"):
        fit_normalization(np.zeros((0, 4)))
    with pytest.raises(DataError, match="normalization std must be > 0, got 0.0"):
        Normalization(mean=0.0, std=0.0)
    with pytest.raises(DataError, match="normalization mean must be finite, got nan"):
        Normalization(mean=float("nan"), std=1.0)
    assert type(Normalization(np.float32(0.5), np.float64(2.0)).mean) is float
    with pytest.raises(DataError, match="x_train has 1 non-finite"):
        fit_normalization(np.array([1.0, np.inf]))


def test_check_finite_messages():
    check_finite(np.ones((2, 3), np.float32), "x")
    check_finite(np.arange(4), "ints")  # integers cannot be NaN
    x = np.zeros((2, 3))
    x[1, 0] = np.nan
    x[1, 2] = -np.inf
    x[0, 2] = np.nan  # the first bad entry in C order
    with pytest.raises(DataError) as err:
        check_finite(x, "x_val")
    assert str(err.value) == (
        "x_val has 3 non-finite entries (2 NaN, 1 inf) of 6; the first is at index "
        "(0, 2)"
    )


def test_split_validation_takes_the_last_samples():
    images = np.arange(10 * 4, dtype=np.uint8).reshape(10, 2, 2)
    labels = np.arange(10)
    tr_x, tr_y, va_x, va_y = split_validation(images, labels, 0.3)
    assert tr_y.tolist() == [0, 1, 2, 3, 4, 5, 6]
    assert va_y.tolist() == [7, 8, 9]
    np.testing.assert_array_equal(va_x, images[7:])
    np.testing.assert_array_equal(tr_x, images[:7])
    # Python's round takes halves to the even number: 2.5 -> 2, 1.5 -> 2, 4.5 -> 4.
    assert len(split_validation(images, labels, 0.25)[3]) == 2
    assert len(split_validation(images, labels, 0.15)[3]) == 2
    assert len(split_validation(images, labels, 0.45)[3]) == 4
    tr_x, tr_y, va_x, va_y = split_validation(images, labels, 0.0)
    assert tr_x.shape == (10, 2, 2) and va_x.shape == (0, 2, 2) and va_y.shape == (0,)
    # MNIST's usual 55000 / 5000 split.
    n = np.zeros(60000, np.uint8)
    sizes = [len(a) for a in split_validation(n, n, 1 / 12)]
    assert sizes == [55000, 55000, 5000, 5000]


@pytest.mark.parametrize(
    "fraction, message",
    [
        (1.0, r"validation fraction must be in \[0, 1\), got 1.0"),
        (-0.1, r"validation fraction must be in \[0, 1\), got -0.1"),
        ("0.1", "validation fraction must be a number, got '0.1'"),
        (True, "validation fraction must be a number, got True"),
        (0.96, "keeps 10 for validation and none for training"),
    ],
)
def test_split_validation_errors(fraction, message):
    images = np.zeros((10, 2, 2), np.uint8)
    with pytest.raises(DataError, match=message):
        split_validation(images, np.zeros(10), fraction)


def test_split_validation_length_mismatch():
    with pytest.raises(DataError, match="images has 4 samples but labels has 3"):
        split_validation(np.zeros((4, 2)), np.zeros(3), 0.5)


def test_dataset_validates_its_arrays():
    with pytest.raises(DataError) as err:
        Dataset("fake", TRAIN_IMAGES, TRAIN_LABELS[:2], TEST_IMAGES, TEST_LABELS)
    assert str(err.value) == (
        "dataset 'fake': train_images has 3 samples but train_labels has 2"
    )
    with pytest.raises(
        DataError, match="test_images must be a uint8 numpy array, got float64"
    ):
        Dataset("fake", TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES * 1.0, TEST_LABELS)
    with pytest.raises(
        DataError, match="test_labels must hold integers, got dtype float32"
    ):
        Dataset(
            "fake", TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, np.zeros(2, np.float32)
        )
    with pytest.raises(
        DataError, match=r"train images are \(2, 3\) but test images are \(3, 2\)"
    ):
        Dataset(
            "fake",
            TRAIN_IMAGES,
            TRAIN_LABELS,
            TEST_IMAGES.reshape(2, 3, 2),
            TEST_LABELS,
        )


# --- bad input refused where it enters (issue 12) -----------------------------------


def prepared_data(train, val, test, labels=None):
    """A PreparedData of the given splits (labels: one zero per sample by default)."""
    label = (lambda x: np.zeros(len(x), np.int64)) if labels is None else labels
    return PreparedData(
        train,
        label(train),
        val,
        label(val),
        test,
        label(test),
        (0.0, 1.0),
        (2, 2),
        None,
        False,
    )


@pytest.mark.parametrize(
    "split, index, bad, counts",
    [
        ("train", (3, 1), np.nan, "1 NaN, 0 inf"),
        ("val", (0, 2), np.inf, "0 NaN, 1 inf"),
        ("test", (1, 3), -np.inf, "0 NaN, 1 inf"),
    ],
)
def test_prepared_data_refuses_non_finite_splits(split, index, bad, counts):
    splits = {k: np.full((5, 4), 0.5, np.float32) for k in ("train", "val", "test")}
    splits[split][index] = bad
    with pytest.raises(DataError) as err:
        prepared_data(**splits)
    assert str(err.value) == (
        f"PreparedData.{split} has 1 non-finite entries ({counts}) of 20; the first "
        f"is at index {index}"
    )


def test_prepared_data_refuses_bad_arrays():
    x = np.zeros((5, 4), np.float32)
    with pytest.raises(DataError) as err:
        prepared_data(x, x, x[0])
    assert str(err.value) == (
        "PreparedData.test must be a 2-D numpy array [n, features], got float32 "
        "array of shape (4,)"
    )
    with pytest.raises(
        DataError, match="PreparedData.val must hold floats, got dtype uint8"
    ):
        prepared_data(x, x.astype(np.uint8), x)
    with pytest.raises(
        DataError, match="PreparedData.test has 3 features per sample but train has 4"
    ):
        prepared_data(x, x, x[:, :3])
    with pytest.raises(DataError) as err:
        prepared_data(x, x, x, labels=lambda a: np.zeros(4))
    assert str(err.value) == "PreparedData.train has 5 samples but train_labels has 4"


def test_an_idx_file_of_zero_images_names_the_file(tmp_path):
    fake_dir(tmp_path)
    name = IDX_FILES["test_images"]
    (tmp_path / (name + ".gz")).unlink(missing_ok=True)
    write_idx(tmp_path / name, np.zeros((0, 2, 3)))
    assert read_idx(tmp_path / name).shape == (0, 2, 3)  # a valid IDX file, but empty
    with pytest.raises(DataError) as err:
        load_idx_dir(tmp_path)
    assert str(err.value) == (
        f"{tmp_path}/{name} is empty: its header says shape (0, 2, 3), 0 images; "
        "every split needs at least one sample"
    )
    assert flatten_images(np.zeros((0, 2, 3), np.uint8)).shape == (0, 6)


@pytest.mark.parametrize(
    "spec", ["/no/such/dir", "./mnist", "~/no-such-sae-data", "a/b"]
)
def test_load_dataset_says_a_missing_folder_does_not_exist(spec):
    with pytest.raises(DataError) as err:
        load_dataset(spec)
    assert str(err.value).startswith(
        f"dataset folder {spec!r} does not exist; expected 'mnist' (the shipped copy)"
    )
    with pytest.raises(DataError, match="^dataset 'cifar10' is unknown; expected"):
        load_dataset("cifar10")


def test_load_dataset_expands_the_home_folder(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    fake_dir(tmp_path / "data")
    monkeypatch.setenv("HOME", str(tmp_path))
    ds = load_dataset("~/data")
    np.testing.assert_array_equal(ds.test_images, TEST_IMAGES)
