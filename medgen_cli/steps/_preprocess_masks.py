"""Masks in ``medgen preprocess``: which label image belongs to which input, and carrying it to the items' grids.

Pairing (``masks.source``; the rules are in `medgen_cli.settings.preprocess.MaskSettings`): every
input gets its mask path up front, before anything is written. A file that is some input's mask is
never read as an image, so ``medgen preprocess data/*.nrrd --masks suffix:_label`` reads
``lung1_image.nrrd`` with ``lung1_label.nrrd`` as its mask, not the label file as a second image. An
input without a mask is refused (exit 2, naming it) or, with ``masks.missing: skip``, left out and
listed in ``report.json``.

Per input (``_preprocess_source``): the mask is read as integer labels (a mask with non-integer
values is refused, naming the file), checked to overlap its image in space (refused when it does
not, warned about when it covers less than ``masks.min_coverage`` of it), and resampled with
nearest neighbour (`medgen_cli.preprocess.labels`) straight from its own grid onto the final grid of
the image (after reorientation, resampling, fit and crop/pad) and of each derived store on another
grid (``downsampleF``); slices and sequences are then cut at the main items' slice indices.
"""

from __future__ import annotations

import csv
import glob
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UsageError
from ..meta import ImageMeta, IntensityMapping
from ..io.readers import NIFTI_SUFFIXES, ReadError, Source, read_source
from ..preprocess import labels as lab
from ..preprocess.splits import SubjectTable
from ..settings import PreprocessSettings
from ..settings.preprocess import split_mask_rule


IMAGE_STEM_ENDING = "_image"  # suffix:NEW replaces it (pyradiomics: lung1_image.nrrd, lung1_label.nrrd)
LABEL_MAPPING = IntensityMapping(method="identity", unit="label")


class MaskError(UsageError):
    """The masks cannot be paired with the inputs (exit code 2); nothing was written."""


class MaskReadError(ReadError):
    """One input's mask cannot be used (non-integer values, no overlap): that input fails, naming the mask."""


@dataclass
class MaskPairs:
    """The outcome of pairing.

    Args:
        masks: ``{source key: mask path}`` (the key is ``path + series_uid``).
        missing: ``(input path, why it has no mask)`` of the inputs that have none.
        mask_inputs: inputs that are some input's mask, and so are not read as images.
    """

    masks: dict[str, str] = field(default_factory=dict)
    missing: list[tuple[str, str]] = field(default_factory=list)
    mask_inputs: list[str] = field(default_factory=list)


def pair(sources: list[Source], s: PreprocessSettings) -> MaskPairs:
    """Find every source's mask by ``s.masks.source``.

    Raises:
        MaskError: the CSV is unreadable or lacks its columns, or a pattern matches several files.
    """
    kind, value = split_mask_rule(s.masks.source or "")
    table = _mask_table(value or s.input.subject_csv, subject_csv=not value) if kind == "csv" else None
    found: dict[str, tuple[str | None, str]] = {}
    for src in sources:
        if kind == "suffix":
            mask, why = _by_suffix(src, value)
        elif kind == "pattern":
            mask, why = _by_pattern(src, value)
        else:
            mask, why = _by_csv(src, table)
        if mask is not None and os.path.realpath(mask) == os.path.realpath(src.path):
            mask, why = None, f"the rule names the image itself ({mask})"
        found[src.path + src.series_uid] = (mask, why)
    real_masks = {os.path.realpath(m) for m, _ in found.values() if m}
    pairs = MaskPairs()
    for src in sources:
        mask, why = found[src.path + src.series_uid]
        if os.path.realpath(src.path) in real_masks:
            pairs.mask_inputs.append(src.path)
        elif mask:
            pairs.masks[src.path + src.series_uid] = mask
        else:
            pairs.missing.append((src.path, why))
    return pairs


def refuse_missing(pairs: MaskPairs, s: PreprocessSettings) -> None:
    """With ``masks.missing: error``, refuse a run in which some input has no mask (one sentence)."""
    if not pairs.missing or s.masks.missing == "skip":
        return
    path, why = pairs.missing[0]
    more = f" (and {len(pairs.missing) - 1} more input(s))" if len(pairs.missing) > 1 else ""
    raise MaskError(f"{path} has no mask{more}: {why} (masks.source {s.masks.source}); add the mask, fix --masks, "
                    "or set masks.missing=skip to leave such inputs out.")


def _by_suffix(src: Source, value: str) -> tuple[str | None, str]:
    """``(mask path or None, why there is none)`` by the suffix rule."""
    path = Path(src.path)
    stem = src.name
    ext = path.name[len(stem):]
    old, sep, new = value.partition("=")
    if sep:
        if not stem.endswith(old):
            return None, f"its name does not end with {old}{ext}"
        name = stem[: len(stem) - len(old)] + new + ext
    elif stem.endswith(IMAGE_STEM_ENDING):
        name = stem[: -len(IMAGE_STEM_ENDING)] + old + ext
    else:
        name = stem + old + ext
    candidate = path.with_name(name)
    return (str(candidate), "") if candidate.is_file() else (None, f"{candidate} does not exist")


