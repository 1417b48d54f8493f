"""Label maps (segmentation masks): integer checks, coverage and nearest-neighbour resampling onto a grid.

A mask is carried to an image's *final* grid in one step, whatever the image went through
(reorientation, resampling, fit, crop/pad): every target voxel centre is mapped to world
millimetres by the target affine and back into the label image by the inverse of its affine,
``x = A_label^-1 @ A_target @ (i, j, k, 1)``, and takes the label of the nearest label voxel.
One rounding instead of one per geometric step, so labels are never shifted by accumulated
half-voxel roundings, and a label image on a different grid from its image (other spacing,
extent or orientation) lands where it belongs in space.

Conventions (the same as ITK's ``NearestNeighborInterpolateImageFunction``, so SimpleITK's
``Resample`` with ``sitkNearestNeighbor`` is an independent reference): the index is rounded half
up, ``floor(x + 0.5)``, and a point is inside the label image when that index is in
``[0, n - 1]`` on every axis (ITK's ``[-0.5, n - 0.5)``); points outside get ``fill`` (0, the
background label). A tie closer than ``TIE`` voxels to a half-integer is rounded up, so float noise
in the affine product cannot flip it. Labels are never interpolated: every output value is a value
of the input or ``fill``.

A 2D array is treated as ``(i, j, 1)``: its affine's third column is the slice normal scaled by
the slice thickness, so a 2D mask covers the points within half a thickness of its plane.
"""

from __future__ import annotations

import numpy as np

from medgen_cli.meta import ImageMeta

TIE = 1e-6  # voxels: |x - (m + 0.5)| below this rounds up, whatever the float noise
LABEL_DTYPE = np.int16  # the stored type (the item store holds float16, float32 or int16)
_BLOCK_VOXELS = 1 << 21  # target voxels mapped at once on the general (oblique) path


class LabelError(ValueError):
    """A label image that cannot be a mask: non-integer values, labels beyond int16, no overlap."""


def as_labels(values: np.ndarray, path: str) -> np.ndarray:
    """The integer labels of a mask read as floats; refuses non-integer values and values beyond int16.

    Args:
        values: the mask as read (any numeric dtype; readers give float32).
        path: the mask's file, named in the error.

    Raises:
        LabelError: a value is not an integer, or lies outside the int16 range.
    """
    values = np.asarray(values)
    if values.dtype.kind not in "iub":
        frac = values != np.round(values)
        if frac.any():
            example, count = float(values[frac].flat[0]), int(frac.sum())
            raise LabelError(f"{path}: the mask holds non-integer values (e.g. {example:g} in {count} voxel(s)), so it is "
                             "not a label map; give an image of integer labels, e.g. the segmentation before any resampling")
    info = np.iinfo(LABEL_DTYPE)
    lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if lo < info.min or hi > info.max:
        raise LabelError(f"{path}: the mask's labels span {lo:g}..{hi:g}, beyond the stored label range "
                         f"{info.min}..{info.max}; renumber the labels")
    return values.astype(LABEL_DTYPE)


def label_counts(labels: np.ndarray) -> dict[int, int]:
    """``{label: voxel count}`` of every value present, in increasing order of label."""
    values, counts = np.unique(np.asarray(labels), return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts)}


