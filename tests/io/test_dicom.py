"""DICOM input: slice order and spacing from positions, uneven series, non-images, bounded memory, discovery."""

from __future__ import annotations

import gzip
import logging
import os
import time
import tracemalloc

import numpy as np
import pytest

from medgen_cli.io.dicom import (describe_non_image, letters, orientation_from_letters, plan_series, read_headers,
                                 regular_grid)
from medgen_cli.meta import LPS_TO_RAS
from medgen_cli.io.readers import ReadError, Source, discover, read_source, walk_files
from tests.io.dicom_helpers import ramp, write_non_image, write_series

pytest.importorskip("pydicom")


def series_source(directory) -> Source:
    (source,), problems = discover([str(directory)])
    assert problems == [] and source.kind == "dicom-series"
    return source


def expected_volume(positions, shape=(16, 12)) -> np.ndarray:
    """The HU volume medgen should read: (i = column, j = row, k = slice) at sorted positions."""
    return np.stack([ramp(z, shape).T for z in sorted(positions)], axis=2).astype(np.float32)


# ---------------------------------------------------------------------------------- even series
def test_even_series_reads_like_itk(tmp_path):
    import SimpleITK as sitk

    positions = [0.0, 7.0, 14.0, 21.0, 28.0]
    write_series(tmp_path / "s", positions)
    arr, meta = read_source(series_source(tmp_path / "s"))
    np.testing.assert_array_equal(arr, expected_volume(positions))
    reader = sitk.ImageSeriesReader()  # the independent reference for an even series
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(tmp_path / "s")))
    img = reader.Execute()
    np.testing.assert_allclose(meta.spacing, img.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(meta.origin, np.asarray(img.GetOrigin()) * [-1, -1, 1], atol=1e-6)
    assert meta.modality == "CT" and meta.dicom["PatientID"] == "SER-1" and meta.dicom["SliceThickness"] == "5.0"
    assert meta.attrs["dicom_files"] == 5


def test_files_in_any_order_are_sorted_along_the_oblique_normal(tmp_path):
    c, s = np.cos(0.3), np.sin(0.3)
    iop = (c, s, 0.0, 0.0, 0.0, -1.0)  # rows run left-posterior, columns to the feet: an oblique coronal
    positions = [14.0, 0.0, 21.0, 7.0]
    write_series(tmp_path / "s", positions, iop=iop)
    arr, meta = read_source(series_source(tmp_path / "s"))
    np.testing.assert_array_equal(arr, expected_volume(positions))
    normal = np.cross(iop[:3], iop[3:])
    np.testing.assert_allclose(meta.affine[:3, 2], (LPS_TO_RAS[:3, :3] @ normal) * 7.0, atol=1e-4)
    np.testing.assert_allclose(meta.affine[:3, 3], LPS_TO_RAS[:3, :3] @ (0.0 * normal), atol=1e-4)


def test_rounded_positions_are_not_uneven(tmp_path):
    positions = [round(0.625 * k, 2) for k in range(8)]  # 0.62 / 0.63 steps, as scanners print them
    write_series(tmp_path / "s", positions)
    arr, meta = read_source(series_source(tmp_path / "s"))
    assert arr.shape[2] == 8 and meta.spacing[2] == pytest.approx(0.625, abs=0.01)


# -------------------------------------------------------------------------------- uneven series
def test_missing_slice_is_refused_with_the_gap_named(tmp_path):
    import SimpleITK as sitk

    positions = [0.0, 7.0, 14.0, 28.0, 35.0, 42.0]  # the slice at 21 mm is missing
    write_series(tmp_path / "s", positions)
    # the problem: ITK alone averages first to last, a silently wrong 8.4 mm spacing
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(tmp_path / "s")))
    assert reader.Execute().GetSpacing()[2] == pytest.approx(8.4)
    with pytest.raises(ReadError) as err:
        read_source(series_source(tmp_path / "s"))
    text = str(err.value)
    assert "slices 3 and 4 (IM0003.dcm and IM0004.dcm) are 14 mm apart, the others 7 mm" in text
    assert str(tmp_path / "s") in text and "input.uneven_slices" in text


def test_uneven_spacing_lists_every_gap(tmp_path):
    write_series(tmp_path / "s", [0.0, 5.0, 10.0, 17.0, 22.0, 27.0, 30.0])
    with pytest.raises(ReadError, match=r"slices 3 and 4 \(IM0003.dcm and IM0004.dcm\) are 7 mm apart, slices 6 and 7 "
                                        r"\(IM0006.dcm and IM0007.dcm\) are 3 mm apart, the others 5 mm"):
        read_source(series_source(tmp_path / "s"))


