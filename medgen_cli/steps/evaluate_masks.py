"""Per-label intensities of mask-conditioned samples against real images (``medgen evaluate --samples --data``).

When the samples artefact holds the masks its images were drawn for (store ``masks``, written by
``medgen sample`` for a mask-conditioned prior) and the real data artefact has the masks of its
items (the mask store paired with ``store``, e.g. ``masks`` for ``main``), every label value gets
the intensity statistics of the voxels it covers, in physical units (HU for CT): mean, standard
deviation, 5th/50th/95th percentiles, voxel and item counts, for the real items (split ``split``,
default train) and for the samples, and the difference of their means. Written to ``metrics.json``
(``per_label``) and ``per_label.csv``, printed as rows of the evaluate table, and pictured in
``pictures/mask_overlay.png``: samples with their masks overlaid next to real images with theirs
(the real item of the sample's mask when the data holds it). Orchestration only: the statistics are
`medgen_cli.metrics.labels`, the picture `medgen_cli.viz.evaluation.mask_overlay`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ..artefacts import read_manifest
from ..errors import UsageError
from ..io import fs
from ..io.masks import MASK_STORE, mask_store_name
from ..io.store import Store, store_path
from ..loaders.summaries import summary_record
from ..metrics.labels import PERCENTILES, compare, label_stats
from ..metrics.report import write_csv
from ..safety import normal_path
from ..viz import evaluation as ve

log = logging.getLogger(__name__)

SECTION = "per label"


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
    samples = summary_record("samples", read_manifest(settings.samples).summary, settings.samples)
    drawn_for = samples.masks  # the artefact whose masks the samples used
    paired = drawn_for is not None and normal_path(drawn_for) == normal_path(settings.data)
    if not paired:
        log.info("mask overlay without real images: the samples were drawn for the masks of %s, not of %s",
                 drawn_for, settings.data)
    _picture(partial / "pictures" / "mask_overlay.png", (s_store, s_masks), (d_store, d_masks),
             ve.pick(s_ids, settings.max_pictures), [int(k) for k in table], paired)


def _csv(path: Path, table: dict[str, dict[str, Any]]) -> None:
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
    if rows:
        mapping = d_store.meta(d_store.ids()[0]).intensity
        ve.mask_overlay(path, rows, shown, labels, mapping)