def _by_pattern(src: Source, template: str) -> tuple[str | None, str]:
    text = template.replace("{stem}", glob.escape(src.name)).replace("{dir}", glob.escape(str(Path(src.path).parent)))
    if not glob.has_magic(text):
        return (text, "") if os.path.isfile(text) else (None, f"{text} does not exist")
    matches = sorted(p for p in glob.glob(text) if os.path.isfile(p))
    if len(matches) > 1:
        raise MaskError(f"the mask pattern {template} matches {len(matches)} files for {src.path} ({matches[0]}, "
                        f"{matches[1]}, ...); make it match exactly one.")
    return (matches[0], "") if matches else (None, f"no file matches {text}")


def _by_csv(src: Source, table: tuple[SubjectTable, Path, str] | None) -> tuple[str | None, str]:
    rows, base, name = table  # type: ignore[misc]
    cell = rows.subject_of(src.path)  # the subject CSV's matching: path as written, real path, file name, stem
    if not cell:
        return None, f"{name} has no row with a mask for it"
    mask = cell if os.path.isabs(cell) else str(base / cell)
    return (mask, "") if os.path.isfile(mask) else (None, f"{mask} (from {name}) does not exist")


def _mask_table(path: str | None, subject_csv: bool) -> tuple[SubjectTable, Path, str]:
    """``(path -> mask cell, the CSV's directory, its path)``; a `SubjectTable` lends its path matching."""
    what = "subject CSV" if subject_csv else "mask CSV"
    try:
        with open(str(path), newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = [(h or "").strip() for h in (reader.fieldnames or [])]
            if "path" not in header or "mask" not in header:
                raise MaskError(f"the {what} {path} needs 'path' and 'mask' columns for the masks, found "
                                f"{', '.join(header[:8]) or 'none'}.")
            reader.fieldnames = header
            cells = {(row.get("path") or "").strip(): (row.get("mask") or "").strip() for row in reader}
    except FileNotFoundError:
        raise MaskError(f"the {what} {path} does not exist.") from None
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise MaskError(f"the {what} {path} cannot be read as a UTF-8 CSV ({type(err).__name__}).") from None
    return SubjectTable(subjects={k: v for k, v in cells.items() if k and v}), Path(str(path)).parent, str(path)


# ------------------------------------------------------------------------------------ per input
@dataclass
class Mask:
    """One input's label image as read: int16 labels on their own grid."""

    path: str
    labels: np.ndarray
    meta: ImageMeta


def read_mask(path: str, s: PreprocessSettings) -> Mask:
    """Read a label image and check its values are integer labels.

    Raises:
        MaskReadError: unreadable, non-integer values or labels beyond int16 (the message names the file).
    """
    try:
        kind = "nifti" if path.lower().endswith(NIFTI_SUFFIXES) else "sitk"
        values, meta = read_source(Source(path, kind), "OT", max_bytes=int(s.input.max_gib * 2**30))
    except ReadError as err:
        raise MaskReadError(f"mask {err}") from None
    if values.ndim == 4:
        raise MaskReadError(f"mask {path}: a 4D image (shape {values.shape}) cannot be a label map")
    try:
        labels = lab.as_labels(values, path)
    except lab.LabelError as err:
        raise MaskReadError(f"mask {err}") from None
    return Mask(path, labels, meta)


def check_overlap(mask: Mask, image_shape: tuple[int, ...], image_meta: ImageMeta, s: PreprocessSettings) -> list[str]:
    """Refuse a mask outside its image's extent; warn (returned) when it covers less than ``masks.min_coverage``.

    Raises:
        MaskReadError: no voxel of the image lies inside the mask's extent.
    """
    cover = lab.coverage(mask.labels.shape, mask.meta, image_shape, image_meta)
    if cover == 0.0:
        raise MaskReadError(f"mask {mask.path} does not overlap its image {image_meta.source} in space (mask "
                            f"{lab.describe_extent(mask.labels.shape, mask.meta)}, image "
                            f"{lab.describe_extent(image_shape, image_meta)}); check that it belongs to this image")
    if cover < s.masks.min_coverage:
        return [f"mask {mask.path} covers only {cover:.0%} of its image {image_meta.source}; the rest is labelled 0"]
    return []


def on_grid(mask: Mask, shape: tuple[int, ...], meta: ImageMeta) -> tuple[np.ndarray, ImageMeta]:
    """The mask resampled (nearest neighbour) onto the grid ``(shape, meta.affine)`` of an image volume,
    with that image's metadata (same affine, subject, slicing attributes) as a label map."""
    labels, _ = lab.resample_labels(mask.labels, mask.meta, tuple(shape), meta)
    attrs = {"mask_source": mask.path, "image_source": meta.source}
    return labels, meta.replace(intensity=LABEL_MAPPING, source=mask.path, attrs=attrs)


def with_counts(labels: np.ndarray, meta: ImageMeta) -> ImageMeta:
    """Record the labels present and their voxel counts in the item's attributes."""
    counts = lab.label_counts(labels)
    return meta.replace(attrs={"labels": list(counts), "label_counts": {str(k): v for k, v in counts.items()}})
