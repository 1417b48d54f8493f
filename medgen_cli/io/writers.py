"""Writers: ``(array, ImageMeta)`` -> NIfTI (nibabel) or any SimpleITK format, geometry kept.

``physical=True`` maps stored values back to physical units (HU for CT) through the item's
intensity mapping before writing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..meta import LPS_TO_RAS, ImageMeta


def to_physical(array: np.ndarray, meta: ImageMeta) -> np.ndarray:
    return np.asarray(meta.intensity.to_physical(np.asarray(array, dtype=np.float32)), dtype=np.float32)


def write_nifti(path: Path | str, array: np.ndarray, meta: ImageMeta, physical: bool = True,
                description: str = "") -> Path:
    """Write a NIfTI-1 file whose affine is the item's (2D items are written as (I, J, 1))."""
    import nibabel as nib

    data = to_physical(array, meta) if physical else np.asarray(array, dtype=np.float32)
    if data.ndim == 2:
        data = data[:, :, None]
    img = nib.Nifti1Image(data, meta.affine)
    img.header.set_xyzt_units("mm")
    img.set_qform(meta.affine, code=1)
    img.set_sform(meta.affine, code=1)
    if description:
        img.header["descrip"] = description[:79].encode()
    path = Path(path)
    nib.save(img, str(path))
    return path


def to_sitk(array: np.ndarray, meta: ImageMeta, physical: bool = True):
    """A SimpleITK image with the item's geometry (LPS) and values."""
    import SimpleITK as sitk

    data = to_physical(array, meta) if physical else np.asarray(array, dtype=np.float32)
    if data.ndim == 2:
        data = data[:, :, None]
    img = sitk.GetImageFromArray(np.ascontiguousarray(data.transpose(2, 1, 0)))
    lps = LPS_TO_RAS @ meta.affine  # RAS -> LPS (the flip is its own inverse)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    img.SetSpacing([float(s) for s in spacing])
    img.SetOrigin([float(v) for v in lps[:3, 3]])
    img.SetDirection([float(v) for v in (lps[:3, :3] / spacing[None, :]).ravel()])
    return img


def write_sitk(path: Path | str, array: np.ndarray, meta: ImageMeta, physical: bool = True) -> Path:
    """Write NRRD, MHA/MHD or any other format SimpleITK knows by the file's suffix."""
    import SimpleITK as sitk

    sitk.WriteImage(to_sitk(array, meta, physical), str(path), useCompression=True)
    return Path(path)
