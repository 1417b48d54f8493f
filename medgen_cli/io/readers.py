"""Readers: raw files -> ``(array, ImageMeta)`` in voxel order with a RAS+ affine and physical units.

* NIfTI (.nii, .nii.gz) with nibabel (SimpleITK fails on NIfTI-2 and some valid files).
* NRRD, MHA/MHD, single DICOM files (radiographs, single slices), DICOM series (a directory of
  slices) and 2D PNG/JPEG/TIFF with SimpleITK, whose LPS geometry and (z, y, x) arrays are
  converted here. DICOM values come out rescaled (HU for CT). A MONOCHROME1 radiograph is
  inverted by SimpleITK on reading (checked in the tests), so bone is bright in medgen's output,
  as radiologists expect; the item records ``photometric: MONOCHROME1-inverted``.
* A radiograph has no ImageOrientationPatient; its PatientOrientation (``R\\F``: rows run to the
  patient's right, columns to the feet) gives its in-plane directions, so its affine is real.
* DICOM sources keep the attributes an export needs in ``ImageMeta.dicom`` (see ``io.dicom``).

Hostile inputs: the decoded size (float32, 4 bytes a voxel) is computed from the header (NIfTI
header, ITK image information, the DICOM headers of a series) and an image above ``max_bytes`` is
refused before any voxel is read, so a small gzip bomb cannot exhaust memory. Reading holds the
raw and the float32 array at once, so the peak is at most 3x the limit (float64 files), 1.25x for
8-bit and 1.5x for 16-bit files; the checks after reading work a block at a time. A DICOM series whose slices are not
evenly spaced is refused with the gap named, or resampled onto a regular grid on request.
"""

from __future__ import annotations

import glob
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import StepFailed
from .dicom import (UNEVEN_MODES, SeriesError, describe_non_image, is_dicom_file, orientation_from_letters,
                    plan_series, read_headers, regular_grid, source_tags)
from ..meta import LPS_TO_RAS, ImageMeta, affine_from_geometry

log = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii", ".nii.gz")
SITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd", ".dcm", ".png", ".jpg", ".jpeg", ".tif", ".tiff")
IMAGE_2D_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
ALL_SUFFIXES = NIFTI_SUFFIXES + SITK_SUFFIXES
MODALITY_CODES = {"CT": "CT", "MR": "MR", "CR": "XR", "DX": "XR", "RG": "XR", "DR": "XR", "MG": "XR", "XA": "XR", "PX": "XR"}
DEFAULT_MAX_BYTES = 4 * 2**30  # the decoded (float32) image; preprocess passes input.max_gib
DECODED_ITEMSIZE = 4  # medgen reads every image as float32


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


