"""What a store holds, from its items' metadata alone (no voxel is read): what ``medgen inspect`` shows
and what ``preprocess`` records in its manifest's ``summary.stores``."""

from __future__ import annotations

from collections import Counter
from typing import Any, Sequence

import numpy as np

from ..meta import IntensityMapping
from .stacked import StackedView


def summarise(name: str, arrays: Sequence[Any], stacked_bytes: int = 0) -> dict[str, Any]:
    """Items per split, shapes, dtypes, modalities, intensity mappings, spacing range and sizes of a store.

    Args:
        name: the store's name (its ``name`` attribute).
        arrays: its items' zarr arrays (`StackedView` for stacked items); incomplete ones are only counted.
        stacked_bytes: bytes stored by the stack groups (their items' arrays do not know their share).
    """
    splits, shapes, mappings = Counter(), Counter(), Counter()
    dtypes, modalities, subjects = set(), set(), set()
    spacing_min = spacing_max = None
    raw = stored = incomplete = 0
    for arr in arrays:
        attrs = dict(arr.attrs)
        if not attrs.get("complete", False):
            incomplete += 1
            continue
        splits[attrs.get("split", "")] += 1
        shapes["x".join(str(s) for s in arr.shape)] += 1
        dtypes.add(str(arr.dtype))
        modalities.add(attrs.get("modality", "OT"))
        subjects.add(attrs.get("subject", ""))
        mappings[IntensityMapping.from_dict(attrs.get("intensity")).describe()] += 1
        sp = np.asarray(attrs.get("spacing", [1, 1, 1]), dtype=float)[: arr.ndim]
        spacing_min = sp if spacing_min is None else np.minimum(spacing_min, sp)
        spacing_max = sp if spacing_max is None else np.maximum(spacing_max, sp)
        raw += arr.nbytes
        stored += 0 if isinstance(arr, StackedView) else arr.nbytes_stored()
    stored += stacked_bytes
    return {
        "name": name, "items": sum(splits.values()), "incomplete_items": incomplete,
        "subjects": len(subjects), "splits": dict(sorted(splits.items())), "shapes": dict(shapes),
        "dtypes": sorted(dtypes), "modalities": sorted(modalities), "intensity": dict(mappings),
        "spacing_min": None if spacing_min is None else [round(float(v), 4) for v in spacing_min],
        "spacing_max": None if spacing_max is None else [round(float(v), 4) for v in spacing_max],
        "bytes_raw": int(raw), "bytes_stored": int(stored),
        "compression_ratio": round(raw / stored, 2) if stored else None,
    }
