"""Readers: raw files -> ``(array, ImageMeta)`` in voxel order with a RAS+ affine and physical units.

* NIfTI (.nii, .nii.gz) with nibabel (SimpleITK fails on NIfTI-2 and some valid files).
* NRRD, MHA/MHD, single DICOM files (radiographs, single slices), DICOM series (a directory of
  slices) and 2D PNG/JPEG/TIFF with SimpleITK, whose LPS geometry and (z, y, x) arrays are
  converted here. DICOM values come out rescaled (HU for CT). A MONOCHROME1 radiograph is
  inverted by SimpleITK on reading (checked in the tests), so bone is bright in medgen's output,
  as radiologists expect; the item records ``photometric: MONOCHROME1-inverted``.
"""

from __future__ import annotations

import glob
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import StepFailed
from .meta import LPS_TO_RAS, ImageMeta, affine_from_geometry

log = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii", ".nii.gz")
SITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd", ".dcm", ".png", ".jpg", ".jpeg", ".tif", ".tiff")
IMAGE_2D_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
ALL_SUFFIXES = NIFTI_SUFFIXES + SITK_SUFFIXES
MODALITY_CODES = {"CT": "CT", "MR": "MR", "CR": "XR", "DX": "XR", "RG": "XR", "DR": "XR", "MG": "XR", "XA": "XR", "PX": "XR"}


class ReadError(StepFailed):
    """An input could not be read as an image; the message names the file and the reason."""


@dataclass(frozen=True)
class Source:
    """One item-producing input: a file, or one DICOM series of a directory."""

    path: str
    kind: str  # "nifti" | "sitk" | "dicom-series"
    series_uid: str = ""

    @property
    def name(self) -> str:
        p = Path(self.path)
        for suffix in sorted(ALL_SUFFIXES, key=len, reverse=True):
            if p.name.lower().endswith(suffix):
                return p.name[: -len(suffix)]
        return p.name


def strip_suffix(name: str) -> str:
    return Source(name, "sitk").name


def _is_dicom_file(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def discover(patterns: list[str], dicom_series: str = "all") -> tuple[list[Source], list[tuple[str, str]]]:
    """Expand files, directories and globs into sources, sorted by path.

    A directory holding DICOM files is one or more series (``dicom_series``: "all" or a UID);
    other directories are searched recursively for image files. Returns (sources, problems) where
    problems are (path, reason) for inputs that gave nothing.
    """
    sources: list[Source] = []
    problems: list[tuple[str, str]] = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern, recursive=True)) if any(c in pattern for c in "*?[") else [pattern]
        if not matches:
            problems.append((pattern, "no file matches this pattern"))
        for match in matches:
            path = Path(match)
            if not path.exists():
                problems.append((match, "no such file or directory"))
            elif path.is_dir():
                found = _discover_dir(path, dicom_series)
                if not found:
                    problems.append((match, "the directory holds no readable image or DICOM series"))
                sources.extend(found)
            else:
                sources.append(_source_for_file(path))
    unique = {(s.path, s.series_uid): s for s in sources}
    return sorted(unique.values(), key=lambda s: (s.path, s.series_uid)), problems


def _source_for_file(path: Path) -> Source:
    lower = path.name.lower()
    if lower.endswith(NIFTI_SUFFIXES):
        return Source(str(path), "nifti")
    return Source(str(path), "sitk")


def _discover_dir(path: Path, dicom_series: str) -> list[Source]:
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # failures are reported as sentences, not ITK dumps
    files = sorted(p for p in path.rglob("*") if p.is_file())
    dicom_dirs = sorted({p.parent for p in files if p.suffix.lower() == ".dcm" or (not p.suffix and _is_dicom_file(p))})
    out: list[Source] = []
    for d in dicom_dirs:
        uids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(d)) or []
        for uid in uids:
            if dicom_series in ("all", uid):
                out.append(Source(str(d), "dicom-series", uid))
    images = [p for p in files if p.name.lower().endswith(NIFTI_SUFFIXES + SITK_SUFFIXES) and p.suffix.lower() != ".dcm"]
    out.extend(_source_for_file(p) for p in images)
    return out


# ----------------------------------------------------------------------------------------- reading
def read_source(source: Source, modality: str = "auto") -> tuple[np.ndarray, ImageMeta]:
    """Read one source as float32 in physical units; raise ReadError with the reason on failure."""
    try:
        if source.kind == "nifti":
            arr, meta = _read_nifti(source.path)
        elif source.kind == "dicom-series":
            arr, meta = _read_dicom_series(source.path, source.series_uid)
        else:
            arr, meta = _read_sitk(source.path)
    except ReadError:
        raise
    except (OSError, EOFError, RuntimeError, ValueError, MemoryError) as err:
        raise ReadError(f"{source.path}: cannot be read as an image ({_short(err)})") from None
    if arr.size == 0 or 0 in arr.shape:
        raise ReadError(f"{source.path}: the image has a zero-length axis (shape {arr.shape})")
    bad = ~np.isfinite(arr)
    if bad.any():
        raise ReadError(f"{source.path}: {int(bad.sum())} voxel(s) are NaN or Inf")
    if modality != "auto":
        meta = meta.replace(modality=modality)
    elif meta.modality == "OT":
        meta = meta.replace(modality=_guess_modality(arr))
    return arr, meta


