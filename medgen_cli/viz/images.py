"""Pictures of images as PNG files: grids, orthogonal views, slice strips, MIPs and error maps.

Figures are drawn with matplotlib's object API on the Agg canvas (``matplotlib.figure.Figure``,
never pyplot), so nothing opens a window, no global backend is switched and nothing leaks
between calls. Every function writes one PNG and returns its path.

Medical volumes are oriented by the affine (radiological convention, see
:mod:`medgen_cli.viz.orientation`); :func:`save_grid` shows the arrays it is given as they are
(first index down the rows), so orient medical slices with ``display_slice`` first.

Sizes follow the images: a panel shows its image at one screen pixel per image pixel, at least
``CELL`` inches at ``DPI`` dots per inch (128 px, small images are enlarged) and at most
``MAX_PANEL_PX`` (512 px: a large radiograph or CT slice is shown at 512 px on its long side, never
thumbnailed), plus ``HEADER`` inches for titles and ``BAR`` for a colour bar; text grows with the
panels. See :func:`panel_inches` and :func:`figure_size`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib import patheffects
from matplotlib.figure import Figure

from .orientation import DisplaySlice, display_plane, display_slice, resolve_axis

CELL = 1.6  # inches per panel, at least
DPI = 80
PAD = 0.04  # inches around each image inside its panel
MAX_PANEL_PX = 512  # image pixels shown on a panel's long side, at most
MAX_FIGURE_PX = 32e6  # a figure of many large panels shrinks them to stay below this many pixels
HEADER = 0.35  # inches for a figure or column title (at CELL; grows with the text)
LABEL = 0.3  # inches for row labels (idem)
BAR = 0.6  # inches for a colour bar
GREY = "gray"
DIVERGING = "RdBu_r"  # signed errors: blue too low, red too high, white exact


def panel_inches(shapes: Sequence[tuple[int, ...]], panels: int = 1) -> float:
    """Side of a square panel (inches) showing images of ``shapes`` one-to-one, within
    ``CELL`` .. ``MAX_PANEL_PX`` (and ``MAX_FIGURE_PX`` over ``panels`` panels)."""
    longest = max((max(shape[:2]) for shape in shapes if len(shape) >= 2), default=0)
    px = min(float(longest), MAX_PANEL_PX)
    px = min(px, (MAX_FIGURE_PX / max(panels, 1)) ** 0.5)
    return max(CELL, (px + 2 * PAD * DPI) / DPI)


def text_scale(cell: float = CELL) -> float:
    """How much larger text is drawn on panels of ``cell`` inches than on ``CELL`` ones (1 .. 2)."""
    return min(2.0, 1.0 + (cell / CELL - 1.0) / 3.0)


def figure_size(nrows: int, ncols: int, headers: int = 0, row_labels: bool = False,
                colorbar: bool = False, cell: float = CELL) -> tuple[float, float]:
    """(width, height) in inches of a grid of ``cell``-inch panels with ``headers`` title lines above it.

    The PNG is that times ``DPI`` pixels.
    """
    k = text_scale(cell)
    width = ncols * cell + (LABEL * k if row_labels else 0.0) + (BAR if colorbar else 0.0)
    return width, nrows * cell + headers * HEADER * k


def save_figure(fig: Figure, path: Path | str, dpi: int = DPI) -> Path:
    """Write ``fig`` as a PNG at ``dpi`` (creating the directory) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, format="png")
    return path


def _grid(nrows: int, ncols: int, headers: int, row_labels: bool, colorbar: bool, cell: float = CELL):
    """A figure with one axes per panel, placed by hand (deterministic, no layout engine)."""
    if nrows < 1 or ncols < 1:
        raise ValueError(f"a grid needs at least one row and column, got {nrows} x {ncols}")
    width, height = figure_size(nrows, ncols, headers, row_labels, colorbar, cell)
    fig = Figure(figsize=(width, height), dpi=DPI)
    left = LABEL * text_scale(cell) if row_labels else 0.0
    axes = np.empty((nrows, ncols), dtype=object)
    for r in range(nrows):
        for c in range(ncols):
            x0 = (left + c * cell + PAD) / width
            y0 = ((nrows - 1 - r) * cell + PAD) / height
            ax = fig.add_axes((x0, y0, (cell - 2 * PAD) / width, (cell - 2 * PAD) / height))
            ax.set_axis_off()
            axes[r, c] = ax
    cax = None
    if colorbar:
        cax = fig.add_axes(((width - BAR + 0.08) / width, 0.1 / height, 0.12 / width,
                            (nrows * cell - 0.2) / height))
    return fig, axes, cax