def _as3d(shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(shape) not in (2, 3):
        raise ValueError(f"expected a 2D (i, j) or 3D (i, j, k) grid, got shape {shape}")
    return (*shape, 1) if len(shape) == 2 else tuple(shape)  # type: ignore[return-value]


def index_map(label_meta: ImageMeta, target_meta: ImageMeta) -> np.ndarray:
    """(4, 4) map from target voxel index to label-image continuous index (through world mm)."""
    return np.linalg.inv(label_meta.affine) @ target_meta.affine


def _nearest(x: np.ndarray) -> np.ndarray:
    return np.floor(x + 0.5 + TIE).astype(np.int64)


def _axis_aligned(m: np.ndarray) -> list[int] | None:
    """For each target axis, the one label axis it moves along, when the map is a scaled signed
    permutation (the usual case: same orientation up to flips and axis order); else None."""
    a = np.abs(m[:3, :3])
    big = a > 1e-9 * max(float(a.max()), 1e-300)
    if not (big.sum(axis=0) == 1).all() or not (big.sum(axis=1) == 1).all():
        return None
    return [int(np.flatnonzero(big[:, t])[0]) for t in range(3)]


def resample_labels(labels: np.ndarray, label_meta: ImageMeta, shape: tuple[int, ...], target_meta: ImageMeta,
                    fill: int = 0) -> tuple[np.ndarray, int]:
    """Nearest-neighbour labels on the target grid ``(shape, target_meta.affine)`` (module docstring).

    Args:
        labels: 2D or 3D integer label array.
        label_meta: its metadata (the affine places it in the world).
        shape: the target grid's shape (2D or 3D).
        target_meta: the target grid's metadata (only its affine is used).
        fill: label of target points outside the label image.

    Returns:
        ``(array of shape `shape` and the labels' dtype, number of target voxels inside the label image)``.
    """
    src = np.asarray(labels)
    src3 = src.reshape(_as3d(src.shape))
    out_shape = _as3d(tuple(shape))
    m = index_map(label_meta, target_meta)
    axes = _axis_aligned(m)
    if axes is not None:
        out, inside = _separable(src3, m, axes, out_shape, fill)
    else:
        out, inside = _general(src3, m, out_shape, fill)
    return out.reshape(tuple(shape)), inside


def _separable(src: np.ndarray, m: np.ndarray, axes: list[int], out_shape, fill: int) -> tuple[np.ndarray, int]:
    """Per-axis index vectors and one gather: target axis t reads label axis ``axes[t]``."""
    index, valid = [], []
    for t, n_out in enumerate(out_shape):
        p = axes[t]
        x = m[p, t] * np.arange(n_out, dtype=np.float64) + m[p, 3]
        k = _nearest(x)
        ok = (k >= 0) & (k < src.shape[p])
        index.append(np.clip(k, 0, src.shape[p] - 1))
        valid.append(ok)
    moved = np.transpose(src, axes)  # label axis axes[t] becomes axis t
    out = moved[np.ix_(*index)]
    mask = valid[0][:, None, None] & valid[1][None, :, None] & valid[2][None, None, :]
    out = np.where(mask, out, np.asarray(fill, dtype=src.dtype))
    return np.ascontiguousarray(out, dtype=src.dtype), int(np.prod([v.sum() for v in valid]))


def _general(src: np.ndarray, m: np.ndarray, out_shape, fill: int) -> tuple[np.ndarray, int]:
    """Any affine (oblique grids): map a block of target slices at a time."""
    ni, nj, nk = out_shape
    out = np.full(out_shape, fill, dtype=src.dtype)
    ii, jj = np.meshgrid(np.arange(ni, dtype=np.float64), np.arange(nj, dtype=np.float64), indexing="ij")
    plane = m[:3, 0, None, None] * ii + m[:3, 1, None, None] * jj  # (3, ni, nj)
    inside = 0
    step = max(1, _BLOCK_VOXELS // max(ni * nj, 1))
    for k0 in range(0, nk, step):
        ks = np.arange(k0, min(nk, k0 + step), dtype=np.float64)
        x = plane[:, :, :, None] + (m[:3, 2, None] * ks[None, :] + m[:3, 3, None])[:, None, None, :]  # (3, ni, nj, b)
        idx = _nearest(x)
        ok = np.ones(idx.shape[1:], dtype=bool)
        for a in range(3):
            ok &= (idx[a] >= 0) & (idx[a] < src.shape[a])
        block = out[:, :, k0:k0 + len(ks)]
        block[ok] = src[idx[0][ok], idx[1][ok], idx[2][ok]]
        inside += int(ok.sum())
    return out, inside


def coverage(label_shape: tuple[int, ...], label_meta: ImageMeta, image_shape: tuple[int, ...], image_meta: ImageMeta,
             max_points: int = 200_000) -> float:
    """Fraction of the image's voxels that lie inside the label image's extent (on an even subsample).

    Args:
        label_shape, label_meta: the label image's grid.
        image_shape, image_meta: the image's grid (as read, before any geometric step).
        max_points: at most about this many image voxels are tested.
    """
    img3, lab3 = _as3d(tuple(image_shape)), _as3d(tuple(label_shape))
    stride = max(1, int(np.ceil((np.prod(img3, dtype=np.float64) / max_points) ** (1 / 3))))
    grids = np.meshgrid(*[np.arange(0, n, stride if n > 1 else 1, dtype=np.float64) for n in img3], indexing="ij")
    pts = np.stack([g.ravel() for g in grids] + [np.ones(grids[0].size)])
    idx = _nearest((index_map(label_meta, image_meta) @ pts)[:3])
    ok = np.all((idx >= 0) & (idx < np.asarray(lab3)[:, None]), axis=0)
    return float(ok.mean()) if ok.size else 0.0


def world_extent(shape: tuple[int, ...], meta: ImageMeta) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) RAS mm corners of the box around a grid's voxel centres (for messages)."""
    n = _as3d(tuple(shape))
    corners = np.array([[i, j, k, 1.0] for i in (0, n[0] - 1) for j in (0, n[1] - 1) for k in (0, n[2] - 1)])
    world = (meta.affine @ corners.T)[:3]
    return world.min(axis=1), world.max(axis=1)


def describe_extent(shape: tuple[int, ...], meta: ImageMeta) -> str:
    """``x -10..20, y ..., z ... mm (RAS)``: one phrase for error messages."""
    lo, hi = world_extent(shape, meta)
    return ", ".join(f"{a} {l:.0f}..{h:.0f}" for a, l, h in zip("xyz", lo, hi)) + " mm (RAS)"
