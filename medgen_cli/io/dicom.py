"""DICOM input helpers: the source attributes medgen keeps, slice geometry checks, uneven series.

* ``SOURCE_TAGS``: the attributes of a DICOM source kept in ``ImageMeta.dicom`` so that an export
  files into the patient's study (identifiers), stays the same kind of image (modality, SOP class,
  view, laterality) and carries the true slice thickness. They include the patient's name and
  birth date: de-identify sources before preprocessing when the store is to be shared.
* ``plan_series``: the slices of a series sorted along their normal (the projection of
  ImagePositionPatient on ImageOrientationPatient's row x column), with uneven gaps found
  (a missing slice, a change of spacing) instead of an averaged, silently wrong spacing.
* ``regular_grid``: linear interpolation of uneven slices onto a regular grid along the normal.
* ``describe_non_image``: why a DICOM file that holds no image (a report, a structure set) was
  refused, from its file meta header alone.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

SOURCE_TAGS = {
    "Modality": "0008|0060", "SOPClassUID": "0008|0016", "PhotometricInterpretation": "0028|0004",
    "PatientName": "0010|0010", "PatientID": "0010|0020", "PatientBirthDate": "0010|0030", "PatientSex": "0010|0040",
    "StudyInstanceUID": "0020|000d", "StudyDate": "0008|0020", "StudyTime": "0008|0030", "StudyID": "0020|0010",
    "AccessionNumber": "0008|0050", "ReferringPhysicianName": "0008|0090", "StudyDescription": "0008|1030",
    "SeriesInstanceUID": "0020|000e", "SeriesDescription": "0008|103e", "FrameOfReferenceUID": "0020|0052",
    "PositionReferenceIndicator": "0020|1040", "BodyPartExamined": "0018|0015", "Laterality": "0020|0060",
    "ImageLaterality": "0020|0062", "ViewPosition": "0018|5101", "PatientPosition": "0018|5100",
    "PatientOrientation": "0020|0020", "ImageOrientationPatient": "0020|0037", "SliceThickness": "0018|0050",
    "KVP": "0018|0060", "ScanningSequence": "0018|0020", "SequenceVariant": "0018|0021", "ScanOptions": "0018|0022",
    "MRAcquisitionType": "0018|0023", "RepetitionTime": "0018|0080", "EchoTime": "0018|0081",
    "EchoTrainLength": "0018|0091", "MagneticFieldStrength": "0018|0087",
}
NON_IMAGE_CLASSES = {  # SOP class UID prefix -> what it is
    "1.2.840.10008.5.1.4.1.1.88.": "structured report",
    "1.2.840.10008.5.1.4.1.1.481.3": "RT structure set",
    "1.2.840.10008.5.1.4.1.1.481.5": "RT plan",
    "1.2.840.10008.5.1.4.1.1.11.": "presentation state",
    "1.2.840.10008.5.1.4.1.1.104.": "encapsulated document",
    "1.2.840.10008.5.1.4.1.1.9.": "waveform",
    "1.2.840.10008.5.1.4.1.1.66": "raw data object",
    "1.2.840.10008.1.3.10": "DICOMDIR (media directory)",
}
# LPS unit vectors of the patient orientation letters (PS3.3 C.7.6.1.1.1)
LETTERS = {"L": (1, 0, 0), "R": (-1, 0, 0), "P": (0, 1, 0), "A": (0, -1, 0), "H": (0, 0, 1), "F": (0, 0, -1)}
UNEVEN_MODES = ("error", "resample")


class SeriesError(ValueError):
    """The slices of a series do not form one regular volume; the message says which and why."""


def is_dicom_file(path: Path | str) -> bool:
    """Whether the file has the DICOM part-10 preamble (``DICM`` at byte 128)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def source_tags(reader) -> dict[str, str]:
    """The ``SOURCE_TAGS`` a SimpleITK reader (after ReadImageInformation) found, by keyword."""
    out = {}
    for name, key in SOURCE_TAGS.items():
        if reader.HasMetaDataKey(key):
            try:
                value = reader.GetMetaData(key)
            except (RuntimeError, UnicodeDecodeError):  # a value in a character set we cannot decode
                continue
            out[name] = value.strip("\0 ")
    return out


