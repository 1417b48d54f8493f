"""Readers, writers and the zarr store: geometry in RAS, physical units, round trips."""

import numpy as np
import pytest

from medgen_cli.meta import ImageMeta, IntensityMapping
from medgen_cli.io.readers import ReadError, Source, discover, read_source
from medgen_cli.io.store import Store, store_path
from medgen_cli.io.writers import to_sitk, write_nifti, write_sitk
from tests.conftest import sphere_phantom, write_nifti as save_nifti

OBLIQUE = np.array([[0.0, -1.2, 0.1, 30.0], [1.1, 0.0, 0.0, -12.5], [0.0, 0.05, 2.5, 7.0], [0, 0, 0, 1]])


def test_intensity_mapping_round_trip():
    m = IntensityMapping(method="window", unit="HU", in_low=-1350, in_high=150, out_low=-1, out_high=1, clip=True)
    hu = np.array([-2000, -1350, -600, 150, 900], dtype=np.float32)
    stored = m.to_stored(hu)
    np.testing.assert_allclose(stored, [-1, -1, 0, 1, 1], atol=1e-6)
    np.testing.assert_allclose(m.to_physical(stored), np.clip(hu, -1350, 150), atol=1e-3)
    assert m.data_range == 2.0 and m.physical_range == 1500
    log = IntensityMapping(in_low=0, in_high=1000, out_low=0, out_high=1, clip=True, transform="log")
    x = np.array([0, 10, 500, 1000.0])
    np.testing.assert_allclose(log.to_physical(log.to_stored(x)), x, rtol=1e-4, atol=1e-3)
    assert IntensityMapping(in_low=5, in_high=7, clip=False).data_range is None
    with pytest.raises(ValueError, match="in_high > in_low"):
        IntensityMapping(in_low=1, in_high=1)


def test_nifti_reader_keeps_affine_and_values(tmp_path):
    arr = sphere_phantom()
    path = save_nifti(tmp_path / "s.nii.gz", arr, OBLIQUE)
    (src,), problems = discover([str(path)])
    out, meta = read_source(src)
    assert problems == [] and src.name == "s"
    np.testing.assert_allclose(meta.affine, OBLIQUE, atol=1e-5)
    np.testing.assert_allclose(out, arr, atol=1e-3)


