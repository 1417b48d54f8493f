"""Per-label intensities of mask-conditioned samples against real images (``medgen evaluate --samples --data``).

When the samples artefact holds the masks its images were drawn for (store ``masks``, written by
``medgen sample`` for a mask-conditioned prior) and the real data artefact has the masks of its
items (the mask store paired with ``store``, e.g. ``masks`` for ``main``), every label value gets
the intensity statistics of the voxels it covers, in physical units (HU for CT): mean, standard
deviation, 5th/50th/95th percentiles, voxel and item counts, for the real items (split ``split``,
default train) and for the samples, and the difference of their means. Written to ``metrics.json``
(``per_label``) and ``per_label.csv``, printed as rows of the evaluate table, and pictured in
``pictures/mask_overlay.png``: samples with their masks overlaid next to real images with theirs
(the real item of the sample's mask when the data holds it).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ..artefacts import read_manifest
from ..errors import UsageError
from ..io import fs
from ..io.masks import MASK_STORE, mask_store_name
from ..io.store import Store, store_path
from ..safety import normal_path
from ..viz.masks import mask_overlay_grid
from . import evaluate_pictures as ep

log = logging.getLogger(__name__)

PERCENTILES = (5, 50, 95)
SECTION = "per label"


PERCENTILE_SAMPLE = 1_000_000  # values per label kept for the percentiles (mean and std use every value)


class _LabelValues:
    """One label's values, streamed: exact count, mean and std, and a uniform random sample without
    replacement of at most ``cap`` values for the percentiles (each value gets a random key; the ``cap``
    smallest keys are kept), so memory stays bounded however many volumes are pooled."""

    def __init__(self, cap: int, rng: np.random.Generator):
        self.cap, self.rng = cap, rng
        self.n, self.total, self.squares, self.items = 0, 0.0, 0.0, 0
        self.kept, self.keys = np.empty(0), np.empty(0)

    def add(self, x: np.ndarray) -> None:
        self.n += x.size
        self.total += float(x.sum())
        self.squares += float(np.square(x).sum())
        self.items += 1
        self.kept = np.concatenate([self.kept, x])
        self.keys = np.concatenate([self.keys, self.rng.random(x.size)])
        if self.kept.size > self.cap:
            keep = np.argpartition(self.keys, self.cap)[: self.cap]
            self.kept, self.keys = self.kept[keep], self.keys[keep]

    def stats(self) -> dict[str, Any]:
        mean = self.total / self.n
        std = float(np.sqrt(max(self.squares / self.n - mean * mean, 0.0)))
        p = np.percentile(self.kept, PERCENTILES)
        return {"mean": mean, "std": std, **{f"p{q}": float(v) for q, v in zip(PERCENTILES, p)},
                "voxels": self.n, "items": self.items, "percentiles_from": int(self.kept.size)}


def label_stats(pairs: Iterable[tuple[np.ndarray, np.ndarray]], cap: int = PERCENTILE_SAMPLE,
                seed: int = 0) -> dict[int, dict[str, Any]]:
    """``{label: {mean, std, p5, p50, p95, voxels, items, percentiles_from}}`` of the values each label covers,
    pooled over ``(values, labels)`` pairs of equal shapes (values in the units wanted, e.g. HU). Mean and std
    use every value; the percentiles are exact up to ``cap`` values per label, beyond that those of a uniform
    random sample of ``cap`` of them (``percentiles_from``; seeded, so reruns agree)."""
    rng = np.random.default_rng(seed)
    pooled: dict[int, _LabelValues] = {}
    for values, labels in pairs:
        values, labels = np.asarray(values, np.float64), np.asarray(labels)
        if values.shape != labels.shape:
            raise ValueError(f"values {values.shape} and labels {labels.shape} differ in shape")
        for v in np.unique(labels):
            pooled.setdefault(int(v), _LabelValues(cap, rng)).add(values[labels == v])
    return {label: pooled[label].stats() for label in sorted(pooled)}


def compare(real: dict[int, dict[str, Any]], generated: dict[int, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per label (as text keys): the real and generated statistics (None when absent) and the
    difference of means (generated - real)."""
    out = {}
    for label in sorted(set(real) | set(generated)):
        r, g = real.get(label), generated.get(label)
        out[str(label)] = {"real": r, "generated": g,
                           "mean_difference": g["mean"] - r["mean"] if r is not None and g is not None else None}
    return out


def _open(artefact: str, name: str) -> Store | None:
    if not fs.exists(store_path(artefact, name)):
        return None
    return Store.open(store_path(artefact, name))


