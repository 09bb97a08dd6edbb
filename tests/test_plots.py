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
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgb
from matplotlib.image import imread

from saecommon import plots
from saecommon.architectures import layers

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
    column that holds a good share of the tiles' frame grey (a last grid row that is
    not full leaves some columns framed on fewer rows; antialiased tick and label text
    is grey too, but never for long)."""
    frame = near(rgb, (0.45, 0.45, 0.45), 0.01).sum(axis=0)
    return rgb[:, : np.flatnonzero(frame > 0.25 * frame.max()).max() + 1]


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
    # (three panels: with no penalty logged there is no penalty panel)
    for name, rows in (("c", [{"epoch": 1}, {"epoch": 2}]), ("d", [])):
        read_png(plots.plot_loss_curves(rows, tmp_path / f"{name}.png"))
        texts = [t.get_text() for ax in figures[-1].axes for t in ax.texts]
        assert texts.count("no data") == 3


def zero_penalty(rows):
    for row in rows:
        row["train/penalty"] = row["test/penalty"] = 0.0
    return rows


def test_loss_panels_drop_a_penalty_that_is_zero_or_absent():
    with_penalty = ("loss", "recon", "penalty", "l0")
    without = ("loss", "recon", "l0")
    assert plots.loss_panels(history()) == with_penalty
    assert plots.loss_panels(zero_penalty(history())) == without
    assert plots.loss_panels(history(keys=("train/loss", "train/l0"))) == without
    assert plots.loss_panels([]) == without
    rows = zero_penalty(history())
    rows[4]["val/penalty"] = 1e-9  # one non-zero value in any split keeps the panel
    assert plots.loss_panels(rows) == with_penalty
    rows = zero_penalty(history())
    rows[2]["test/penalty"] = float("nan")  # a broken penalty must show
    assert plots.loss_panels(rows) == with_penalty


def test_loss_curves_without_penalty_draw_three_panels_in_a_row(tmp_path, figures):
    plots.plot_loss_curves(zero_penalty(history()), tmp_path / "loss.png")
    (fig,) = figures
    titled = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in titled] == [
        "total loss",
        "reconstruction loss",
        "L0 and dead units",
    ]
    boxes = [ax.get_position() for ax in titled]
    assert boxes[0].x1 < boxes[1].x0 and boxes[1].x1 < boxes[2].x0  # one row
    assert min(b.y1 for b in boxes) > max(b.y0 for b in boxes)

    plots.plot_loss_curves(history(), tmp_path / "with.png")
    assert sum(bool(ax.get_title()) for ax in figures[1].axes) == 4


def display_points(ax):
    """Every plotted vertex of ``ax``'s lines, in display (pixel) coordinates."""
    return np.concatenate([ax.transData.transform(ln.get_xydata()) for ln in ax.lines])


def inside(box, points):
    """[n] mask of the display ``points`` [n, 2] inside the Bbox ``box``."""
    x, y = points[:, 0], points[:, 1]
    return (box.x0 <= x) & (x <= box.x1) & (box.y0 <= y) & (y <= box.y1)


@pytest.mark.parametrize("extra_splits", [False, True])
def test_loss_curves_l0_legend_covers_no_line(tmp_path, figures, extra_splits):
    # loc="best" only avoids the lines of the axes that owns the legend, not the dead
    # fraction on the twin axis: the legend sits above the axes, under the title
    rows = history(12)
    if extra_splits:  # six entries: two legend rows
        for row in rows:
            row["val/l0"], row["val/dead_fraction"] = 20.0, 0.99
            row["train/dead_fraction"] = 0.5
    path = plots.plot_loss_curves(
        rows if extra_splits else zero_penalty(rows), tmp_path / "l.png"
    )
    (fig,) = figures
    FigureCanvasAgg(fig).draw()  # the layout as saved (same dpi)
    l0 = next(ax for ax in fig.axes if ax.get_title() == "L0 and dead units")
    twin = next(ax for ax in fig.axes if ax.get_ylabel().startswith("dead fraction"))
    legend = l0.get_legend()
    assert len(legend.get_texts()) == (6 if extra_splits else 3)
    box, axes_box = legend.get_window_extent(), l0.get_window_extent()
    title_box = l0.title.get_window_extent()
    assert box.y0 >= axes_box.y1 - 1  # above the plotting area ...
    assert box.y1 <= title_box.y0 + 1  # ... and under the title
    assert box.x0 >= 0 and box.x1 <= fig.bbox.x1  # on the page
    points = np.concatenate([display_points(l0), display_points(twin)])
    assert not inside(box, points).any()
    # and the lines are drawn: both axes' vertices lie inside the plotting area
    assert inside(axes_box, points).all()
    read_png(path)


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


