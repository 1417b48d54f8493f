"""Spatial transforms that keep the affine exact: reorient, resample, fit, crop/pad.

Every function maps ``(array, meta)`` to ``(array, meta)``; arrays are 2D ``(i, j)`` or 3D
``(i, j, k)`` in voxel order and ``meta.affine`` is voxel -> RAS+ mm. The rule throughout: a
voxel that survives a transform keeps its world position, so the new affine is the old one
composed with the map from new to old voxel index.

Resampling convention (ours, stated once): the output grid covers the same field of view and is
centred on the same world point; along each axis ``n_new = max(1, round_half_up(n * s / s_new))`` and
the centre index ``(n_new - 1) / 2`` maps onto the old centre ``(n - 1) / 2``. When
``n * s / s_new`` is an integer the fields of view coincide edge to edge (torch's
``align_corners=False``). Keeping the first voxel centre instead (a common ITK recipe) would move
the centre of the field by ``(s_new - s) / 2`` towards the first voxel at every resampling.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import nibabel.orientations as nio
import numpy as np

from medgen_cli.meta import ImageMeta
from medgen_cli.preprocess import _resample
from medgen_cli.preprocess._resample import ORDERS

log = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "sitk")
# `auto` picks torch, per benchmarks/bench_resample.py (512x512x256 float32, 0.7x0.7x1.25 mm ->
# 1.5 mm isotropic, linear, anti-aliased, 2 threads, median of 3, machine shared with other
# jobs): torch 0.69 s, SimpleITK 2.34 s (its DiscreteGaussian dominates), i.e. 3.4x; the two
# agree to 8.9e-6 (max abs, interior of a smooth phantom spanning [-1, 1]). Without
# anti-aliasing both take 0.40 s; the plain baselines (no smoothing, one fused pass) take
# sitk.Resample 0.19 s and F.interpolate 0.11 s. See benchmarks/results/resample.json.
AUTO_BACKEND = "torch"

_AXIS_PAIRS = ({"L", "R"}, {"A", "P"}, {"S", "I"})


def _check_ndim(arr: np.ndarray) -> None:
    if arr.ndim not in (2, 3):
        raise ValueError(f"expected a 2D (i, j) or 3D (i, j, k) array, got shape {arr.shape}")


def _translate(offset: Sequence[float]) -> np.ndarray:
    t = np.eye(4)
    t[: len(offset), 3] = offset
    return t


def default_threshold(arr: np.ndarray, background: float) -> float:
    """Foreground threshold ``background + eps``, ``eps = 1e-3 * (max - background)`` (tiny, but
    above float noise of the background value).

    Args:
        arr: the image.
        background: the background value.
    """
    return float(background) + 1e-3 * max(float(np.max(arr)) - float(background), 0.0)


# --------------------------------------------------------------------------------------------
# Orientation
# --------------------------------------------------------------------------------------------

def _check_code(code: str) -> str:
    c = str(code).upper()
    if len(c) != 3 or any(sum(ch in pair for ch in c) != 1 for pair in _AXIS_PAIRS):
        raise ValueError(f"orientation must be 3 letters with one of L/R, A/P and S/I (e.g. RAS, LPS), got {code!r}")
    return c


def orientation_code(meta: ImageMeta) -> str:
    """The 3-letter code (RAS+ convention, e.g. ``"LPS"``) of the voxel axes' directions.

    Args:
        meta: image metadata.
    """
    return "".join(nio.aff2axcodes(meta.affine))


def reorient(arr: np.ndarray, meta: ImageMeta, target: str = "RAS") -> tuple[np.ndarray, ImageMeta]:
    """Permute and flip axes so that they point along ``target`` (no interpolation).

    A 2D array is treated as ``(i, j, 1)`` with the slice normal as third affine column; the
    in-plane axes are reoriented and the result stays 2D (its third column is the normal).

    Args:
        arr: 2D or 3D array.
        meta: image metadata.
        target: orientation code, each letter the direction an axis *points to* ("RAS", "LPS", ...).
    """
    _check_ndim(arr)
    code = _check_code(target)
    vol = arr if arr.ndim == 3 else arr[..., None]
    ornt = nio.io_orientation(meta.affine)
    if np.isnan(ornt).any():
        raise ValueError(f"affine has a degenerate axis, cannot reorient:\n{meta.affine}")
    tr = nio.ornt_transform(ornt, nio.axcodes2ornt(tuple(code)))
    out = nio.apply_orientation(vol, tr)
    affine = meta.affine @ nio.inv_ornt_aff(tr, vol.shape)
    if arr.ndim == 2:
        k_axis = int(tr[2, 0])  # where the singleton slice axis went
        perm = [a for a in range(3) if a != k_axis] + [k_axis]
        out = out.transpose(perm)[..., 0]
        affine[:, :3] = affine[:, perm]
    return np.ascontiguousarray(out), meta.with_affine(affine)


# --------------------------------------------------------------------------------------------
# Resampling
# --------------------------------------------------------------------------------------------

def _parse_spacing(spacing, current: Sequence[float]) -> list[float]:
    ndim = len(current)
    if spacing is None or np.isscalar(spacing):
        spacing = [spacing] * ndim
    spacing = list(spacing)
    if len(spacing) != ndim:
        raise ValueError(f"spacing needs {ndim} values (one per axis, None = keep), got {spacing!r}")
    out = []
    for s, cur in zip(spacing, current):
        if s is None:
            out.append(float(cur))
            continue
        s = float(s)
        if not (np.isfinite(s) and s > 0):
            raise ValueError(f"spacing values must be finite and > 0, got {spacing!r}")
        out.append(s)
    return out


def _resolve_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return AUTO_BACKEND if backend == "auto" else backend


def resample(
    arr: np.ndarray,
    meta: ImageMeta,
    spacing: float | Sequence[float | None],
    order: str = "linear",
    antialias: bool = True,
    backend: str = "auto",
    fill: float | None = None,
) -> tuple[np.ndarray, ImageMeta]:
    """Resample to a new voxel spacing over the same field of view (see the module docstring).

    When an axis is downsampled by ``r = new / old > 1`` and ``antialias`` is set, it is first
    smoothed by a Gaussian of ``sigma = (r - 1) / 2`` input voxels (scikit-image's choice).
    ``order="nearest"`` never smooths (label maps) and keeps the dtype; the others return float32.

    Args:
        arr: 2D or 3D array.
        meta: image metadata.
        spacing: new spacing in mm, one number for all axes or one per axis (None keeps an axis).
        order: "nearest", "linear" or "bspline" (cubic B-spline, as ITK's).
        antialias: smooth before downsampling.
        backend: "torch", "sitk", or "auto" (the faster one in benchmarks/bench_resample.py).
        fill: value for points outside the input (default: the array minimum).
    """
    _check_ndim(arr)
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    backend = _resolve_backend(backend)
    current = meta.spacing[: arr.ndim]
    new_spacing = _parse_spacing(spacing, current)
    grid = _resample.output_grid(arr.shape, current, new_spacing)
    smooth = antialias and order != "nearest"
    sigmas = [_resample.antialias_sigma(r) if smooth else 0.0 for r in grid.scale]
    fill = float(np.min(arr)) if fill is None else float(fill)
    if backend == "sitk":
        out = _resample.resample_sitk(arr, current, grid, order, sigmas, fill)
    else:
        out = _resample.resample_torch(arr, grid, order, sigmas, fill)
    return out, meta.with_affine(meta.affine @ grid.index_transform())


def gaussian_filter(arr: np.ndarray, sigma: float | Sequence[float]) -> np.ndarray:
    """Separable Gaussian smoothing with replicated borders (float32 result).

    Args:
        arr: array of any rank.
        sigma: standard deviation in voxels, one for all axes or one per axis (0 = no smoothing).
    """
    sig = [float(sigma)] * arr.ndim if np.isscalar(sigma) else [float(s) for s in sigma]
    if len(sig) != arr.ndim or any(not np.isfinite(s) or s < 0 for s in sig):
        raise ValueError(f"sigma must be >= 0, one value or one per axis of a {arr.ndim}D array, got {sigma!r}")
    return _resample.smooth(arr, sig)


# --------------------------------------------------------------------------------------------
# Crop, pad, fit
# --------------------------------------------------------------------------------------------

def foreground_bbox(arr: np.ndarray, threshold: float) -> tuple[slice, ...] | None:
    """Bounding box of the voxels ``> threshold`` as slices (None when there are none).

    Args:
        arr: array of any rank.
        threshold: values strictly above it are foreground.
    """
    fg = np.asarray(arr) > threshold
    if not fg.any():
        return None
    box = []
    for a in range(fg.ndim):
        hit = np.flatnonzero(fg.any(axis=tuple(b for b in range(fg.ndim) if b != a)))
        box.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return tuple(box)


def _parse_shape(shape, current: Sequence[int]) -> list[int]:
    shape = list(shape)
    if len(shape) != len(current):
        raise ValueError(f"shape needs {len(current)} values (None = keep an axis), got {shape!r}")
    out = []
    for s, n in zip(shape, current):
        if s is None:
            out.append(int(n))
        elif int(s) != s or int(s) < 1:
            raise ValueError(f"shape values must be positive integers, got {shape!r}")
        else:
            out.append(int(s))
    return out


def _place(arr: np.ndarray, meta: ImageMeta, shape: Sequence[int], offsets: Sequence[int], background: float):
    """New array of ``shape`` whose index ``m`` holds old index ``m + offset`` (background elsewhere)."""
    out = np.full(shape, background, dtype=arr.dtype)
    src, dst = [], []
    for n, s, o in zip(arr.shape, shape, offsets):
        lo, hi = max(o, 0), min(o + s, n)
        if hi <= lo:  # no overlap at all along this axis
            return out, meta.with_affine(meta.affine @ _translate(offsets))
        src.append(slice(lo, hi))
        dst.append(slice(lo - o, hi - o))
    out[tuple(dst)] = arr[tuple(src)]
    return out, meta.with_affine(meta.affine @ _translate(offsets))


def crop_or_pad(
    arr: np.ndarray,
    meta: ImageMeta,
    shape: Sequence[int | None],
    mode: str = "center",
    background: float | None = None,
    threshold: float | None = None,
) -> tuple[np.ndarray, ImageMeta]:
    """Crop and/or pad to ``shape``; every kept voxel keeps its world position.

    ``mode="center"`` aligns the centres (new index ``m`` = old ``m + (n - s) // 2``).
    ``mode="foreground"`` centres the window on the bounding box of ``arr > threshold``, then
    shifts it to keep as much of the image as possible (a crop stays inside the image, a pad
    keeps the whole image); without foreground it falls back to "center".

    Args:
        arr: 2D or 3D array.
        meta: image metadata.
        shape: output shape (None keeps an axis).
        mode: "center" or "foreground".
        background: pad value (default: the array minimum).
        threshold: foreground means ``> threshold`` (default: background + a small epsilon).
    """
    _check_ndim(arr)
    if mode not in ("center", "foreground"):
        raise ValueError(f"mode must be 'center' or 'foreground', got {mode!r}")
    shape = _parse_shape(shape, arr.shape)
    background = float(np.min(arr)) if background is None else float(background)
    offsets = [(n - s) // 2 for n, s in zip(arr.shape, shape)]
    if mode == "foreground":
        thr = default_threshold(arr, background) if threshold is None else float(threshold)
        box = foreground_bbox(arr, thr)
        if box is None:
            log.warning("crop_or_pad: no voxel above %g, centring instead", thr)
        else:
            offsets = []
            for b, n, s in zip(box, arr.shape, shape):
                o = int(np.floor((b.start + b.stop - 1) / 2 - (s - 1) / 2))
                offsets.append(int(np.clip(o, min(0, n - s), max(0, n - s))))
    return _place(arr, meta, shape, offsets, background)


def fit(
    arr: np.ndarray,
    meta: ImageMeta,
    size: Sequence[int],
    order: str = "linear",
    antialias: bool = True,
    background: float | None = None,
    backend: str = "auto",
) -> tuple[np.ndarray, ImageMeta]:
    """Scale to fit inside ``size`` keeping the physical aspect ratio, then pad to exactly ``size``.

    The output spacing is isotropic, ``max over axes of extent / size`` with
    ``extent = n * spacing``, so the whole field of view fits; the shorter axes are padded
    (centred) with ``background``.

    Args:
        arr: 2D or 3D array.
        meta: image metadata.
        size: output shape, one integer per array axis.
        order: interpolation order, as in :func:`resample`.
        antialias: smooth before downsampling.
        background: pad value (default: the array minimum).
        backend: as in :func:`resample`.
    """
    _check_ndim(arr)
    size = list(size)
    if len(size) != arr.ndim or any(int(s) != s or int(s) < 1 for s in size):
        raise ValueError(f"size needs {arr.ndim} positive integers, got {size!r}")
    background = float(np.min(arr)) if background is None else float(background)
    extent = np.asarray(arr.shape) * np.asarray(meta.spacing[: arr.ndim])
    s = float(np.max(extent / np.asarray(size, dtype=np.float64)))
    out, m = resample(arr, meta, [s] * arr.ndim, order=order, antialias=antialias, backend=backend, fill=background)
    return crop_or_pad(out, m, [int(v) for v in size], mode="center", background=background)
