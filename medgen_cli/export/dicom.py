"""DICOM series export: one classic single-frame image per slice, written by SimpleITK (GDCM).

This follows SimpleITK's "write a DICOM series from a volume" recipe (one ``ImageFileWriter`` call
per slice, ``KeepOriginalImageUIDOn``, the tags set on each slice), with layout, geometry, values
and attributes made right for viewers, PACS and ``dciodvfy``:

* **Layout (as 3D Slicer, OsiriX and PACS show it).** The item is first put in the standard
  orientation (``meta.standard_orientation``): ImageOrientationPatient is the one closest to the
  plane's standard axes, so in an axial slice the first column is the patient's right and the first
  row is anterior (IOP ``1\\0\\0\\0\\1\\0``), coronal slices have the patient's right on the left and
  superior at the top, sagittal slices anterior on the left. Slices run along row x column.
  Voxels are only swapped and reversed, never interpolated, so each keeps its world position.
* **Geometry (LPS).** ImagePositionPatient of each slice, ImageOrientationPatient, PixelSpacing
  (``row spacing\\column spacing``), SpacingBetweenSlices, SliceLocation. SliceThickness is the
  source's when the item's slices are parallel to the source's, else the slice spacing.
* **Values.** ``stored integer x RescaleSlope + RescaleIntercept = physical value``. CT: slope 1,
  intercept 0, so the stored int16 *is* the HU value. Other modalities: slope 1, intercept 0 when
  the values already are integers that fit int16 (lossless), otherwise the value range is mapped
  onto -32000..32000 (error at most slope / 2). DX allows no rescale: its unsigned values are a
  linear map of medgen's values onto 0..65535, stated in DerivationDescription.
* **Modality and SOP class.** CT -> CT Image Storage, MR -> MR Image Storage, a radiograph -> the
  source's kind (a DX stays Digital X-Ray Image Storage - For Presentation, a CR stays Computed
  Radiography; CR when there is no DICOM source), anything else -> Secondary Capture.
* **Attributes.** Every Type 1 and Type 2 attribute of the IOD is written, empty when unknown. From
  a DICOM source (``ImageMeta.dicom``) the patient (name, ID, birth date, sex), the study (Study
  Instance UID, date, ID, accession number) and the frame of reference are carried, so the export
  files into the source's study; otherwise the PatientID is the subject and the UIDs are new
  ``2.25.<uuid4>``. Each export is a new series. Body part, view position, laterality, patient
  position and MR sequence parameters are kept.
* **Marks.** ImageType ``DERIVED\\SECONDARY``, ContentQualification ``RESEARCH``, BurnedInAnnotation
  ``NO`` and a DerivationDescription. A synthetic item (a sample) carries no source identity:
  PatientName ``SYNTHETIC^MEDGEN``, PatientID ``SYNTHETIC-<item id>``, a SeriesDescription starting
  with ``SYNTHETIC``, ImageType value 4 ``SYNTHETIC`` and ImageComments saying it is not a patient.
"""

from __future__ import annotations

import functools
import logging
import os
import tempfile
from pathlib import Path

import numpy as np

from ..meta import ImageMeta, standard_orientation
from ..io.writers import to_sitk
from .dicom_tags import (RADIOGRAPHS, SOP_CLASS, add_sequences, ds, dx_sequences, export_modality,  # noqa: F401
                         new_uid, series_tags, slice_position_tags)

log = logging.getLogger(__name__)

INT16_MIN, INT16_MAX = -32768, 32767
UINT16_MAX = 65535
FLOAT_SPAN = 32000  # non-integer values fill -32000..32000, leaving headroom for DS rounding


def choose_rescale(values: np.ndarray, modality: str) -> tuple[float, float]:
    """``(slope, intercept)`` so that ``int16 * slope + intercept`` reproduces ``values``.

    Both numbers are exactly what their DICOM decimal strings say, so quantising with them gives
    the integers a reader turns back into the same values.

    Args:
        values: physical values (HU for CT).
        modality: medgen modality ("CT", "MR", "XR", "OT").
    """
    lo, hi = float(np.min(values)), float(np.max(values))
    if modality == "CT":
        return 1.0, 0.0
    if lo >= INT16_MIN and hi <= INT16_MAX and np.array_equal(values, np.rint(values)):
        return 1.0, 0.0
    if hi == lo:
        return 1.0, float(ds(lo))
    return float(ds((hi - lo) / (2 * FLOAT_SPAN))), float(ds((hi + lo) / 2))


def quantise(values: np.ndarray, slope: float, intercept: float) -> np.ndarray:
    """Values rounded to the nearest ``intercept + slope * n`` with ``n`` in int16 (float64)."""
    n = np.rint((np.asarray(values, dtype=np.float64) - intercept) / slope)
    clipped = int(np.count_nonzero((n < INT16_MIN) | (n > INT16_MAX)))
    if clipped:
        log.warning("%d values lie outside the int16 range of the DICOM rescale and were clipped", clipped)
    return intercept + slope * np.clip(n, INT16_MIN, INT16_MAX)


def unsigned_levels(values: np.ndarray) -> tuple[np.ndarray, float, float]:
    """``(uint16 levels, a, b)`` with ``value ~ a * level + b``: integers 0..65535 are kept as they are."""
    values = np.asarray(values, dtype=np.float64)
    lo, hi = float(values.min()), float(values.max())
    if lo >= 0 and hi <= UINT16_MAX and np.array_equal(values, np.rint(values)):
        return values.astype(np.uint16), 1.0, 0.0
    a = (hi - lo) / UINT16_MAX if hi > lo else 1.0
    return np.rint((values - lo) / a).astype(np.uint16), a, lo


