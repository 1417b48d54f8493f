"""Label maps drawn over images: a translucent colour per label with its outline (matplotlib, Agg).

`mask_overlay_grid` draws rows of (image, labels) pairs on one grey scale, each label value other
than 0 (background) in its own colour, with a legend of the label values. Volumes are shown as the
axial slice (radiological orientation, `medgen_cli.viz.orientation`) that holds the most labelled
voxels, so small structures are visible.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import ListedColormap
from matplotlib.patches import Patch

from .images import HEADER, _grid, save_figure, text_scale
from .orientation import DisplaySlice, display_slice, resolve_axis

ALPHA = 0.3  # opacity of the label colours over the image
PALETTE = "tab10"


def label_colours(labels: Sequence[int]) -> dict[int, tuple[float, float, float, float]]:
    """One colour per non-zero label value, in order (tab10, cycling)."""
    cmap = colormaps[PALETTE]
    return {int(v): cmap(k % cmap.N) for k, v in enumerate(v for v in labels if int(v) != 0)}


def overlay_slices(image: np.ndarray, labels: np.ndarray, meta) -> tuple[DisplaySlice, DisplaySlice]:
    """The displayed slice of an image and of its labels: a 2D item as it is; for a volume, the axial
    slice with the most non-zero labels (the centre one when none is labelled)."""
    if image.shape != labels.shape:
        raise ValueError(f"the labels {labels.shape} do not match the image {image.shape}")
    if image.ndim == 2:
        return display_slice(image, meta), display_slice(labels, meta)
    axis = resolve_axis(meta, "axial")
    counts = (labels != 0).sum(axis=tuple(a for a in range(3) if a != axis))
    index = int(np.argmax(counts)) if counts.any() else None
    return display_slice(image, meta, axis, index), display_slice(labels, meta, axis, index)


def _draw(ax, image: DisplaySlice, labels: DisplaySlice, colours: dict, vmin: float, vmax: float) -> None:
    ax.imshow(image.image, cmap="gray", vmin=vmin, vmax=vmax, aspect=image.aspect, interpolation="nearest")
    present = [v for v in colours if (labels.image == v).any()]
    if not present:
        return
    index = np.full(labels.image.shape, -1, dtype=np.int64)  # position in `present`, -1 = no colour
    for k, v in enumerate(present):
        index[labels.image == v] = k
    cmap = ListedColormap([colours[v] for v in present])
    ax.imshow(np.ma.masked_less(index, 0), cmap=cmap, vmin=-0.5, vmax=len(present) - 0.5, alpha=ALPHA,
              aspect=image.aspect, interpolation="nearest")
    for v in present:
        ax.contour((labels.image == v).astype(np.float32), levels=[0.5], colors=[colours[v]], linewidths=0.8)


def mask_overlay_grid(path: Path | str, rows: Sequence[Sequence[tuple[np.ndarray, np.ndarray, object] | None]],
                      titles: Sequence[str], row_labels: Sequence[str], vmin: float, vmax: float,
                      label_values: Sequence[int], title: str = "") -> Path:
    """A grid of images with their label maps overlaid.

    Args:
        path: the PNG written.
        rows: per row, per column, ``(image, labels, meta)`` of one item, or None for an empty panel.
        titles: one per column.
        row_labels: one per row.
        vmin, vmax: the shared grey scale of the images.
        label_values: every label value shown (their colours are fixed by this order).
        title: the figure's title.
    """
    ncols = max(len(r) for r in rows)
    fig, axes, _ = _grid(len(rows), ncols, headers=3, row_labels=True, colorbar=False)  # title, legend, columns
    colours = label_colours(label_values)
    scale = text_scale()
    for r, row in enumerate(rows):
        for c, cell in enumerate(row):
            if cell is None:
                continue
            image, labels, meta = cell
            _draw(axes[r, c], *overlay_slices(np.asarray(image), np.asarray(labels), meta), colours, vmin, vmax)
            if r == 0:
                axes[r, c].set_title(titles[c], fontsize=7 * scale)
        axes[r, 0].text(-0.04, 0.5, row_labels[r], transform=axes[r, 0].transAxes, rotation=90, ha="right",
                        va="center", fontsize=7 * scale)
    height, line = fig.get_size_inches()[1], HEADER * scale
    handles = [Patch(facecolor=colours[v], edgecolor=colours[v], label=f"label {v}") for v in colours]
    if handles:  # the second header line
        fig.legend(handles=handles, loc="center", bbox_to_anchor=(0.5, 1 - 1.5 * line / height),
                   ncol=min(len(handles), 5), fontsize=6 * scale, frameon=False, handlelength=1.0, columnspacing=0.8)
    if title:
        fig.text(0.01, 1 - 0.5 * line / height, title, fontsize=8 * scale, va="center")
    return save_figure(fig, path)