def describe_non_image(path: Path | str) -> str | None:
    """A reason when a DICOM file holds no image, read from its header bytes; None otherwise."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4096)
            fh.seek(0)
            has_pixels = _contains(fh, b"\xe0\x7f\x10\x00")
    except OSError:
        return None
    if head[128:132] != b"DICM":
        return None
    match = re.search(rb"\x02\x00\x02\x00UI(..)", head, re.S)
    uid = ""
    if match:
        n = int.from_bytes(match.group(1), "little")
        uid = head[match.end(): match.end() + n].decode("ascii", "replace").strip("\0 ")
    kind = next((name for prefix, name in NON_IMAGE_CLASSES.items() if uid.startswith(prefix)), None)
    if kind:
        return f"is a DICOM {kind} (SOP class {uid}), not an image"
    if not has_pixels:
        return f"is a DICOM file without pixel data (SOP class {uid or 'unknown'}), not an image"
    return None


def _contains(fh, needle: bytes, block: int = 1 << 20) -> bool:
    tail = b""
    while chunk := fh.read(block):
        if needle in tail + chunk:
            return True
        tail = chunk[-len(needle):]
    return False


def orientation_from_letters(value: str) -> tuple[np.ndarray, np.ndarray] | None:
    """LPS unit directions (along a row, down a column) from PatientOrientation, e.g. ``R\\F``."""
    parts = [p.strip().upper() for p in value.split("\\")]
    if len(parts) != 2 or not all(parts) or any(c not in LETTERS for p in parts for c in p):
        return None
    row, col = (np.sum([LETTERS[c] for c in p], axis=0).astype(np.float64) for p in parts)
    row, col = row / np.linalg.norm(row), col / np.linalg.norm(col)
    if abs(row @ col) > 1e-6:
        return None
    return row, col


def letters(direction) -> str:
    """PatientOrientation letters of an LPS direction, the largest component first (e.g. ``LP``)."""
    d = np.asarray(direction, dtype=np.float64)
    order = np.argsort(-np.abs(d))
    names = (("R", "L"), ("A", "P"), ("F", "H"))
    return "".join(names[a][int(d[a] > 0)] for a in order if abs(d[a]) > 1e-3)


# ------------------------------------------------------------------------------------ series plan
@dataclass(frozen=True)
class SliceHeader:
    """What a DICOM file's header says about one slice (read without its pixel data)."""

    file: str
    size: tuple[int, ...]  # (columns, rows[, frames]) as SimpleITK reports it
    components: int
    position: tuple[float, ...] | None  # ImagePositionPatient (LPS mm)
    orientation: tuple[float, ...] | None  # ImageOrientationPatient (row, column directions)


@dataclass(frozen=True)
class SeriesPlan:
    """The slices in order along the normal, their positions and the regular spacing.

    Args:
        files: slice files sorted along the normal (or as GDCM sorted them when positions are absent).
        positions: the position of each slice along the normal (mm), None when unknown.
        spacing: the median distance between neighbouring slices (mm), None when unknown.
        normal: the LPS slice normal (row x column), None when unknown.
        gaps: ``(index, distance)`` of neighbours (index, index + 1) whose distance is not the spacing.
    """

    files: list[str]
    positions: np.ndarray | None = None
    spacing: float | None = None
    normal: np.ndarray | None = None
    gaps: tuple[tuple[int, float], ...] = ()

    def describe_gaps(self, limit: int = 3) -> str:
        """``slices 12 and 13 (IM12.dcm and IM13.dcm) are 14.0 mm apart, the others 7.0 mm``."""
        parts = [f"slices {k + 1} and {k + 2} ({Path(self.files[k]).name} and {Path(self.files[k + 1]).name}) "
                 f"are {d:.4g} mm apart" for k, d in self.gaps[:limit]]
        more = f" and {len(self.gaps) - limit} more gaps" if len(self.gaps) > limit else ""
        return f"{', '.join(parts)}{more}, the others {self.spacing:.4g} mm"


def _floats(text: str | None, n: int) -> tuple[float, ...] | None:
    try:
        values = tuple(float(v) for v in (text or "").split("\\"))
    except ValueError:
        return None
    return values if len(values) == n and all(np.isfinite(values)) else None


def read_headers(files: list[str]) -> list[SliceHeader]:
    """The header of every file (no pixel data is read); SeriesError names a file that fails."""
    import SimpleITK as sitk

    headers = []
    reader = sitk.ImageFileReader()
    reader.SetImageIO("GDCMImageIO")
    for f in files:
        reader.SetFileName(str(f))
        try:
            reader.ReadImageInformation()
        except RuntimeError:
            raise SeriesError(f"the header of {Path(f).name} cannot be read") from None
        get = (lambda key: reader.GetMetaData(key) if reader.HasMetaDataKey(key) else None)
        headers.append(SliceHeader(str(f), tuple(reader.GetSize()), reader.GetNumberOfComponents(),
                                   _floats(get("0020|0032"), 3), _floats(get("0020|0037"), 6)))
    return headers


