"""DICOM export: standard (radiological) layout, exact geometry and values, attributes carried from the source."""

import numpy as np
import pytest

from medgen_cli.export.dicom import choose_rescale, ds, unsigned_levels
from medgen_cli.export.dicom_tags import add_sequences
from medgen_cli.export.images import export_item
from medgen_cli.meta import LPS_TO_RAS, ImageMeta, IntensityMapping, standard_orientation
from medgen_cli.io.readers import Source, discover, read_source
from tests.export.helpers import CT_WINDOW, ct_item, oblique_affine, read_series, sitk_affine, values_at_item_voxels

pydicom = pytest.importorskip("pydicom")
IDENTITY_HU = IntensityMapping(method="identity", unit="HU", in_low=0.0, in_high=1.0, out_low=0.0, out_high=1.0)

# The standard frame of each plane as RAS columns i, j, k (meta.STANDARD_FRAMES gives them in LPS)
AXIAL = np.stack([[-1, 0, 0], [0, -1, 0], [0, 0, 1]], axis=1).astype(float)  # i left, j posterior, k superior
CORONAL = np.stack([[-1, 0, 0], [0, 0, -1], [0, -1, 0]], axis=1).astype(float)  # i left, j inferior, k posterior
SAGITTAL = np.stack([[0, -1, 0], [0, 0, -1], [1, 0, 0]], axis=1).astype(float)  # i posterior, j inferior, k right

def labelled_volume(shape=(6, 5, 4)) -> np.ndarray:
    """Distinct integer HU values, so any swap or flip of an axis shows."""
    return (np.arange(np.prod(shape)).reshape(shape) * 3 - 500).astype(np.float32)


def in_orientation(standard: np.ndarray, frame: np.ndarray, code: str):
    """The same world content as ``standard`` (laid out in ``frame``) stored in another axis order.

    Built with nibabel's orientation tools, independently of medgen's own.
    """
    import nibabel.orientations as nio

    affine = np.eye(4)
    affine[:3, :3] = frame * [0.8, 0.9, 2.0]
    affine[:3, 3] = [10.0, -20.0, 30.0]
    transform = nio.ornt_transform(nio.io_orientation(affine), nio.axcodes2ornt(tuple(code)))
    return nio.apply_orientation(standard, transform), affine @ nio.inv_ornt_aff(transform, standard.shape)


def export_hu(tmp_path, array, affine, modality="CT", name="x", dicom=None):
    meta = ImageMeta(affine=affine, modality=modality, subject="s01", intensity=IDENTITY_HU, dicom=dicom)
    return [pydicom.dcmread(str(p)) for p in export_item(array, meta, tmp_path, name, "dicom")]


