"""Preprocessing as pure functions ``(array, meta, ...) -> (array, meta)``: no IO, no globals.

* :mod:`.intensity`: CT windows, percentile / z-score / min-max normalisation, an HU check.
* :mod:`.spatial`: reorient, resample (SimpleITK or torch backend), fit, crop/pad.
* :mod:`.slicing`: 2D slices and 2D+T slice sequences out of volumes.
* :mod:`.splits`: subject-level train/val/test splits, subject ids from paths or a CSV.
* :mod:`.derive`: paired data: DRRs, simulated low-dose CT, degraded resolution.
* :mod:`.derive_modes`: the registry of derived paired stores (``derive.outputs``: drr, lowdose,
  downsample:F) that the settings validate against and the preprocess step dispatches through.

The ``preprocess`` step composes these, does the IO, and records the function list and
parameters in its manifest.

The names below are loaded on first use (PEP 562), so that importing one light submodule (the
settings import :mod:`.derive_modes`) does not import torch and SimpleITK with the resampling code.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOME = {
    "downsample": "derive", "drr": "derive", "lowdose": "derive", "projection_axis": "derive",
    "WINDOW_PRESETS": "intensity", "looks_like_hu": "intensity", "minmax": "intensity", "parse_window": "intensity",
    "percentile_normalize": "intensity", "window": "intensity", "zscore": "intensity",
    "extract_sequences": "slicing", "extract_slices": "slicing", "move_axis_last": "slicing",
    "crop_or_pad": "spatial", "fit": "spatial", "foreground_bbox": "spatial", "gaussian_filter": "spatial",
    "orientation_code": "spatial", "reorient": "spatial", "resample": "spatial",
    "assign_splits": "splits", "load_subject_csv": "splits", "subject_from_path": "splits",
}

__all__ = sorted(_HOME)


def __getattr__(name: str) -> Any:
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOME))
