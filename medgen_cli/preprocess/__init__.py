"""Preprocessing as pure functions ``(array, meta, ...) -> (array, meta)``: no IO, no globals.

* :mod:`.intensity`: CT windows, percentile / z-score / min-max normalisation, an HU check.
* :mod:`.spatial`: reorient, resample (SimpleITK or torch backend), fit, crop/pad.
* :mod:`.slicing`: 2D slices and 2D+T slice sequences out of volumes.
* :mod:`.splits`: subject-level train/val/test splits, subject ids from paths or a CSV.
* :mod:`.derive`: paired data: DRRs, simulated low-dose CT, degraded resolution.

The ``preprocess`` step composes these, does the IO, and records the function list and
parameters in its manifest.
"""

from medgen_cli.preprocess.derive import downsample, drr, lowdose, projection_axis
from medgen_cli.preprocess.intensity import (
    WINDOW_PRESETS,
    looks_like_hu,
    minmax,
    parse_window,
    percentile_normalize,
    window,
    zscore,
)
from medgen_cli.preprocess.slicing import extract_sequences, extract_slices, move_axis_last
from medgen_cli.preprocess.spatial import (
    crop_or_pad,
    fit,
    foreground_bbox,
    gaussian_filter,
    orientation_code,
    reorient,
    resample,
)
from medgen_cli.preprocess.splits import assign_splits, load_subject_csv, subject_from_path

__all__ = [
    "WINDOW_PRESETS", "assign_splits", "crop_or_pad", "downsample", "drr", "extract_sequences",
    "extract_slices", "fit", "foreground_bbox", "gaussian_filter", "load_subject_csv", "looks_like_hu",
    "lowdose", "minmax", "move_axis_last", "orientation_code", "parse_window", "percentile_normalize",
    "projection_axis", "reorient", "resample", "subject_from_path", "window", "zscore",
]