def test_resample_fills_the_gap_exactly_for_a_linear_ramp(tmp_path, caplog):
    positions = [0.0, 7.0, 14.0, 28.0, 35.0, 42.0]
    write_series(tmp_path / "s", positions)
    with caplog.at_level(logging.WARNING):
        arr, meta = read_source(series_source(tmp_path / "s"), uneven_slices="resample")
    grid = np.arange(0.0, 42.1, 7.0)  # 0, 7, ..., 42: the regular grid at the median spacing
    # independent reference: the ramp is linear in z, so linear interpolation must be exact
    np.testing.assert_allclose(arr, expected_volume(grid), atol=1e-4)
    assert meta.spacing[2] == pytest.approx(7.0) and arr.shape[2] == 7
    assert meta.attrs["uneven_slices"] == "resampled onto a 7 mm grid; 1 slice interpolated"
    assert "resampled onto a regular 7 mm grid" in caplog.text


def test_regular_grid_against_numpy_interp():
    rng = np.random.default_rng(0)
    positions = np.array([0.0, 2.0, 4.0, 9.0, 11.0, 12.5, 15.0])
    volume = rng.normal(size=(3, 4, len(positions))).astype(np.float32)
    out, made = regular_grid(volume, positions, 2.0)
    grid = np.arange(0.0, 15.0 + 1e-9, 2.0)
    reference = np.stack([[np.interp(grid, positions, volume[i, j]) for j in range(4)] for i in range(3)])
    np.testing.assert_allclose(out, reference, atol=1e-5)
    assert out.shape == (3, 4, 8) and made == 5  # 6, 8, 10, 12 and 14 mm are interpolated, 0 2 4 are acquired


@pytest.mark.parametrize("case, phrase", [
    ("same position", "are at the same position"),
    ("orientations", "different orientations"),
    ("tilt", "shifted within the slice plane"),
])
def test_series_that_are_not_one_volume_are_refused(tmp_path, case, phrase):
    positions = [0.0, 3.0, 6.0, 9.0]
    if case == "same position":
        write_series(tmp_path / "s", [0.0, 3.0, 3.0, 6.0])
    elif case == "orientations":
        tilted = (1.0, 0.0, 0.0, 0.0, 0.9950042, -0.0998334)
        write_series(tmp_path / "s", positions, iop=[(1.0, 0, 0, 0, 1.0, 0)] * 3 + [tilted])
    else:
        write_series(tmp_path / "s", positions, offsets=[(0.0, 0.0, 0.0), (0.0, 1.5, 0.0), (0.0, 3.0, 0.0), (0.0, 4.5, 0.0)])
    with pytest.raises(ReadError, match=phrase):
        read_source(series_source(tmp_path / "s"))


def test_plan_sorts_and_reports_gaps_without_reading_pixels(tmp_path):
    paths = write_series(tmp_path / "s", [10.0, 0.0, 5.0, 20.0])
    plan = plan_series(read_headers([str(p) for p in paths]))
    assert [os.path.basename(f) for f in plan.files] == ["IM0002.dcm", "IM0003.dcm", "IM0001.dcm", "IM0004.dcm"]
    assert plan.spacing == 5.0 and plan.gaps == ((2, 10.0),)


# ------------------------------------------------------------------------------------ non-images
def test_non_image_dicom_files_are_named(tmp_path):
    from pydicom.data import get_testdata_file

    sr = write_non_image(tmp_path / "report.dcm", "sr")
    nopix = write_non_image(tmp_path / "nopix.dcm", "nopixels")
    assert describe_non_image(sr) == "is a DICOM structured report (SOP class 1.2.840.10008.5.1.4.1.1.88.11), not an image"
    assert describe_non_image(nopix).startswith("is a DICOM file without pixel data")
    assert describe_non_image(get_testdata_file("CT_small.dcm")) is None
    with pytest.raises(ReadError, match="structured report .* not an image; remove it from the inputs"):
        read_source(Source(str(sr), "sitk"))
    with pytest.raises(ReadError, match="without pixel data"):
        read_source(Source(str(nopix), "sitk"))
    sources, problems = discover([str(tmp_path)])
    assert sources == [] and "no readable image or DICOM series (nopix.dcm is a DICOM file without pixel data" in problems[0][1]