def plan_series(headers: list[SliceHeader], tolerance: float = 0.02) -> SeriesPlan:
    """Sort slices along their normal and find uneven gaps.

    Args:
        headers: one per file (``read_headers``).
        tolerance: a gap is uneven when it differs from the median spacing by more than this
            fraction of it (plus 0.01 mm for rounded positions).

    Raises SeriesError when slices differ in size or orientation, share a position, or are
    shifted within their plane (a gantry tilt), since none of these is one regular volume.
    """
    files = [h.file for h in headers]
    sizes = {h.size[:2] for h in headers}
    if len(sizes) > 1:
        raise SeriesError(f"its slices have different sizes ({', '.join('x'.join(map(str, s)) for s in sorted(sizes))})")
    multiframe = any(len(h.size) > 2 and h.size[2] > 1 for h in headers)
    if len(headers) < 2 or multiframe or any(h.position is None or h.orientation is None for h in headers):
        return SeriesPlan(files)  # nothing to sort or check: GDCM's order and ITK's geometry
    iop = np.asarray([h.orientation for h in headers])
    if np.abs(iop - iop[0]).max() > 1e-3:
        k = int(np.argmax(np.abs(iop - iop[0]).max(axis=1)))
        raise SeriesError(f"its slices have different orientations ({Path(files[0]).name} and {Path(files[k]).name}); "
                          "pass the files of one orientation only")
    row, col = iop[0, :3], iop[0, 3:]
    normal = np.cross(row, col)
    normal /= np.linalg.norm(normal)
    ipp = np.asarray([h.position for h in headers])
    along = ipp @ normal
    order = np.argsort(along, kind="stable")
    files, ipp, along = [files[k] for k in order], ipp[order], along[order]
    steps = np.diff(along)
    if np.any(steps < 1e-3):
        k = int(np.argmax(steps < 1e-3))
        raise SeriesError(f"slices {Path(files[k]).name} and {Path(files[k + 1]).name} are at the same position "
                          f"({along[k]:.4g} mm along the normal): the series holds more than one volume")
    inplane = (ipp - ipp[0]) - np.outer(along - along[0], normal)
    if np.linalg.norm(inplane, axis=1).max() > 0.05 * float(np.median(steps)) + 0.01:
        raise SeriesError("its slice positions are shifted within the slice plane (a tilted gantry?), "
                          "so they do not form a regular volume")
    spacing = float(np.median(steps))
    gaps = tuple((k, float(d)) for k, d in enumerate(steps) if abs(d - spacing) > tolerance * spacing + 0.01)
    return SeriesPlan(files, along, spacing, normal, gaps)


def regular_grid(volume: np.ndarray, positions: np.ndarray, spacing: float) -> tuple[np.ndarray, int]:
    """Linearly interpolate slices at uneven ``positions`` onto a regular grid along ``k``.

    Args:
        volume: ``(i, j, k)`` values, slice ``k`` at ``positions[k]`` (increasing, mm).
        spacing: the regular spacing (mm); the grid starts at the first slice.

    Returns ``(resampled volume, number of slices that are interpolated, not acquired)``.
    """
    positions = np.asarray(positions, dtype=np.float64)
    n = int(np.floor((positions[-1] - positions[0]) / spacing + 1e-3)) + 1
    grid = positions[0] + spacing * np.arange(n)
    upper = np.clip(np.searchsorted(positions, grid, side="right"), 1, len(positions) - 1)
    lower = upper - 1
    t = np.clip((grid - positions[lower]) / (positions[upper] - positions[lower]), 0.0, 1.0)
    out = np.empty(volume.shape[:2] + (n,), dtype=np.float32)
    for z in range(n):  # one slice at a time keeps the extra memory to one output volume
        out[:, :, z] = (1.0 - t[z]) * volume[:, :, lower[z]] + t[z] * volume[:, :, upper[z]]
    exact = np.isclose(t, 0.0, atol=1e-4) | np.isclose(t, 1.0, atol=1e-4)
    return out, int(np.count_nonzero(~exact))
