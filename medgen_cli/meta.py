"""The data model every step shares: an image is ``(array, ImageMeta)``.

Conventions (the same everywhere in medgen):

* Arrays are indexed in voxel order ``(i, j[, k])`` as nibabel does, never ITK's reversed
  ``(z, y, x)``; a channel axis is only added by the torch datasets.
* ``ImageMeta.affine`` is the 4x4 matrix from voxel index ``(i, j, k, 1)`` to **RAS+ world
  millimetres** (NIfTI's convention). ITK's LPS geometry is converted at the IO boundary.
  A 2D item (a slice, a radiograph) keeps a 3D affine: its index ``k`` is 0 and the third column
  is the slice normal scaled by the slice thickness, so a slice always knows where it lies.
* ``IntensityMapping`` records how stored values relate to physical values (HU for CT), so any
  later step can map model outputs back to physical units and compute metrics on the true range.
* ``ImageMeta.dicom`` keeps the source DICOM attributes an export needs to stay in its patient's
  study (identifiers, slice thickness, view, laterality); None when the source was not DICOM.
* ``standard_orientation`` lays an image out as radiologists read it (DICOM export, PNG).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

# LPS (ITK, DICOM) <-> RAS (NIfTI) flips the sign of the first two world axes.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def affine_from_geometry(spacing, origin, direction) -> np.ndarray:
    """Build a 4x4 affine from spacing (3,), origin (3,) and direction (3, 3) (columns = axes)."""
    spacing = np.asarray(spacing, dtype=np.float64)
    direction = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = direction * spacing[None, :]
    affine[:3, 3] = np.asarray(origin, dtype=np.float64)
    return affine


@dataclass(frozen=True)
class IntensityMapping:
    """How a stored value relates to a physical value.

    The mapping is linear (or log) through two points: physical ``in_low`` -> stored ``out_low``
    and physical ``in_high`` -> stored ``out_high``. With ``clip`` the physical values are first
    clipped to ``[in_low, in_high]`` (a CT window does this; a z-score does not).

    Args:
        method: how the two points were chosen ("window", "percentile", "zscore", "minmax",
            "identity"); descriptive only.
        unit: physical unit ("HU" for CT, "a.u." when the scanner gives arbitrary units).
        in_low, in_high: physical values of the two points.
        out_low, out_high: stored values of the two points.
        clip: whether physical values outside ``[in_low, in_high]`` were clipped.
        transform: "linear", or "log" (``log1p`` of the offset from ``in_low``, for heavy tails).
    """

    method: str = "identity"
    unit: str = "a.u."
    in_low: float = 0.0
    in_high: float = 1.0
    out_low: float = 0.0
    out_high: float = 1.0
    clip: bool = False
    transform: Literal["linear", "log"] = "linear"

    def __post_init__(self) -> None:
        if not self.in_high > self.in_low:
            raise ValueError(f"intensity mapping needs in_high > in_low, got {self.in_low}..{self.in_high}")
        if self.out_high == self.out_low:
            raise ValueError("intensity mapping needs out_high != out_low")

    @property
    def data_range(self) -> float | None:
        """Range of stored values when bounded (clipped mappings), else None (use the data)."""
        return abs(self.out_high - self.out_low) if self.clip else None

    @property
    def physical_range(self) -> float | None:
        return (self.in_high - self.in_low) if self.clip else None

    def _unit_interval(self, x):
        t = x - self.in_low
        if self.transform == "log":
            return np.log1p(np.maximum(t, 0.0)) / math.log1p(self.in_high - self.in_low)
        return t / (self.in_high - self.in_low)

    def to_stored(self, physical: np.ndarray) -> np.ndarray:
        """Physical values -> stored values (float32)."""
        x = np.asarray(physical, dtype=np.float64)
        if self.clip:
            x = np.clip(x, self.in_low, self.in_high)
        u = self._unit_interval(x)
        return (self.out_low + u * (self.out_high - self.out_low)).astype(np.float32)

    def to_physical(self, stored):
        """Stored values -> physical values; works on numpy arrays and torch tensors."""
        u = (stored - self.out_low) / (self.out_high - self.out_low)
        if self.transform == "log":
            scale = math.log1p(self.in_high - self.in_low)
            e = np.expm1(u * scale) if isinstance(u, np.ndarray) else (u * scale).expm1()
            return self.in_low + e
        return self.in_low + u * (self.in_high - self.in_low)

    def describe(self) -> str:
        """One line for people, e.g. ``window -1350..150 HU -> [-1, 1] (clipped)``."""
        log = ", log" if self.transform == "log" else ""
        clip = " (clipped)" if self.clip else ""
        return (f"{self.method} {self.in_low:g}..{self.in_high:g} {self.unit} -> "
                f"[{self.out_low:g}, {self.out_high:g}]{clip}{log}")

    def to_dict(self) -> dict[str, Any]:
        # the fields are plain scalars: a shallow dict equals dataclasses.asdict, at a tenth of its cost
        # (it is built for every stacked item written)
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "IntensityMapping":
        return cls(**d) if d else cls()


@dataclass(frozen=True)
class ImageMeta:
    """Everything medgen knows about an image besides its voxels.

    Args:
        affine: (4, 4) voxel index -> RAS+ world mm.
        modality: "CT", "MR", "XR" (radiograph) or "OT".
        subject: subject identifier; splits and pairing are by subject.
        source: the file or directory the image came from.
        intensity: mapping from stored values to physical units.
        attrs: anything else worth keeping (series UID, view, slice index, derived-from, ...).
        dicom: source DICOM attributes by keyword (``PatientID``, ``StudyInstanceUID``,
            ``SliceThickness``, ``ViewPosition``, ...; see ``io.dicom.SOURCE_TAGS``), or None.
    """

    affine: np.ndarray = field(default_factory=lambda: np.eye(4))
    modality: str = "OT"
    subject: str = ""
    source: str = ""
    intensity: IntensityMapping = field(default_factory=IntensityMapping)
    attrs: dict[str, Any] = field(default_factory=dict)
    dicom: dict[str, str] | None = None

    def __post_init__(self) -> None:
        a = np.asarray(self.affine, dtype=np.float64)
        if a.shape != (4, 4) or not np.all(np.isfinite(a)):
            raise ValueError(f"affine must be a finite 4x4 matrix, got shape {a.shape}")
        object.__setattr__(self, "affine", a)

    # Geometry derived from the affine (the single source of truth).
    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))

    @property
    def origin(self) -> tuple[float, float, float]:
        return tuple(float(v) for v in self.affine[:3, 3])

    @property
    def direction(self) -> np.ndarray:
        """(3, 3) unit column vectors of the voxel axes in RAS+."""
        return self.affine[:3, :3] / np.asarray(self.spacing)[None, :]

    def replace(self, **changes: Any) -> "ImageMeta":
        if "attrs" in changes and changes["attrs"] is not None:
            changes["attrs"] = {**self.attrs, **changes["attrs"]}
        return dataclasses.replace(self, **changes)

    def with_affine(self, affine: np.ndarray) -> "ImageMeta":
        return dataclasses.replace(self, affine=np.asarray(affine, dtype=np.float64))

    def to_attrs(self) -> dict[str, Any]:
        """JSON-ready attributes as stored on each zarr item."""
        return {
            "subject": self.subject,
            "modality": self.modality,
            "source": self.source,
            "spacing": list(self.spacing),
            "origin": list(self.origin),
            "direction": self.direction.tolist(),
            "affine": self.affine.tolist(),
            "intensity": self.intensity.to_dict(),
            **self.attrs,
            **({"dicom": dict(self.dicom)} if self.dicom is not None else {}),
        }

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> "ImageMeta":
        known = {"subject", "modality", "source", "spacing", "origin", "direction", "affine", "intensity", "dicom"}
        dicom = attrs.get("dicom")
        return cls(
            affine=np.asarray(attrs["affine"], dtype=np.float64),
            modality=attrs.get("modality", "OT"),
            subject=attrs.get("subject", ""),
            source=attrs.get("source", ""),
            intensity=IntensityMapping.from_dict(attrs.get("intensity")),
            attrs={k: v for k, v in attrs.items() if k not in known},
            dicom={str(k): str(v) for k, v in dicom.items()} if isinstance(dicom, dict) else None,
        )


# ------------------------------------------------------------------------------ display orientation
# LPS directions of the column (i), row (j) and slice (k) axes of the standard layout of each plane,
# keyed by the world axis closest to the slice normal (0 = L/R, 1 = A/P, 2 = S/I). Each frame is
# right-handed (k = i x j), as DICOM readers rebuild the slice axis.
STANDARD_FRAMES = {
    2: ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)),    # axial: first column the patient's right, first row anterior
    1: ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0), (0.0, 1.0, 0.0)),   # coronal: patient's right on the left, superior at the top
    0: ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0), (-1.0, 0.0, 0.0)),  # sagittal: anterior on the left, superior at the top
}


def standard_orientation(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Swap and flip axes so that the image is laid out as radiologists read it (no interpolation).

    The plane (axial, coronal, sagittal) is the one closest to the in-plane normal ``i x j``; the
    in-plane axes are swapped when that brings them closer to the plane's column and row
    directions (``STANDARD_FRAMES``), then each axis that runs against its direction is reversed.
    Along ``i`` the image then runs to the patient's left (first column = the patient's right) in
    axial and coronal planes, along ``j`` to posterior (axial) or inferior; a volume's ``k`` axis
    runs along ``i x j``. Every voxel keeps its world position: the affine changes with the array.

    Args:
        array: 2D ``(i, j)`` or 3D ``(i, j, k)`` values.
        affine: 4x4 voxel -> RAS+ affine (a 2D image's third column is its slice normal).

    Returns ``(array, affine)`` in the standard layout.
    """
    array = np.asarray(array)
    if array.ndim not in (2, 3):
        raise ValueError(f"expected a 2D (i, j) or 3D (i, j, k) array, got shape {array.shape}")
    affine = np.asarray(affine, dtype=np.float64).copy()
    axes = LPS_TO_RAS[:3, :3] @ affine[:3, :3]
    axes = axes / np.linalg.norm(axes, axis=0)  # LPS unit directions of i, j, k
    normal = np.cross(axes[:, 0], axes[:, 1])
    across, down, through = (np.asarray(v) for v in STANDARD_FRAMES[int(np.argmax(np.abs(normal)))])
    straight = abs(axes[:, 0] @ across) + abs(axes[:, 1] @ down)
    swapped = abs(axes[:, 1] @ across) + abs(axes[:, 0] @ down)
    if swapped > straight:
        array = np.swapaxes(array, 0, 1)
        affine[:, [0, 1]] = affine[:, [1, 0]]
        axes[:, [0, 1]] = axes[:, [1, 0]]
    for axis, target in enumerate((across, down, through)[: array.ndim]):
        if axes[:, axis] @ target < 0:
            array = np.flip(array, axis)
            affine[:3, 3] += (array.shape[axis] - 1) * affine[:3, axis]
            affine[:3, axis] = -affine[:3, axis]
    if array.ndim == 2 and (LPS_TO_RAS[:3, :3] @ affine[:3, 2]) @ through < 0:
        affine[:3, 2] = -affine[:3, 2]  # a slice's normal follows i x j
    return np.ascontiguousarray(array), affine
