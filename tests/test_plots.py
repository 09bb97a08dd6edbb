"""End-of-run pictures: each one is a real PNG whose pixels show what was asked for.

Pixel checks read the written file back (matplotlib.image.imread, RGB in [0, 1]) and
look for colours only the drawn content can produce: tile runs along a pixel row,
RdBu_r's end colours, tab10 line colours. Figure-level checks (titles, scales, legends)
capture the Figure on its way to ``_save``.
"""

import os
import subprocess
import sys

import numpy as np
import pytest
from matplotlib import colormaps
from matplotlib.colors import to_rgb
from matplotlib.image import imread

from saecommon import plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read_png(path):
    """The RGB pixels [height, width, 3] of a file that must be a PNG."""
    with open(path, "rb") as f:
        assert f.read(8) == PNG_SIGNATURE, f"{path} is not a PNG"
    image = imread(path)
    assert image.ndim == 3 and image.shape[2] in (3, 4), image.shape
    return image[..., :3]


def near(rgb, color, tol=0.06):
    """[height, width] mask of the pixels within ``tol`` of ``color`` per channel."""
    return np.all(np.abs(rgb - np.asarray(to_rgb(color))) < tol, axis=-1)


def runs(mask, min_len):
    """Number of runs of True at least ``min_len`` long along the last axis."""
    mask = np.asarray(mask, dtype=np.int8)
    pad = np.zeros(mask.shape[:-1] + (1,), np.int8)
    edges = np.diff(np.concatenate([pad, mask, pad], axis=-1), axis=-1)
    counts = []
    for line in edges.reshape(-1, edges.shape[-1]):
        starts, ends = np.flatnonzero(line == 1), np.flatnonzero(line == -1)
        counts.append(int(np.sum(ends - starts >= min_len)))
    return np.array(counts).reshape(mask.shape[:-1])


def most_runs(mask, min_len, axis):
    """The largest number of long runs along any pixel row (axis=1) or column (0)."""
    return int(runs(mask if axis == 1 else mask.T, min_len).max())


def colours(rgb):
    """Number of distinct colours in an image."""
    q = np.round(rgb * 255).astype(np.uint32)
    return np.unique(q[..., 0] << 16 | q[..., 1] << 8 | q[..., 2]).size


def dictionary_area(rgb):
    """The dictionary image without the colorbar: everything left of the last pixel
    column that is mostly the tiles' frame grey (antialiased tick text is grey too,
    but never for long)."""
    frame = near(rgb, (0.45, 0.45, 0.45), 0.01).sum(axis=0)
    return rgb[:, : np.flatnonzero(frame > 0.5 * frame.max()).max() + 1]


@pytest.fixture
def figures(monkeypatch):
    """The Figure objects the plot functions save, in order."""
    saved = []
    real_save = plots._save

    def save(fig, path):
        saved.append(fig)
        return real_save(fig, path)

    monkeypatch.setattr(plots, "_save", save)
    return saved


def history(epochs=6, keys=None):
    rows = []
    for e in range(1, epochs + 1):
        row = {
            "epoch": e,
            "lr": 1e-3,
            "train/loss": 1.0 / e,
            "train/recon": 0.8 / e,
            "train/penalty": 0.2 / e,
            "test/loss": 1.1 / e,
            "test/recon": 0.9 / e,
            "test/penalty": 0.2 / e,
            "train/l0": 30.0 - e,
            "test/l0": 31.0 - e,
            "test/dead_fraction": 0.05 * e,
        }
        rows.append(row if keys is None else {k: row[k] for k in ("epoch", *keys)})
    return rows


# --------------------------------------------------------------------------- import