def test_patient_orientation_letters():
    row, col = orientation_from_letters("R\\F")
    np.testing.assert_array_equal(row, [-1, 0, 0])
    np.testing.assert_array_equal(col, [0, 0, -1])
    assert orientation_from_letters("R\\R") is None and orientation_from_letters("") is None
    assert letters([1, 0, 0]) == "L" and letters([0, -0.8, 0.6]) == "AH" and letters([0, 0, -1]) == "F"


# ------------------------------------------------------------------------------ bounded memory
def _nifti_header(shape, dtype=np.int16) -> bytes:
    import nibabel as nib

    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    header["vox_offset"] = 352
    return header.binaryblock + b"\0" * 4


def test_gzip_bomb_is_refused_before_reading(tmp_path):
    bomb = tmp_path / "bomb.nii.gz"
    with gzip.open(bomb, "wb", compresslevel=9) as fh:  # a real bomb: 64 MiB of zeros in ~65 KB
        fh.write(_nifti_header((512, 512, 256), np.uint8))
        for _ in range(64):
            fh.write(bytes(2**20))
    assert bomb.stat().st_size < 200_000
    tracemalloc.start()
    start = time.perf_counter()
    with pytest.raises(ReadError, match=r"the header declares a 512x512x256 image, 256.0 MiB once decoded, above the 16.0 MiB limit"):
        read_source(Source(str(bomb), "nifti"), max_bytes=16 * 2**20)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert time.perf_counter() - start < 2.0 and peak < 16 * 2**20


def test_header_claiming_a_huge_image_is_refused_by_default(tmp_path):
    lying = tmp_path / "lying.nii.gz"
    lying.write_bytes(gzip.compress(_nifti_header((4096, 4096, 2048)) + bytes(1000)))
    with pytest.raises(ReadError, match=r"4096x4096x2048 image, 128.0 GiB once decoded, above the 4.0 GiB limit; raise input.max_gib"):
        read_source(Source(str(lying), "nifti"))


@pytest.mark.parametrize("suffix", ["mha", "nrrd"])
def test_sitk_headers_are_checked_before_reading(tmp_path, suffix):
    def header(size: str) -> bytes:
        if suffix == "mha":
            return (f"ObjectType = Image\nNDims = 3\nDimSize = {size}\nElementType = MET_SHORT\n"
                    "ElementDataFile = LOCAL\n").encode()
        return f"NRRD0004\ntype: short\ndimension: 3\nsizes: {size}\nencoding: raw\nendian: little\n\n".encode()

    huge = tmp_path / f"huge.{suffix}"
    huge.write_bytes(header("30000 30000 3000") + bytes(64))
    with pytest.raises(ReadError, match=r"30000x30000x3000 image, 9.8 TiB once decoded"):
        read_source(Source(str(huge), "sitk"))
    short = tmp_path / f"short.{suffix}"  # a plausible size, but the data stop early
    short.write_bytes(header("64 64 64") + bytes(100))
    with pytest.raises(ReadError, match="cannot be read as an image"):
        read_source(Source(str(short), "sitk"))


def test_dicom_series_size_comes_from_the_headers(tmp_path):
    write_series(tmp_path / "s", [0.0, 1.0, 2.0], shape=(16, 12))
    with pytest.raises(ReadError, match=r"DICOM series .*12x16x3 image, 2.2 KiB once decoded, above the 1.0 KiB limit"):
        read_source(series_source(tmp_path / "s"), max_bytes=1024)
    with pytest.raises(ValueError, match="uneven_slices must be one of error, resample, got 'guess'"):
        read_source(series_source(tmp_path / "s"), uneven_slices="guess")


# ------------------------------------------------------------------------------------- discovery
def test_symlink_loops_find_each_file_once(tmp_path):
    from tests.conftest import sphere_phantom, write_nifti

    root = tmp_path / "data"
    (root / "sub").mkdir(parents=True)
    write_nifti(root / "sub" / "a.nii.gz", sphere_phantom((8, 8, 4)), np.eye(4))
    os.symlink(root, root / "sub" / "loop")  # a link back up the tree
    os.symlink(root / "sub" / "a.nii.gz", root / "alias.nii.gz")  # a second name for the same file
    assert [p.name for p in walk_files(root)] == ["alias.nii.gz"]
    sources, problems = discover([str(root), str(root / "sub" / "a.nii.gz"), str(root / "sub" / "*.nii.gz")])
    assert len(sources) == 1 and problems == []
