"""Cut volumes into 2D slices and 2D+T slice sequences, each with its own 3D affine.

A slice ``k`` of a volume whose slicing axis is last keeps the volume's affine columns and gets
the origin ``affine @ (0, 0, k, 1)``: its voxel ``(i, j, 0)`` is the volume's ``(i, j, k)``, and
the third column (normal x slice thickness) says where neighbouring slices lie. A sequence of
``T`` slices is a thin volume ``(I, J, T)`` whose origin is its first slice.

A paired copy of a volume (a derived low-dose or downsampled volume with the same slicing axis) is
cut into the same pieces by passing the indices of the original's pieces: ``which`` (slices) or
``starts`` (sequences) with ``min_foreground=0``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medgen_cli.meta import ImageMeta
from medgen_cli.preprocess.spatial import default_threshold


def _check_volume(arr: np.ndarray, axis: int) -> int:
    if arr.ndim != 3:
        raise ValueError(f"expected a 3D (i, j, k) array, got shape {arr.shape}")
    if axis not in (0, 1, 2, -1, -2, -3):
        raise ValueError(f"axis must be 0, 1 or 2, got {axis!r}")
    return axis % 3


def move_axis_last(arr: np.ndarray, meta: ImageMeta, axis: int) -> tuple[np.ndarray, ImageMeta]:
    """Permute a volume so that ``axis`` becomes the last one (affine columns permuted alike).

    Args:
        arr: 3D array.
        meta: image metadata.
        axis: the axis to move last (0, 1 or 2).
    """
    axis = _check_volume(arr, axis)
    if axis == 2:
        return arr, meta
    perm = [a for a in range(3) if a != axis] + [axis]
    affine = meta.affine.copy()
    affine[:, :3] = meta.affine[:, perm]
    return np.ascontiguousarray(arr.transpose(perm)), meta.with_affine(affine)


def _slab_meta(meta: ImageMeta, k: int, attrs: dict) -> ImageMeta:
    affine = meta.affine.copy()
    affine[:, 3] = meta.affine @ np.array([0.0, 0.0, float(k), 1.0])
    return meta.replace(affine=affine, attrs=attrs)


def _foreground_fraction(vol: np.ndarray, background: float | None) -> np.ndarray:
    """Per slice (last axis) fraction of voxels above ``background + eps``."""
    bg = float(np.min(vol)) if background is None else float(background)
    thr = default_threshold(vol, bg)
    return np.mean(vol > thr, axis=(0, 1))


def extract_slices(
    arr: np.ndarray,
    meta: ImageMeta,
    axis: int = 2,
    which: str | int | Sequence[int] = "all",
    min_foreground: float = 0.05,
    background: float | None = None,
) -> list[tuple[np.ndarray, ImageMeta]]:
    """2D slices along ``axis``, dropping near-empty ones.

    A slice is kept when at least ``min_foreground`` of its pixels are above
    ``background + eps`` (eps as in :func:`~medgen_cli.preprocess.spatial.default_threshold`);
    this applies to every ``which``, so ``"center"`` can return an empty list.

    Args:
        arr: 3D array.
        meta: image metadata.
        axis: slicing axis (0, 1 or 2).
        which: "all", "center" (index ``n // 2``), an index, or a list of indices.
        min_foreground: minimum foreground fraction in [0, 1] (0 keeps every slice).
        background: background value (default: the volume minimum).

    Returns:
        ``[(slice2d, meta2d), ...]``; ``meta2d.attrs`` has ``slice_index`` and ``slice_axis``.
    """
    axis = _check_volume(arr, axis)
    if not 0.0 <= min_foreground <= 1.0:
        raise ValueError(f"min_foreground must be in [0, 1], got {min_foreground!r}")
    vol, m = move_axis_last(arr, meta, axis)
    n = vol.shape[2]
    if which == "all":
        ks = list(range(n))
    elif which == "center":
        ks = [n // 2]
    else:
        ks = [which] if np.isscalar(which) else list(which)
        if any(isinstance(k, str) or int(k) != k or not -n <= int(k) < n for k in ks):
            raise ValueError(f"which must be 'all', 'center' or slice indices in [0, {n}), got {which!r}")
        ks = [int(k) % n for k in ks]
    frac = _foreground_fraction(vol, background)
    return [
        (np.ascontiguousarray(vol[:, :, k]), _slab_meta(m, k, {"slice_index": k, "slice_axis": axis}))
        for k in ks
        if frac[k] >= min_foreground
    ]


def extract_sequences(
    arr: np.ndarray,
    meta: ImageMeta,
    axis: int = 2,
    length: int = 8,
    stride: int | None = None,
    min_foreground: float = 0.0,
    background: float | None = None,
    starts: Sequence[int] | None = None,
) -> list[tuple[np.ndarray, ImageMeta]]:
    """Runs of ``length`` consecutive slices along ``axis``, as thin volumes ``(I, J, length)``.

    Windows start at ``0, stride, 2 * stride, ...`` while they fit (or at ``starts``); a volume
    shorter than ``length`` gives no sequence. A window is kept when its mean foreground fraction
    (as in :func:`extract_slices`) is at least ``min_foreground``.

    Args:
        arr: 3D array.
        meta: image metadata.
        axis: slicing axis (0, 1 or 2); it becomes the last axis of each sequence.
        length: slices per sequence (T >= 1).
        stride: step between window starts (default: ``length``, no overlap).
        min_foreground: minimum mean foreground fraction in [0, 1].
        background: background value (default: the volume minimum).
        starts: explicit first slices of the windows (e.g. those of another volume's sequences);
            each must leave room for ``length`` slices.

    Returns:
        ``[(seq, meta), ...]``; ``meta.attrs`` has ``slice_start``, ``length`` and ``slice_axis``.
    """
    axis = _check_volume(arr, axis)
    stride = length if stride is None else stride
    for name, v in (("length", length), ("stride", stride)):
        if isinstance(v, bool) or int(v) != v or int(v) < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    length, stride = int(length), int(stride)
    if not 0.0 <= min_foreground <= 1.0:
        raise ValueError(f"min_foreground must be in [0, 1], got {min_foreground!r}")
    vol, m = move_axis_last(arr, meta, axis)
    ks = range(0, vol.shape[2] - length + 1, stride) if starts is None else [int(k) for k in starts]
    bad = [k for k in ks if not 0 <= k <= vol.shape[2] - length]
    if bad:
        raise ValueError(f"starts must be in [0, {vol.shape[2] - length}] for {length} slices of {vol.shape[2]}, got {bad[0]}")
    frac = _foreground_fraction(vol, background)
    out = []
    for k in ks:
        if frac[k:k + length].mean() >= min_foreground:
            attrs = {"slice_start": k, "length": length, "slice_axis": axis}
            out.append((np.ascontiguousarray(vol[:, :, k:k + length]), _slab_meta(m, k, attrs)))
    return out