def test_import_keeps_the_backend_and_never_loads_pyplot(tmp_path):
    # A fresh interpreter on a backend that is not the default: importing the module
    # and drawing must leave it as it was, and pyplot (which owns global figure state)
    # must never be imported.
    code = (
        "import sys, matplotlib\n"
        "before = matplotlib.get_backend()\n"
        "import saecommon.plots as p\n"
        "assert matplotlib.get_backend() == before, matplotlib.get_backend()\n"
        "p.plot_codes([[0.0, 1.0]], sys.argv[1])\n"
        "assert matplotlib.get_backend() == before, matplotlib.get_backend()\n"
        "assert 'matplotlib.pyplot' not in sys.modules\n"
        "print(before)\n"
    )
    env = {**os.environ, "MPLBACKEND": "svg", "PYTHONPATH": ROOT}
    path = tmp_path / "codes.png"
    out = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, env=env
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "svg"
    read_png(path)


# --------------------------------------------------------------------------- loss


def test_loss_curves_png_panels_and_scales(tmp_path, figures):
    path = plots.plot_loss_curves(history(), tmp_path / "deep" / "er" / "loss.png")
    assert path == tmp_path / "deep" / "er" / "loss.png"
    rgb = read_png(path)
    assert rgb.shape[1] > rgb.shape[0]  # 2x2 panels on an 11x8 inch page
    assert near(rgb, "tab:blue").sum() > 200  # train lines
    assert near(rgb, "tab:orange").sum() > 200  # test lines
    assert near(rgb, "tab:red").sum() > 100  # dead fraction on the twin axis

    (fig,) = figures
    panels = {ax.get_title(): ax for ax in fig.axes if ax.get_title()}
    assert set(panels) == {
        "total loss",
        "reconstruction loss",
        "sparsity penalty",
        "L0 and dead units",
    }
    for title in ("total loss", "reconstruction loss", "sparsity penalty"):
        ax = panels[title]
        assert ax.get_yscale() == "log", title  # every value > 0
        assert ax.get_xlabel() == "epoch"
        assert [t.get_text() for t in ax.get_legend().get_texts()] == ["train", "test"]
        train = ax.get_lines()[0]
        np.testing.assert_array_equal(train.get_xdata(), np.arange(1, 7))
    np.testing.assert_allclose(
        panels["total loss"].get_lines()[1].get_ydata(), 1.1 / np.arange(1, 7)
    )
    l0 = panels["L0 and dead units"]
    assert l0.get_yscale() == "linear"
    assert [t.get_text() for t in l0.get_legend().get_texts()] == [
        "train L0",
        "test L0",
        "test dead fraction",
    ]
    twin = [ax for ax in fig.axes if ax.get_ylabel().startswith("dead fraction")]
    assert len(twin) == 1
    np.testing.assert_allclose(
        twin[0].get_lines()[0].get_ydata(), 0.05 * np.arange(1, 7)
    )


def test_loss_curves_linear_scale_when_a_value_is_zero(tmp_path, figures):
    rows = history()
    rows[2]["train/penalty"] = 0.0  # penalty "none" logs zeros
    plots.plot_loss_curves(rows, tmp_path / "loss.png")
    panels = {ax.get_title(): ax for ax in figures[0].axes}
    assert panels["sparsity penalty"].get_yscale() == "linear"
    assert panels["total loss"].get_yscale() == "log"


