"""Image export: geometry and physical units survive NIfTI, NRRD, MHA and DICOM; PNG layout; synthetic marks."""

import numpy as np
import pytest

from medgen_cli.export.dicom import choose_rescale, ds
from medgen_cli.export.images import FORMATS, SYNTHETIC_MARK, export_item, to_display, to_grey
from medgen_cli.io.meta import LPS_TO_RAS, ImageMeta, IntensityMapping
from medgen_cli.io.readers import Source, discover, read_source
from tests.conftest import sphere_phantom

CT_WINDOW = IntensityMapping(method="window", unit="HU", in_low=-1000, in_high=1000, out_low=-1, out_high=1, clip=True)


def rotation(a: float, b: float, c: float) -> np.ndarray:
    ca, sa, cb, sb, cc, sc = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(c), np.sin(c)
    rz = np.array([[ca, -sa, 0], [sa, ca, 0], [0, 0, 1]])
    ry = np.array([[cb, 0, sb], [0, 1, 0], [-sb, 0, cb]])
    rx = np.array([[1, 0, 0], [0, cc, -sc], [0, sc, cc]])
    return rz @ ry @ rx


def oblique_affine(spacing=(0.7, 0.9, 2.5), origin=(30.0, -12.5, 7.0), angles=(0.4, -0.25, 0.15)) -> np.ndarray:
    """Right-handed, oblique, anisotropic (in-plane too, so a swapped PixelSpacing would show)."""
    affine = np.eye(4)
    affine[:3, :3] = rotation(*angles) @ np.diag(spacing)
    affine[:3, 3] = origin
    return affine


def ct_item(spatial_dims: int, affine=None):
    """(stored array, meta, physical HU values) of a CT phantom, 2D (a slice) or 3D."""
    hu = sphere_phantom((10, 12, 6))
    hu = hu[:, :, 3] if spatial_dims == 2 else hu
    meta = ImageMeta(affine=oblique_affine() if affine is None else affine, modality="CT", subject="s01",
                     intensity=CT_WINDOW)
    stored = CT_WINDOW.to_stored(hu)
    return stored, meta, CT_WINDOW.to_physical(stored)


def sitk_affine(img) -> np.ndarray:
    """RAS affine of a (3D) SimpleITK image."""
    affine = np.eye(4)
    direction = np.asarray(img.GetDirection()).reshape(3, 3)
    affine[:3, :3] = direction * np.asarray(img.GetSpacing())[None, :]
    affine[:3, 3] = img.GetOrigin()
    return LPS_TO_RAS @ affine


def read_series(directory):
    import SimpleITK as sitk

    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(directory))
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    img = reader.Execute()
    return img, sitk.GetArrayFromImage(img).transpose(2, 1, 0), files  # values in (i, j, k)


# -------------------------------------------------------------------------------------------- NIfTI
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_nifti_keeps_affine_and_hu(tmp_path, spatial_dims):
    import nibabel as nib
    import SimpleITK as sitk

    stored, meta, hu = ct_item(spatial_dims)
    (path,) = export_item(stored, meta, tmp_path, "ct", "nifti")
    assert path == tmp_path / "ct.nii.gz"

    img = nib.load(str(path))
    np.testing.assert_allclose(img.affine, meta.affine, atol=1e-4)
    np.testing.assert_allclose(img.header.get_qform(), meta.affine, atol=1e-4)
    np.testing.assert_allclose(np.asarray(img.dataobj).reshape(hu.shape), hu, atol=1e-3)
    assert SYNTHETIC_MARK not in img.header["descrip"].tobytes().decode()

    itk = sitk.ReadImage(str(path))
    np.testing.assert_allclose(sitk_affine(itk), meta.affine, atol=1e-4)
    np.testing.assert_allclose(sitk.GetArrayFromImage(itk).transpose(2, 1, 0).reshape(hu.shape), hu, atol=1e-3)


# -------------------------------------------------------------------------------------------- DICOM
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_dicom_series_has_hu_and_geometry(tmp_path, spatial_dims):
    stored, meta, hu = ct_item(spatial_dims)
    paths = export_item(stored, meta, tmp_path, "ct", "dicom")
    n_slices = 1 if spatial_dims == 2 else hu.shape[2]
    assert [p.name for p in paths] == [f"IM{k:05d}.dcm" for k in range(1, n_slices + 1)]
    assert not list(tmp_path.glob(".*"))  # no temporary directory left behind

    img, values, files = read_series(tmp_path / "ct")
    assert len(files) == n_slices
    np.testing.assert_allclose(values.reshape(hu.shape), hu, atol=0.5 + 1e-3)  # int16 HU rounding
    np.testing.assert_allclose(img.GetOrigin(), (LPS_TO_RAS @ meta.affine)[:3, 3], atol=1e-4)
    np.testing.assert_allclose(img.GetSpacing(), meta.spacing, atol=1e-4)
    np.testing.assert_allclose(np.reshape(img.GetDirection(), (3, 3)), LPS_TO_RAS[:3, :3] @ meta.direction, atol=1e-4)