def firing_codes():
    """[200, 6] codes whose units fire on 60, 0, 140, 1, 140 and 2 samples."""
    codes = np.zeros((200, 6))
    for unit, n in enumerate((60, 0, 140, 1, 140, 2)):
        codes[:n, unit] = 0.5
    codes[0, 0] = -1.0  # negative counts as firing: non-zero
    return codes


def test_firing_frequency_counts_non_zero_samples():
    np.testing.assert_array_equal(
        plots.firing_frequency(firing_codes()),
        np.array([60, 0, 140, 1, 140, 2]) / 200,
    )


def test_dictionary_tiles_most_frequent_first_with_status_and_label():
    tiles = plots.dictionary_tiles(6, plots.firing_frequency(firing_codes()))
    # 140/200 twice (ties by unit index), then 60, 2 (1% exactly: not rare), 1, 0
    assert [t.unit for t in tiles] == [2, 4, 0, 5, 3, 1]
    assert [t.frequency for t in tiles] == [0.7, 0.7, 0.3, 0.01, 0.005, 0.0]
    assert [t.status for t in tiles] == [
        "active",
        "active",
        "active",
        "active",
        "rare",
        "dead",
    ]
    assert [t.label for t in tiles] == [
        "u2 70%",
        "u4 70%",
        "u0 30%",
        "u5 1%",
        "u3 0.5%",
        "u1 dead",
    ]
    f = plots.firing_frequency(firing_codes())
    assert [t.unit for t in plots.dictionary_tiles(6, f, max_tiles=3)] == [2, 4, 0]
    rarer = plots.dictionary_tiles(6, f, rare=0.02)  # 2/200 is rare below 2%
    assert [t.status for t in rarer][3:] == ["rare", "rare", "dead"]


def test_dictionary_tiles_without_frequency_keep_unit_order():
    tiles = plots.dictionary_tiles(300, None, max_tiles=4)
    assert [(t.unit, t.frequency, t.status, t.label) for t in tiles] == [
        (0, None, "", "u0"),
        (1, None, "", "u1"),
        (2, None, "", "u2"),
        (3, None, "", "u3"),
    ]


@pytest.mark.parametrize(
    "frequency, text",
    [
        (1.0, "100%"),
        (0.996, ">99%"),  # never rounded up to "always"
        (0.123, "12%"),
        (0.0999, "10%"),
        (0.053, "5.3%"),
        (1 / 256, "0.39%"),
        (1e-5, "0.001%"),  # never rounded down to "0%"
        (0.0, "dead"),
    ],
)
def test_format_frequency(frequency, text):
    assert plots.format_frequency(frequency) == text


@pytest.mark.parametrize(
    "frequency, message",
    [
        (np.zeros(5), r"frequency must be \[units\] = \[6\], .*got shape \(5,\)"),
        (np.full(6, 1.5), r"frequency must hold shares in \[0, 1\]"),
    ],
)
def test_dictionary_tiles_reject_bad_frequency(frequency, message):
    with pytest.raises(ValueError, match=message):
        plots.dictionary_tiles(6, frequency)


def test_dictionary_with_codes_orders_labels_and_marks_rare_and_dead(tmp_path, figures):
    w = np.ones((6, 64))  # every tile solid dark red at full strength
    rgb = read_png(
        plots.plot_dictionary(
            w, tmp_path / "d.png", image_shape=(8, 8), codes=firing_codes()
        )
    )
    (fig,) = figures
    ax = fig.axes[0]
    labels = [(t.get_text(), to_rgb(t.get_color())) for t in ax.texts]
    black, orange, red = to_rgb("black"), to_rgb("tab:orange"), to_rgb("tab:red")
    assert labels == [
        ("u2 70%", black),
        ("u4 70%", black),
        ("u0 30%", black),
        ("u5 1%", black),
        ("u3 0.5%", orange),
        ("u1 dead", red),
    ]
    # labels run row-major over the 2 x 3 grid: left to right, then down
    xy = np.array([t.get_position() for t in ax.texts])
    assert xy[0, 0] < xy[1, 0] < xy[2, 0] and xy[2, 1] < xy[3, 1]
    hatched = [p for p in ax.patches if p.get_hatch()]
    assert len(hatched) == 1  # the one dead unit
    x0, y0 = hatched[0].get_xy()
    assert x0 > xy[4, 0] and abs(x0 + hatched[0].get_width() / 2 - xy[5, 0]) < 1e-9
    title = " ".join(" ".join(t.get_text().split()) for t in fig.texts)  # unwrapped
    assert "6 units most frequent first" in title
    assert "200 samples" in title and "1 rare (< 1%)" in title and "1 dead" in title

    # 4 full-strength tiles, 2 dimmed to 35% of the colour on light grey
    dark_red = np.asarray(colormaps["RdBu_r"](1.0)[:3])
    full = near(rgb, dark_red, 0.03)
    dimmed = near(rgb, 0.35 * dark_red + 0.65 * 0.85, 0.03)
    assert most_runs(full, 20, axis=1) == 3 and most_runs(full, 20, axis=0) == 2
    # the rare tile (whole) and the dead one (between its hatch lines), bottom right
    assert most_runs(dimmed, 20, axis=1) == 1 and dimmed.sum() > 0.3 * full.sum()
    assert np.median(np.argwhere(dimmed)[:, 0]) > np.median(np.argwhere(full)[:, 0])
    assert np.median(np.argwhere(dimmed)[:, 1]) > np.median(np.argwhere(full)[:, 1])
    assert near(rgb, "tab:orange", 0.03).sum() > 100  # the rare tile's frame
    assert near(rgb, "tab:red", 0.03).sum() > 100  # the dead tile's frame