def test_loss_curves_tolerate_missing_keys(tmp_path, figures):
    only_test = history(keys=("test/loss",))
    rgb = read_png(plots.plot_loss_curves(only_test, tmp_path / "a.png"))
    assert near(rgb, "tab:blue").sum() == 0  # no train key -> no train line
    assert near(rgb, "tab:orange").sum() > 100
    assert near(rgb, "tab:red").sum() == 0  # no dead fraction -> no twin axis

    # keys that come and go between epochs (val every other epoch), None as absent
    rows = history()
    for row in rows[::2]:
        row["val/loss"] = 0.5
    rows[3]["test/recon"] = None
    del rows[4]["train/loss"]
    plots.plot_loss_curves(rows, tmp_path / "b.png")
    panels = {ax.get_title(): ax for ax in figures[1].axes}
    lines = {ln.get_label(): ln for ln in panels["total loss"].get_lines()}
    np.testing.assert_array_equal(lines["val"].get_xdata(), [1, 3, 5])
    np.testing.assert_array_equal(lines["train"].get_xdata(), [1, 2, 3, 4, 6])
    recon = {ln.get_label(): ln for ln in panels["reconstruction loss"].get_lines()}
    np.testing.assert_array_equal(recon["test"].get_xdata(), [1, 2, 3, 5, 6])

    # epochs only, or no epochs at all: every panel says "no data", nothing breaks
    for name, rows in (("c", [{"epoch": 1}, {"epoch": 2}]), ("d", [])):
        read_png(plots.plot_loss_curves(rows, tmp_path / f"{name}.png"))
        texts = [t.get_text() for ax in figures[-1].axes for t in ax.texts]
        assert texts.count("no data") == 4


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"epoch": 1}, "history must be a list of per-epoch metric dicts, got dict"),
        ([{"epoch": 1}, 3], r"history\[1\] must be a dict of metrics, got int"),
        ([{"train/loss": 1.0}], r"history\[0\] must have an int 'epoch', got None"),
        ([{"epoch": 1.5}], r"history\[0\] must have an int 'epoch', got 1.5"),
        (
            [{"epoch": 1, "test/loss": "nan?"}],
            r"history\[0\]\['test/loss'\] must be a number, got str",
        ),
    ],
)
def test_loss_curves_reject_bad_history(tmp_path, bad, message):
    with pytest.raises(ValueError, match=message):
        plots.plot_loss_curves(bad, tmp_path / "loss.png")
    assert not (tmp_path / "loss.png").exists()


# --------------------------------------------------------------------------- images


def test_reconstructions_inputs_above_reconstructions(tmp_path):
    dark = np.zeros((16, 784))
    dark[:, 0] = 1.0  # one white pixel per tile sets the shared grey range to 0..1
    grey = np.full((16, 784), 0.5)
    rgb = read_png(plots.plot_reconstructions(dark, grey, tmp_path / "a.png"))
    assert rgb.shape[1] > 3 * rgb.shape[0]  # one row pair of 16 tiles
    assert colours(rgb) > 2  # not a single colour
    black = np.all(rgb < 0.05, axis=-1)
    mid = near(rgb, (0.5, 0.5, 0.5), 0.03)
    assert most_runs(black, 20, axis=1) == 16  # 16 input tiles side by side
    assert most_runs(mid, 20, axis=1) == 16  # and 16 reconstructions
    rows_black = np.flatnonzero(runs(black, 20) == 16)
    rows_mid = np.flatnonzero(runs(mid, 20) == 16)
    assert rows_black.size > 40 and rows_mid.size > 40  # 0.8 inch tiles at 100 dpi
    assert rows_black.max() < rows_mid.min()  # inputs drawn above

    swapped = read_png(plots.plot_reconstructions(grey, dark, tmp_path / "b.png"))
    black_swapped = np.all(swapped < 0.05, axis=-1)
    assert np.argwhere(black)[:, 0].mean() < np.argwhere(black_swapped)[:, 0].mean()


def test_reconstructions_grey_range_is_shared(tmp_path):
    # inputs reach 0.5, reconstructions 1.0: on one shared range 0..1 the input tiles
    # are mid grey and the reconstructions white (a per-image range would show the
    # inputs white too, hiding that the reconstructions are too bright)
    x = np.full((2, 16), 0.5)
    r = np.ones((2, 16))
    x[:, 0] = r[:, 0] = 0.0
    rgb = read_png(
        plots.plot_reconstructions(x, r, tmp_path / "r.png", image_shape=(4, 4))
    )
    mid = near(rgb, (0.5, 0.5, 0.5), 0.03)
    white = np.all(rgb > 0.97, axis=-1)
    input_rows = np.flatnonzero(runs(mid, 20) == 2)
    assert input_rows.size > 40
    # (antialiased label text has grey pixels too, but never down a whole tile)
    cols = np.flatnonzero(mid[input_rows].mean(axis=0) > 0.9)
    tiles = slice(cols.min(), cols.max() + 1)
    assert not white[input_rows, tiles].any()
    below = white[input_rows.max() + 1 :, tiles]
    assert below.sum() > 0.5 * mid[input_rows, tiles].sum()  # white tiles underneath