def _limits(arrays: Sequence[np.ndarray], vmin, vmax) -> tuple[float, float]:
    if vmin is not None and vmax is not None:
        if not float(vmax) > float(vmin):
            raise ValueError(f"vmax must be greater than vmin, got vmin={vmin}, vmax={vmax}")
        return float(vmin), float(vmax)
    finite = [a[np.isfinite(a)] for a in arrays]
    finite = [a for a in finite if a.size]
    lo = float(vmin) if vmin is not None else (min(float(a.min()) for a in finite) if finite else 0.0)
    hi = float(vmax) if vmax is not None else (max(float(a.max()) for a in finite) if finite else 1.0)
    return lo, hi if hi > lo else lo + 1.0


def _symmetric(arrays: Sequence[np.ndarray], vmax) -> float:
    if vmax is not None:
        if not float(vmax) > 0:
            raise ValueError(f"error colour scale must be positive, got {vmax!r}")
        return float(vmax)
    peaks = [float(np.nanmax(np.abs(a))) for a in arrays if np.size(a)]
    peak = max(peaks, default=0.0)
    return peak if peak > 0 else 1.0


def _letters(ax, edges: tuple[str, str, str, str], shape: tuple[int, int], scale: float = 1.0) -> None:
    """Orientation letters just inside the image's edges (data coordinates follow the aspect)."""
    left, right, top, bottom = edges
    h, w = shape
    # yellow with a black outline: readable on dark background and on bright (e.g. unexposed X-ray) areas
    style = dict(fontsize=6 * scale, color="yellow", ha="center", va="center",
                 path_effects=[patheffects.withStroke(linewidth=1.5 * scale, foreground="black")])
    ax.text(0.05 * w - 0.5, h / 2 - 0.5, left, **style)
    ax.text(0.95 * w - 0.5, h / 2 - 0.5, right, **style)
    ax.text(w / 2 - 0.5, 0.05 * h - 0.5, top, **style)
    ax.text(w / 2 - 0.5, 0.95 * h - 0.5, bottom, **style)


def save_grid(path: Path | str, rows: Sequence[Sequence[np.ndarray | None]], titles: Sequence[str] | None = None,
              vmin: float | None = None, vmax: float | None = None, *, row_labels: Sequence[str] | None = None,
              error_columns: Sequence[int] = (), error_vmax: float | None = None,
              aspects: Sequence[Sequence[float]] | None = None,
              edges: Sequence[Sequence[tuple[str, str, str, str] | None]] | None = None, title: str = "",
              column_scales: dict[int, tuple[str, float, float]] | None = None) -> Path:
    """A grid of 2D images, e.g. rows of input | reconstruction | error.

    Image panels share one grey scale (``vmin``..``vmax``, default: the range of all of them);
    panels in ``error_columns`` share one symmetric diverging scale ``-e..e`` (``e = error_vmax``,
    default: the largest absolute error shown) with a colour bar.

    Args:
        path: PNG file to write.
        rows: rows of 2D arrays (shown as given: first index down); None leaves a panel blank.
        titles: column titles.
        vmin, vmax: grey scale of the image panels.
        row_labels: one label per row, written on the left.
        error_columns: column indices holding signed errors.
        error_vmax: half-width of the error scale.
        aspects: per panel pixel aspect (height / width), default 1.
        edges: per panel orientation letters (left, right, top, bottom), e.g. from
            ``DisplaySlice.edges``; None for none.
        title: figure title.
        column_scales: ``{column: (colour map, vmin, vmax)}`` for columns on a scale of their own
            (e.g. code indices), left out of the shared grey scale.
    """
    rows = [list(r) for r in rows]
    own = dict(column_scales or {})
    ncols = max((len(r) for r in rows), default=0)
    if titles is not None and len(titles) > ncols:
        raise ValueError(f"{len(titles)} titles for {ncols} columns")
    if row_labels is not None and len(row_labels) != len(rows):
        raise ValueError(f"{len(row_labels)} row labels for {len(rows)} rows")
    errors = set(error_columns)
    cells = [(r, c, None if a is None else np.asarray(a, dtype=np.float64)) for r, row in enumerate(rows)
             for c, a in enumerate(row)]
    for r, c, a in cells:
        if a is not None and a.ndim != 2:
            raise ValueError(f"panel ({r}, {c}) must be a 2D array, got shape {a.shape}")
    lo, hi = _limits([a for _, c, a in cells if a is not None and c not in errors and c not in own], vmin, vmax)
    e = _symmetric([a for _, c, a in cells if a is not None and c in errors], error_vmax)
    headers = int(bool(titles)) + int(bool(title))
    cell = panel_inches([a.shape for _, _, a in cells if a is not None], len(cells))
    k = text_scale(cell)
    fig, axes, cax = _grid(len(rows), ncols, headers, row_labels is not None, bool(errors), cell)
    error_image = None
    for r, c, a in cells:
        if a is None:
            continue
        aspect = aspects[r][c] if aspects is not None else 1.0
        if c in own:
            cmap, cmin, cmax = own[c]
            axes[r, c].imshow(a, cmap=cmap, vmin=cmin, vmax=cmax, aspect=aspect, interpolation="nearest")
        elif c in errors:
            error_image = axes[r, c].imshow(a, cmap=DIVERGING, vmin=-e, vmax=e, aspect=aspect, interpolation="nearest")
        else:
            axes[r, c].imshow(a, cmap=GREY, vmin=lo, vmax=hi, aspect=aspect, interpolation="nearest")
        if edges is not None and edges[r][c] is not None:
            _letters(axes[r, c], edges[r][c], a.shape, k)
    for c, text in enumerate(titles or []):
        axes[0, c].set_title(text, fontsize=8 * k, pad=2)
    for r, text in enumerate(row_labels or []):
        axes[r, 0].text(-0.04, 0.5, text, transform=axes[r, 0].transAxes, rotation=90, fontsize=7 * k,
                        ha="right", va="center")
    if cax is not None and error_image is not None:
        fig.colorbar(error_image, cax=cax).ax.tick_params(labelsize=6 * k)
    if title:
        fig.suptitle(title, fontsize=9 * k, y=1 - 0.06 / fig.get_figheight(), va="top")
    return save_figure(fig, path)


