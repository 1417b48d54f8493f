"""Intensity mappings: CT windows, percentile / z-score / min-max normalisation, an HU check.

Every function returns ``(stored, meta)`` where ``meta.intensity`` is the
:class:`~medgen_cli.meta.IntensityMapping` that produced ``stored``, so
``meta.intensity.to_physical(stored)`` gives back the (clipped) physical values. The stored
values are computed *through* that mapping (``mapping.to_stored``), which is what guarantees the
round trip.

Input arrays are in physical units (HU for CT). When the incoming ``meta.intensity`` is not an
identity mapping (the array was already normalised), the array is first mapped back to physical
units with it, so mappings compose instead of silently stacking.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from medgen_cli.meta import ImageMeta, IntensityMapping
from medgen_cli.windows import WINDOW_PRESETS, parse_window

log = logging.getLogger(__name__)

_TRANSFORMS = ("linear", "log")


def _check_out_range(out_range: Sequence[float]) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in out_range)
    except (TypeError, ValueError):
        raise ValueError(f"out_range must be two numbers, got {out_range!r}") from None
    if lo == hi or not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError(f"out_range must be two distinct finite numbers, got {out_range!r}")
    return lo, hi


def _check_transform(transform: str) -> None:
    if transform not in _TRANSFORMS:
        raise ValueError(f"transform must be one of {_TRANSFORMS}, got {transform!r}")


def is_identity(m: IntensityMapping) -> bool:
    """Whether stored values equal physical values under ``m``."""
    return m.transform == "linear" and m.in_low == m.out_low and m.in_high == m.out_high


def physical_values(arr: np.ndarray, meta: ImageMeta) -> np.ndarray:
    """The array in physical units as float32 (a no-op when ``meta.intensity`` is the identity).

    Args:
        arr: stored values.
        meta: their metadata.
    """
    a = np.asarray(arr, dtype=np.float32)
    if is_identity(meta.intensity):
        return a
    log.debug("mapping values back to %s through %s before re-mapping", meta.intensity.unit, meta.intensity.method)
    return np.asarray(meta.intensity.to_physical(a), dtype=np.float32)


def physical_unit(meta: ImageMeta) -> str:
    """The physical unit of the image's values ("HU" for a CT whose unit was left unset)."""
    unit = meta.intensity.unit
    if unit == "a.u." and meta.modality == "CT":
        return "HU"
    return unit