@pytest.mark.parametrize(
    "batch, n, per_row, row_pairs", [(40, 32, 8, 4), (3, 16, 3, 1)]
)
def test_reconstructions_wrap_and_small_batches(tmp_path, batch, n, per_row, row_pairs):
    x = np.zeros((batch, 784))
    rgb = read_png(
        plots.plot_reconstructions(x, x, tmp_path / "r.png", image_shape=(28, 28), n=n)
    )
    black = np.all(rgb < 0.05, axis=-1)
    assert most_runs(black, 20, axis=1) == per_row
    assert most_runs(black, 20, axis=0) == 2 * row_pairs  # input + reconstruction rows
    if row_pairs > 1:
        assert rgb.shape[0] > rgb.shape[1] * 0.8  # wrapped: no longer a wide strip


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"inputs": np.zeros((4, 783))},
            r"inputs must be \[batch, h\*w\] = \[batch, 784\] for image_shape "
            r"\(28, 28\), got shape \(4, 783\)",
        ),
        (
            {"inputs": np.zeros((4, 28, 28))},
            r"inputs must be .*got shape \(4, 28, 28\)",
        ),
        (
            {"reconstructions": np.zeros((3, 784))},
            r"reconstructions must have the shape of inputs \(4, 784\), got \(3, 784\)",
        ),
        ({"inputs": np.zeros((0, 784))}, r"got shape \(0, 784\)"),
        ({"image_shape": (28,)}, r"image_shape must be \(height, width\), got \(28,\)"),
        ({"image_shape": (0, 784)}, r"image_shape must be two positive ints"),
        ({"n": 0}, "n must be a positive int, got 0"),
    ],
)
def test_reconstructions_reject_bad_shapes(tmp_path, kwargs, message):
    args = {"inputs": np.zeros((4, 784)), "reconstructions": np.zeros((4, 784))}
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        plots.plot_reconstructions(path=tmp_path / "r.png", **args)


def test_dictionary_signs_and_per_unit_scale(tmp_path):
    # unit 0 all positive but tiny, unit 1 all negative and huge: each tile is scaled
    # to its own max |w|, so both reach the ends of RdBu_r (a shared scale would show
    # unit 0 as white)
    w = np.stack([np.full(784, 1e-3), np.full(784, -1e3)])
    rgb = read_png(plots.plot_dictionary(w, tmp_path / "d.png"))
    cmap = colormaps["RdBu_r"]
    red, blue = near(rgb, cmap(1.0)[:3], 0.03), near(rgb, cmap(0.0)[:3], 0.03)
    # two 28x28 tiles of 1.1 inches at 100 dpi, plus the colorbar's ends
    assert red.sum() > 5000 and blue.sum() > 5000
    assert most_runs(red, 50, axis=1) == 1 and most_runs(blue, 50, axis=1) == 1
    red_x, blue_x = np.argwhere(red)[:, 1], np.argwhere(blue)[:, 1]
    assert np.median(red_x) < np.median(blue_x)  # unit 0 left of unit 1
    # mean colour of each tile: red channel dominates unit 0's, blue unit 1's
    row = np.flatnonzero(red.sum(axis=1) > 50)[0] + 10
    tile0 = rgb[row, red[row]].mean(axis=0)
    tile1 = rgb[row, blue[row]].mean(axis=0)
    assert tile0[0] > tile0[2] + 0.2 and tile1[2] > tile1[0] + 0.2


