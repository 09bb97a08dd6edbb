"""The pictures of a run and of its evaluation: loss curves, reconstructions, the
decoder dictionary, the codes, the code scatter and the activation frequency (numpy +
matplotlib only), and what to draw them from (:func:`picture_shape`,
:func:`dictionary_weights`).

Figures are built with ``matplotlib.figure.Figure`` and saved with ``Figure.savefig``,
never through ``pyplot``: importing this module leaves the global backend alone, needs
no display, and the figures are freed with their last reference (nothing registers
them in pyplot's figure manager).

Every ``plot_*`` function writes one PNG to ``path`` (creating its parent directories)
and returns the path as a ``pathlib.Path``; array arguments are checked and a wrong
shape raises ``ValueError`` naming the argument and the shape it got.
"""

from __future__ import annotations

import math
import os
import pathlib
import textwrap
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize, to_rgba
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

from saecommon.architectures import layers

DPI = 100
SPLITS = ("train", "val", "test")
"""Metric prefixes drawn in the loss curves, in this order (any may be absent)."""
SPLIT_STYLE = {
    "train": {"color": "tab:blue", "linestyle": "-"},
    "val": {"color": "tab:green", "linestyle": "-."},
    "test": {"color": "tab:orange", "linestyle": "--"},
}
RECON_PER_ROW = 8
"""Samples per row pair once ``plot_reconstructions`` shows more than 16."""
MAX_TILES_IN_ONE_ROW = 16
TILE_INCHES = 0.8
"""Displayed size of one image tile (the longer side) before the figure is capped."""
MAX_FIGURE_INCHES = 16.0
MAX_LEGEND_LABELS = 20
"""The code scatter drops its legend beyond this many distinct labels."""
MAX_DICTIONARY_TILES = 256
"""dictionary.png shows at most this many units (a 16 x 16 grid), the most frequently
firing ones when the codes are known: labels need tiles of a readable size."""
RARE_FREQUENCY = 0.01
"""dictionary.png marks a unit that fires on fewer than this share of the samples
(but on some) as rare; one that never fires as dead."""
LABEL_BAND = 0.3
"""Height of the label band above each dictionary row, in column pitches (tile + gap)."""

LOSS_CURVES = "loss_curves.png"
RECONSTRUCTIONS = "reconstructions.png"
DICTIONARY = "dictionary.png"
CODES = "codes.png"
CODE_SCATTER = "code_scatter.png"
RUN_PICTURES = (LOSS_CURVES, RECONSTRUCTIONS, DICTIONARY, CODES, CODE_SCATTER)
"""The pictures a training run writes at its end (``write_run_plots``)."""


# --------------------------------------------------------------------------- checks


def _check_image_shape(image_shape) -> tuple[int, int]:
    try:
        h, w = (int(s) for s in image_shape)
    except (TypeError, ValueError):
        raise ValueError(
            f"image_shape must be (height, width), got {image_shape!r}"
        ) from None
    if h < 1 or w < 1 or (h, w) != tuple(image_shape):
        raise ValueError(
            f"image_shape must be two positive ints (height, width), got {image_shape!r}"
        )
    return h, w


def _as_2d(name: str, x, spec: str, width: int | None = None) -> np.ndarray:
    """``x`` as a float64 array [rows, width] with at least one row; ``spec`` names the
    expected shape in the error message (e.g. "[batch, h*w] = [batch, 784]")."""
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be a numeric array {spec}: {e}") from None
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"{name} must be {spec}, got shape {arr.shape}")
    if width is not None and arr.shape[1] != width:
        raise ValueError(f"{name} must be {spec}, got shape {arr.shape}")
    return arr


def _check_n(n) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    return int(n)


# --------------------------------------------------------------------------- helpers


def _save(fig: Figure, path) -> pathlib.Path:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png")
    return path


