"""Pictures of ``medgen evaluate``: every evaluated item set gets slice strips, orthogonal views,
maximum intensity projections and error maps, on colour scales shared by all pictured items.

The grey scale is the stored window of the intensity mapping when it clips (a CT window), else the
joint value range of the pictured items; the error scale is symmetric, ``±`` the largest absolute
difference of all pictured pairs. Volumes are oriented radiologically from their affine
(``medgen_cli.viz``). Per item ``<id>`` (``<ref>``/``<pred>`` name the two sides of a pair, e.g.
``input``/``reconstruction`` or ``target``/``sample``)::

    <id>_views_<side>.png   axial, coronal and sagittal centre slices (2D items: the image)
    <id>_strip_<side>.png   evenly spaced axial slices (volumes)
    <id>_mip.png            maximum intensity projections side by side (volumes)
    <id>_error.png          signed error pred - ref (pairs)

Also the plots of per-item metrics (``metric_plots``: a histogram per metric and a box plot per
group of the metric registry) and the mask overlay of mask-conditioned samples (``mask_overlay``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..meta import ImageMeta, IntensityMapping
from ..metrics.registry import GROUPS, box_groups
from ..metrics.report import ID_COLUMNS
from .images import error_map, multi_slice_strip, orthogonal_views, save_grid
from .masks import mask_overlay_grid
from .orientation import display_plane, display_slice, resolve_axis
from .plots import box_plot, histograms


def grey_limits(mapping: IntensityMapping, arrays: Sequence[np.ndarray]) -> tuple[float, float]:
    """The shared grey scale: the stored window of a clipped mapping, else the arrays' joint range."""
    if mapping.clip:
        return min(mapping.out_low, mapping.out_high), max(mapping.out_low, mapping.out_high)
    lo = min(float(np.min(a)) for a in arrays)
    hi = max(float(np.max(a)) for a in arrays)
    return lo, hi if hi > lo else lo + 1.0