def test_dictionary_zero_unit_is_white_and_sign_flips_colours(tmp_path):
    w = np.zeros((2, 64))
    w[1] = np.linspace(-1, 1, 64)  # left half blue, right half red
    rgb = read_png(plots.plot_dictionary(w, tmp_path / "d.png", image_shape=(8, 8)))
    white = near(rgb, colormaps["RdBu_r"](0.5)[:3], 0.02)
    assert most_runs(white, 50, axis=1) >= 1  # the all-zero unit
    flipped = read_png(
        plots.plot_dictionary(-w, tmp_path / "f.png", image_shape=(8, 8))
    )
    red = colormaps["RdBu_r"](1.0)[:3]
    # unit 1 row-major: its top rows are negative -> blue; flipped -> red on top
    red_y = np.argwhere(near(rgb, red, 0.05))[:, 0]
    red_y_flipped = np.argwhere(near(flipped, red, 0.05))[:, 0]
    assert np.median(red_y_flipped) < np.median(red_y)


@pytest.mark.parametrize(
    "code, grid", [(1, (1, 1)), (2, (1, 2)), (7, (3, 3)), (64, (8, 8)), (128, (11, 12))]
)
def test_dictionary_near_square_grid(tmp_path, code, grid):
    rgb = read_png(plots.plot_dictionary(np.ones((code, 784)), tmp_path / "d.png"))
    red = near(dictionary_area(rgb), colormaps["RdBu_r"](1.0)[:3], 0.03)
    rows, cols = grid
    # every tile is solid dark red; count tiles along the densest row and column
    assert most_runs(red, 10, axis=1) == cols
    assert most_runs(red, 10, axis=0) == rows
    assert red.sum() > code * 10 * 10
    if code >= 64:
        assert 0.8 < rgb.shape[1] / rgb.shape[0] < 1.4  # roughly square


def test_dictionary_non_image_columns(tmp_path):
    # plots.picture_shape falls back to (input_dim, 1) for non-image data
    rgb = read_png(
        plots.plot_dictionary(np.ones((5, 300)), tmp_path / "d.png", (300, 1))
    )
    red = near(dictionary_area(rgb), colormaps["RdBu_r"](1.0)[:3], 0.03)
    assert most_runs(red, 5, axis=1) == 3  # 5 units on a 2 x 3 grid
    assert most_runs(red, 5, axis=0) == 2
    assert 1 < rgb.shape[0] / rgb.shape[1] < 6


def test_dictionary_rejects_bad_shape(tmp_path):
    with pytest.raises(
        ValueError,
        match=r"decoder_weights must be \[code, h\*w\] = \[code, 784\] .*"
        r"got shape \(784, 64\)",
    ):
        plots.plot_dictionary(np.zeros((784, 64)).T.T, tmp_path / "d.png")
    with pytest.raises(
        ValueError, match=r"decoder_weights must be .*got shape \(784,\)"
    ):
        plots.plot_dictionary(np.zeros(784), tmp_path / "d.png")


# --------------------------------------------------------------------------- codes


def test_codes_heat_map_follows_the_hot_unit(tmp_path, figures):
    first, last = np.zeros((30, 8)), np.zeros((30, 8))
    first[:, 0] = 1.0
    last[:, 7] = 1.0
    yellow = colormaps["viridis"](1.0)[:3]
    xs = []
    for name, codes in (("first", first), ("last", last)):
        rgb = read_png(plots.plot_codes(codes, tmp_path / f"{name}.png"))
        hot = near(rgb, yellow, 0.05)
        assert hot.sum() > 1000  # a whole column of the heat map
        xs.append(np.median(np.argwhere(hot)[:, 1]))
    assert xs[0] < xs[1]
    ax, cbar = figures[0].axes
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("code unit", "sample")
    assert cbar.get_ylabel() == "activation"
    assert ax.images[0].get_cmap().name == "viridis"