def _short(err: BaseException) -> str:
    text = " ".join(str(err).split())
    if "Exception thrown in SimpleITK" in text:  # keep ITK's reason, not its C++ location
        text = text.split(":")[-1].strip() or "SimpleITK could not read it"
    return text[:160] or type(err).__name__


def _guess_modality(arr: np.ndarray) -> str:
    """CT when values look like HU (air near -1000), else MR (documented: force with --modality)."""
    lo = float(np.percentile(arr, 1))
    return "CT" if -1100 <= lo <= -900 else "MR"


def _read_nifti(path: str) -> tuple[np.ndarray, ImageMeta]:
    import nibabel as nib

    try:
        img = nib.load(path)
        arr = np.asarray(img.get_fdata(dtype=np.float32))
    except Exception as err:  # nibabel raises many types for corrupt/truncated files
        raise ReadError(f"{path}: cannot be read as NIfTI ({_short(err)})") from None
    while arr.ndim > 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    affine = np.asarray(img.affine, dtype=np.float64)
    if arr.ndim == 2:
        pass  # a 2D NIfTI keeps its 3D affine (k = 0)
    return arr, ImageMeta(affine=affine, source=str(path))


def _geometry_from_sitk(img) -> np.ndarray:
    """LPS spacing/origin/direction of an ITK image -> 4x4 RAS affine for (i, j, k) indexing."""
    dim = img.GetDimension()
    spacing = list(img.GetSpacing()) + [1.0] * (3 - dim)
    origin = list(img.GetOrigin()) + [0.0] * (3 - dim)
    direction = np.eye(3)
    direction[:dim, :dim] = np.asarray(img.GetDirection(), dtype=np.float64).reshape(dim, dim)
    return LPS_TO_RAS @ affine_from_geometry(spacing[:3], origin[:3], direction)


def _array_from_sitk(img) -> np.ndarray:
    import SimpleITK as sitk

    if img.GetNumberOfComponentsPerPixel() > 1:
        # colour images (PNG/JPEG screenshots): ITU-R BT.601 luma
        channels = [sitk.VectorIndexSelectionCast(img, c, sitk.sitkFloat32) for c in range(img.GetNumberOfComponentsPerPixel())]
        weights = (0.299, 0.587, 0.114)[: len(channels)] if len(channels) >= 3 else (1.0 / len(channels),) * len(channels)
        img = sum((ch * w for ch, w in zip(channels, weights)), channels[0] * 0)
    arr = sitk.GetArrayFromImage(img).astype(np.float32)
    return np.ascontiguousarray(arr.transpose(tuple(range(arr.ndim))[::-1]))  # (z,y,x) -> (x,y,z)


def _dicom_tags(reader) -> dict[str, str]:
    keys = {"0008|0060": "Modality", "0010|0020": "PatientID", "0020|000e": "SeriesInstanceUID",
            "0028|0004": "PhotometricInterpretation", "0008|103e": "SeriesDescription"}
    return {name: reader.GetMetaData(tag).strip() for tag, name in keys.items() if reader.HasMetaDataKey(tag)}


def _meta_from_sitk(img, path: str, tags: dict[str, str]) -> ImageMeta:
    attrs = {}
    modality = MODALITY_CODES.get(tags.get("Modality", "").upper(), "OT")
    if tags.get("SeriesInstanceUID"):
        attrs["series_uid"] = tags["SeriesInstanceUID"]
    if tags.get("PatientID"):
        attrs["patient_id"] = tags["PatientID"]
    if tags.get("PhotometricInterpretation") == "MONOCHROME1":
        attrs["photometric"] = "MONOCHROME1-inverted"
    return ImageMeta(affine=_geometry_from_sitk(img), modality=modality, source=str(path), attrs=attrs)


def _read_sitk(path: str) -> tuple[np.ndarray, ImageMeta]:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
        img = reader.Execute()
    except RuntimeError as err:
        raise ReadError(f"{path}: cannot be read as an image ({_short(err)})") from None
    tags = _dicom_tags(reader) if reader.HasMetaDataKey("0008|0060") else {}
    if img.GetDimension() == 4:
        raise ReadError(f"{path}: 4D images are not supported (size {img.GetSize()}); split the 4th axis first")
    arr = _array_from_sitk(img)
    meta = _meta_from_sitk(img, path, tags)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]  # a single DICOM slice or radiograph is a 2D item
    return arr, meta


def _read_dicom_series(directory: str, uid: str) -> tuple[np.ndarray, ImageMeta]:
    import SimpleITK as sitk

    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(directory, uid)
    if not files:
        raise ReadError(f"{directory}: DICOM series {uid} has no readable files")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()
    reader.LoadPrivateTagsOff()
    try:
        img = reader.Execute()
    except RuntimeError as err:
        raise ReadError(f"{directory}: DICOM series {uid} cannot be read ({_short(err)})") from None
    head = sitk.ImageFileReader()
    head.SetFileName(files[0])
    head.ReadImageInformation()
    arr = _array_from_sitk(img)
    if arr.shape[2] == 1:
        arr = arr[:, :, 0]  # a one-slice series is a 2D item, like a single DICOM file
    meta = _meta_from_sitk(img, directory, _dicom_tags(head))
    return arr, meta.replace(attrs={"dicom_files": len(files)})


def list_inputs_text(sources: list[Source]) -> str:
    return os.linesep.join(s.path + (f" [{s.series_uid}]" if s.series_uid else "") for s in sources)