def test_dicom_tags_stored_integers_are_hu(tmp_path):
    pydicom = pytest.importorskip("pydicom")
    stored, meta, hu = ct_item(3)
    paths = export_item(stored, meta, tmp_path, "ct", "dicom")
    slices = [pydicom.dcmread(str(p)) for p in paths]
    first = slices[0]
    assert first.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2" and first.Modality == "CT"
    assert first.PixelRepresentation == 1 and first.BitsAllocated == 16
    assert float(first.RescaleSlope) == 1.0 and float(first.RescaleIntercept) == 0.0
    # PixelSpacing is row spacing (along j) then column spacing (along i)
    np.testing.assert_allclose([float(v) for v in first.PixelSpacing], [meta.spacing[1], meta.spacing[0]], atol=1e-6)
    assert (first.Rows, first.Columns) == (hu.shape[1], hu.shape[0])
    np.testing.assert_allclose(float(first.SliceThickness), meta.spacing[2], atol=1e-6)
    for k, ds_k in enumerate(slices):
        assert int(ds_k.InstanceNumber) == k + 1
        np.testing.assert_allclose(ds_k.pixel_array.T, np.rint(hu[:, :, k]))  # the stored integer is the HU value
        expected = (LPS_TO_RAS @ meta.affine @ [0, 0, k, 1])[:3]
        np.testing.assert_allclose([float(v) for v in ds_k.ImagePositionPatient], expected, atol=1e-4)
    uids = {str(s.SOPInstanceUID) for s in slices}
    assert len(uids) == len(slices) and all(u.startswith("2.25.") and len(u) <= 64 for u in uids)
    assert len({(str(s.StudyInstanceUID), str(s.SeriesInstanceUID), str(s.FrameOfReferenceUID)) for s in slices}) == 1
    # a second export is a new study and series
    again = pydicom.dcmread(str(export_item(stored, meta, tmp_path / "b", "ct", "dicom")[0]))
    assert again.SeriesInstanceUID != first.SeriesInstanceUID and again.StudyInstanceUID != first.StudyInstanceUID


def test_dicom_mr_float_values_are_kept_with_a_slope(tmp_path):
    pydicom = pytest.importorskip("pydicom")
    rng = np.random.default_rng(1)
    stored = rng.normal(size=(8, 10, 4)).astype(np.float32)
    mapping = IntensityMapping(method="zscore", unit="a.u.", in_low=0.0, in_high=3.5, out_low=0.0, out_high=1.0)
    meta = ImageMeta(affine=oblique_affine(angles=(0.1, 0.2, -0.3)), modality="MR", intensity=mapping)
    physical = mapping.to_physical(stored)
    paths = export_item(stored, meta, tmp_path, "mr", "dicom")
    first = pydicom.dcmread(str(paths[0]))
    assert first.SOPClassUID == "1.2.840.10008.5.1.4.1.1.4"  # classic MR Image Storage, not Enhanced
    slope = float(first.RescaleSlope)
    assert 0 < slope < np.ptp(physical) / 60000
    img, values, _ = read_series(tmp_path / "mr")
    np.testing.assert_allclose(values, physical, atol=slope / 2 + 1e-6)
    np.testing.assert_allclose(sitk_affine(img), meta.affine, atol=1e-4)


@pytest.mark.parametrize("modality, sop_class", [
    ("CT", "1.2.840.10008.5.1.4.1.1.2"), ("MR", "1.2.840.10008.5.1.4.1.1.4"),
    ("XR", "1.2.840.10008.5.1.4.1.1.1"), ("OT", "1.2.840.10008.5.1.4.1.1.7"),
])
def test_medgen_reads_back_each_modality(tmp_path, modality, sop_class):
    """The export and medgen's own DICOM reader agree on values, geometry and modality."""
    import SimpleITK as sitk

    stored = np.random.default_rng(2).uniform(-1, 1, size=(9, 7)).astype(np.float32)
    mapping = IntensityMapping(in_low=-1000.0 if modality == "CT" else 0.0, in_high=1000.0, out_low=-1, out_high=1)
    meta = ImageMeta(affine=oblique_affine(spacing=(0.3, 0.4, 1.0)), modality=modality, intensity=mapping)
    (path,) = export_item(stored, meta, tmp_path, "it", "dicom")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    assert reader.GetMetaData("0008|0016").strip("\0 ") == sop_class
    (source,), _ = discover([str(tmp_path / "it")])
    values, back = read_source(source, modality="auto" if modality != "OT" else "OT")
    slope = float(reader.GetMetaData("0028|1053"))
    # medgen's series reader keeps a single-slice series as (I, J, 1)
    np.testing.assert_allclose(values.reshape(stored.shape), mapping.to_physical(stored), atol=slope / 2 + 1e-3)
    np.testing.assert_allclose(back.affine, meta.affine, atol=1e-4)
    assert back.modality == modality