@functools.cache
def _allow_rescale_in_classic_mr() -> None:
    """Let GDCM write Rescale Slope/Intercept into MR Image Storage (a process-wide GDCM switch).

    GDCM refuses a rescale in a classic MR image unless its global ForceRescaleInterceptSlope flag
    is on, and ITK then silently writes Enhanced MR Image Storage instead (multi-frame, poorly
    supported by viewers). ITK turns the flag on whenever it reads a DICOM header and SimpleITK
    offers no other switch, so read the header of a one-pixel DICOM file once per process.
    ``write_dicom_series`` checks the SOP class it got, so a change in ITK fails loudly.
    """
    import SimpleITK as sitk

    with tempfile.TemporaryDirectory() as tmp:
        probe = os.path.join(tmp, "probe.dcm")
        img = sitk.Image(1, 1, sitk.sitkInt16)
        img.SetMetaData("0008|0060", "OT")
        sitk.WriteImage(img, probe)
        reader = sitk.ImageFileReader()
        reader.SetImageIO("GDCMImageIO")
        reader.SetFileName(probe)
        reader.ReadImageInformation()


def _window(values: np.ndarray, meta: ImageMeta) -> tuple[float, float]:
    """Display window (center, width): the mapping's physical window when clipped, else the data range."""
    m = meta.intensity
    lo, hi = (m.in_low, m.in_high) if m.clip else (float(values.min()), float(values.max()))
    return (lo + hi) / 2, max(hi - lo, 1.0)


def _pixels(volume, meta: ImageMeta, modality: str):
    """(SimpleITK image GDCM writes as is, rescale and window tags, a note on the value mapping)."""
    import SimpleITK as sitk

    values = sitk.GetArrayViewFromImage(volume)
    if modality == "DX":  # DX: unsigned, RescaleSlope 1 and RescaleIntercept 0 (PS3.3 C.8.11.3)
        levels, a, b = unsigned_levels(values)
        image = sitk.GetImageFromArray(levels)
        lo, hi = float(levels.min()), float(levels.max())
        tags = {"0028|1050": ds((lo + hi) / 2), "0028|1051": ds(max(hi - lo, 1.0)), "0028|1052": "0",
                "0028|1053": "1", "0028|1054": "US"}
        note = "" if (a, b) == (1.0, 0.0) else f"; pixel values are (medgen value - {b:.6g}) / {a:.6g}"
    else:
        slope, intercept = choose_rescale(values, meta.modality)
        # GDCM divides the given values by the rescale and rounds: hand it exact multiples
        image = sitk.GetImageFromArray(quantise(values, slope, intercept))
        center, width = _window(values, meta)
        tags = {"0028|0100": "16", "0028|0101": "16", "0028|0102": "15", "0028|0103": "1",  # signed int16
                "0028|1050": ds(center), "0028|1051": ds(width), "0028|1052": ds(intercept),
                "0028|1053": ds(slope), "0028|1054": "HU" if modality == "CT" else "US"}
        note = ""
    image.CopyInformation(volume)
    return image, tags, note


def write_dicom_series(array: np.ndarray, meta: ImageMeta, directory: Path | str, item_id: str,
                       synthetic: bool = False) -> list[Path]:
    """Write an item as a DICOM series in the standard orientation, one ``IM#####.dcm`` file per slice.

    Args:
        array: stored values, 2D ``(i, j)`` (a single-slice series) or 3D ``(i, j, k)``.
        meta: the item's metadata; values are mapped to physical units through ``meta.intensity``.
        directory: the series directory (created; files of the same names are overwritten).
        item_id: the item's id, used in the series description and a synthetic PatientID.
        synthetic: mark the series as synthetic (see the module docstring).

    Returns the slice files in InstanceNumber order.
    """
    import SimpleITK as sitk

    if array.ndim not in (2, 3):
        raise ValueError(f"a DICOM series needs a 2D or 3D item, got shape {array.shape}")
    modality = export_modality(meta)
    if modality == "MR":
        _allow_rescale_in_classic_mr()
    array, affine = standard_orientation(np.asarray(array), meta.affine)
    meta = meta.with_affine(affine)
    volume = to_sitk(array, meta, physical=True)  # float32, LPS, (x, y, z) = (i, j, k)
    pixels, value_tags, note = _pixels(volume, meta, modality)
    shared = {**series_tags(meta, item_id, synthetic, modality, note), **value_tags}
    direction = np.asarray(volume.GetDirection()).reshape(3, 3)

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    paths = []
    for k in range(pixels.GetSize()[2]):
        # a (x, y, 1) slice keeps the k spacing, so GDCM writes the right SpacingBetweenSlices
        image = pixels[:, :, k : k + 1]
        tags = {**shared, "0008|0018": new_uid(), "0020|0013": str(k + 1)}
        if modality not in RADIOGRAPHS:  # projection images have no patient position (PS3.3 C.8.11)
            position = np.asarray(pixels.TransformIndexToPhysicalPoint((0, 0, k)))
            tags.update(slice_position_tags(position, direction, ds))
        for key, value in tags.items():
            image.SetMetaData(key, value)
        path = directory / f"IM{k + 1:05d}.dcm"
        writer.SetFileName(str(path))
        writer.Execute(image)
        if modality == "DX":
            add_sequences(path, dx_sequences({} if synthetic else meta.dicom or {}))
        paths.append(path)
    _check_sop_class(paths[0], SOP_CLASS[modality])
    log.debug("wrote DICOM series %s: %s, %d slices", directory, modality, len(paths))
    return paths


def _check_sop_class(path: Path, expected: str) -> None:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    got = reader.GetMetaData("0008|0016").strip("\0 ") if reader.HasMetaDataKey("0008|0016") else ""
    if got != expected:
        raise RuntimeError(f"{path}: GDCM wrote SOP class {got or 'none'} instead of {expected}")