def error_limit(pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> float:
    """Half-width of the shared error scale: the largest absolute difference (1 when all are exact)."""
    peak = max((float(np.max(np.abs(np.asarray(p, np.float64) - np.asarray(r, np.float64)))) for r, p in pairs), default=0.0)
    return peak if peak > 0 else 1.0


def _centre_views(arr: np.ndarray, meta: ImageMeta):
    """Centre views: one for a 2D item; three for a volume, or only the one across its thin axis for
    a slab or 2D+T sequence (an axis at most a quarter of the longest: 64x64x8), whose other two views
    would be thin strips."""
    if arr.ndim == 2:
        return [display_slice(arr, meta)]
    thin = int(np.argmin(arr.shape))
    if 4 * arr.shape[thin] <= max(arr.shape):
        return [display_slice(arr, meta, thin)]
    return [display_slice(arr, meta, a) for a in range(3)]


def item_pictures(directory: Path, item_id: str, arr: np.ndarray, meta: ImageMeta, side: str,
                  limits: tuple[float, float]) -> list[Path]:
    """Orthogonal views and, for volumes, a slice strip of one image on the shared grey scale."""
    lo, hi = limits
    paths = [orthogonal_views(directory / f"{item_id}_views_{side}.png", arr, meta, lo, hi, title=f"{item_id} {side}")]
    if arr.ndim == 3:
        paths.append(multi_slice_strip(directory / f"{item_id}_strip_{side}.png", arr, meta, vmin=lo, vmax=hi,
                                       title=f"{item_id} {side}"))
    return paths


def mip_pictures(path: Path, arrays: Sequence[np.ndarray], meta: ImageMeta, titles: Sequence[str],
                 limits: tuple[float, float], title: str = "") -> Path:
    """Axial maximum intensity projections of volumes side by side on one grey scale."""
    axis = resolve_axis(meta, "axial")
    views = [display_plane(np.asarray(a).max(axis=axis), meta, axis) for a in arrays]
    return save_grid(path, [[v.image for v in views]], [f"MIP {t}" for t in titles], *limits,
                     aspects=[[v.aspect for v in views]], edges=[[v.edges for v in views]], title=title)


def pair_pictures(directory: Path, item_id: str, ref: np.ndarray, pred: np.ndarray, meta: ImageMeta,
                  names: tuple[str, str], limits: tuple[float, float], error_vmax: float) -> list[Path]:
    """Views and strips of both sides, their MIPs side by side and the error map of one pair."""
    paths = item_pictures(directory, item_id, ref, meta, names[0], limits)
    paths += item_pictures(directory, item_id, pred, meta, names[1], limits)
    if ref.ndim == 3:
        paths.append(mip_pictures(directory / f"{item_id}_mip.png", [ref, pred], meta, names, limits, item_id))
    paths.append(error_map(directory / f"{item_id}_error.png", pred, ref, meta, vmax=error_vmax,
                           title=f"{item_id}: {names[1]} - {names[0]}"))
    return paths


def pair_grid(path: Path, refs: Sequence[np.ndarray], preds: Sequence[np.ndarray], metas: Sequence[ImageMeta],
              labels: Sequence[str], titles: tuple[str, str, str], limits: tuple[float, float],
              error_vmax: float, title: str = "") -> Path:
    """Rows of ref | pred | difference for several pairs (volumes: three rows of centre views).

    ``viz.reconstruction_grid`` draws the same with fixed column titles; this one names the
    columns (target | sample, sample | nearest training item).
    """
    rows, aspects, edges, names = [], [], [], []
    for ref, pred, meta, label in zip(refs, preds, metas, labels):
        diff = np.asarray(pred, np.float64) - np.asarray(ref, np.float64)
        for vr, vp, vd in zip(_centre_views(ref, meta), _centre_views(pred, meta), _centre_views(diff, meta)):
            rows.append([vr.image, vp.image, vd.image])
            aspects.append([vr.aspect] * 3)
            edges.append([vr.edges] * 3)
            names.append(f"{label} {vr.plane}")
    return save_grid(path, rows, list(titles), *limits, row_labels=names, error_columns=(2,), error_vmax=error_vmax,
                     aspects=aspects, edges=edges, title=title)


def set_grid(path: Path, arrays: Sequence[np.ndarray], metas: Sequence[ImageMeta], labels: Sequence[str],
             limits: tuple[float, float], title: str = "") -> Path:
    """One row per item of its centre views (a 2D item: one panel), on the shared grey scale."""
    rows, aspects, edges = [], [], []
    for arr, meta in zip(arrays, metas):
        views = _centre_views(arr, meta)
        rows.append([v.image for v in views])
        aspects.append([v.aspect for v in views])
        edges.append([v.edges for v in views])
    titles = [v.plane for v in _centre_views(arrays[0], metas[0])]
    return save_grid(path, rows, titles, *limits, row_labels=list(labels), aspects=aspects, edges=edges, title=title)


def pick(ids: Sequence[str], n: int) -> list[str]:
    """At most ``n`` ids spread evenly over ``ids`` (deterministic)."""
    if n <= 0 or not ids:
        return []
    return list(dict.fromkeys(ids[int(round(k))] for k in np.linspace(0, len(ids) - 1, min(n, len(ids)))))


def metric_plots(directory: Path, rows: list[dict[str, Any]], unit: str,
                 id_columns: Sequence[str] = ID_COLUMNS) -> list[Path]:
    """A histogram per metric and a box plot per registry group of the per-item values.

    Args:
        directory: where the PNGs go (``hist_<metric>.png``, ``box_<group>.png``).
        rows: one dict per item (id columns and metric values).
        unit: the data's physical unit (the axis of the physical-error group).
        id_columns: the keys of ``rows`` that are not metrics (item, subject, split, target).
    """
    names = list(dict.fromkeys(k for r in rows for k in r if k not in id_columns))
    columns = {k: np.asarray([r[k] for r in rows if k in r], np.float64) for k in names}
    columns = {k: v for k, v in columns.items() if np.isfinite(v).any()}
    paths = [histograms(directory / f"hist_{k}.png", {k: v}, xlabel=k, bins=min(32, max(4, v.size)),
                        title=f"{k} per item") for k, v in columns.items()]
    for group, members in box_groups().items():
        present = {k: columns[k] for k in members if k in columns}
        if present:
            paths.append(box_plot(directory / f"box_{group}.png", present, ylabel=GROUPS[group].axis_label(unit),
                                  title=f"{group} per item"))
    return paths


def mask_overlay(path: Path, rows: list[list[tuple[np.ndarray, np.ndarray, ImageMeta] | None]], labels_shown: Sequence[str],
                 labels: list[int], mapping: IntensityMapping) -> Path | None:
    """Samples with their masks (left) beside the real image of each sample's mask with its own
    (right; None leaves the cell empty), on the data's grey scale (`grey_limits` of ``mapping``)."""
    if not rows:
        return None
    limits = grey_limits(mapping, [cell[0] for row in rows for cell in row if cell is not None])
    return mask_overlay_grid(path, rows, ("sample with its mask", "real image of that mask"), labels_shown, *limits,
                             labels, title="masks over generated and real images")