def test_rescale_choice():
    assert choose_rescale(np.array([-1000.4, 30.2]), "CT") == (1.0, 0.0)
    assert choose_rescale(np.array([0.0, 17.0, 4000.0]), "MR") == (1.0, 0.0)  # integers: lossless
    slope, intercept = choose_rescale(np.array([0.25, 0.75]), "MR")
    assert slope == pytest.approx(0.5 / 64000, rel=1e-9) and intercept == 0.5
    assert all(len(ds(v)) <= 16 for v in (-123456.789012345, 1.0 / 3.0, -1e-300, 12345678901234567.0))
    with pytest.raises(ValueError, match="nan"):
        ds(float("nan"))


def test_left_handed_item_keeps_every_voxel_in_place(tmp_path):
    """A left-handed (e.g. LAS) item comes back with k reversed but each voxel at its own position."""
    affine = oblique_affine(angles=(0.0, 0.0, 0.2))
    affine[:3, 0] *= -1  # i runs to the right: left-handed
    stored, meta, hu = ct_item(3, affine)
    export_item(stored, meta, tmp_path, "las", "dicom")
    img, values, _ = read_series(tmp_path / "las")
    np.testing.assert_allclose(values, hu[:, :, ::-1], atol=0.5 + 1e-3)
    for ijk in [(0, 0, 0), (3, 7, 2), (9, 11, 5)]:
        lps = (LPS_TO_RAS @ meta.affine @ [*ijk, 1])[:3]
        assert tuple(img.TransformPhysicalPointToIndex(lps.tolist())) == (ijk[0], ijk[1], hu.shape[2] - 1 - ijk[2])


def test_reexport_replaces_the_series(tmp_path):
    stored, meta, _ = ct_item(3)
    export_item(stored, meta, tmp_path, "x", "dicom")
    export_item(stored[:, :, 0], meta, tmp_path, "x", "dicom")
    assert [p.name for p in (tmp_path / "x").iterdir()] == ["IM00001.dcm"]


# ------------------------------------------------------------------------------- synthetic marks
def test_synthetic_item_is_marked_in_every_format(tmp_path):
    import nibabel as nib
    import SimpleITK as sitk
    from PIL import Image

    pydicom = pytest.importorskip("pydicom")
    stored, meta, _ = ct_item(3)
    out = {fmt: export_item(stored, meta, tmp_path, "s", fmt, synthetic=True) for fmt in FORMATS}

    assert SYNTHETIC_MARK in nib.load(str(out["nifti"][0])).header["descrip"].tobytes().decode()
    for fmt in ("nrrd", "mha"):
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(out[fmt][0]))
        reader.ReadImageInformation()
        assert reader.GetMetaData("description").startswith(SYNTHETIC_MARK)
    assert Image.open(out["png"][0]).text["Description"].startswith(SYNTHETIC_MARK)

    for path in out["dicom"]:
        d = pydicom.dcmread(str(path))
        assert list(d.ImageType) == ["DERIVED", "SECONDARY", "SYNTHETIC"]
        assert d.SeriesDescription.startswith("SYNTHETIC")
        assert d.ImageComments == "Synthetic image generated by medgen; not a patient"
        assert str(d.PatientName) == "SYNTHETIC^MEDGEN" and d.PatientID == "SYNTHETIC-s"
        assert d.ContentQualification == "RESEARCH" and d.BurnedInAnnotation == "NO"

    real = pydicom.dcmread(str(export_item(stored, meta, tmp_path / "real", "r", "dicom")[0]))
    assert list(real.ImageType) == ["DERIVED", "SECONDARY"] and "ImageComments" not in real
    assert str(real.PatientName) == "s01" and not real.SeriesDescription.startswith("SYNTHETIC")


