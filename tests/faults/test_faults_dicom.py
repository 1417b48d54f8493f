"""Fault cases of issue 11, part C: DICOM and image inputs that are wrong, hostile or not images.

Each case builds the bad input, runs ``medgen preprocess`` as a user would, and checks the exit code,
the one-sentence reason, that no traceback was printed, that the inputs are untouched and that no
complete-looking artefact was left when nothing could be read.
"""

from __future__ import annotations

import gzip
import os
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from medgen_cli.io.store import Store, store_path
from tests.faults.conftest import assert_refused, invoke, snapshot
from tests.io.dicom_helpers import write_non_image, write_series

pytest.importorskip("pydicom")


def preprocess(inputs, out, *extra):
    return invoke("preprocess", *inputs, "--out", out, *extra)


def refused(tmp_path, inputs, code, *phrases, extra=(), out="out"):
    """Run preprocess on ``inputs``; assert the refusal, untouched inputs and no complete artefact.

    The log handler wraps long sentences inside file names, so phrases are compared without white space.
    """
    before = snapshot(tmp_path / "in")
    result = preprocess(inputs, tmp_path / out, *extra)
    assert_refused(result, code)
    text = "".join(result.output.split())
    for phrase in phrases:
        assert "".join(phrase.split()) in text, f"{phrase!r} not in output:\n{result.output}"
    assert snapshot(tmp_path / "in") == before
    assert not (tmp_path / out / "manifest.json").exists()
    return result


def nifti_header(shape, dtype=np.int16) -> bytes:
    import nibabel as nib

    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    header["vox_offset"] = 352
    return header.binaryblock + b"\0" * 4


# ----------------------------------------------------------------------------- uneven series
def test_missing_slice_is_refused_with_the_gap_named(tmp_path):
    write_series(tmp_path / "in" / "ct", [0.0, 7.0, 14.0, 21.0, 28.0, 35.0, 42.0])
    (tmp_path / "in" / "ct" / "IM0004.dcm").unlink()  # the slice at 21 mm goes missing
    refused(tmp_path, [tmp_path / "in" / "ct"], 1,
            "slices 3 and 4 (IM0003.dcm and IM0005.dcm) are 14 mm apart, the others 7 mm", "input.uneven_slices")


def test_uneven_spacing_is_refused_with_every_gap_named(tmp_path):
    write_series(tmp_path / "in" / "ct", [0.0, 5.0, 10.0, 17.0, 22.0, 27.0])
    refused(tmp_path, [tmp_path / "in" / "ct"], 1, "slices 3 and 4 (IM0003.dcm and IM0004.dcm) are 7 mm apart, the others 5 mm")


def test_resample_setting_makes_a_regular_volume(tmp_path):
    write_series(tmp_path / "in" / "ct", [0.0, 7.0, 14.0, 28.0, 35.0])
    before = snapshot(tmp_path / "in")
    result = preprocess([tmp_path / "in" / "ct"], tmp_path / "out", "--set", "input.uneven_slices=resample",
                        "--set", "intensity.window=0,4000")
    assert result.exit_code == 0, result.output
    store = Store.open(store_path(tmp_path / "out"))
    (item,) = store.ids()
    arr, meta = store.read_item(item)
    assert arr.shape[2] == 6 and meta.spacing[2] == pytest.approx(7.0)  # 0, 7, ..., 35 mm
    assert "1 slice interpolated" in meta.attrs["uneven_slices"]
    assert snapshot(tmp_path / "in") == before


def test_two_volumes_in_one_series_are_refused(tmp_path):
    write_series(tmp_path / "in" / "ct", [0.0, 3.0, 3.0, 6.0])
    refused(tmp_path, [tmp_path / "in" / "ct"], 1, "IM0002.dcm and IM0003.dcm are at the same position",
            "more than one volume")


def test_tilted_gantry_is_refused(tmp_path):
    write_series(tmp_path / "in" / "ct", [0.0, 3.0, 6.0], offsets=[(0, 0, 0), (0, 2.0, 0), (0, 4.0, 0)])
    refused(tmp_path, [tmp_path / "in" / "ct"], 1, "shifted within the slice plane")


# ---------------------------------------------------------------------------- bounded memory
def test_gzip_bomb_is_refused_before_it_is_decoded(tmp_path):
    bomb = tmp_path / "in" / "bomb.nii.gz"
    bomb.parent.mkdir()
    with gzip.open(bomb, "wb", compresslevel=9) as fh:  # 32 MiB of zeros in ~33 KB, the rest cut off
        fh.write(nifti_header((512, 512, 512), np.uint8))
        for _ in range(32):
            fh.write(bytes(2**20))
    tracemalloc.start()
    start = time.perf_counter()
    refused(tmp_path, [bomb], 1, "bomb.nii.gz: the header declares a 512x512x512 image, 512.0 MiB once decoded",
            "above the 100.0 MiB limit; raise input.max_gib", extra=("--set", f"input.max_gib={100 / 1024}"))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert time.perf_counter() - start < 10 and peak < 64 * 2**20