def _pairs(store: Store, masks: Store, ids: list[str]):
    """(physical values, labels) of each item, one at a time."""
    for item_id in ids:
        arr, meta = store.read_item(item_id)
        labels = masks.read(item_id, dtype=None)
        if labels.shape != arr.shape:
            raise UsageError(f"the mask {item_id!r} of {masks.path} is {list(labels.shape)} but its image is "
                             f"{list(arr.shape)}")
        yield meta.intensity.to_physical(arr), labels


def _text(s: dict[str, Any] | None) -> str:
    if s is None:
        return "absent"
    return (f"{s['mean']:.4g} ± {s['std']:.3g}, p5/50/95 {s['p5']:.4g}/{s['p50']:.4g}/{s['p95']:.4g}, "
            f"{s['voxels']} voxels")


def per_label(settings, s_store: Store, s_ids: list[str], partial: Path, result) -> None:
    """Add the per-label table (metrics, csv, rows, picture) when both sides carry masks; else nothing."""
    s_masks = _open(settings.samples, MASK_STORE)
    name = mask_store_name(settings.store)
    d_masks = _open(settings.data, name) if name else None
    if s_masks is None or d_masks is None:
        if s_masks is not None:
            log.info("no per-label table: %s has no mask store paired with %s", settings.data, settings.store)
        return
    split = settings.split or "train"
    d_store = Store.open(store_path(settings.data, settings.store))
    r_ids = [i for i in d_store.ids(split) if i in d_masks][: settings.max_items or None]
    s_ids = [i for i in s_ids if i in s_masks]
    if not r_ids or not s_ids:
        log.warning("no per-label table: %d real item(s) of split %s and %d sample(s) have masks", len(r_ids), split,
                    len(s_ids))
        return
    real = label_stats(_pairs(d_store, d_masks, r_ids))
    generated = label_stats(_pairs(s_store, s_masks, s_ids))
    table = compare(real, generated)
    unit = d_store.meta(r_ids[0]).intensity.unit
    result.metrics["per_label"] = {"unit": unit, "split": split, "real_items": len(r_ids), "samples": len(s_ids),
                                   "labels": table}
    _csv(partial / "per_label.csv", table)
    for label, row in table.items():
        diff = row["mean_difference"]
        result.rows += [(f"{SECTION} ({unit})", f"label {label} real", _text(row["real"])),
                        (f"{SECTION} ({unit})", f"label {label} generated", _text(row["generated"])),
                        (f"{SECTION} ({unit})", f"label {label} mean difference", "n/a" if diff is None else f"{diff:+.4g}")]
    drawn_for = read_manifest(settings.samples).summary.get("masks")  # the artefact whose masks the samples used
    paired = drawn_for is not None and normal_path(drawn_for) == normal_path(settings.data)
    if not paired:
        log.info("mask overlay without real images: the samples were drawn for the masks of %s, not of %s",
                 drawn_for, settings.data)
    _picture(partial / "pictures" / "mask_overlay.png", (s_store, s_masks), (d_store, d_masks),
             ep.pick(s_ids, settings.max_pictures), [int(k) for k in table], paired)


def _csv(path: Path, table: dict[str, dict[str, Any]]) -> None:
    from .evaluate import write_csv  # the evaluate step's writer (imported here: it imports this module)

    rows = []
    for label, row in table.items():
        for side in ("real", "generated"):
            stats = row[side] or {}
            rows.append({"label": label, "set": side, **{k: stats.get(k) for k in
                         ("mean", "std", *[f"p{q}" for q in PERCENTILES], "voxels", "items")},
                         "mean_difference": row["mean_difference"]})
    write_csv(path, rows)


def _picture(path: Path, samples: tuple[Store, Store], data: tuple[Store, Store], shown: list[str],
             labels: list[int], paired: bool) -> None:
    """Samples with their masks (left) beside the real item of each sample's mask with its own (right;
    empty when the data do not hold that item, or are not the artefact whose masks the samples used:
    ``paired`` False, where an item of the same id would be another image)."""
    (s_store, s_masks), (d_store, d_masks) = samples, data
    rows = []
    for sample_id in shown:
        arr, meta = s_store.read_item(sample_id)
        row = [(arr, s_masks.read(sample_id, dtype=None), meta), None]
        source = str(s_store.item_attrs(sample_id).get("condition_item", ""))
        if paired and source in d_store and source in d_masks:
            real, real_meta = d_store.read_item(source)
            row[1] = (real, d_masks.read(source, dtype=None), real_meta)
        rows.append(row)
    if not rows:
        return
    mapping = d_store.meta(d_store.ids()[0]).intensity
    limits = ep.grey_limits(mapping, [cell[0] for row in rows for cell in row if cell is not None])
    mask_overlay_grid(path, rows, ("sample with its mask", "real image of that mask"), shown, *limits, labels,
                      title="masks over generated and real images")