# ---------------------------------------------------------------------------------------- NRRD, MHA
@pytest.mark.parametrize("fmt", ["nrrd", "mha"])
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_nrrd_and_mha_round_trip(tmp_path, fmt, spatial_dims):
    stored, meta, hu = ct_item(spatial_dims)
    (path,) = export_item(stored, meta, tmp_path, "v", fmt)
    assert path.name == f"v.{fmt}"
    values, back = read_source(Source(str(path), "sitk"))
    assert values.shape == hu.shape
    np.testing.assert_allclose(values, hu, atol=1e-3)
    np.testing.assert_allclose(back.affine, meta.affine, atol=1e-4)


# --------------------------------------------------------------------------------------------- PNG
def test_png_of_png_geometry_keeps_the_original_layout(tmp_path):
    from PIL import Image

    stored = np.linspace(0, 1, 7 * 5).reshape(7, 5).astype(np.float32)  # (i, j): 7 columns, 5 rows
    stored[0, 0] = 1.0  # a bright marker in the first column of the first row
    mapping = IntensityMapping(out_low=0.0, out_high=1.0, clip=True)
    meta = ImageMeta(affine=LPS_TO_RAS.copy(), modality="XR", intensity=mapping)  # what the PNG reader gives
    (path,) = export_item(stored, meta, tmp_path, "xr", "png")
    png = np.asarray(Image.open(path))
    assert png.dtype == np.uint8 and png.shape == (5, 7)
    np.testing.assert_array_equal(png, to_grey(stored, mapping).T)
    assert png[0, 0] == 255 and png[-1, -1] == 255 and png[0, 1] == 38  # stored 0.147 -> 38
    back, _ = read_source(Source(str(path), "sitk"))  # and medgen reads it back in the same (i, j) order
    np.testing.assert_array_equal(back, png.T)


def test_png_display_orientation_follows_the_affine():
    plane = np.arange(12.0).reshape(4, 3)  # (i, j); affine columns below are the RAS directions of i, j, k
    ras = np.eye(4)  # i to the patient's right, j to anterior: axial display flips both
    np.testing.assert_array_equal(to_display(plane, ras), plane.T[::-1, ::-1])
    las = np.diag([-1.0, 1.0, 1.0, 1.0])  # i to the left, j to anterior: anterior goes up
    np.testing.assert_array_equal(to_display(plane, las), plane.T[::-1, :])
    coronal = np.eye(4)
    coronal[:3, :3] = [[-1, 0, 0], [0, 0, 1], [0, 1, 0]]  # i to the left, j to superior (RAS)
    np.testing.assert_array_equal(to_display(plane, coronal), plane.T[::-1, :])  # superior is up
    sagittal = np.eye(4)
    sagittal[:3, :3] = [[0, 0, 1], [-1, 0, 0], [0, -1, 0]]  # i to posterior, j to inferior (RAS)
    np.testing.assert_array_equal(to_display(plane, sagittal), plane.T)
    swapped = np.eye(4)
    swapped[:3, :3] = [[0, -1, 0], [-1, 0, 0], [0, 0, -1]]  # i to posterior, j to the left
    np.testing.assert_array_equal(to_display(plane, swapped), plane)


def test_png_volume_writes_one_slice_each_with_the_ct_window(tmp_path):
    from PIL import Image

    stored, meta, hu = ct_item(3, affine=np.diag([-0.8, -0.8, 2.0, 1.0]))
    paths = export_item(stored, meta, tmp_path, "ct", "png")
    assert [p.name for p in paths] == [f"slice_{k:04d}.png" for k in range(hu.shape[2])]
    assert all(p.parent == tmp_path / "ct_png" for p in paths)
    middle = np.asarray(Image.open(paths[3]))
    assert middle.shape == (hu.shape[1], hu.shape[0])
    np.testing.assert_array_equal(middle, to_grey(stored[:, :, 3], CT_WINDOW).T)
    grey = to_grey(np.array([-1.5, -1.0, 0.0, 1.0]), CT_WINDOW)  # stored window -1..1 -> 0..255
    np.testing.assert_array_equal(grey, [0, 0, 128, 255])


# ------------------------------------------------------------------------------------ bad inputs
def test_bad_inputs_are_refused_with_the_value(tmp_path):
    stored, meta, _ = ct_item(2)
    with pytest.raises(ValueError, match="'jpeg'"):
        export_item(stored, meta, tmp_path, "a", "jpeg")
    with pytest.raises(ValueError, match="'a/b'"):
        export_item(stored, meta, tmp_path, "a/b", "nifti")
    with pytest.raises(ValueError, match=r"\(2, 2, 2, 2\)"):
        export_item(np.zeros((2, 2, 2, 2)), meta, tmp_path, "a", "nifti")
    bad = stored.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="1 values are NaN"):
        export_item(bad, meta, tmp_path, "a", "dicom")