def test_codes_with_negative_values_use_a_centred_diverging_map(tmp_path, figures):
    codes = np.array([[-2.0, 0.5], [1.0, 0.0]])
    rgb = read_png(plots.plot_codes(codes, tmp_path / "c.png"))
    assert near(rgb, colormaps["RdBu_r"](0.0)[:3], 0.03).sum() > 1000  # the -2 cell
    image = figures[0].axes[0].images[0]
    assert image.get_cmap().name == "RdBu_r"
    assert image.get_clim() == (-2.0, 2.0)


@pytest.mark.parametrize("shape", [(5,), (2, 3, 4), (0, 4)])
def test_codes_reject_bad_shape(tmp_path, shape):
    with pytest.raises(
        ValueError, match=rf"codes must be \[batch, code\], got shape \({shape[0]},"
    ):
        plots.plot_codes(np.zeros(shape), tmp_path / "c.png")


def test_code_scatter_colours_by_label(tmp_path, figures):
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 100)
    codes = rng.normal(size=(200, 2)) * 0.3
    codes[:, 0] += np.where(labels == 0, -3.0, 3.0)  # label 0 left, label 1 right
    rgb = read_png(plots.plot_code_scatter(codes, labels, tmp_path / "s.png"))
    # points are translucent: classify pixels by which of red and blue dominates
    blue = rgb[..., 2] > rgb[..., 0] + 0.2  # tab:blue, label 0
    orange = rgb[..., 0] > rgb[..., 2] + 0.3  # tab:orange, label 1
    assert blue.sum() > 300 and orange.sum() > 300
    assert np.median(np.argwhere(blue)[:, 1]) < np.median(np.argwhere(orange)[:, 1])
    ax = figures[0].axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["0", "1"]
    assert ax.get_legend().get_title().get_text() == "label"

    # float labels that hold integers are fine (labels loaded as float arrays)
    plots.plot_code_scatter(codes, labels.astype(float), tmp_path / "f.png")


@pytest.mark.parametrize(
    "codes, labels, message",
    [
        (
            np.zeros((10, 3)),
            np.zeros(10, int),
            r"codes must be \[batch, 2\] .*\(10, 3\)",
        ),
        (np.zeros(10), np.zeros(10, int), r"codes must be \[batch, 2\] .*\(10,\)"),
        (
            np.zeros((10, 2)),
            np.zeros(9, int),
            r"labels must be \[batch\] = \[10\], .*9",
        ),
        (
            np.zeros((10, 2)),
            np.full(10, 0.5),
            "labels must be integers, got dtype float64",
        ),
    ],
)
def test_code_scatter_rejects_bad_input(tmp_path, codes, labels, message):
    with pytest.raises(ValueError, match=message):
        plots.plot_code_scatter(codes, labels, tmp_path / "s.png")


# --------------------------------------------------------------------------- run


@pytest.mark.parametrize(
    "code, with_labels, names",
    [
        (
            2,
            True,
            ["loss_curves", "reconstructions", "dictionary", "codes", "code_scatter"],
        ),
        (2, False, ["loss_curves", "reconstructions", "dictionary", "codes"]),
        (6, True, ["loss_curves", "reconstructions", "dictionary", "codes"]),
    ],
)
def test_write_run_plots_files(tmp_path, code, with_labels, names):
    rng = np.random.default_rng(0)
    x = rng.random((20, 16))
    out = tmp_path / "run" / "pictures"  # created on demand
    paths = plots.write_run_plots(
        str(out),
        history(3),
        x,
        x * 0.9,
        rng.normal(size=(code, 16)),
        np.maximum(rng.normal(size=(20, code)), 0),
        labels=rng.integers(0, 10, 20) if with_labels else None,
        image_shape=(4, 4),
    )
    assert paths == [out / f"{name}.png" for name in names]
    assert sorted(os.listdir(out)) == sorted(f"{name}.png" for name in names)
    for p in paths:
        assert colours(read_png(p)) > 10, p