def _views(vol: np.ndarray, meta) -> list[DisplaySlice]:
    """Centre views of a volume (axial, coronal, sagittal order), or the one view of a 2D item."""
    arr = np.asarray(vol)
    if arr.ndim == 2:
        return [display_slice(arr, meta)]
    if arr.ndim != 3:
        raise ValueError(f"expected an (i, j) image or (i, j, k) volume, got shape {arr.shape}")
    views = [display_slice(arr, meta, axis) for axis in range(3)]
    order = {"axial": 0, "coronal": 1, "sagittal": 2}
    return sorted(views, key=lambda v: order.get(v.plane, 3))


def orthogonal_views(path: Path | str, vol: np.ndarray, meta, vmin: float | None = None,
                     vmax: float | None = None, title: str = "") -> Path:
    """Axial, coronal and sagittal centre slices of a volume, radiologically oriented and lettered.

    Args:
        path: PNG file to write.
        vol: (i, j, k) volume (a 2D (i, j) item gives one panel).
        meta: ``ImageMeta`` or 4x4 affine.
        vmin, vmax: grey scale (default: the volume's range).
        title: figure title.
    """
    views = _views(vol, meta)
    lo, hi = _limits([np.asarray(vol, dtype=np.float64)], vmin, vmax)
    return save_grid(path, [[v.image for v in views]], [v.plane for v in views], lo, hi,
                     aspects=[[v.aspect for v in views]], edges=[[v.edges for v in views]], title=title)


def multi_slice_strip(path: Path | str, vol: np.ndarray, meta, n: int = 8, axis: int | str = "axial",
                      vmin: float | None = None, vmax: float | None = None, title: str = "") -> Path:
    """``n`` evenly spaced slices along ``axis`` in one row (fewer when the volume is thinner).

    Args:
        path: PNG file to write.
        vol: (i, j, k) volume.
        meta: ``ImageMeta`` or 4x4 affine.
        n: number of slices.
        axis: voxel axis 0..2 or plane name.
        vmin, vmax: grey scale (default: the volume's range).
        title: figure title.
    """
    arr = np.asarray(vol)
    if arr.ndim != 3:
        raise ValueError(f"a slice strip needs an (i, j, k) volume, got shape {arr.shape}")
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    axis = resolve_axis(meta, axis)
    size = arr.shape[axis]
    # interior positions: the first and last slices are mostly empty in a medical volume
    picks = sorted({int(round(x)) for x in np.linspace(0, size - 1, n + 2)[1:-1]}) if size > 2 else list(range(size))
    views = [display_slice(arr, meta, axis, k) for k in picks]
    lo, hi = _limits([arr.astype(np.float64)], vmin, vmax)
    return save_grid(path, [[v.image for v in views]], [f"{views[0].plane} {k}" for k in picks], lo, hi,
                     aspects=[[v.aspect for v in views]], title=title)