def _tile_view(h: int, w: int) -> tuple[int, int, float]:
    """How an h x w tile is displayed: (repeat_y, repeat_x, imshow aspect).

    Elongated tiles (non-image inputs shown as (features, 1) columns) are shown at most
    4:1 either way, their short side repeated so that a one-pixel gap stays thin."""
    short, long = min(h, w), max(h, w)
    k = 1
    if long > 4 * short and short < 14:
        k = max(1, min(math.ceil(14 / short), long // (4 * short)))
    ry, rx = (k, 1) if h < w else (1, k)
    ratio = h * ry / (w * rx)
    return ry, rx, float(np.clip(ratio, 0.25, 4.0) / ratio)


class Mosaic(NamedTuple):
    image: np.ndarray  # uint8 RGBA [height, width, 4]
    aspect: float  # for imshow
    centers: list[float]  # the y centre of every grid row
    boxes: list[tuple[float, float, float, float]]
    """Each tile's (left, top, right, bottom) edges in imshow data coordinates."""
    label_y: list[float]  # each tile's label band centre (data y), if there is one
    pitch: int  # pixels from one tile's left edge to the next one's


def _mosaic(
    rows: Sequence[np.ndarray],
    ncols: int,
    shape: tuple[int, int],
    colorize,
    frame,
    pair_gap: bool = False,
    label_band: float = 0.0,
) -> Mosaic:
    """Tiles on a grid, each framed in ``frame``, on a transparent background.

    ``rows[r]`` is [k_r, h*w] with k_r <= ncols tiles; ``colorize(image, i)`` maps
    tile i's (counted row-major over all rows) [h, w] array to uint8 RGBA [h, w, 4];
    ``frame`` is one colour or one per tile. With ``pair_gap``, grid rows come in pairs
    with a wider blank band between pairs; ``label_band`` leaves a blank band that
    many displayed column pitches (tile + gap) high above every grid row, for labels.
    """
    ry, rx, aspect = _tile_view(*shape)
    h, w = shape[0] * ry, shape[1] * rx
    shown = max(w, h * aspect)  # displayed tile size, in x pixels
    gy, gx = max(1, round(shown / 20 / aspect)), max(1, round(shown / 20))
    band = math.ceil(label_band * (w + gx) / aspect) if label_band else 0
    above = [band] + [
        (4 * gy if pair_gap and r % 2 == 0 else gy) + band for r in range(1, len(rows))
    ]
    # uint8 RGBA keeps a 4096-unit dictionary of 28x28 tiles to ~15 MB
    out = np.zeros(
        (2 * gy + sum(above) + len(rows) * h, gx + ncols * (w + gx), 4), np.uint8
    )
    count = sum(len(tiles) for tiles in rows)
    frames = [frame] * count if isinstance(frame, str) else list(frame)
    frame_rgba = [
        np.round(np.asarray(to_rgba(f)) * 255).astype(np.uint8) for f in frames
    ]
    centers, boxes, label_y = [], [], []
    top = gy
    for r, tiles in enumerate(rows):
        top += above[r]
        for c, tile in enumerate(tiles):
            i = len(boxes)
            left = gx + c * (w + gx)
            image = tile.reshape(shape).repeat(ry, axis=0).repeat(rx, axis=1)
            out[top - gy : top + h + gy, left - gx : left + w + gx] = frame_rgba[i]
            out[top : top + h, left : left + w] = colorize(image, i)
            boxes.append((left - 0.5, top - 0.5, left + w - 0.5, top + h - 0.5))
            label_y.append(top - gy - band / 2 - 0.5)
        centers.append(top + (h - 1) / 2)
        top += h
    return Mosaic(out, aspect, centers, boxes, label_y, w + gx)


def _wrap_title(title: str, width_in: float) -> str:
    """Break ``title`` at its last ", " or " (" when it would not fit ``width_in``."""
    if len(title) * 0.1 <= width_in:  # ~0.1 inch per character at 12 pt
        return title
    for sep in (" (", ", "):
        i = title.rfind(sep)
        if i > 0:
            return title[:i] + "\n" + title[i + len(sep) - (sep == " (") :]
    return title


def _mosaic_axes(
    mosaic: np.ndarray,
    aspect: float,
    ncols: int,
    title: str,
    left: float,
    right: float,
    subtitle: str = "",
):
    """A figure and axes holding ``mosaic`` exactly, one tile about ``TILE_INCHES``
    wide (the image capped at ``MAX_FIGURE_INCHES``), with ``left``/``right`` inches
    beside it for labels and colorbars and ``title`` above (on two lines if long),
    then ``subtitle`` in small print (its lines wrapped to the figure's width).

    Laid out by hand: constrained layout misjudges the margins of a fixed-aspect image
    and clipped the row labels."""
    shown_ratio = mosaic.shape[0] * aspect / mosaic.shape[1]  # height / width
    width = float(np.clip(ncols * TILE_INCHES, 2.2, MAX_FIGURE_INCHES))
    if width * shown_ratio > MAX_FIGURE_INCHES:
        width = max(MAX_FIGURE_INCHES / shown_ratio, 1.0)
    height = width * shown_ratio
    title = _wrap_title(title, left + width + right)
    chars = max(20, int((left + width + right) / 0.075))  # ~0.075 inch each at 9 pt
    sub = [
        part for line in subtitle.splitlines() for part in textwrap.wrap(line, chars)
    ]
    title_in = 0.2 * (title.count("\n") + 1)
    top, bottom = 0.25 + title_in + 0.15 * len(sub), 0.1
    fig_w, fig_h = left + width + right, bottom + height + top
    fig = Figure(figsize=(fig_w, fig_h))
    ax = fig.add_axes((left / fig_w, bottom / fig_h, width / fig_w, height / fig_h))
    ax.imshow(mosaic, aspect=aspect, interpolation="nearest")
    for spine in ax.spines.values():
        spine.set_visible(False)
    # centred on the figure, not the axes, so a wide label column cannot push it off
    fig.text(0.5, 1 - 0.08 / fig_h, title, ha="center", va="top", fontsize="large")
    if sub:
        y = 1 - (0.13 + title_in) / fig_h
        fig.text(0.5, y, "\n".join(sub), ha="center", va="top", fontsize=9)
    return fig, ax


def _no_ticks(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


# --------------------------------------------------------------------------- loss curves


def _series(history: Sequence[Mapping], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(epochs, values) of the epochs whose row holds ``key`` (None counts as absent)."""
    xs, ys = [], []
    for i, row in enumerate(history):
        value = row.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
            raise ValueError(
                f"history[{i}][{key!r}] must be a number, got {type(value).__name__} "
                f"{value!r}"
            )
        xs.append(row["epoch"])
        ys.append(float(value))
    return np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)


def _check_history(history) -> list[Mapping]:
    if isinstance(history, (str, bytes, Mapping)) or not isinstance(history, Sequence):
        raise ValueError(
            "history must be a list of per-epoch metric dicts, got "
            f"{type(history).__name__}"
        )
    for i, row in enumerate(history):
        if not isinstance(row, Mapping):
            raise ValueError(
                f"history[{i}] must be a dict of metrics, got {type(row).__name__}"
            )
        epoch = row.get("epoch")
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)):
            raise ValueError(f"history[{i}] must have an int 'epoch', got {epoch!r}")
    return list(history)


def _loss_panel(ax, history, metric: str, title: str, ylabel: str) -> None:
    drawn = []
    for split in SPLITS:
        x, y = _series(history, f"{split}/{metric}")
        if x.size:
            ax.plot(x, y, marker="o", markersize=3, label=split, **SPLIT_STYLE[split])
            drawn.append(y[np.isfinite(y)])
    values = np.concatenate(drawn) if drawn else np.empty(0)
    if values.size and np.all(values > 0):
        ax.set_yscale("log")
    _finish_panel(ax, title, ylabel, bool(drawn))


def _finish_panel(ax, title: str, ylabel: str, drawn: bool, handles=None) -> None:
    """Title, labels, grid and legend of a loss panel. With ``handles`` (lines on
    more than one y axis, which ``loc="best"`` cannot see all of), the legend goes
    above the axes, under the title, in rows of up to three, where it covers no line."""
    ax.set_title(title)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)
    if not drawn:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        return
    if handles is None:
        ax.legend(fontsize="small")
        return
    ncol = min(3, len(handles))
    rows = math.ceil(len(handles) / ncol)
    ax.legend(
        handles=handles,
        fontsize="small",
        loc="lower center",
        bbox_to_anchor=(0.5, 1.0),
        ncol=ncol,
        frameon=False,
        borderaxespad=0.2,
    )
    ax.set_title(title, pad=8 + 14 * rows)  # points; a "small" legend row is ~12.5


def loss_panels(history: Sequence[Mapping]) -> tuple[str, ...]:
    """The metrics ``plot_loss_curves`` gives a panel, in order: "loss", "recon",
    "penalty" (only when some split's penalty is non-zero in some epoch: a run
    without a sparsity penalty logs zeros or nothing) and "l0"."""
    penalty = any(
        _series(history, f"{split}/penalty")[1].any() for split in SPLITS
    )  # NaN counts as non-zero: a broken penalty must show
    return ("loss", "recon", *(("penalty",) if penalty else ()), "l0")


PANEL_TITLES = {
    "loss": ("total loss", "loss"),
    "recon": ("reconstruction loss", "reconstruction"),
    "penalty": ("sparsity penalty", "penalty"),
}


def plot_loss_curves(history: list[dict], path) -> pathlib.Path:
    """Training curves from a metrics history (the rows of metrics.jsonl).

    ``history[i]`` holds ``"epoch"`` (int) and any of ``"{split}/loss"``,
    ``"{split}/recon"``, ``"{split}/penalty"``, ``"{split}/l0"``,
    ``"{split}/dead_fraction"`` for split in train, val, test; a missing key (or None)
    leaves that point or line out. Panels (:func:`loss_panels`): total loss,
    reconstruction loss, penalty (log y when every value is > 0; left out when every
    penalty is zero or absent), and L0 with the dead fraction on a twin axis, on a
    2 x 2 grid, or in one row of three without the penalty. Returns ``path``."""
    history = _check_history(history)
    panels = loss_panels(history)
    if len(panels) == 4:
        fig = Figure(figsize=(11, 8), layout="constrained")
        axes = list(fig.subplots(2, 2).ravel())
    else:
        fig = Figure(figsize=(15, 4.8), layout="constrained")
        axes = list(fig.subplots(1, 3))
    ax_l0 = axes[-1]
    for ax, metric in zip(axes[:-1], panels[:-1]):
        _loss_panel(ax, history, metric, *PANEL_TITLES[metric])

    handles = []
    for split in SPLITS:
        x, y = _series(history, f"{split}/l0")
        if x.size:
            style = {"marker": "o", "markersize": 3, **SPLIT_STYLE[split]}
            handles += ax_l0.plot(x, y, label=f"{split} L0", **style)
    dead = [(s, *_series(history, f"{s}/dead_fraction")) for s in SPLITS]
    if any(x.size for _, x, _ in dead):
        ax_dead = ax_l0.twinx()
        for split, x, y in dead:
            if x.size:
                style = {"marker": "s", "markersize": 3, "color": "tab:red"}
                style["linestyle"] = SPLIT_STYLE[split]["linestyle"]
                handles += ax_dead.plot(x, y, label=f"{split} dead fraction", **style)
        ax_dead.set_ylim(-0.03, 1.03)  # a share of units: keep the whole range honest
        ax_dead.set_ylabel("dead fraction (never active)", color="tab:red")
        ax_dead.tick_params(axis="y", colors="tab:red")
    ylabel = "L0 (active units per sample)"
    _finish_panel(ax_l0, "L0 and dead units", ylabel, bool(handles), handles=handles)

    if history:  # one x range for all panels; a lone epoch gets room on both sides
        first = min(row["epoch"] for row in history)
        last = max(row["epoch"] for row in history)
        pad = max(0.03 * (last - first), 0.5 if last > first else 1.0)
        for ax in axes:
            ax.set_xlim(first - pad, last + pad)
    fig.suptitle("training curves")
    return _save(fig, path)


# --------------------------------------------------------------------------- images


def plot_reconstructions(
    inputs, reconstructions, path, image_shape=(28, 28), n: int = 16
) -> pathlib.Path:
    """The first ``n`` inputs [batch, h*w] with their reconstructions [batch, h*w]
    underneath, in grey on one shared value range (fewer if the batch is smaller).

    Up to 16 samples make one row pair; more wrap into pairs of ``RECON_PER_ROW``.
    Returns ``path``."""
    h, w = _check_image_shape(image_shape)
    n = _check_n(n)
    spec = f"[batch, h*w] = [batch, {h * w}] for image_shape {(h, w)}"
    x = _as_2d("inputs", inputs, spec, h * w)
    r = _as_2d("reconstructions", reconstructions, spec, h * w)
    if r.shape != x.shape:
        raise ValueError(
            f"reconstructions must have the shape of inputs {x.shape}, got {r.shape}"
        )
    k = min(n, x.shape[0])
    x, r = x[:k], r[:k]
    ncols = k if k <= MAX_TILES_IN_ONE_ROW else RECON_PER_ROW
    rows = []
    for start in range(0, k, ncols):
        rows += [x[start : start + ncols], r[start : start + ncols]]

    shown = np.concatenate([x.ravel(), r.ravel()])
    shown = shown[np.isfinite(shown)]
    lo, hi = (float(shown.min()), float(shown.max())) if shown.size else (0.0, 1.0)
    norm = Normalize(lo, hi if hi > lo else lo + 1.0)  # a constant batch shows black
    cmap = colormaps["gray"].with_extremes(bad="tab:red")  # NaN pixels stand out
    mosaic, aspect, centers, *_ = _mosaic(
        rows,
        ncols,
        (h, w),
        lambda a, _: cmap(norm(a), bytes=True),
        "#b4c3d9",
        pair_gap=True,
    )
    s = "s" if k > 1 else ""
    title = f"first {k} input{s} and reconstruction{s} (grey {lo:.3g}..{hi:.3g})"
    fig, ax = _mosaic_axes(mosaic, aspect, ncols, title, left=1.2, right=0.1)
    ax.set_xticks([])
    ax.set_yticks(centers, ["input", "reconstruction"] * (len(rows) // 2))
    ax.tick_params(axis="y", length=0)
    return _save(fig, path)


def _grid_shape(count: int) -> tuple[int, int]:
    """(rows, cols) of a near-square grid holding ``count`` tiles."""
    cols = math.ceil(math.sqrt(count))
    return math.ceil(count / cols), cols


class Tile(NamedTuple):
    """One tile of dictionary.png."""

    unit: int  # the row of the dictionary it shows
    frequency: float | None  # share of samples on which the unit fires; None: unknown
    status: str  # "active", "rare", "dead", or "" when the frequency is unknown
    label: str  # "u17 12%", "u3 0.39%", "u5 dead", or "u17"


def firing_frequency(codes) -> np.ndarray:
    """[code] float64: the share of samples on which each unit of ``codes``
    [batch, code] is non-zero (as ``CodeStats.activation_frequency``)."""
    z = _as_2d("codes", codes, "[batch, code]")
    return np.mean(z != 0, axis=0)


def format_frequency(frequency: float) -> str:
    """A firing rate in percent as a tile label shows it: "12%", "5.3%", "0.39%",
    "dead" for 0, and never "0%" or "100%" unless it is exactly that."""
    pct = 100 * float(frequency)
    if pct == 0:
        return "dead"
    if 99.5 <= pct < 100:
        return ">99%"
    return f"{pct:.0f}%" if pct >= 10 else f"{pct:.2g}%"


def dictionary_tiles(
    units: int,
    frequency=None,
    max_tiles: int = MAX_DICTIONARY_TILES,
    rare: float = RARE_FREQUENCY,
) -> list[Tile]:
    """The tiles dictionary.png shows for a dictionary of ``units`` rows, in order.

    With ``frequency`` [units] (each unit's firing rate, in [0, 1]): the
    ``max_tiles`` most frequently firing units, most frequent first (ties by unit
    index), each "dead" when it never fires, "rare" when it fires on fewer than
    ``rare`` of the samples, else "active". Without: units 0.. in order."""
    max_tiles = _check_n(max_tiles)
    if frequency is None:
        return [Tile(u, None, "", f"u{u}") for u in range(min(units, max_tiles))]
    f = np.asarray(frequency, dtype=np.float64)
    if f.shape != (units,):
        raise ValueError(
            f"frequency must be [units] = [{units}], one per dictionary row, got "
            f"shape {f.shape}"
        )
    if not np.all((f >= 0) & (f <= 1)):
        raise ValueError("frequency must hold shares in [0, 1], one per unit")
    order = np.argsort(-f, kind="stable")[:max_tiles]
    return [
        Tile(
            int(u),
            float(f[u]),
            "dead" if f[u] == 0 else "rare" if f[u] < rare else "active",
            f"u{u} {format_frequency(f[u])}",
        )
        for u in order
    ]


DIM = {"rare": 0.35, "dead": 0.35}
"""How much of a rare or dead unit's colour is kept; the rest is light grey."""
STATUS_COLOR = {"active": "0.45", "": "0.45", "rare": "tab:orange", "dead": "tab:red"}
"""Tile frame and label colour by status (the frame of a plain tile is dark grey)."""


def plot_dictionary(
    decoder_weights,
    path,
    image_shape=(28, 28),
    codes=None,
    max_tiles: int = MAX_DICTIONARY_TILES,
) -> pathlib.Path:
    """Each code unit's decoder weights [code, h*w] (what unit j writes to the image)
    as one tile on a near-square grid, row-major from the top left, each tile scaled
    to its own max |w| and drawn with the diverging RdBu_r map (red > 0, white 0,
    blue < 0), and labelled with its unit index.

    With ``codes`` [batch, code] (the same units' codes on some samples), tiles are
    ordered by firing rate, most frequent first, and the label gives the rate; units
    firing on fewer than ``RARE_FREQUENCY`` of the samples are dimmed in an orange
    frame, those that never fire dimmed, hatched and framed in red ("dead"). At most
    ``max_tiles`` tiles are shown (the title says when that is not all). Returns
    ``path``."""
    h, w = _check_image_shape(image_shape)
    spec = f"[code, h*w] = [code, {h * w}] for image_shape {(h, w)}"
    weights = _as_2d("decoder_weights", decoder_weights, spec, h * w)
    count = weights.shape[0]
    frequency = samples = None
    if codes is not None:
        z = _as_2d("codes", codes, f"[batch, code] = [batch, {count}]", count)
        frequency, samples = firing_frequency(z), z.shape[0]
    tiles = dictionary_tiles(count, frequency, max_tiles)
    weights = weights[[t.unit for t in tiles]]
    scale = np.max(np.where(np.isnan(weights), 0, np.abs(weights)), axis=1)  # [tiles]
    scale[~(scale > 0) | ~np.isfinite(scale)] = 1.0  # an all-zero unit stays white
    weights = weights / scale[:, None]  # [tiles, h*w] in [-1, 1]

    nrows, ncols = _grid_shape(len(tiles))
    rows = [weights[r * ncols : (r + 1) * ncols] for r in range(nrows)]
    norm = Normalize(-1.0, 1.0)
    cmap = colormaps["RdBu_r"].with_extremes(bad="black")  # NaN weights stand out

    def colorize(a, i):
        rgba = cmap(norm(a))
        keep = DIM.get(tiles[i].status, 1.0)  # a rare unit must not look as strong
        rgba[..., :3] = keep * rgba[..., :3] + (1 - keep) * 0.85
        return np.round(rgba * 255).astype(np.uint8)

    frames = [STATUS_COLOR[t.status] for t in tiles]
    grid = _mosaic(rows, ncols, (h, w), colorize, frames, label_band=LABEL_BAND)
    s = "s" if count > 1 else ""
    shown = f"{count} unit{s}"
    if len(tiles) < count:
        which = "most frequent" if frequency is not None else "first"
        shown = f"the {len(tiles)} {which} of {count} units"
    if frequency is None:
        title = f"decoder dictionary, {shown} (each scaled to its own max |w|)"
        subtitle = ""
    else:
        dead = int(np.sum(frequency == 0))
        rare = int(np.sum((frequency > 0) & (frequency < RARE_FREQUENCY)))
        title = f"decoder dictionary, {shown}, most frequent first"
        subtitle = (
            f"label: unit and share of {samples} samples it fires on; each tile "
            f"scaled to its own max |w|\n{rare} rare (< {RARE_FREQUENCY:.0%}): "
            f"dimmed, orange; {dead} dead (never fire): dimmed, hatched, red"
        )
    fig, ax = _mosaic_axes(
        grid.image, grid.aspect, ncols, title, 0.1, 1.1, subtitle=subtitle
    )
    _no_ticks(ax)
    # label size from the column pitch in points: up to 11 characters of ~0.6 em
    pitch_pt = ax.get_position().width * fig.get_figwidth() * 72 * grid.pitch
    fontsize = float(np.clip(pitch_pt / grid.image.shape[1] / 7, 3, 8))
    for tile, (x0, y0, x1, y1), y in zip(tiles, grid.boxes, grid.label_y):
        color = "black" if tile.status in ("active", "") else STATUS_COLOR[tile.status]
        ax.text(
            (x0 + x1) / 2,
            y,
            tile.label,
            ha="center",
            va="center",
            fontsize=fontsize,
            color=color,
        )
        if tile.status == "dead":
            hatch = Rectangle(
                (x0, y0), x1 - x0, y1 - y0, fill=False, hatch="///", linewidth=0
            )
            hatch.set_edgecolor(to_rgba(STATUS_COLOR["dead"], 0.6))
            ax.add_patch(hatch)
    pos, inch = ax.get_position(), 1 / fig.get_figwidth()
    cax = fig.add_axes(
        (pos.x1 + 0.2 * inch, pos.y0 + 0.1 * pos.height, 0.15 * inch, 0.8 * pos.height)
    )
    bar = fig.colorbar(ScalarMappable(norm, cmap), cax=cax, ticks=[-1, 0, 1])
    bar.ax.set_yticklabels(["-max|w|", "0", "+max|w|"])  # no axis label: it would
    # outgrow the bar of a one-unit dictionary, and the title says what max |w| is
    return _save(fig, path)


# --------------------------------------------------------------------------- codes


def plot_codes(codes, path) -> pathlib.Path:
    """Codes [batch, code] as a heat map (samples down, code units across) with a
    colorbar: viridis when every value is >= 0, RdBu_r centred on 0 otherwise.
    Returns ``path``."""
    z = _as_2d("codes", codes, "[batch, code]")
    finite = z[np.isfinite(z)]
    fig = Figure(figsize=(8, 6), layout="constrained")
    ax = fig.subplots()
    if finite.size and finite.min() < 0:
        bound = float(np.abs(finite).max())
        style = {"cmap": "RdBu_r", "vmin": -bound, "vmax": bound}
    else:
        style = {"cmap": "viridis"}
    # default interpolation: nearest when enlarging, smoothed (not dropped) rows and
    # units when thousands of them share a few hundred pixels
    image = ax.imshow(z, aspect="auto", **style)
    ax.set_xlabel("code unit")
    ax.set_ylabel("sample")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    active = float(np.mean(np.sum(z != 0, axis=1)))
    ax.set_title(
        f"codes of {z.shape[0]} samples x {z.shape[1]} units (mean L0 {active:.3g})"
    )
    fig.colorbar(image, ax=ax, label="activation")
    return _save(fig, path)


def _check_labels(labels, batch: int) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.shape != (batch,):
        raise ValueError(f"labels must be [batch] = [{batch}], got shape {arr.shape}")
    integral = arr.dtype.kind in "iu" or (
        arr.dtype.kind == "f" and np.all(np.isfinite(arr) & (arr == np.round(arr)))
    )
    if not integral:
        raise ValueError(f"labels must be integers, got dtype {arr.dtype}")
    return arr.astype(np.int64)


def plot_code_scatter(codes, labels, path) -> pathlib.Path:
    """Two-unit codes [batch, 2] as points coloured by their integer label [batch]
    (tab10, repeating after 10 classes), one legend entry per label (up to
    ``MAX_LEGEND_LABELS``). Returns ``path``."""
    z = _as_2d("codes", codes, "[batch, 2] (a 2-D code)")
    if z.shape[1] != 2:
        raise ValueError(f"codes must be [batch, 2] (a 2-D code), got shape {z.shape}")
    y = _check_labels(labels, z.shape[0])
    classes = np.unique(y)
    colors = colormaps["tab10"].colors
    size = float(np.clip(4000 / z.shape[0], 4, 30))  # smaller points for big batches
    fig = Figure(figsize=(7, 6), layout="constrained")
    ax = fig.subplots()
    for c in classes:
        pts = z[y == c]
        ax.scatter(pts[:, 0], pts[:, 1], s=size, color=colors[c % 10], alpha=0.7, lw=0)
    handles = [
        Line2D([], [], marker="o", linestyle="", color=colors[c % 10], label=str(c))
        for c in classes
    ]  # full-opacity markers, readable whatever the point size
    if len(classes) <= MAX_LEGEND_LABELS:
        ax.legend(
            handles=handles,
            title="label",
            loc="center left",
            bbox_to_anchor=(1.01, 0.5),
        )
    ax.set_xlabel("code unit 0")
    ax.set_ylabel("code unit 1")
    ax.grid(True, alpha=0.3)
    ax.set_title(f"2-D codes of {z.shape[0]} samples by label")
    return _save(fig, path)


# --------------------------------------------------------------------------- what to draw


def picture_shape(image_shape: tuple[int, ...], input_dim: int) -> tuple[int, int]:
    """(h, w) to draw one sample of ``input_dim`` features as: the dataset's image
    shape (its first two axes), or a column [input_dim, 1] when that does not fit."""
    shape = image_shape[:2] if len(image_shape) >= 2 else image_shape
    if int(np.prod(shape)) != input_dim:
        shape = (input_dim, 1)
    return tuple(int(s) for s in shape)


def dictionary_weights(
    state_dict: Mapping[str, np.ndarray], config
) -> tuple[np.ndarray, tuple[int, int] | None]:
    """([units, pixels], tile shape or None): what each input unit of the last decoder
    layer writes (for a one-layer model or the conv model, each code unit's decoder
    weights; for fullconv, the 8x8 stamp each input channel of the last transposed
    convolution paints). None: draw the tiles in the picture shape."""
    last = [layer for layer in layers(config) if layer.name.startswith("decoder.")][-1]
    if config.tied:
        return np.asarray(state_dict["encoder.0.weight"]), None  # [h1, input]
    weight = np.asarray(state_dict[f"{last.name}.weight"])
    if last.kind == "conv_transpose":  # [in, out=1, k, k]
        return weight.reshape(weight.shape[0], -1), (last.kernel, last.kernel)
    return weight.T, None  # [input, h1] -> [h1, input]


def dictionary_is_code(config) -> bool:
    """Whether the rows of :func:`dictionary_weights` are the code units (so the codes
    say how often each one fires): with one linear decoder layer (the one-layer MLP,
    the conv model), or tied to a one-layer encoder. Not for deeper MLPs (the rows are
    the first hidden layer's units) nor fullconv (the last layer's input channels)."""
    found = layers(config)
    if config.tied:
        return sum(layer.name.startswith("encoder.") for layer in found) == 1
    decoders = [layer for layer in found if layer.name.startswith("decoder.")]
    return len(decoders) == 1 and decoders[0].kind == "linear"


# --------------------------------------------------------------------------- run


def write_run_plots(
    out_dir,
    history: list[dict],
    inputs,
    reconstructions,
    decoder_weights,
    codes,
    labels=None,
    image_shape=(28, 28),
    dictionary_shape=None,
    dictionary_is_code: bool | None = None,
) -> list[pathlib.Path]:
    """Write the end-of-run pictures into ``out_dir`` and return their paths, in order:
    loss_curves.png, reconstructions.png, dictionary.png, codes.png, and
    code_scatter.png when ``codes`` is [batch, 2] and ``labels`` [batch] is given.

    ``inputs``/``reconstructions`` [batch, h*w]; ``decoder_weights`` [code, h*w];
    ``codes`` [batch, code]. ``dictionary_shape`` is the tile shape of the dictionary
    when it is not ``image_shape`` (a transposed-conv decoder's kernels).
    ``dictionary_is_code``: whether the dictionary's rows are the code units (see
    :func:`dictionary_is_code`), so that its tiles are ordered and labelled by how
    often ``codes`` fire; None: when their counts match."""
    out = pathlib.Path(os.fspath(out_dir))
    if dictionary_is_code is None:
        dictionary_is_code = np.ndim(codes) == 2 and (
            np.shape(codes)[1] == np.shape(decoder_weights)[0]
        )
    paths = [
        plot_loss_curves(history, out / LOSS_CURVES),
        plot_reconstructions(
            inputs, reconstructions, out / RECONSTRUCTIONS, image_shape=image_shape
        ),
        plot_dictionary(
            decoder_weights,
            out / DICTIONARY,
            image_shape=dictionary_shape or image_shape,
            codes=codes if dictionary_is_code else None,
        ),
        plot_codes(codes, out / CODES),
    ]
    if labels is not None and np.ndim(codes) == 2 and np.shape(codes)[1] == 2:
        paths.append(plot_code_scatter(codes, labels, out / CODE_SCATTER))
    return paths


# --------------------------------------------------------------------------- evaluation

ACTIVATION_FREQUENCY = "activation_frequency.png"


def plot_activation_frequency(frequency, path, bins: int = 20) -> pathlib.Path:
    """A histogram of per-unit activation frequency [code] (the share of samples on
    which each code unit is non-zero, each in [0, 1]): ``bins`` equal bins over
    (0, 1] in blue, the dead units (frequency exactly 0) as their own red bar left of
    0, so that a unit active once is never counted as dead, and the mean frequency
    (mean L0 / code units) as a dashed line. Returns ``path``."""
    f = np.asarray(frequency, dtype=np.float64)
    if f.ndim != 1 or f.size < 1:
        raise ValueError(
            f"frequency must be [code] with code >= 1, got shape {f.shape}"
        )
    if not np.all(np.isfinite(f) & (f >= 0) & (f <= 1)):
        raise ValueError("frequency must hold shares in [0, 1], one per code unit")
    n_bins = _check_n(bins)
    width = 1 / n_bins
    dead = int(np.sum(f == 0))
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    ax.hist(
        f[f > 0], bins=np.linspace(0, 1, n_bins + 1), color="tab:blue", label="active"
    )
    if dead:
        ax.bar(
            -width / 2, dead, width=width, color="tab:red", label="dead (never active)"
        )
    ax.axvline(float(f.mean()), color="black", linestyle="--", label="mean")
    ax.set_xlim(-width * 1.2, 1.0)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(
        "activation frequency (share of samples on which the unit is non-zero)"
    )
    ax.set_ylabel("code units")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    s = "s" if f.size > 1 else ""
    ax.set_title(f"activation frequency of {f.size} code unit{s} ({dead} dead)")
    return _save(fig, path)
