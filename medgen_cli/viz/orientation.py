"""Display orientation of medical image slices, derived from the affine (radiological convention).

medgen arrays are in voxel order ``(i, j[, k])`` and ``ImageMeta.affine`` maps them to RAS+ world
millimetres. A slice is shown the way radiologists read it, whatever order the voxels were stored
in:

============  =======================  ==========================
plane         image columns run toward  image rows (downward) run toward
============  =======================  ==========================
axial         patient's left (L)        posterior (P)
coronal       patient's left (L)        inferior (I)
sagittal      posterior (P)             inferior (I)
============  =======================  ==========================

so the patient's right is on the image's left and anterior (axial) or superior (coronal,
sagittal) at the top. The rule: take ``nibabel.aff2axcodes`` of the affine (the world direction
each voxel axis increases toward), name the plane by the slice normal (S/I axial, A/P coronal,
L/R sagittal), flip each in-plane axis that runs the wrong way, and put the column axis second.
For a 2D item from a PNG (ITK's LPS identity, so the affine is ``diag(-1, -1, 1)``, ``i`` toward
L and ``j`` toward P) this is ``arr.T``: the original picture. Oblique axes take their dominant
direction for the layout; the edge letters come from the real direction cosines of the displayed
columns and rows (the nearest world axis), so an oblique acquisition is lettered truthfully.
Pixel aspect follows the voxel spacing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from nibabel.orientations import aff2axcodes

from ..meta import ImageMeta

OPPOSITE = {"L": "R", "R": "L", "A": "P", "P": "A", "S": "I", "I": "S"}
PLANE_OF_NORMAL = {"S": "axial", "I": "axial", "A": "coronal", "P": "coronal", "L": "sagittal", "R": "sagittal"}
# plane -> (columns run toward, rows run toward)
DISPLAY = {"axial": ("L", "P"), "coronal": ("L", "I"), "sagittal": ("P", "I")}
PLANES = tuple(DISPLAY)


@dataclass(frozen=True)
class DisplaySlice:
    """A 2D image ready for ``imshow(image, origin="upper", aspect=aspect)``.

    Args:
        image: (rows, columns) array.
        aspect: height / width of one pixel (row spacing / column spacing).
        plane: "axial", "coronal", "sagittal", or "slice" when the affine says nothing.
        edges: world letters at the (left, right, top, bottom) edges, e.g. ("R", "L", "A", "P").
    """

    image: np.ndarray
    aspect: float
    plane: str
    edges: tuple[str, str, str, str] | None


def _affine(meta_or_affine) -> np.ndarray:
    a = meta_or_affine.affine if isinstance(meta_or_affine, ImageMeta) else np.asarray(meta_or_affine, dtype=np.float64)
    if a.shape != (4, 4):
        raise ValueError(f"expected an ImageMeta or a 4x4 affine, got shape {a.shape}")
    return a


def axis_codes(meta_or_affine) -> tuple[str | None, str | None, str | None]:
    """World direction (RAS letter) each voxel axis increases toward; None for a degenerate axis."""
    return tuple(aff2axcodes(_affine(meta_or_affine)))


def plane_axis(meta_or_affine, plane: str) -> int:
    """The voxel axis to slice along to get ``plane`` ("axial", "coronal" or "sagittal")."""
    if plane not in DISPLAY:
        raise ValueError(f"plane must be one of {PLANES}, got {plane!r}")
    for axis, code in enumerate(axis_codes(meta_or_affine)):
        if code is not None and PLANE_OF_NORMAL[code] == plane:
            return axis
    raise ValueError(f"no voxel axis is normal to the {plane} plane (axis codes {axis_codes(meta_or_affine)})")


def resolve_axis(meta_or_affine, axis: int | str) -> int:
    """A voxel axis given as an index (0..2) or a plane name."""
    if isinstance(axis, str):
        return plane_axis(meta_or_affine, axis)
    if not isinstance(axis, (int, np.integer)) or not 0 <= int(axis) <= 2:
        raise ValueError(f"axis must be 0, 1, 2 or one of {PLANES}, got {axis!r}")
    return int(axis)


def display_plane(plane2d: np.ndarray, meta_or_affine, normal_axis: int) -> DisplaySlice:
    """Orient a 2D array whose axes are the voxel axes other than ``normal_axis`` (in order).

    Args:
        plane2d: (n_a, n_b) array, a slice or a projection along ``normal_axis``.
        meta_or_affine: ``ImageMeta`` or 4x4 voxel -> RAS affine of the volume.
        normal_axis: the voxel axis (0, 1 or 2) the plane is perpendicular to.
    """
    arr = np.asarray(plane2d)
    if arr.ndim != 2:
        raise ValueError(f"expected a 2D plane, got shape {arr.shape}")
    affine = _affine(meta_or_affine)
    normal_axis = resolve_axis(affine, normal_axis)
    in_plane = [a for a in range(3) if a != normal_axis]
    codes = axis_codes(affine)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    normal = codes[normal_axis]
    if normal is None and None not in (codes[in_plane[0]], codes[in_plane[1]]):
        used = {c for c in (codes[in_plane[0]], codes[in_plane[1]])} | {OPPOSITE[codes[a]] for a in in_plane}
        normal = next(c for c in "SAL" if c not in used)  # the world axis the plane leaves out
    if normal is None or None in (codes[in_plane[0]], codes[in_plane[1]]):
        # no usable geometry: first voxel axis across, second down
        aspect = _ratio(spacing[in_plane[1]], spacing[in_plane[0]])
        return DisplaySlice(np.ascontiguousarray(arr.T), aspect, "slice", None)
    plane = PLANE_OF_NORMAL[normal]
    col_dir, row_dir = DISPLAY[plane]
    axes, toward = {}, {}
    for pos, a in enumerate(in_plane):
        code = codes[a]
        for role, want in (("col", col_dir), ("row", row_dir)):
            if code in (want, OPPOSITE[want]):
                axes[role] = pos
                sign = 1.0 if code == want else -1.0
                if sign < 0:
                    arr = np.flip(arr, axis=pos)
                toward[role] = sign * affine[:3, a]  # world direction the image's columns / rows run
    image = arr if axes["row"] == 0 else arr.T
    aspect = _ratio(spacing[in_plane[axes["row"]]], spacing[in_plane[axes["col"]]])
    # letters from the real direction cosines: for oblique data, the nearest world axis of each edge
    right, bottom = nearest_letter(toward["col"]), nearest_letter(toward["row"])
    edges = (OPPOSITE[right], right, OPPOSITE[bottom], bottom)
    return DisplaySlice(np.ascontiguousarray(image), aspect, plane, edges)


def nearest_letter(direction: np.ndarray) -> str:
    """The RAS+ letter (R, L, A, P, S, I) of the world axis nearest to ``direction``."""
    d = np.asarray(direction, dtype=np.float64)
    axis = int(np.argmax(np.abs(d)))
    return ("LR", "PA", "IS")[axis][int(d[axis] > 0)]


def _ratio(num: float, den: float) -> float:
    return float(num / den) if num > 0 and den > 0 else 1.0


def display_slice(image: np.ndarray, meta_or_affine, axis: int | str = "axial",
                  index: int | None = None) -> DisplaySlice:
    """Take slice ``index`` (default: the centre) along ``axis`` and orient it for display.

    Args:
        image: (i, j, k) volume, or an (i, j) 2D item (then ``axis`` is ignored: its normal is k).
        meta_or_affine: ``ImageMeta`` or 4x4 voxel -> RAS affine.
        axis: voxel axis 0..2 or a plane name ("axial", "coronal", "sagittal").
        index: slice index along the axis.
    """
    arr = np.asarray(image)
    if arr.ndim == 2:
        return display_plane(arr, meta_or_affine, 2)
    if arr.ndim != 3:
        raise ValueError(f"expected an (i, j) image or (i, j, k) volume, got shape {arr.shape}")
    axis = resolve_axis(meta_or_affine, axis)
    n = arr.shape[axis]
    index = n // 2 if index is None else int(index)
    if not 0 <= index < n:
        raise ValueError(f"slice index {index} is outside 0..{n - 1} along axis {axis}")
    return display_plane(np.take(arr, index, axis=axis), meta_or_affine, axis)