def mip(path: Path | str, vol: np.ndarray, meta, axis: int | str = "axial", title: str = "") -> Path:
    """Maximum intensity projection along ``axis``, oriented like a slice of that plane.

    Args:
        path: PNG file to write.
        vol: (i, j, k) volume.
        meta: ``ImageMeta`` or 4x4 affine.
        axis: voxel axis 0..2 or plane name to project along.
        title: figure title.
    """
    arr = np.asarray(vol)
    if arr.ndim != 3:
        raise ValueError(f"a MIP needs an (i, j, k) volume, got shape {arr.shape}")
    axis = resolve_axis(meta, axis)
    view = display_plane(arr.max(axis=axis), meta, axis)
    return save_grid(path, [[view.image]], [f"MIP {view.plane}"], aspects=[[view.aspect]], title=title)


def error_map(path: Path | str, pred: np.ndarray, target: np.ndarray, meta=None, vmax: float | None = None,
              title: str = "") -> Path:
    """Signed error ``pred - target`` on a symmetric diverging scale with a colour bar.

    Args:
        path: PNG file to write.
        pred, target: (i, j) images or (i, j, k) volumes (then the three centre views).
        meta: ``ImageMeta`` or 4x4 affine for the orientation (default: identity geometry).
        vmax: half-width of the scale; pass the same value to compare several maps (default:
            the largest absolute error).
        title: figure title.
    """
    p, t = np.asarray(pred, dtype=np.float64), np.asarray(target, dtype=np.float64)
    if p.shape != t.shape:
        raise ValueError(f"pred and target must have the same shape, got {p.shape} and {t.shape}")
    views = _views(p - t, np.eye(4) if meta is None else meta)
    return save_grid(path, [[v.image for v in views]], [v.plane for v in views], error_columns=range(len(views)),
                     error_vmax=_symmetric([p - t], vmax), aspects=[[v.aspect for v in views]], title=title)


def reconstruction_grid(path: Path | str, inputs: Sequence[np.ndarray], reconstructions: Sequence[np.ndarray],
                        metas: Sequence | None = None, vmin: float | None = None, vmax: float | None = None,
                        error_vmax: float | None = None, labels: Sequence[str] | None = None) -> Path:
    """Rows of input | reconstruction | error for several items, on shared scales.

    A 2D item gives one row, a 3D item three (its orthogonal centre views).

    Args:
        path: PNG file to write.
        inputs, reconstructions: (i, j) or (i, j, k) arrays, one per item.
        metas: ``ImageMeta`` or affine per item (default: identity geometry).
        vmin, vmax: grey scale of inputs and reconstructions (default: their joint range).
        error_vmax: half-width of the error scale (default: the largest absolute error).
        labels: one label per item (default: the item number).
    """
    if len(inputs) != len(reconstructions) or not inputs:
        raise ValueError(f"need as many reconstructions as inputs (>= 1), got {len(inputs)} and {len(reconstructions)}")
    rows, aspects, edges, names = [], [], [], []
    for n, (x, y) in enumerate(zip(inputs, reconstructions)):
        x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        if x.shape != y.shape:
            raise ValueError(f"item {n}: input shape {x.shape} differs from reconstruction shape {y.shape}")
        meta = metas[n] if metas is not None else np.eye(4)
        for vx, vy, ve in zip(_views(x, meta), _views(y, meta), _views(y - x, meta)):
            rows.append([vx.image, vy.image, ve.image])
            aspects.append([vx.aspect] * 3)
            edges.append([vx.edges] * 3)
            names.append(f"{labels[n] if labels else n} {vx.plane}")
    return save_grid(path, rows, ["input", "reconstruction", "error"], vmin, vmax, row_labels=names,
                     error_columns=(2,), error_vmax=error_vmax, aspects=aspects, edges=edges)