def test_sitk_geometry_is_converted_to_ras(tmp_path):
    import SimpleITK as sitk

    arr = sphere_phantom((10, 12, 6))
    img = sitk.GetImageFromArray(arr.transpose(2, 1, 0))
    img.SetSpacing((0.7, 0.8, 2.0))
    img.SetOrigin((10.0, -20.0, 5.0))
    img.SetDirection((0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    sitk.WriteImage(img, str(tmp_path / "v.nrrd"))
    out, meta = read_source(Source(str(tmp_path / "v.nrrd"), "sitk"))
    np.testing.assert_allclose(out, arr, atol=1e-3)
    for idx in [(0, 0, 0), (3, 5, 2), (9, 11, 5)]:
        lps = np.array(img.TransformIndexToPhysicalPoint(idx))
        ras = meta.affine @ np.array([*idx, 1.0])
        np.testing.assert_allclose(ras[:3], lps * [-1, -1, 1], atol=1e-6)
    # and back: writing through SimpleITK reproduces ITK's own geometry
    back = to_sitk(out, meta.replace(intensity=IntensityMapping()), physical=False)
    np.testing.assert_allclose(back.GetDirection(), img.GetDirection(), atol=1e-9)
    np.testing.assert_allclose(back.GetOrigin(), img.GetOrigin(), atol=1e-9)


def test_dicom_ct_slice_in_hu():
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    f = get_testdata_file("CT_small.dcm")
    ds = pydicom.dcmread(f)
    expected = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    arr, meta = read_source(Source(f, "sitk"))
    assert arr.ndim == 2 and meta.modality == "CT"
    np.testing.assert_allclose(arr, expected.T)  # voxel order (i=column, j=row)
    np.testing.assert_allclose(meta.spacing[:2], [float(v) for v in ds.PixelSpacing], rtol=1e-6)


def test_monochrome1_radiograph_has_bright_bone(real_data):
    pydicom = pytest.importorskip("pydicom")
    f = real_data("RG3_UNCR.dcm")
    raw = pydicom.dcmread(f).pixel_array.astype(np.float32)  # MONOCHROME1: bone is dark in raw values
    arr, meta = read_source(Source(str(f), "sitk"))
    assert meta.modality == "XR" and meta.attrs["photometric"] == "MONOCHROME1-inverted"
    np.testing.assert_allclose(arr.T, raw.max() + raw.min() - raw)


@pytest.mark.parametrize("content,reason", [
    (b"\x1f\x8b\x08\x00garbage", "cannot be read"),
    (b"", "cannot be read"),
])
def test_bad_files_give_reasons(tmp_path, content, reason):
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(content)
    with pytest.raises(ReadError, match=reason) as err:
        read_source(Source(str(bad), "nifti"))
    assert str(bad) in str(err.value)


def test_nan_and_empty_axis_rejected(tmp_path):
    arr = sphere_phantom((8, 8, 4))
    arr[1, 1, 1] = np.nan
    with pytest.raises(ReadError, match="NaN or Inf"):
        read_source(Source(str(save_nifti(tmp_path / "nan.nii", arr, np.eye(4))), "nifti"))
    with pytest.raises(ReadError, match="zero-length axis"):
        read_source(Source(str(save_nifti(tmp_path / "z.nii", np.zeros((4, 0, 3), np.float32), np.eye(4))), "nifti"))


def test_discover_globs_dirs_and_missing(tmp_path):
    for name in ("a.nii.gz", "b.nii", "c.nrrd"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("ignored")
    sources, problems = discover([str(tmp_path / "*.nii*"), str(tmp_path), str(tmp_path / "missing.nii")])
    assert sorted(s.name for s in sources) == ["a", "b", "c"]
    assert problems == [(str(tmp_path / "missing.nii"), "no such file or directory")]


def test_store_round_trip_and_incomplete_items(tmp_path):
    meta = ImageMeta(affine=OBLIQUE, modality="CT", subject="s1",
                     intensity=IntensityMapping(method="window", unit="HU", in_low=-1000, in_high=1000, out_low=-1, out_high=1, clip=True))
    arr = np.random.default_rng(0).uniform(-1, 1, (20, 18, 9)).astype(np.float32)
    store = Store.create(store_path(tmp_path / "prep"))
    store.write("s1", arr, meta, split="train", chunks=(8, 8, 8))
    store.write("s2", arr[:, :, :3], meta.replace(subject="s2"), split="test")
    # an item whose data never finished is invisible to readers
    store._items.create_array("s3", shape=(2, 2), dtype="float16", attributes={"complete": False})
    again = Store.open(store_path(tmp_path / "prep"))
    assert again.ids() == ["s1", "s2"] and again.ids("test") == ["s2"] and not again.is_complete("s3")
    out, m = again.read_item("s1")
    np.testing.assert_allclose(out, arr, atol=1e-3 * 2)  # float16 precision
    np.testing.assert_allclose(m.affine, OBLIQUE)
    assert m.intensity == meta.intensity and m.subject == "s1" and again.array("s1").chunks == (8, 8, 8)
    np.testing.assert_array_equal(again.read("s1", (slice(2, 5), slice(0, 4), slice(1, 2))), out[2:5, 0:4, 1:2])
    summary = again.summary()
    assert summary["items"] == 2 and summary["incomplete_items"] == 1 and summary["splits"] == {"test": 1, "train": 1}
    assert summary["compression_ratio"] > 0 and again.subjects() == {"s1": ["s1"], "s2": ["s2"]}
    with pytest.raises(ValueError, match="overflow float16"):
        store.write("big", np.full((2, 2), 1e6, np.float32), meta)


def test_nifti_and_sitk_writers_keep_geometry_and_units(tmp_path):
    import nibabel as nib
    import SimpleITK as sitk

    mapping = IntensityMapping(method="window", unit="HU", in_low=-1000, in_high=1000, out_low=-1, out_high=1, clip=True)
    meta = ImageMeta(affine=OBLIQUE, modality="CT", intensity=mapping)
    stored = np.random.default_rng(1).uniform(-1, 1, (6, 5, 4)).astype(np.float32)
    img = nib.load(str(write_nifti(tmp_path / "x.nii.gz", stored, meta, description="synthetic")))
    np.testing.assert_allclose(img.affine, OBLIQUE, atol=1e-4)
    np.testing.assert_allclose(img.get_fdata(), mapping.to_physical(stored), atol=1e-2)
    assert b"synthetic" in img.header["descrip"].tobytes()
    write_sitk(tmp_path / "x.nrrd", stored, meta)
    back, m2 = read_source(Source(str(tmp_path / "x.nrrd"), "sitk"))
    np.testing.assert_allclose(m2.affine, OBLIQUE, atol=1e-4)
    np.testing.assert_allclose(back, mapping.to_physical(stored), atol=1e-2)
    assert sitk.ReadImage(str(tmp_path / "x.nrrd")).GetSize() == (6, 5, 4)


def test_source_dicom_attributes_round_trip_through_the_store(tmp_path):
    from pydicom.data import get_testdata_file

    pytest.importorskip("pydicom")
    arr, meta = read_source(Source(get_testdata_file("CT_small.dcm"), "sitk"))
    assert meta.dicom["PatientID"] == "1CT1" and meta.dicom["Modality"] == "CT" and "StudyInstanceUID" in meta.dicom
    assert ImageMeta.from_attrs(meta.to_attrs()).dicom == meta.dicom
    assert ImageMeta.from_attrs(ImageMeta().to_attrs()).dicom is None and "dicom" not in ImageMeta().to_attrs()
    store = Store.create(store_path(tmp_path / "prep"))
    store.write("ct", arr, meta, split="train")
    _, back = Store.open(store_path(tmp_path / "prep")).read_item("ct")
    assert back.dicom == meta.dicom and back.replace(subject="x").dicom == meta.dicom


def test_radiograph_geometry_comes_from_patient_orientation(real_data):
    arr, meta = read_source(Source(str(real_data("RG3_UNCR.dcm")), "sitk"))  # PatientOrientation R\F, no IOP
    assert meta.dicom["PatientOrientation"] == "R\\F" and "ImageOrientationPatient" not in meta.dicom
    # i (along a row) runs to the patient's right (+x in RAS), j (down a column) to the feet (-z)
    np.testing.assert_allclose(meta.affine[:3, :3], [[1, 0, 0], [0, 0, 1], [0, -1, 0]], atol=1e-12)


def test_non_finite_voxels_are_counted_block_by_block():
    from medgen_cli.io.readers import _count_non_finite

    arr = np.asfortranarray(np.zeros((5, 6, 7), np.float32))  # NIfTI arrays come in Fortran order
    arr[1, 2, 3], arr[4, 5, 6] = np.nan, np.inf
    assert _count_non_finite(arr, block=8) == 2 and _count_non_finite(arr[:, ::2], block=8) == 1
