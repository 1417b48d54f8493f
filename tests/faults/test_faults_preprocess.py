"""Fault and bad-input cases of ``medgen preprocess`` (issue 11, part D), each driven through the CLI.

Every case first builds the situation that went wrong, then checks the exit code, the one-sentence
message, that no traceback was printed and that the user's inputs and files are intact.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from medgen_cli.io.store import Store, store_path
from tests.conftest import sphere_phantom, write_nifti
from tests.faults.conftest import assert_refused, invoke, snapshot

AFFINE = np.diag([1.5, 1.5, 2.0, 1.0])
REPO = Path(__file__).resolve().parents[2]


def nifti(path: Path, seed: int = 0, shape=(16, 16, 8)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_nifti(path, sphere_phantom(shape, seed=seed), AFFINE)


def cts(folder: Path, n: int = 2) -> Path:
    for i in range(n):
        nifti(folder / f"ct{i}.nii.gz", seed=i)
    return folder


def png(path: Path, shape=(20, 30)) -> Path:
    import SimpleITK as sitk

    arr = (np.add.outer(np.arange(shape[0]), np.arange(shape[1])) * 3 % 256).astype(np.uint8)
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(path))
    return path


def ids(artefact: Path, store: str = "main") -> list[str]:
    return Store.open(store_path(artefact, store)).ids()


def subjects(artefact: Path) -> dict[str, str]:
    store = Store.open(store_path(artefact))
    return {i: store.item_attrs(i)["subject"] for i in store.ids()}


def nothing_written(out: Path) -> bool:
    return not out.exists() and not Path(f"{out}.partial").exists() and not list(out.parent.glob(f"{out.name}.lock*"))


# ------------------------------------------------------------------------------- outputs and inputs
def test_output_inside_an_input_directory_is_refused(tmp_path):
    raw = cts(tmp_path / "raw")
    before = snapshot(raw)
    res = invoke("preprocess", raw, "--out", raw / "prep")
    assert_refused(res, 2, "the output", "is inside the input", "choose an output directory")
    assert snapshot(raw) == before and not (raw / "prep").exists() and not (raw / "prep.partial").exists()


def test_output_containing_an_input_file_is_refused(tmp_path):
    src = nifti(tmp_path / "data" / "scan.nii.gz")
    before = snapshot(tmp_path / "data")
    res = invoke("preprocess", src, "--out", tmp_path / "data", "--overwrite")
    assert_refused(res, 2, "contains the input")
    assert snapshot(tmp_path / "data") == before


def test_earlier_artefact_inside_an_input_directory_is_skipped(tmp_path):
    raw = cts(tmp_path / "raw")
    assert invoke("preprocess", raw, "--out", tmp_path / "old").exit_code == 0
    os.replace(tmp_path / "old", raw / "old")  # e.g. an older medgen wrote it there
    before = snapshot(raw)
    res = invoke("preprocess", raw, "--out", tmp_path / "prep")
    assert res.exit_code == 0, res.output
    assert "skipped 1 medgen artefact" in " ".join(res.output.split())
    assert ids(tmp_path / "prep") == ["ct0", "ct1"]  # not the old preview PNG, not a failure
    assert snapshot(raw) == before


def test_interrupted_partial_inside_an_input_directory_is_skipped(tmp_path):
    raw = cts(tmp_path / "raw")
    partial = raw / "run.partial"
    partial.mkdir()
    (partial / ".medgen-partial").write_text("")
    nifti(partial / "work.nii.gz", seed=9)  # what a step would be writing there
    res = invoke("preprocess", raw, "--out", tmp_path / "prep")
    assert res.exit_code == 0, res.output
    assert ids(tmp_path / "prep") == ["ct0", "ct1"] and (partial / "work.nii.gz").exists()


def test_an_input_named_twice_is_read_once(tmp_path):
    src = nifti(tmp_path / "raw" / "ct0.nii.gz")
    res = invoke("preprocess", src, src, "--out", tmp_path / "prep")
    assert res.exit_code == 0, res.output
    assert "is named twice" in " ".join(res.output.split())
    assert ids(tmp_path / "prep") == ["ct0"]


def test_an_input_and_a_symlink_to_it_are_read_once(tmp_path):
    src = nifti(tmp_path / "raw" / "ct0.nii.gz")
    (tmp_path / "link.nii.gz").symlink_to(src)
    res = invoke("preprocess", tmp_path / "link.nii.gz", src, "--out", tmp_path / "prep")
    assert res.exit_code == 0, res.output
    assert "is the same file as" in " ".join(res.output.split())
    assert ids(tmp_path / "prep") == ["ct0"]  # named after the real file, not the link
    assert (tmp_path / "link.nii.gz").is_symlink()


def test_a_symlink_loop_under_a_recursive_glob_gives_one_input(tmp_path):
    nifti(tmp_path / "raw" / "d" / "ct0.nii.gz")
    (tmp_path / "raw" / "d" / "up").symlink_to("..")
    res = invoke("preprocess", f"{tmp_path}/raw/**/*.nii.gz", "--out", tmp_path / "prep")
    assert res.exit_code == 0, res.output
    assert ids(tmp_path / "prep") == ["ct0"]


# ------------------------------------------------------------------------------------------ failures
def test_when_every_input_fails_nothing_is_committed_but_the_report(tmp_path):
    bad = tmp_path / "raw"
    bad.mkdir()
    (bad / "a.nii").write_text("not an image")
    (bad / "b.nii.gz").write_bytes(b"\x1f\x8b\x08\x00" + bytes(64))
    before = snapshot(bad)
    out = tmp_path / "prep"
    res = invoke("preprocess", bad / "a.nii", bad / "b.nii.gz", "--out", out)
    assert_refused(res, 1, "all 2 input(s) failed", "was not written", "prep.partial/report.json")
    assert not out.exists() and snapshot(bad) == before
    partial = Path(f"{out}.partial")
    assert sorted(p.name for p in partial.iterdir()) == [".medgen-partial", "manifest.json", "report.json", "settings.yaml"]
    report = json.loads((partial / "report.json").read_text())
    assert [f["path"] for f in report["failed"]] == [str(bad / "a.nii"), str(bad / "b.nii.gz")] and report["done"] == []
    # the same command resumes (retries every input) once the files are fixed
    nifti(bad / "b.nii.gz")
    res = invoke("preprocess", bad / "a.nii", bad / "b.nii.gz", "--out", out)
    assert res.exit_code == 1 and "1 input(s) failed; the other items were written" in " ".join(res.output.split())
    assert ids(out) == ["b"] and not partial.exists()


def test_a_pattern_that_matches_nothing_is_a_usage_error(tmp_path):
    raw = cts(tmp_path / "raw")
    res = invoke("preprocess", raw / "ct0.nii.gz", f"{tmp_path}/raw/*.nrrd", "--out", tmp_path / "prep")
    assert_refused(res, 2, "1 input(s) name nothing", "*.nrrd", "no file matches this pattern")
    assert nothing_written(tmp_path / "prep")


def test_a_missing_path_is_a_usage_error(tmp_path):
    raw = cts(tmp_path / "raw")
    res = invoke("preprocess", raw, tmp_path / "typo.nii.gz", "--out", tmp_path / "prep")
    assert_refused(res, 2, "typo.nii.gz", "no such file or directory")
    assert nothing_written(tmp_path / "prep")


# ------------------------------------------------------------------------------------------ subjects
def test_bids_tree_takes_subject_and_session_from_the_path(tmp_path):
    bids = tmp_path / "bids"
    for rel in ("sub-01/anat/sub-01_T1w.nii.gz", "sub-02/anat/sub-02_T1w.nii.gz",
                "sub-03/ses-1/anat/sub-03_ses-1_T1w.nii.gz", "sub-03/ses-2/anat/sub-03_ses-2_T1w.nii.gz",
                "sub-04/ses-1/anat/T1w.nii.gz", "sub-04/ses-2/anat/T1w.nii.gz"):
        nifti(bids / rel, seed=len(rel))
    res = invoke("preprocess", bids, "--out", tmp_path / "prep", "--split", "0.5,0,0.5")
    assert res.exit_code == 0, res.output
    assert subjects(tmp_path / "prep") == {
        "sub-01_T1w": "sub-01", "sub-02_T1w": "sub-02", "sub-03_ses-1_T1w": "sub-03", "sub-03_ses-2_T1w": "sub-03",
        "sub-04_ses-1_T1w": "sub-04", "sub-04_ses-2_T1w": "sub-04"}
    store = Store.open(store_path(tmp_path / "prep"))
    for subject in ("sub-03", "sub-04"):  # both sessions of a subject in one split
        assert len({store.item_attrs(i)["split"] for i in store.ids() if subjects(tmp_path / "prep")[i] == subject}) == 1


def test_many_inputs_on_one_subject_are_warned_about(tmp_path):
    raw = cts(tmp_path / "raw", 4)
    res = invoke("preprocess", raw, "--out", tmp_path / "prep", "--subject-pattern", r"(raw)")
    assert res.exit_code == 0, res.output
    assert "4 of 4 inputs map to one subject, 'raw'" in " ".join(res.output.split())


def test_subject_pattern_that_misses_an_input_is_a_usage_error(tmp_path):
    raw = cts(tmp_path / "raw")
    nifti(raw / "other.nii.gz")
    res = invoke("preprocess", raw, "--out", tmp_path / "prep", "--subject-pattern", r"ct(?P<subject>\d+)")
    assert_refused(res, 2, "does not match path", "other.nii.gz", "--subject-pattern")
    assert nothing_written(tmp_path / "prep")


@pytest.mark.parametrize("content, phrases", [
    (b"file,subj\nct0.nii.gz,A\n", ("needs 'path' and 'subject' columns",)),
    (b"path,subject\n\xff\xfeA,B\n", ("is not UTF-8 text",)),
    (b"path,subject\nct0.nii.gz,A\n", ("1 input(s) are not listed in the subject CSV", "ct1.nii.gz")),
    (None, ("does not exist",)),
])
def test_bad_subject_csv_is_a_usage_error(tmp_path, content, phrases):
    raw = cts(tmp_path / "raw")
    csv = tmp_path / "subjects.csv"
    if content is not None:
        csv.write_bytes(content)
    res = invoke("preprocess", raw, "--out", tmp_path / "prep", "--subject-csv", csv)
    assert_refused(res, 2, "subjects.csv", *phrases)
    assert nothing_written(tmp_path / "prep")


# ------------------------------------------------------------------------------------------ settings
@pytest.mark.parametrize("args, phrases", [
    (["--window", "lung", "--modality", "MR"], ("intensity.window lung (--window)", "input.modality is MR")),
    (["--set", "intensity.normalize=window", "--set", "intensity.window=40,400", "--modality", "XR"],
     ("intensity.window 40,400", "input.modality is XR")),
    (["--set", "intensity.normalize=window", "--modality", "MR"], ("intensity.normalize window", "input.modality is MR")),
    (["--window", "bone", "--modality", "OT"], ("is not used for input.modality OT",)),
    (["--set", "input.max_gib=0"], ("'input.max_gib' = 0", "greater than 0")),
    (["--set", "input.uneven_slices=interpolate"], ("'input.uneven_slices' = 'interpolate'", "'error', 'resample'")),
])
def test_contradicting_or_out_of_range_settings_are_usage_errors(tmp_path, args, phrases):
    raw = cts(tmp_path / "raw", 1)
    res = invoke("preprocess", raw, "--out", tmp_path / "prep", *args)
    assert_refused(res, 2, *phrases)
    assert nothing_written(tmp_path / "prep")


def test_an_image_above_max_gib_is_refused_from_its_header(tmp_path):
    raw = cts(tmp_path / "raw", 1)
    res = invoke("preprocess", raw, "--out", tmp_path / "prep", "--set", "input.max_gib=0.000001")
    assert_refused(res, 1, "all 1 input(s) failed")
    report = json.loads((tmp_path / "prep.partial" / "report.json").read_text())
    assert "raise input.max_gib" in report["failed"][0]["reason"]


# -------------------------------------------------------------------------------------------- 2D
def test_a_png_in_volume_mode_is_one_2d_item(tmp_path):
    src = png(tmp_path / "xray.png")
    before = snapshot(src)
    res = invoke("preprocess", src, "--out", tmp_path / "prep")
    assert res.exit_code == 0, res.output
    arr = Store.open(store_path(tmp_path / "prep")).read("xray")
    assert arr.shape == (30, 20) and snapshot(src) == before


def test_a_single_dicom_ct_slice_in_volume_mode_is_one_2d_item(tmp_path):
    pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    res = invoke("preprocess", get_testdata_file("CT_small.dcm"), "--out", tmp_path / "prep", "--window", "soft-tissue")
    assert res.exit_code == 0, res.output
    arr, meta = Store.open(store_path(tmp_path / "prep")).read_item("CT_small")
    assert arr.shape == (128, 128) and meta.modality == "CT" and meta.intensity.unit == "HU"


def test_2d_images_and_3d_volumes_in_volume_mode_are_refused_and_nothing_is_left(tmp_path):
    raw = cts(tmp_path / "raw", 1)
    png(raw / "xray.png")
    before = snapshot(raw)
    res = invoke("preprocess", raw, "--out", tmp_path / "prep")
    assert_refused(res, 2, "is a 2D image but", "is a 3D volume", "--mode slices", "nothing was committed")
    assert nothing_written(tmp_path / "prep") and snapshot(raw) == before


def test_a_2d_image_in_sequence_mode_names_the_modes_that_take_it(tmp_path):
    src = png(tmp_path / "xray.png")
    res = invoke("preprocess", src, "--out", tmp_path / "prep", "--mode", "sequence")
    assert_refused(res, 1, "all 1 input(s) failed")
    reason = json.loads((tmp_path / "prep.partial" / "report.json").read_text())["failed"][0]["reason"]
    assert "is a 2D image" in reason and "--mode slices or volume" in reason


# --------------------------------------------------------------------------------------- workers
def _children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        try:
            stat = (d / "stat").read_text() if d.name.isdigit() else ""
        except OSError:
            continue
        if stat and int(stat[stat.rindex(")") + 2:].split()[1]) == pid:
            out.append(int(d.name))
    return out


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for a reaper counts as dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def _files(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_die_with_a_killed_parent_and_stop_writing(tmp_path):
    raw = tmp_path / "raw"
    for i in range(8):
        nifti(raw / f"ct{i}.nii.gz", seed=i, shape=(32, 32, 16))
    out = tmp_path / "prep"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "medgen_cli.cli", "-q", "preprocess", str(raw), "--out", str(out),
                             "--workers", "2", "--spacing", "0.75", "--modality", "CT", "--derive", "lowdose"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    items = Path(f"{out}.partial") / "main.zarr" / "items"
    deadline = time.time() + 120
    while time.time() < deadline and not (items.is_dir() and any(items.iterdir())) and proc.poll() is None:
        time.sleep(0.02)
    workers = [pid for pid in _children(proc.pid) if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    proc.kill()
    proc.wait()
    try:
        assert len(workers) == 2, "the workers had not started"
        deadline = time.time() + 5
        while time.time() < deadline and any(_alive(pid) for pid in workers):
            time.sleep(0.02)
        assert not any(_alive(pid) for pid in workers), "a worker outlived its killed parent"
        written = _files(Path(f"{out}.partial"))
        time.sleep(1.0)
        assert _files(Path(f"{out}.partial")) == written, "the store was written after the parent died"
        assert not out.exists()
    finally:
        for pid in filter(_alive, workers):  # never leave an orphan behind, even when the test fails
            os.kill(pid, signal.SIGKILL)
