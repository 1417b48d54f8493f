"""DICOM exports pass David Clunie's ``dciodvfy`` (dicom3tools) with 0 errors, for every IOD medgen writes.

Sources: CT in HU (pyradiomics lung1), MR series (pyradiomics brain1) and single MR/CT DICOM files,
a CR radiograph (pydicom-data RG3_UNCR, MONOCHROME1) and a DX built from it; each also as a
synthetic item. Every exported file is checked; warnings are allowed (they are counted, see
``WARNINGS`` below) but no error is.
"""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from medgen_cli.export.images import export_item
from medgen_cli.meta import IntensityMapping
from medgen_cli.io.readers import Source, read_source
from medgen_cli.io.store import Store, store_path

pydicom = pytest.importorskip("pydicom")
DCIODVFY = shutil.which("dciodvfy")
pytestmark = pytest.mark.skipif(DCIODVFY is None, reason="dciodvfy (Debian package dicom3tools) is not installed; .ci/run installs it")
CT_WINDOW = IntensityMapping(method="window", unit="HU", in_low=-1000, in_high=1000, out_low=-1, out_high=1, clip=True)


def verify(paths) -> int:
    """Run dciodvfy on every file; fail on any error; return the number of warnings of the first file."""
    warnings = []
    for path in paths:
        out = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=60)
        lines = (out.stdout + out.stderr).splitlines()
        errors = [line for line in lines if line.startswith("Error")]
        assert errors == [], f"{path}:\n" + "\n".join(errors)
        warnings.append([line for line in lines if line.startswith("Warning")])
    return len(warnings[0])


def through_store(tmp_path, arr, meta, mapping=None):
    """Write the item to a zarr store and read it back, as the export step does (ImageMeta.dicom included)."""
    mapping = mapping or IntensityMapping(method="minmax", unit=meta.intensity.unit, in_low=float(arr.min()),
                                          in_high=float(arr.max()), out_low=-1.0, out_high=1.0)
    store = Store.create(store_path(tmp_path / "prep"))
    store.write("item", mapping.to_stored(arr), meta.replace(intensity=mapping), split="test")
    return Store.open(store_path(tmp_path / "prep")).read_item("item")


@pytest.mark.parametrize("synthetic", [False, True])
def test_ct_series_from_pyradiomics_lung(real_data, tmp_path, synthetic):
    arr, meta = read_source(Source(str(real_data("lung1_image.nrrd")), "sitk"), modality="CT")
    stored, back = through_store(tmp_path, arr[128:384, 128:384, 20:24], meta, CT_WINDOW)
    paths = export_item(stored, back, tmp_path / "out", "lung1", "dicom", synthetic=synthetic)
    assert len(paths) == 4 and verify(paths) <= 2
    first = pydicom.dcmread(str(paths[0]))
    assert first.Modality == "CT" and first.ImageType[:3] == ["DERIVED", "SECONDARY", "AXIAL"]
    assert float(first.SliceThickness) == pytest.approx(meta.spacing[2])  # no DICOM source: the spacing


@pytest.mark.parametrize("synthetic", [False, True])
def test_mr_series_from_pyradiomics_brain(real_data, tmp_path, synthetic):
    arr, meta = read_source(Source(str(real_data("brain1_image.nrrd")), "sitk"), modality="MR")
    stored, back = through_store(tmp_path, arr[::4, ::4, 8:12], meta)
    paths = export_item(stored, back, tmp_path / "out", "brain1", "dicom", synthetic=synthetic)
    assert len(paths) == 4 and verify(paths) <= 8  # MR rescale: a standard extended SOP class
    assert pydicom.dcmread(str(paths[0])).SOPClassUID == "1.2.840.10008.5.1.4.1.1.4"


@pytest.mark.parametrize("name", ["MR_small.dcm", "CT_small.dcm"])
def test_single_dicom_sources_keep_their_identity(tmp_path, name):
    from pydicom.data import get_testdata_file

    source = pydicom.dcmread(get_testdata_file(name))
    arr, meta = read_source(Source(get_testdata_file(name), "sitk"))
    stored, back = through_store(tmp_path, arr, meta)
    (path,) = export_item(stored, back, tmp_path / "out", "item", "dicom")
    verify([path])
    out = pydicom.dcmread(str(path))
    assert out.Modality == source.Modality and out.PatientID == source.PatientID
    assert out.StudyInstanceUID == source.StudyInstanceUID and float(out.SliceThickness) == float(source.SliceThickness)


def test_mr_from_a_large_dicom_source(real_data, tmp_path):
    arr, meta = read_source(Source(str(real_data("MR2_UNCR.dcm")), "sitk"))
    stored, back = through_store(tmp_path, arr[::8, ::8], meta)
    (path,) = export_item(stored, back, tmp_path / "out", "mr2", "dicom")
    verify([path])
    out = pydicom.dcmread(str(path))
    assert out.ScanningSequence == "SE" and float(out.EchoTime) == 27.0 and float(out.SliceThickness) == 6.0


@pytest.mark.parametrize("synthetic", [False, True])
def test_cr_radiograph_stays_cr(real_data, tmp_path, synthetic):
    arr, meta = read_source(Source(str(real_data("RG3_UNCR.dcm")), "sitk"))
    stored, back = through_store(tmp_path, arr[::4, ::4], meta)
    (path,) = export_item(stored, back, tmp_path / "out", "rg3", "dicom", synthetic=synthetic)
    verify([path])
    out = pydicom.dcmread(str(path))
    assert out.Modality == "CR" and out.SOPClassUID == "1.2.840.10008.5.1.4.1.1.1"
    if synthetic:  # a sample carries nothing of the patient it was learnt from
        assert out.PatientID == "SYNTHETIC-rg3" and not out.ViewPosition and not out.Laterality
    else:
        assert out.PatientID == "11RG3" and out.ViewPosition == "AP" and out.Laterality == "R"


@pytest.mark.parametrize("synthetic", [False, True])
def test_dx_radiograph_stays_dx(real_data, tmp_path, synthetic):
    from tests.io.dicom_helpers import write_radiograph

    dx = write_radiograph(tmp_path / "dx.dcm", "DX", source=real_data("RG3_UNCR.dcm"), size=512)
    arr, meta = read_source(Source(str(dx), "sitk"))
    stored, back = through_store(tmp_path, arr, meta)
    (path,) = export_item(stored, back, tmp_path / "out", "dx", "dicom", synthetic=synthetic)
    verify([path])
    out = pydicom.dcmread(str(path))
    assert out.Modality == "DX" and out.SOPClassUID == "1.2.840.10008.5.1.4.1.1.1.1"
    assert out.ImageLaterality == ("U" if synthetic else "R") and len(out.AnatomicRegionSequence) == (0 if synthetic else 1)


def test_secondary_capture_for_other_images(tmp_path):
    from medgen_cli.meta import ImageMeta

    meta = ImageMeta(affine=np.diag([-0.5, -0.5, 1.0, 1.0]), modality="OT", subject="s9")
    (path,) = export_item(np.random.default_rng(0).uniform(0, 1, (12, 10)).astype(np.float32), meta, tmp_path, "ot", "dicom")
    verify([path])