# -------------------------------------------------------------------------------------- layout
@pytest.mark.parametrize("code", ["LPS", "RAS", "LAS", "PLS", "ALI"])  # k along S/I: axial slices
def test_axial_first_row_is_anterior_and_first_column_the_patients_right(tmp_path, code):
    standard = labelled_volume()
    standard[0, 0, 0] = 2000.0  # marker: the right, anterior, inferior corner
    array, affine = in_orientation(standard, AXIAL, code)
    slices = export_hu(tmp_path, array, affine)
    assert [float(v) for v in slices[0].ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
    assert slices[0].pixel_array[0, 0] == 2000  # first row anterior, first column the patient's right
    for k, d in enumerate(slices):
        np.testing.assert_array_equal(d.pixel_array, standard[:, :, k].T)  # rows = j (A -> P), columns = i (R -> L)
        assert float(d.ImagePositionPatient[2]) == pytest.approx(30.0 + 2.0 * k)  # inferior to superior
    right_anterior = np.array([float(v) for v in slices[0].ImagePositionPatient])
    np.testing.assert_allclose(right_anterior, (LPS_TO_RAS @ affine @ [*np.argwhere(array == 2000)[0], 1])[:3], atol=1e-4)


@pytest.mark.parametrize("frame, code, iop", [
    (CORONAL, "RSA", [1, 0, 0, 0, 0, -1]),  # coronal: the patient's right on the left, superior at the top
    (SAGITTAL, "ASL", [0, 1, 0, 0, 0, -1]),  # sagittal: anterior on the left, superior at the top
])
def test_coronal_and_sagittal_layouts(tmp_path, frame, code, iop):
    standard = labelled_volume()
    array, affine = in_orientation(standard, frame, code)
    slices = export_hu(tmp_path, array, affine)
    assert [float(v) for v in slices[0].ImageOrientationPatient] == iop
    for k, d in enumerate(slices):
        np.testing.assert_array_equal(d.pixel_array, standard[:, :, k].T)


def test_standard_orientation_of_a_slice_keeps_its_normal():
    plane = np.arange(12.0).reshape(4, 3)
    affine = np.diag([1.0, 1.0, 3.0, 1.0])  # i to the right, j anterior, normal superior (3 mm)
    out, moved = standard_orientation(plane, affine)
    np.testing.assert_array_equal(out, plane[::-1, ::-1])
    np.testing.assert_allclose(moved[:3, :3], np.diag([-1.0, -1.0, 3.0]))
    np.testing.assert_allclose(moved[:3, 3], [3.0, 2.0, 0.0])  # the old last voxel is the new first


# ------------------------------------------------------------------------------------ geometry
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_every_voxel_keeps_its_world_position_and_hu(tmp_path, spatial_dims):
    stored, meta, hu = ct_item(spatial_dims)
    paths = export_item(stored, meta, tmp_path, "ct", "dicom")
    assert len(paths) == (1 if spatial_dims == 2 else hu.shape[2]) and not list(tmp_path.glob(".*"))
    img, values, _ = read_series(tmp_path / "ct")  # SimpleITK's reading of the series
    np.testing.assert_allclose(values_at_item_voxels(hu.shape, meta.affine, values, sitk_affine(img)), hu, atol=0.5 + 1e-3)
    back, back_meta = read_source(discover([str(tmp_path / "ct")])[0][0])  # and medgen's own
    np.testing.assert_allclose(values_at_item_voxels(hu.shape, meta.affine, back, back_meta.affine), hu, atol=0.5 + 1e-3)
    np.testing.assert_allclose(sorted(back_meta.spacing), sorted(meta.spacing), atol=1e-4)


def test_nifti_of_a_dicom_round_trip_stays_right(tmp_path):
    import nibabel as nib

    stored, meta, hu = ct_item(3)
    export_item(stored, meta, tmp_path, "ct", "dicom")
    back, back_meta = read_source(discover([str(tmp_path / "ct")])[0][0])
    (nifti,) = export_item(back, back_meta.replace(intensity=IDENTITY_HU), tmp_path, "again", "nifti")
    img = nib.load(str(nifti))
    np.testing.assert_allclose(values_at_item_voxels(hu.shape, meta.affine, img.get_fdata(), img.affine), hu, atol=0.5 + 1e-3)


# -------------------------------------------------------------------------------------- values
def test_stored_integers_are_hu_and_uids_are_new(tmp_path):
    stored, meta, hu = ct_item(3, affine=np.diag([-0.7, -0.9, 2.5, 1.0]))  # already LPS-laid: no reordering
    slices = [pydicom.dcmread(str(p)) for p in export_item(stored, meta, tmp_path, "ct", "dicom")]
    first = slices[0]
    assert first.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2" and first.Modality == "CT" and first.RescaleType == "HU"
    assert first.PixelRepresentation == 1 and float(first.RescaleSlope) == 1.0 and float(first.RescaleIntercept) == 0.0
    np.testing.assert_allclose([float(v) for v in first.PixelSpacing], [0.9, 0.7], atol=1e-6)  # row, column spacing
    for k, d in enumerate(slices):
        assert int(d.InstanceNumber) == k + 1
        np.testing.assert_allclose(d.pixel_array.T, np.rint(hu[:, :, k]))
    uids = {str(s.SOPInstanceUID) for s in slices}
    assert len(uids) == len(slices) and all(u.startswith("2.25.") and len(u) <= 64 for u in uids)
    assert len({(s.StudyInstanceUID, s.SeriesInstanceUID, s.FrameOfReferenceUID) for s in slices}) == 1
    again = pydicom.dcmread(str(export_item(stored, meta, tmp_path / "b", "ct", "dicom")[0]))
    assert again.SeriesInstanceUID != first.SeriesInstanceUID and again.StudyInstanceUID != first.StudyInstanceUID


def test_mr_float_values_are_kept_with_a_slope(tmp_path):
    stored = np.random.default_rng(1).normal(size=(8, 10, 4)).astype(np.float32)
    mapping = IntensityMapping(method="zscore", unit="a.u.", in_low=0.0, in_high=3.5, out_low=0.0, out_high=1.0)
    meta = ImageMeta(affine=oblique_affine(angles=(0.1, 0.2, -0.3)), modality="MR", intensity=mapping)
    physical = mapping.to_physical(stored)
    first = pydicom.dcmread(str(export_item(stored, meta, tmp_path, "mr", "dicom")[0]))
    assert first.SOPClassUID == "1.2.840.10008.5.1.4.1.1.4"  # classic MR Image Storage, not Enhanced
    slope = float(first.RescaleSlope)
    assert 0 < slope < np.ptp(physical) / 60000
    img, values, _ = read_series(tmp_path / "mr")
    np.testing.assert_allclose(values_at_item_voxels(physical.shape, meta.affine, values, sitk_affine(img)), physical,
                               atol=slope / 2 + 1e-6)


@pytest.mark.parametrize("modality, sop_class", [
    ("CT", "1.2.840.10008.5.1.4.1.1.2"), ("MR", "1.2.840.10008.5.1.4.1.1.4"),
    ("XR", "1.2.840.10008.5.1.4.1.1.1"), ("OT", "1.2.840.10008.5.1.4.1.1.7"),
])
def test_medgen_reads_back_each_modality(tmp_path, modality, sop_class):
    stored = np.random.default_rng(2).uniform(-1, 1, size=(9, 7)).astype(np.float32)
    mapping = IntensityMapping(in_low=-1000.0 if modality == "CT" else 0.0, in_high=1000.0, out_low=-1, out_high=1)
    affine = np.diag([-0.3, -0.4, 1.0, 1.0])  # the identity LPS layout a PNG reads as
    meta = ImageMeta(affine=affine, modality=modality, intensity=mapping)
    (path,) = export_item(stored, meta, tmp_path, "it", "dicom")
    d = pydicom.dcmread(str(path))
    assert d.SOPClassUID == sop_class
    (source,), _ = discover([str(tmp_path / "it")])
    values, back = read_source(source, modality="auto" if modality != "OT" else "OT")
    slope = float(d.RescaleSlope)
    np.testing.assert_allclose(values, mapping.to_physical(stored), atol=slope / 2 + 1e-3)
    np.testing.assert_allclose(back.spacing[:2], [0.3, 0.4], atol=1e-6)
    assert back.modality == modality
    if modality in ("CT", "MR", "OT"):
        np.testing.assert_allclose(back.affine[:3, :2], affine[:3, :2], atol=1e-6)


def test_rescale_choice():
    assert choose_rescale(np.array([-1000.4, 30.2]), "CT") == (1.0, 0.0)
    assert choose_rescale(np.array([0.0, 17.0, 4000.0]), "MR") == (1.0, 0.0)  # integers: lossless
    slope, intercept = choose_rescale(np.array([0.25, 0.75]), "MR")
    assert slope == pytest.approx(0.5 / 64000, rel=1e-9) and intercept == 0.5
    assert all(len(ds(v)) <= 16 for v in (-123456.789012345, 1.0 / 3.0, -1e-300, 12345678901234567.0))
    with pytest.raises(ValueError, match="nan"):
        ds(float("nan"))
    levels, a, b = unsigned_levels(np.array([3.0, 7.0, 1023.0]))
    assert (a, b) == (1.0, 0.0) and levels.tolist() == [3, 7, 1023]
    levels, a, b = unsigned_levels(np.array([-1.0, 0.0, 1.0]))
    assert levels.tolist() == [0, 32768, 65535] and a * 65535 + b == pytest.approx(1.0)


def test_reexport_replaces_the_series(tmp_path):
    stored, meta, _ = ct_item(3)
    export_item(stored, meta, tmp_path, "x", "dicom")
    export_item(stored[:, :, 0], meta, tmp_path, "x", "dicom")
    assert [p.name for p in (tmp_path / "x").iterdir()] == ["IM00001.dcm"]


# -------------------------------------------------------------------------- the source's identity
def test_identity_and_thickness_come_from_a_dicom_source(tmp_path):
    from pydicom.data import get_testdata_file

    source = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    arr, meta = read_source(Source(get_testdata_file("CT_small.dcm"), "sitk"))
    assert meta.dicom["PatientID"] == "1CT1" and meta.dicom["SliceThickness"].startswith("5")
    (out,) = [pydicom.dcmread(str(p)) for p in export_item(arr, meta, tmp_path, "ct", "dicom")]
    assert out.PatientID == source.PatientID and out.PatientName == source.PatientName
    assert out.StudyInstanceUID == source.StudyInstanceUID and out.FrameOfReferenceUID == source.FrameOfReferenceUID
    assert out.SeriesInstanceUID != source.SeriesInstanceUID and out.PatientPosition == "FFS" and out.KVP == 120
    assert float(out.SliceThickness) == 5.0 and float(out.SpacingBetweenSlices) == pytest.approx(meta.spacing[2])
    np.testing.assert_array_equal(out.pixel_array, source.pixel_array * float(source.RescaleSlope) + float(source.RescaleIntercept))

    coronal = meta.with_affine(meta.affine[:, [0, 2, 1, 3]])  # the same pixels as a coronal slice
    (cor,) = [pydicom.dcmread(str(p)) for p in export_item(arr, coronal, tmp_path / "c", "ct", "dicom")]
    assert float(cor.SliceThickness) == pytest.approx(coronal.spacing[2])  # not parallel: the spacing

    (syn,) = [pydicom.dcmread(str(p)) for p in export_item(arr, meta, tmp_path / "s", "ct", "dicom", synthetic=True)]
    assert syn.PatientID == "SYNTHETIC-ct" and syn.StudyInstanceUID != source.StudyInstanceUID
    assert syn.FrameOfReferenceUID != source.FrameOfReferenceUID and not syn.get("KVP")


def test_a_radiograph_keeps_its_kind_view_and_laterality(tmp_path):
    from tests.io.dicom_helpers import write_radiograph

    for modality in ("DX", "CR"):
        path = write_radiograph(tmp_path / f"{modality}.dcm", modality)
        arr, meta = read_source(Source(str(path), "sitk"))
        assert meta.modality == "XR" and meta.dicom["Modality"] == modality
        (out,) = [pydicom.dcmread(str(p)) for p in export_item(arr, meta, tmp_path / "out", modality, "dicom")]
        source = pydicom.dcmread(str(path))
        assert out.Modality == modality and out.SOPClassUID == source.SOPClassUID
        assert out.ViewPosition == "PA" and out.BodyPartExamined == "CHEST" and out.PatientID == "XR-1"
        assert list(out.PatientOrientation) == ["L", "F"]  # the source's layout is already the standard one
        np.testing.assert_array_equal(out.pixel_array, source.pixel_array)
    assert out.get("ImageLaterality") is None and out.get("Laterality", "") == ""
    dx = pydicom.dcmread(str(tmp_path / "out" / "DX" / "IM00001.dcm"))
    assert dx.ImageLaterality == "U" and dx.PresentationIntentType == "FOR PRESENTATION" and dx.PixelRepresentation == 0
    assert dx.AnatomicRegionSequence[0].CodeValue == "816094009" and dx.AnatomicRegionSequence[0].CodeMeaning == "Chest"
    assert len(dx.AcquisitionContextSequence) == 0


def test_a_radiograph_laid_out_mirrored_is_written_in_the_standard_layout(real_data, tmp_path):
    source = pydicom.dcmread(str(real_data("RG3_UNCR.dcm")))  # CR, PatientOrientation R\F: mirrored
    arr, meta = read_source(Source(str(real_data("RG3_UNCR.dcm")), "sitk"))
    np.testing.assert_array_equal(meta.direction[:, :2], [[1, 0], [0, 0], [0, -1]])  # rows to the right, columns to the feet
    (out,) = [pydicom.dcmread(str(p)) for p in export_item(arr[:400, :300], meta, tmp_path, "cr", "dicom")]
    assert out.Modality == "CR" and list(out.PatientOrientation) == ["L", "F"] and out.Laterality == "R"
    bright_bone = (source.pixel_array.max() + source.pixel_array.min() - source.pixel_array)[:300, :400]
    np.testing.assert_array_equal(out.pixel_array, bright_bone[:, ::-1])  # the patient's right is now on the left


def test_sequences_are_inserted_in_explicit_files_too(tmp_path):
    from pydicom.data import get_testdata_file

    source = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    assert not source.file_meta.TransferSyntaxUID.is_implicit_VR
    path = tmp_path / "x.dcm"
    source.save_as(str(path))
    add_sequences(path, {(0x0008, 0x2218): [[((0x0008, 0x0100), "SH", "818981001"), ((0x0008, 0x0102), "SH", "SCT"),
                                             ((0x0008, 0x0104), "LO", "Abdomen")]], (0x0040, 0x0555): []})
    back = pydicom.dcmread(str(path))
    assert back.AnatomicRegionSequence[0].CodeMeaning == "Abdomen" and len(back.AcquisitionContextSequence) == 0
    np.testing.assert_array_equal(back.pixel_array, source.pixel_array)
    assert back.PatientID == source.PatientID


def test_window_follows_a_clipped_mapping(tmp_path):
    stored, meta, _ = ct_item(2)
    (d,) = [pydicom.dcmread(str(p)) for p in export_item(stored, meta.replace(intensity=CT_WINDOW), tmp_path, "w", "dicom")]
    assert float(d.WindowCenter) == 0.0 and float(d.WindowWidth) == 2000.0
