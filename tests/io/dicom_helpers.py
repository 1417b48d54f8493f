"""Tiny DICOM inputs written with pydicom: CT series with chosen slice positions, radiographs, non-images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


def _file_meta(sop_class: str, sop_instance: str, explicit: bool = True):
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = ExplicitVRLittleEndian if explicit else ImplicitVRLittleEndian
    return meta


def ramp(z: float, shape=(16, 12)) -> np.ndarray:
    """The HU values of a slice at ``z`` mm: linear in z (so linear interpolation is exact), with a
    pattern in-plane; indexed (row, column) as pydicom's pixel_array."""
    rows, cols = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    return (-1000 + 2 * z + 10 * rows + cols).astype(np.int16)


def write_series(directory: Path, positions, shape=(16, 12), pixel_spacing=(0.8, 0.7),
                 iop=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0), offsets=None, values=ramp, **extra) -> list[Path]:
    """One CT series: slice k at ``positions[k]`` mm along the normal (row x column of ``iop``).

    Args:
        directory: created; files ``IM0001.dcm ...`` in the order given (not sorted).
        positions: slice positions along the normal (mm).
        shape: (rows, columns).
        pixel_spacing: (row spacing, column spacing) in mm.
        iop: ImageOrientationPatient of every slice (a list of 6-tuples to vary it per slice).
        offsets: optional in-plane shift (LPS mm, 3 values) per slice, to fake a gantry tilt.
        values: function of the position giving the (rows, columns) int16 HU values.
        extra: more attributes set on every slice (keyword -> value).
    """
    pytest.importorskip("pydicom")
    from pydicom.dataset import Dataset
    from pydicom.uid import generate_uid

    directory.mkdir(parents=True, exist_ok=True)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    paths = []
    for k, z in enumerate(positions):
        orient = iop[k] if isinstance(iop[0], (list, tuple)) else iop
        row, col = np.asarray(orient[:3], float), np.asarray(orient[3:], float)
        normal = np.cross(row, col)
        position = z * normal + (np.asarray(offsets[k], float) if offsets is not None else 0.0)
        ds = Dataset()
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta = _file_meta(ds.SOPClassUID, ds.SOPInstanceUID)
        ds.Modality, ds.PatientName, ds.PatientID = "CT", "Test^Series", "SER-1"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [f"{v:.4f}" for v in position]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in orient]
        ds.PixelSpacing = [str(v) for v in pixel_spacing]
        ds.SliceThickness = "5.0"
        ds.Rows, ds.Columns = shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = "0", "1"
        for key, value in extra.items():
            setattr(ds, key, value)
        ds.PixelData = values(float(z), shape).tobytes()
        path = directory / f"IM{k + 1:04d}.dcm"
        ds.save_as(str(path), enforce_file_format=True)
        paths.append(path)
    return paths


def write_non_image(path: Path, kind: str = "sr") -> Path:
    """A DICOM file that is not an image: a Basic Text SR ("sr") or a CT header without pixel data ("nopixels")."""
    pytest.importorskip("pydicom")
    from pydicom.dataset import Dataset
    from pydicom.uid import generate_uid

    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11" if kind == "sr" else "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta = _file_meta(ds.SOPClassUID, ds.SOPInstanceUID)
    ds.Modality = "SR" if kind == "sr" else "CT"
    ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID = "X", generate_uid(), generate_uid()
    if kind != "sr":
        ds.Rows, ds.Columns, ds.BitsAllocated, ds.SamplesPerPixel = 16, 16, 16, 1
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(str(path), enforce_file_format=True)
    return path


def write_radiograph(path: Path, modality: str = "DX", source: Path | None = None, size: int = 64) -> Path:
    """A DX or CR radiograph: the pixels of ``source`` (RG3_UNCR.dcm) cut to ``size``, or a ramp."""
    pydicom = pytest.importorskip("pydicom")
    from pydicom.uid import generate_uid

    if source is not None:
        ds = pydicom.dcmread(str(source))
        pixels = ds.pixel_array[:size, :size].copy()
    else:
        ds = pydicom.Dataset()
        ds.PatientName, ds.PatientID, ds.StudyInstanceUID = "Test^Xray", "XR-1", generate_uid()
        ds.SeriesInstanceUID, ds.PhotometricInterpretation = generate_uid(), "MONOCHROME2"
        ds.BodyPartExamined, ds.ViewPosition, ds.PatientOrientation = "CHEST", "PA", ["L", "F"]
        pixels = (np.add.outer(np.arange(size), 2 * np.arange(size)) % 1024).astype(np.uint16)
    ds.SOPClassUID = {"DX": "1.2.840.10008.5.1.4.1.1.1.1", "CR": "1.2.840.10008.5.1.4.1.1.1"}[modality]
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta = _file_meta(ds.SOPClassUID, ds.SOPInstanceUID)
    ds.Modality = modality
    if modality == "DX":
        ds.ImageLaterality = ds.get("Laterality", "U") or "U"
        ds.PresentationIntentType = "FOR PRESENTATION"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 1, 16, 16, 15, 0
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(str(path), enforce_file_format=True)
    return path