def test_header_claiming_terabytes_is_refused_by_default(tmp_path):
    lying = tmp_path / "in" / "lying.nii.gz"
    lying.parent.mkdir()
    lying.write_bytes(gzip.compress(nifti_header((30000, 30000, 3000)) + bytes(4096)))
    refused(tmp_path, [lying], 1, "30000x30000x3000 image, 9.8 TiB once decoded, above the 4.0 GiB limit")


@pytest.mark.parametrize("suffix", ["mha", "nrrd"])
def test_mha_and_nrrd_headers_that_lie_about_the_size(tmp_path, suffix):
    def header(size: str) -> bytes:
        if suffix == "mha":
            return f"ObjectType = Image\nNDims = 3\nDimSize = {size}\nElementType = MET_SHORT\nElementDataFile = LOCAL\n".encode()
        return f"NRRD0004\ntype: short\ndimension: 3\nsizes: {size}\nencoding: raw\nendian: little\n\n".encode()

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / f"huge.{suffix}").write_bytes(header("40000 40000 40000") + bytes(64))
    refused(tmp_path, [tmp_path / "in" / f"huge.{suffix}"], 1, "40000x40000x40000 image", "raise input.max_gib")
    (tmp_path / "in" / f"huge.{suffix}").unlink()
    (tmp_path / "in" / f"short.{suffix}").write_bytes(header("64 64 64") + bytes(100))
    refused(tmp_path, [tmp_path / "in" / f"short.{suffix}"], 1, f"short.{suffix}: cannot be read as an image", out="out2")


def test_dicom_series_whose_headers_claim_a_huge_image(tmp_path):
    write_series(tmp_path / "in" / "ct", [0.0, 1.0, 2.0], shape=(8, 8), Rows=60000, Columns=60000)
    refused(tmp_path, [tmp_path / "in" / "ct"], 1, "60000x60000x3 image, 40.2 GiB once decoded")


def test_max_gib_applies_to_ordinary_images(tmp_path):
    from tests.conftest import sphere_phantom, write_nifti

    (tmp_path / "in").mkdir()
    write_nifti(tmp_path / "in" / "ct.nii.gz", sphere_phantom((16, 16, 16)), np.eye(4))
    refused(tmp_path, [tmp_path / "in" / "ct.nii.gz"], 1, "16x16x16 image, 16.0 KiB once decoded, above the 1.0 KiB limit",
            extra=("--set", f"input.max_gib={1 / 2**20}"))


# ---------------------------------------------------------------------------- not images
@pytest.mark.parametrize("kind, phrase", [
    ("sr", "report.dcm: is a DICOM structured report (SOP class 1.2.840.10008.5.1.4.1.1.88.11), not an image"),
    ("nopixels", "report.dcm: is a DICOM file without pixel data"),
])
def test_dicom_files_that_are_not_images(tmp_path, kind, phrase):
    path = write_non_image(tmp_path / "in" / "report.dcm", kind)
    refused(tmp_path, [path], 1, phrase, "remove it from the inputs")


def test_a_folder_of_non_image_dicom_files(tmp_path):
    write_non_image(tmp_path / "in" / "a.dcm", "sr")
    write_non_image(tmp_path / "in" / "b.dcm", "sr")
    refused(tmp_path, [tmp_path / "in"], 2, "no readable image or DICOM series (a.dcm is a DICOM structured report")


# ------------------------------------------------------------------------------- discovery
def test_symlink_loop_finds_each_scan_once(tmp_path):
    from tests.conftest import sphere_phantom, write_nifti

    (tmp_path / "in" / "scans").mkdir(parents=True)
    write_nifti(tmp_path / "in" / "scans" / "ct.nii.gz", sphere_phantom((16, 16, 8)), np.eye(4))
    os.symlink(tmp_path / "in", tmp_path / "in" / "scans" / "loop")  # a link back to the top
    before = snapshot(tmp_path / "in" / "scans" / "ct.nii.gz")
    for n, inputs in enumerate([[tmp_path / "in"], [f"{tmp_path}/in/**/*.nii.gz"]]):  # a folder, a recursive glob
        result = preprocess(inputs, tmp_path / f"out{n}", "--window", "0,2000")
        assert result.exit_code == 0, result.output
        assert Store.open(store_path(tmp_path / f"out{n}")).ids() == ["ct"]  # found once, not 41 times
    assert snapshot(tmp_path / "in" / "scans" / "ct.nii.gz") == before
    assert Path(tmp_path / "in" / "scans" / "loop").is_symlink()