def _masked(values: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    if mask is None:
        return values
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != values.shape:
        raise ValueError(f"mask shape {mask.shape} does not match array shape {values.shape}")
    if not mask.any():
        raise ValueError("mask selects no voxels")
    return values[mask]


def _apply(values: np.ndarray, meta: ImageMeta, mapping: IntensityMapping) -> tuple[np.ndarray, ImageMeta]:
    return mapping.to_stored(values), meta.replace(intensity=mapping)


def _span(lo: float, hi: float, what: str) -> tuple[float, float]:
    """Guard against a constant image (a mapping needs ``hi > lo``)."""
    if not hi > lo:
        log.warning("%s: constant intensity %g; using a unit-wide range", what, lo)
        hi = lo + 1.0
    return lo, hi


def window(
    arr: np.ndarray,
    meta: ImageMeta,
    center: float,
    width: float,
    out_range: Sequence[float] = (-1.0, 1.0),
    transform: str = "linear",
    unit: str = "HU",
) -> tuple[np.ndarray, ImageMeta]:
    """Clip to the window ``[C - W/2, C + W/2]`` and map it onto ``out_range``.

    Args:
        arr: physical values (HU for CT).
        meta: image metadata.
        center, width: window centre and width (``width > 0``); see :data:`WINDOW_PRESETS`.
        out_range: stored values of the window's low and high ends.
        transform: "linear", or "log" (compresses the upper part of the window).
        unit: physical unit recorded in the mapping.
    """
    center, width = parse_window((center, width))
    lo_out, hi_out = _check_out_range(out_range)
    _check_transform(transform)
    mapping = IntensityMapping(
        method="window", unit=unit, in_low=center - width / 2, in_high=center + width / 2,
        out_low=lo_out, out_high=hi_out, clip=True, transform=transform,
    )
    return _apply(physical_values(arr, meta), meta, mapping)


def percentile_normalize(
    arr: np.ndarray,
    meta: ImageMeta,
    low: float = 0.5,
    high: float = 99.5,
    out_range: Sequence[float] = (-1.0, 1.0),
    transform: str = "linear",
    mask: np.ndarray | None = None,
) -> tuple[np.ndarray, ImageMeta]:
    """Clip to the ``[low, high]`` percentiles (of the voxels in ``mask``) and map onto ``out_range``.

    Args:
        arr: physical values.
        meta: image metadata.
        low, high: percentiles in [0, 100], ``low < high``.
        out_range: stored values of the two percentiles.
        transform: "linear" or "log".
        mask: optional boolean array; percentiles are taken over ``arr[mask]``.
    """
    if not (0.0 <= low < high <= 100.0):
        raise ValueError(f"percentiles need 0 <= low < high <= 100, got low={low}, high={high}")
    lo_out, hi_out = _check_out_range(out_range)
    _check_transform(transform)
    values = physical_values(arr, meta)
    p_lo, p_hi = np.percentile(_masked(values, mask), [low, high])
    p_lo, p_hi = _span(float(p_lo), float(p_hi), "percentile_normalize")
    mapping = IntensityMapping(
        method="percentile", unit=physical_unit(meta), in_low=p_lo, in_high=p_hi,
        out_low=lo_out, out_high=hi_out, clip=True, transform=transform,
    )
    return _apply(values, meta, mapping)


def minmax(
    arr: np.ndarray,
    meta: ImageMeta,
    out_range: Sequence[float] = (-1.0, 1.0),
    transform: str = "linear",
    mask: np.ndarray | None = None,
) -> tuple[np.ndarray, ImageMeta]:
    """Map ``[min, max]`` (of the voxels in ``mask``) onto ``out_range``; values outside are clipped.

    Args:
        arr: physical values.
        meta: image metadata.
        out_range: stored values of the minimum and maximum.
        transform: "linear" or "log".
        mask: optional boolean array selecting the voxels that define min and max.
    """
    lo_out, hi_out = _check_out_range(out_range)
    _check_transform(transform)
    values = physical_values(arr, meta)
    sel = _masked(values, mask)
    lo, hi = _span(float(sel.min()), float(sel.max()), "minmax")
    mapping = IntensityMapping(
        method="minmax", unit=physical_unit(meta), in_low=lo, in_high=hi,
        out_low=lo_out, out_high=hi_out, clip=True, transform=transform,
    )
    return _apply(values, meta, mapping)


def zscore(arr: np.ndarray, meta: ImageMeta, mask: np.ndarray | None = None) -> tuple[np.ndarray, ImageMeta]:
    """Subtract the mean and divide by the standard deviation (of the voxels in ``mask``); no clipping.

    The mapping is recorded as ``mean -> 0`` and ``mean + std -> 1``.

    Args:
        arr: physical values.
        meta: image metadata.
        mask: optional boolean array selecting the voxels that define mean and std.
    """
    values = physical_values(arr, meta)
    sel = _masked(values, mask).astype(np.float64)
    mean, std = float(sel.mean()), float(sel.std())
    mean, hi = _span(mean, mean + std, "zscore")
    mapping = IntensityMapping(
        method="zscore", unit=physical_unit(meta), in_low=mean, in_high=hi,
        out_low=0.0, out_high=1.0, clip=False,
    )
    return _apply(values, meta, mapping)


def looks_like_hu(arr: np.ndarray) -> tuple[bool, str]:
    """Heuristic check that a "CT" array holds Hounsfield units.

    A CT in HU contains air (about -1000; scanners pad outside the field of view with values
    down to -3024), so its minimum lies in [-3100, -900] and a meaningful fraction (>= 1 %) of
    voxels is below -500 HU; its maximum stays below ~4000 (dense bone ~2000-3000). Raw stored
    values without the DICOM rescale typically have a minimum near 0 and may exceed 4000.

    Args:
        arr: the values to check.

    Returns:
        ``(ok, reason)``: whether the values look like HU and a one-sentence explanation.
    """
    a = np.asarray(arr)
    if a.size == 0:
        return False, "empty array"
    lo, hi = float(np.min(a)), float(np.max(a))
    air = float(np.mean(a < -500))
    facts = f"min {lo:g}, max {hi:g}, {100 * air:.1f}% of voxels below -500"
    if hi >= 4000:
        return False, f"{facts}: values >= 4000 suggest unscaled stored values (missing DICOM rescale?)"
    if lo > -900:
        return False, f"{facts}: no air near -1000 HU (missing rescale intercept, or not HU?)"
    if lo < -3100:
        return False, f"{facts}: values below -3100 are not Hounsfield units"
    if air < 0.01:
        return False, f"{facts}: almost no air-like voxels"
    return True, f"{facts}: consistent with Hounsfield units"
