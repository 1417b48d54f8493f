"""Export one item ``(array, ImageMeta)`` to files radiology tools open: NIfTI, NRRD, MHA, DICOM, PNG.

Every format but PNG keeps the physical geometry (the item's affine) and physical units (values
mapped back through the item's intensity mapping: HU for CT). Files per format (``<id>`` = item id):

* nifti: ``<id>.nii.gz`` (nibabel; qform = sform = the affine; a 2D item as (I, J, 1)).
* nrrd, mha: ``<id>.nrrd``, ``<id>.mha`` (SimpleITK, LPS, float32).
* dicom: a series directory ``<id>/IM00001.dcm ...``, one file per slice (see :mod:`.dicom`).
* png: 8-bit grey in radiological display orientation: ``<id>.png`` for a 2D item, and for a
  volume one image per slice along ``k``: ``<id>_png/slice_0000.png ...``.

A synthetic item (a sample) is marked in every format: the NIfTI ``descrip`` and the NRRD/MHA
``description`` field and PNG ``Description`` text start with ``SYNTHETIC (medgen)``; DICOM marks
are listed in :mod:`.dicom`. Series and slice directories are written next to their final name and
renamed when complete, so a re-export replaces them whole.

PNG display: for slices the plane (axial, coronal, sagittal) is the one closest to the slice
normal and the image is laid out as radiologists read it: patient left on the screen's right in
axial and coronal views, anterior on the left in sagittal views, superior up. An item with the
identity LPS geometry of a read PNG therefore comes out in its original layout. Grey levels span
the mapping's stored window when it clips (a CT window: -1000..1000 HU -> 0..255), else the
item's own value range, oriented so that higher physical values are brighter.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np

from .. import __version__
from ..meta import ImageMeta, IntensityMapping, standard_orientation
from ..io.writers import to_sitk, write_nifti
from .dicom import write_dicom_series

log = logging.getLogger(__name__)

FORMATS = ("nifti", "nrrd", "mha", "dicom", "png")
SYNTHETIC_MARK = "SYNTHETIC (medgen)"
SUFFIX = {"nifti": ".nii.gz", "nrrd": ".nrrd", "mha": ".mha"}

def export_item(array: np.ndarray, meta: ImageMeta, out_dir: Path | str, item_id: str, fmt: str,
                synthetic: bool = False) -> list[Path]:
    """Write one item in one format and return the files written.

    Args:
        array: stored values, 2D ``(i, j)`` or 3D ``(i, j, k)`` in voxel order.
        meta: the item's metadata (affine in RAS+ mm, intensity mapping, modality).
        out_dir: the directory to write into (created when missing).
        item_id: the item's id; names the file or directory (no path separators).
        fmt: one of ``FORMATS``: "nifti", "nrrd", "mha", "dicom", "png".
        synthetic: mark the output as a synthetic image (a sample), not a patient's.
    """
    if fmt not in FORMATS:
        raise ValueError(f"export format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    _check_item_id(item_id)
    array = np.asarray(array)
    if array.ndim not in (2, 3) or 0 in array.shape:
        raise ValueError(f"item {item_id!r}: expected a non-empty 2D or 3D array, got shape {array.shape}")
    bad = int(np.count_nonzero(~np.isfinite(array)))
    if bad:
        raise ValueError(f"item {item_id!r}: {bad} values are NaN or Inf")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    text = describe(meta, synthetic)
    log.debug("exporting %s (%s, shape %s) as %s", item_id, meta.modality, array.shape, fmt)
    if fmt == "nifti":
        return [write_nifti(out_dir / f"{item_id}.nii.gz", array, meta, physical=True, description=text)]
    if fmt in ("nrrd", "mha"):
        return [_write_sitk(out_dir / f"{item_id}{SUFFIX[fmt]}", array, meta, text)]
    if fmt == "dicom":
        return _into_directory(out_dir / item_id, lambda d: write_dicom_series(array, meta, d, item_id, synthetic))
    if array.ndim == 2:
        return [write_png(out_dir / f"{item_id}.png", array, meta.affine, meta.intensity, text)]
    return _into_directory(out_dir / f"{item_id}_png", lambda d: _write_png_slices(d, array, meta, text))


def describe(meta: ImageMeta, synthetic: bool) -> str:
    """The one-line description written into NIfTI ``descrip`` (80 bytes) and similar fields."""
    unit = meta.intensity.unit
    if synthetic:
        return f"{SYNTHETIC_MARK}: not a patient; {meta.modality} in {unit}; medgen {__version__}"
    return f"medgen {__version__} export; {meta.modality} in {unit}"


def _check_item_id(item_id: str) -> None:
    if not item_id or item_id.startswith(".") or any(c in item_id for c in "/\\\0"):
        raise ValueError(f"item id {item_id!r} must be a non-empty file name without '/', '\\' or a leading '.'")


def _write_sitk(path: Path, array: np.ndarray, meta: ImageMeta, text: str) -> Path:
    """NRRD or MHA with the description and unit as header fields (both formats keep them)."""
    import SimpleITK as sitk

    image = to_sitk(array, meta, physical=True)
    image.SetMetaData("description", text)
    image.SetMetaData("unit", meta.intensity.unit)
    image.SetMetaData("modality", meta.modality)
    sitk.WriteImage(image, str(path), useCompression=True)
    return path


def _into_directory(final: Path, write) -> list[Path]:
    """Run ``write(tmp_dir)`` into a sibling temporary directory, then put it in place of ``final``."""
    tmp = final.with_name(f".{final.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        names = [p.name for p in write(tmp)]
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    return [final / name for name in names]


# ------------------------------------------------------------------------------------------- PNG
def to_display(plane: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """A 2D ``(i, j)`` plane as ``(rows, cols)`` in radiological display orientation.

    The layout is ``meta.standard_orientation``'s, the one DICOM exports are written in.

    Args:
        plane: values indexed ``(i, j)``.
        affine: the plane's 4x4 voxel -> RAS+ affine (only its first two columns matter).
    """
    plane = np.asarray(plane)
    if plane.ndim != 2:
        raise ValueError(f"expected a 2D (i, j) plane, got shape {plane.shape}")
    return np.ascontiguousarray(standard_orientation(plane, affine)[0].T)


def to_grey(array: np.ndarray, mapping: IntensityMapping) -> np.ndarray:
    """Stored values -> uint8 grey levels: the mapping's window when it clips, else the data range.

    Args:
        array: stored values (any shape); one scale is used for all of them.
        mapping: the item's intensity mapping (its stored points orient the scale: low -> black).
    """
    u = (np.asarray(array, dtype=np.float64) - mapping.out_low) / (mapping.out_high - mapping.out_low)
    lo, hi = (0.0, 1.0) if mapping.clip else (float(u.min()), float(u.max()))
    if hi <= lo:
        return np.zeros(u.shape, dtype=np.uint8)
    return np.rint(np.clip((u - lo) / (hi - lo), 0.0, 1.0) * 255).astype(np.uint8)


def write_png(path: Path | str, plane: np.ndarray, affine: np.ndarray, mapping: IntensityMapping,
              description: str = "", grey: np.ndarray | None = None) -> Path:
    """Write one 2D plane as an 8-bit greyscale PNG in display orientation.

    Args:
        path: the PNG file.
        plane: stored values ``(i, j)``.
        affine: the plane's affine (sets the display orientation).
        mapping: intensity mapping (sets the grey scale) unless ``grey`` is given.
        description: PNG ``Description`` text (the synthetic mark goes here).
        grey: precomputed uint8 grey levels of ``plane`` (so slices of a volume share one scale).
    """
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("Software", f"medgen {__version__}")
    if description:
        info.add_text("Description", description)
    levels = to_grey(plane, mapping) if grey is None else grey
    Image.fromarray(to_display(levels, affine)).save(str(path), pnginfo=info)
    return Path(path)


def _write_png_slices(directory: Path, array: np.ndarray, meta: ImageMeta, text: str) -> list[Path]:
    grey = to_grey(array, meta.intensity)  # one scale for the whole volume
    width = max(4, len(str(array.shape[2] - 1)))
    return [
        write_png(directory / f"slice_{k:0{width}d}.png", array[:, :, k], meta.affine, meta.intensity, text,
                  grey=grey[:, :, k])
        for k in range(array.shape[2])
    ]