# ------------------------------------------------------------------------------------- discovery
def discover(patterns: list[str], dicom_series: str = "all") -> tuple[list[Source], list[tuple[str, str]]]:
    """Expand files, directories and globs into sources, sorted by path.

    A directory holding DICOM files is one or more series (``dicom_series``: "all" or a UID);
    other directories are searched recursively for image files, following symbolic links but
    visiting each real directory and file once (a link back up the tree is no loop). An input
    reached twice (two patterns, a link to a file) is one source. Returns (sources, problems)
    where problems are (path, reason) for inputs that gave nothing.
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
                found, why = _discover_dir(path, dicom_series)
                if not found:
                    problems.append((match, "the directory holds no readable image or DICOM series" + why))
                sources.extend(found)
            else:
                sources.append(_source_for_file(path))
    unique: dict[tuple[str, str], Source] = {}
    for s in sources:  # the first path that reaches a real file names it
        unique.setdefault((os.path.realpath(s.path), s.series_uid), s)
    return sorted(unique.values(), key=lambda s: (s.path, s.series_uid)), problems


def _source_for_file(path: Path) -> Source:
    if path.name.lower().endswith(NIFTI_SUFFIXES):
        return Source(str(path), "nifti")
    return Source(str(path), "sitk")


def walk_files(root: Path | str) -> list[Path]:
    """Every file under ``root``, following links, each real directory and file visited once."""
    seen_dirs: set[str] = set()
    seen_files: set[str] = set()
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen_dirs:
            dirnames[:] = []  # reached again through a link: already searched
            continue
        seen_dirs.add(real)
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath, name)
            target = os.path.realpath(path)
            if target not in seen_files and os.path.isfile(target):
                seen_files.add(target)
                out.append(path)
    return sorted(out)


def _discover_dir(path: Path, dicom_series: str) -> tuple[list[Source], str]:
    """The sources under a directory and, when there are none, why (e.g. DICOM files without images)."""
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # failures are reported as sentences, not ITK dumps
    files = walk_files(path)
    dicom_files = [p for p in files if p.suffix.lower() == ".dcm" or (not p.suffix and is_dicom_file(p))]
    out: list[Source] = []
    for d in sorted({p.parent for p in dicom_files}):
        for uid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(d)) or []:
            if dicom_series in ("all", uid):
                out.append(Source(str(d), "dicom-series", uid))
    images = [p for p in files if p.name.lower().endswith(NIFTI_SUFFIXES + SITK_SUFFIXES) and p.suffix.lower() != ".dcm"]
    out.extend(_source_for_file(p) for p in images)
    if out or not dicom_files:
        return out, ""
    reasons = ((p, describe_non_image(p)) for p in dicom_files[:20])
    p, reason = next(((p, r) for p, r in reasons if r), (dicom_files[0], "cannot be read as a DICOM image"))
    return out, f" ({p.name} {reason})"


# ----------------------------------------------------------------------------------------- reading
def read_source(source: Source, modality: str = "auto", *, max_bytes: int | None = None,
                uneven_slices: str = "error") -> tuple[np.ndarray, ImageMeta]:
    """Read one source as float32 in physical units; raise ReadError with the reason on failure.

    Args:
        source: what ``discover`` found.
        modality: "auto" (from the DICOM header or the values) or the modality to record.
        max_bytes: refuse an image whose decoded float32 array would exceed this many bytes,
            judged from its header before reading (None: ``DEFAULT_MAX_BYTES``, 4 GiB).
        uneven_slices: a DICOM series with uneven slice positions: "error" refuses it naming the
            gap, "resample" interpolates it linearly onto a regular grid at the median spacing.
    """
    if uneven_slices not in UNEVEN_MODES:
        raise ValueError(f"uneven_slices must be one of {', '.join(UNEVEN_MODES)}, got {uneven_slices!r}")
    limit = DEFAULT_MAX_BYTES if max_bytes is None else int(max_bytes)
    try:
        if source.kind == "nifti":
            arr, meta = _read_nifti(source.path, limit)
        elif source.kind == "dicom-series":
            arr, meta = _read_dicom_series(source.path, source.series_uid, limit, uneven_slices)
        else:
            arr, meta = _read_sitk(source.path, limit)
    except ReadError:
        raise
    except (OSError, EOFError, RuntimeError, ValueError, MemoryError) as err:
        raise ReadError(f"{source.path}: cannot be read as an image ({_short(err)})") from None
    if arr.size == 0 or 0 in arr.shape:
        raise ReadError(f"{source.path}: the image has a zero-length axis (shape {arr.shape})")
    bad = _count_non_finite(arr)
    if bad:
        raise ReadError(f"{source.path}: {bad} voxel(s) are NaN or Inf")
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


def _count_non_finite(arr: np.ndarray, block: int = 1 << 24) -> int:
    """NaN and Inf voxels, counted a block at a time (no image-sized temporary)."""
    flat = arr.ravel(order="K")  # a view of a C- or F-contiguous array
    return sum(int(np.count_nonzero(~np.isfinite(flat[i:i + block]))) for i in range(0, flat.size, block))


def _guess_modality(arr: np.ndarray) -> str:
    """CT when values look like HU (air near -1000), else MR (documented: force with --modality).

    The percentile is taken over an even subsample of at most ~2 million voxels, so a large
    image is not copied for sorting.
    """
    flat = arr.ravel(order="K")
    lo = float(np.percentile(flat[:: max(1, flat.size // 2_000_000)], 1))
    return "CT" if -1100 <= lo <= -900 else "MR"


def check_size(path: str, shape, limit: int, components: int = 1) -> None:
    """Refuse an image whose decoded float32 array would exceed ``limit`` bytes (from its header)."""
    shape = tuple(int(n) for n in shape)
    need = DECODED_ITEMSIZE * max(int(components), 1) * int(np.prod(shape, dtype=object))
    if need > limit:
        raise ReadError(f"{path}: the header declares a {'x'.join(map(str, shape))} image, {_bytes(need)} once decoded, "
                        f"above the {_bytes(limit)} limit; raise input.max_gib if the image is genuine")


def _bytes(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _read_nifti(path: str, limit: int) -> tuple[np.ndarray, ImageMeta]:
    import nibabel as nib

    try:
        img = nib.load(path)  # reads the header only; the voxels are decoded by get_fdata
    except Exception as err:  # nibabel raises many types for corrupt/truncated files
        raise ReadError(f"{path}: cannot be read as NIfTI ({_short(err)})") from None
    check_size(path, img.shape, limit)
    try:
        arr = np.asarray(img.get_fdata(dtype=np.float32))
    except Exception as err:
        raise ReadError(f"{path}: cannot be read as NIfTI ({_short(err)})") from None
    while arr.ndim > 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    affine = np.asarray(img.affine, dtype=np.float64)  # a 2D NIfTI keeps its 3D affine (k = 0)
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


def _meta_from_sitk(img, path: str, tags: dict[str, str]) -> ImageMeta:
    attrs = {}
    modality = MODALITY_CODES.get(tags.get("Modality", "").upper(), "OT")
    if tags.get("SeriesInstanceUID"):
        attrs["series_uid"] = tags["SeriesInstanceUID"]
    if tags.get("PhotometricInterpretation") == "MONOCHROME1":
        attrs["photometric"] = "MONOCHROME1-inverted"
    affine = _geometry_from_sitk(img)
    letters = orientation_from_letters(tags.get("PatientOrientation", ""))
    if letters is not None and not tags.get("ImageOrientationPatient"):
        # a radiograph: PatientOrientation gives the directions along a row and down a column
        row, col = letters
        lps = np.linalg.inv(LPS_TO_RAS) @ affine
        spacing = np.linalg.norm(lps[:3, :3], axis=0)
        lps[:3, :3] = np.stack([row, col, np.cross(row, col)], axis=1) * spacing[None, :]
        affine = LPS_TO_RAS @ lps
    return ImageMeta(affine=affine, modality=modality, source=str(path), attrs=attrs, dicom=tags or None)


def _read_sitk(path: str, limit: int) -> tuple[np.ndarray, ImageMeta]:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as err:
        reason = describe_non_image(path) if is_dicom_file(path) else None
        if reason:
            raise ReadError(f"{path}: {reason}; remove it from the inputs") from None
        raise ReadError(f"{path}: cannot be read as an image ({_short(err)})") from None
    check_size(path, reader.GetSize(), limit, reader.GetNumberOfComponents())
    if reader.GetDimension() == 4:
        raise ReadError(f"{path}: 4D images are not supported (size {reader.GetSize()}); split the 4th axis first")
    try:
        img = reader.Execute()
    except RuntimeError as err:
        raise ReadError(f"{path}: cannot be read as an image ({_short(err)})") from None
    tags = source_tags(reader) if reader.HasMetaDataKey("0008|0060") else {}
    arr = _array_from_sitk(img)
    meta = _meta_from_sitk(img, path, tags)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]  # a single DICOM slice or radiograph is a 2D item
    return arr, meta


def _read_dicom_series(directory: str, uid: str, limit: int, uneven: str) -> tuple[np.ndarray, ImageMeta]:
    import SimpleITK as sitk

    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(directory, uid)
    if not files:
        raise ReadError(f"{directory}: DICOM series {uid} has no readable files")
    try:
        headers = read_headers(list(files))
        plan = plan_series(headers)
    except SeriesError as err:
        raise ReadError(f"{directory}: DICOM series {uid} cannot be read as one volume: {err}") from None
    columns, rows = headers[0].size[:2]
    slices = sum(int(np.prod(h.size[2:], dtype=np.int64)) for h in headers)  # frames of every file
    check_size(f"{directory} (DICOM series {uid})", (columns, rows, slices), limit, headers[0].components)
    if plan.gaps and uneven == "error":
        raise ReadError(f"{directory}: DICOM series {uid} has uneven slice positions: {plan.describe_gaps()} "
                        f"(a missing slice?); set input.uneven_slices to resample to interpolate onto a regular "
                        f"{plan.spacing:.4g} mm grid")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(plan.files)
    reader.LoadPrivateTagsOff()
    try:
        img = reader.Execute()
    except RuntimeError as err:
        raise ReadError(f"{directory}: DICOM series {uid} cannot be read ({_short(err)})") from None
    head = sitk.ImageFileReader()
    head.SetFileName(plan.files[0])
    head.ReadImageInformation()
    arr = _array_from_sitk(img)
    meta = _meta_from_sitk(img, directory, source_tags(head))
    attrs = {"dicom_files": len(plan.files)}
    if plan.spacing is not None:  # the slice axis from the positions, not ITK's first-to-last average
        affine = meta.affine.copy()
        affine[:3, 2] = (LPS_TO_RAS[:3, :3] @ plan.normal) * plan.spacing
        meta = meta.with_affine(affine)
    if plan.gaps:
        arr, made = regular_grid(arr, plan.positions, plan.spacing)
        made_text = f"{made} slice{'' if made == 1 else 's'} interpolated"
        log.warning("%s: DICOM series %s: %s; resampled onto a regular %.4g mm grid (%s)",
                    directory, uid, plan.describe_gaps(), plan.spacing, made_text)
        attrs["uneven_slices"] = f"resampled onto a {plan.spacing:.4g} mm grid; {made_text}"
    if arr.shape[2] == 1:
        arr = arr[:, :, 0]  # a one-slice series is a 2D item, like a single DICOM file
    return arr, meta.replace(attrs=attrs)


def list_inputs_text(sources: list[Source]) -> str:
    return os.linesep.join(s.path + (f" [{s.series_uid}]" if s.series_uid else "") for s in sources)