def test_dictionary_shows_the_most_frequent_and_says_so(tmp_path, figures):
    codes = np.zeros((10, 20))
    codes[:, 7] = 1.0  # unit 7 fires most, then 12
    codes[:5, 12] = 1.0
    plots.plot_dictionary(
        np.ones((20, 16)), tmp_path / "d.png", (4, 4), codes=codes, max_tiles=4
    )
    (fig,) = figures
    assert [t.get_text() for t in fig.axes[0].texts] == [
        "u7 100%",
        "u12 50%",
        "u0 dead",
        "u1 dead",
    ]
    title = " ".join(" ".join(t.get_text().split()) for t in fig.texts)  # unwrapped
    assert "the 4 most frequent of 20 units" in title and "18 dead" in title

    plots.plot_dictionary(np.ones((20, 16)), tmp_path / "e.png", (4, 4), max_tiles=4)
    assert "the 4 first of 20 units" in " ".join(figures[1].texts[0].get_text().split())
    assert [t.get_text() for t in figures[1].axes[0].texts] == ["u0", "u1", "u2", "u3"]


def test_dictionary_rejects_codes_of_another_width(tmp_path):
    with pytest.raises(
        ValueError, match=r"codes must be \[batch, code\] = \[batch, 6\], got shape"
    ):
        plots.plot_dictionary(
            np.ones((6, 16)), tmp_path / "d.png", (4, 4), codes=np.ones((3, 5))
        )


@pytest.mark.parametrize(
    "kwargs, is_code",
    [
        ({}, True),  # one hidden layer (64,)
        ({"hidden_dims": (128, 32)}, False),  # rows: the 128 first-layer units
        ({"tied": True}, True),
        ({"tied": True, "hidden_dims": (128, 32)}, False),
        ({"architecture": "conv"}, True),  # Linear 128 -> 784 from the code
        ({"architecture": "fullconv"}, False),  # 8 channels of the last ConvT
    ],
)
def test_dictionary_is_code(kwargs, is_code):
    from saecommon.config import SAEConfig

    config = SAEConfig(**kwargs)
    assert plots.dictionary_is_code(config) is is_code
    if is_code:  # then the dictionary has one row per code unit
        weights = {
            layer.name + ".weight": np.zeros(layer.weight_shape)
            for layer in layers(config)
        }
        rows, _ = plots.dictionary_weights(weights, config)
        assert rows.shape[0] == config.code_dim


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


@pytest.mark.parametrize(
    "is_code, labels",
    [
        (None, ["u1 100%", "u0 dead"]),  # counts match: the codes are the tiles' units
        (True, ["u1 100%", "u0 dead"]),
        (False, ["u0", "u1"]),  # e.g. a deeper MLP: no firing rates to show
    ],
)
def test_write_run_plots_labels_the_dictionary_from_the_codes(
    tmp_path, figures, is_code, labels
):
    x = np.zeros((4, 16))
    codes = np.zeros((4, 2))
    codes[:, 1] = 1.0
    plots.write_run_plots(
        tmp_path,
        history(2),
        x,
        x,
        np.ones((2, 16)),
        codes,
        image_shape=(4, 4),
        dictionary_is_code=is_code,
    )
    assert [t.get_text() for t in figures[2].axes[0].texts] == labels
