"""`medgen preprocess` end to end: items, geometry, splits, bad inputs, resume, shards, derived stores."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from medgen_cli.artefacts import require
from medgen_cli.cli import app
from medgen_cli.io.store import Store, store_path
from medgen_cli.io.writers import write_nifti
from tests.conftest import sphere_phantom, write_nifti as save_nifti

runner = CliRunner()
AFFINE = np.array([[-1.5, 0, 0, 40.0], [0, 1.5, 0, -30.0], [0, 0, 2.0, 10.0], [0, 0, 0, 1]])


def cli(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def make_cts(folder: Path, n: int, shape=(24, 24, 16), per_subject: int = 1) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        for j in range(per_subject):
            name = f"sub{i:02d}_scan{j}.nii.gz" if per_subject > 1 else f"ct{i:02d}.nii.gz"
            paths.append(save_nifti(folder / name, sphere_phantom(shape, radius=0.25 + 0.02 * i, seed=i * 10 + j), AFFINE))
    return paths


def all_arrays(artefact: Path, name: str = "main") -> dict[str, np.ndarray]:
    store = Store.open(store_path(artefact, name))
    return {i: store.read(i) for i in store.ids()}


def test_volumes_windowed_and_resampled(tmp_path):
    make_cts(tmp_path / "raw", 3)
    res = cli("preprocess", str(tmp_path / "raw" / "*.nii.gz"), "--out", tmp_path / "prep", "--window", "lung",
              "--spacing", "3", "--modality", "CT")
    assert res.exit_code == 0, res.output
    manifest = require(tmp_path / "prep", "preprocessed")
    store = Store.open(store_path(tmp_path / "prep"))
    assert store.ids() == ["ct00", "ct01", "ct02"]
    arr, meta = store.read_item("ct00")
    assert arr.shape == (12, 12, 11)  # 24*1.5/3, 16*2/3 rounded
    np.testing.assert_allclose(meta.spacing, (3, 3, 3), atol=1e-6)
    assert meta.intensity.method == "window" and meta.intensity.unit == "HU"
    assert (meta.intensity.in_low, meta.intensity.in_high) == (-1350, 150)
    assert arr.min() >= -1 and arr.max() <= 1 and meta.modality == "CT"
    # orientation is RAS: the first axis points right
    assert meta.affine[0, 0] > 0
    assert set(manifest.summary["splits"]) == {"ct00", "ct01", "ct02"}
    assert manifest.summary["pipeline"][1] == {"fn": "spatial.reorient", "target": "RAS"}


def test_nifti_store_nifti_round_trip_keeps_affine_and_values(tmp_path, nibabel_data):
    import nibabel as nib

    src = nibabel_data / "anatomical.nii"
    original = nib.load(str(src))
    axcodes = "".join(nib.aff2axcodes(original.affine))
    res = cli("preprocess", src, "--out", tmp_path / "prep", "--orientation", axcodes,
              "--set", "intensity.normalize=minmax", "--set", "store.dtype=float16")
    assert res.exit_code == 0, res.output
    store = Store.open(store_path(tmp_path / "prep"))
    (item,) = store.ids()
    arr, meta = store.read_item(item)
    out = write_nifti(tmp_path / "back.nii.gz", arr, meta)
    back = nib.load(str(out))
    np.testing.assert_allclose(back.affine, original.affine, atol=1e-4)
    data, ref = back.get_fdata(), original.get_fdata()
    value_range = ref.max() - ref.min()
    # float16 keeps ~11 bits: the error is below 2^-11 of the value range (stored in [-1, 1])
    assert np.abs(data - ref).max() <= value_range * 2.0**-11 + 1e-6


def test_reorientation_keeps_world_positions(tmp_path, nibabel_data):
    import nibabel as nib

    src = nibabel_data / "anatomical.nii"
    original = nib.load(str(src))
    res = cli("preprocess", src, "--out", tmp_path / "prep", "--set", "intensity.normalize=none", "--set", "store.dtype=float32")
    assert res.exit_code == 0, res.output
    arr, meta = Store.open(store_path(tmp_path / "prep")).read_item("anatomical")
    assert "".join(nib.aff2axcodes(meta.affine)) == "RAS"
    ref = original.get_fdata()
    # the value at a world point is the same before and after
    inv = np.linalg.inv(meta.affine)
    for idx in [(0, 0, 0), (10, 20, 5), (32, 40, 24)]:
        world = original.affine @ np.array([*idx, 1.0])
        new_idx = np.rint(inv @ world)[:3].astype(int)
        assert arr[tuple(new_idx)] == pytest.approx(ref[idx])


def test_split_by_subject_has_no_leakage(tmp_path):
    make_cts(tmp_path / "raw", 10, shape=(12, 12, 8), per_subject=2)
    res = cli("preprocess", tmp_path / "raw", "--out", tmp_path / "prep", "--mode", "slices",
              "--subject-pattern", r"(?P<subject>sub\d+)_", "--split", "0.6,0.2,0.2", "--seed", "7",
              "--set", "mode.min_foreground=0")
    assert res.exit_code == 0, res.output
    store = Store.open(store_path(tmp_path / "prep"))
    split_of: dict[str, set[str]] = {}
    for i in store.ids():
        attrs = store.item_attrs(i)
        split_of.setdefault(attrs["subject"], set()).add(attrs["split"])
    assert len(split_of) == 10 and all(len(s) == 1 for s in split_of.values())
    counts = {name: sum(1 for s in split_of.values() if name in s) for name in ("train", "val", "test")}
    assert counts == {"train": 6, "val": 2, "test": 2}
    assert require(tmp_path / "prep", "preprocessed").summary["split_seed"] == 7


def _bad_inputs(folder: Path) -> dict[str, tuple[Path, str]]:
    folder.mkdir()
    good = sphere_phantom((12, 12, 8))
    corrupt = folder / "corrupt.nii.gz"
    corrupt.write_bytes(b"\x1f\x8b\x08\x00" + os.urandom(200))
    truncated = folder / "truncated.nii.gz"
    save_nifti(truncated, good, AFFINE)
    truncated.write_bytes(truncated.read_bytes()[:300])
    notimage = folder / "notes.nii"
    notimage.write_text("this is not an image")
    four_d = save_nifti(folder / "fourd.nii.gz", np.stack([good, good], -1), AFFINE)
    nan = good.copy()
    nan[2, 2, 2] = np.nan
    nan_path = save_nifti(folder / "nan.nii.gz", nan, AFFINE)
    empty = save_nifti(folder / "empty.nii.gz", np.zeros((12, 0, 8), np.float32), AFFINE)
    dicomdir = folder / "dicomdir"
    dicomdir.mkdir()
    (dicomdir / "IM0001.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 50)
    return {
        "corrupt": (corrupt, "cannot be read"),
        "truncated": (truncated, "cannot be read"),
        "notimage": (notimage, "cannot be read"),
        "4d": (four_d, "4D image"),
        "nan": (nan_path, "NaN or Inf"),
        "empty": (empty, "zero-length axis"),
        "dicomdir": (dicomdir, "no readable image or DICOM series"),
    }


def test_each_bad_input_is_named_and_good_items_survive(tmp_path):
    good = make_cts(tmp_path / "good", 2, shape=(12, 12, 8))
    bad = _bad_inputs(tmp_path / "bad")
    res = cli("preprocess", *good, *[p for p, _ in bad.values()], "--out", tmp_path / "prep")
    assert res.exit_code == 1, res.output
    text = "".join(res.output.split())  # rich wraps long lines anywhere
    for path, reason in bad.values():
        assert path.name in text and reason.replace(" ", "") in text, (path.name, reason)
    assert "7input(s)failed" in text
    assert sorted(all_arrays(tmp_path / "prep")) == ["ct00", "ct01"]
    assert len(require(tmp_path / "prep", "preprocessed").summary["failed"]) == 7


def test_strict_stops_at_first_bad_input(tmp_path):
    good = make_cts(tmp_path / "good", 1, shape=(12, 12, 8))
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(gzip.compress(b"not a nifti header"))
    res = cli("preprocess", good[0], bad, "--out", tmp_path / "prep", "--strict")
    assert res.exit_code == 1 and "bad.nii.gz" in "".join(res.output.split())
    assert not (tmp_path / "prep").exists()


def test_usage_errors_exit_2_and_keep_existing_output(tmp_path):
    make_cts(tmp_path / "raw", 1, shape=(12, 12, 8))
    assert cli("preprocess", tmp_path / "raw", "--out", tmp_path / "prep").exit_code == 0
    before = (tmp_path / "prep" / "manifest.json").read_text()
    res = cli("preprocess", tmp_path / "raw", "--out", tmp_path / "prep")
    assert res.exit_code == 2 and "--overwrite" in res.output
    assert (tmp_path / "prep" / "manifest.json").read_text() == before
    res = cli("preprocess", tmp_path / "raw", "--out", tmp_path / "p2", "--set", "geometry.spacng=1")
    assert res.exit_code == 2 and "unknown key 'geometry.spacng'" in res.output
    res = cli("preprocess", tmp_path / "nothing*.nii", "--out", tmp_path / "p3")
    assert res.exit_code == 2 and "no file matches this pattern" in res.output and not (tmp_path / "p3.partial").exists()
    assert cli("preprocess", tmp_path / "raw", "--out", tmp_path / "prep", "--overwrite").exit_code == 0


def _run_module(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    return subprocess.Popen([sys.executable, "-m", "medgen_cli.cli", "-q", "preprocess", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_sigkill_and_rerun_equals_uninterrupted(tmp_path):
    make_cts(tmp_path / "raw", 8, shape=(40, 40, 24))
    args = [str(tmp_path / "raw"), "--spacing", "1.2", "--window", "soft-tissue", "--derive", "lowdose", "--modality", "CT"]
    ref = _run_module([*args, "--out", str(tmp_path / "ref")])
    assert ref.wait(timeout=300) == 0, ref.stderr.read().decode()

    proc = _run_module([*args, "--out", str(tmp_path / "cut")])
    progress = tmp_path / "cut.partial" / "progress"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(progress.glob("*.json"))) < 3:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "cut").exists() and (tmp_path / "cut.partial").exists()
    done_before = len(list(progress.glob("*.json")))
    assert 3 <= done_before < 8
    again = _run_module([*args, "--out", str(tmp_path / "cut")])
    assert again.wait(timeout=300) == 0, again.stderr.read().decode()
    for name in ("main", "lowdose"):
        a, b = all_arrays(tmp_path / "ref", name), all_arrays(tmp_path / "cut", name)
        assert sorted(a) == sorted(b) and len(a) == 8
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    assert require(tmp_path / "cut", "preprocessed").status == "complete"


def test_shards_write_one_store_and_the_last_commits(tmp_path):
    make_cts(tmp_path / "raw", 5, shape=(12, 12, 8))
    first = cli("preprocess", tmp_path / "raw", "--out", tmp_path / "prep", "--shard", "0/2")
    assert first.exit_code == 0 and not (tmp_path / "prep").exists()
    second = cli("preprocess", tmp_path / "raw", "--out", tmp_path / "prep", "--shard", "1/2")
    assert second.exit_code == 0, second.output
    assert sorted(all_arrays(tmp_path / "prep")) == [f"ct{i:02d}" for i in range(5)]
    single = cli("preprocess", tmp_path / "raw", "--out", tmp_path / "one")
    assert single.exit_code == 0
    a, b = all_arrays(tmp_path / "prep"), all_arrays(tmp_path / "one")
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert cli("preprocess", tmp_path / "raw", "--out", tmp_path / "x", "--shard", "2/2").exit_code == 2


def test_workers_give_the_same_result(tmp_path):
    make_cts(tmp_path / "raw", 3, shape=(12, 12, 8))
    assert cli("preprocess", tmp_path / "raw", "--out", tmp_path / "w1").exit_code == 0
    res = cli("preprocess", tmp_path / "raw", "--out", tmp_path / "w2", "--workers", "2")
    assert res.exit_code == 0, res.output
    a, b = all_arrays(tmp_path / "w1"), all_arrays(tmp_path / "w2")
    assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)


def test_derived_stores_pair_by_subject(tmp_path):
    make_cts(tmp_path / "raw", 2, shape=(20, 20, 12))
    res = cli("preprocess", tmp_path / "raw", "--out", tmp_path / "prep", "--window", "0,2000", "--modality", "CT",
              "--derive", "drr", "--derive", "lowdose", "--derive", "downsample:2")
    assert res.exit_code == 0, res.output
    main = Store.open(store_path(tmp_path / "prep"))
    drr = Store.open(store_path(tmp_path / "prep", "drr"))
    low = Store.open(store_path(tmp_path / "prep", "lowdose"))
    down = Store.open(store_path(tmp_path / "prep", "downsample2"))
    assert drr.ids() == ["ct00_ap", "ct00_lateral", "ct01_ap", "ct01_lateral"]
    assert {drr.item_attrs(i)["view"] for i in drr.ids()} == {"ap", "lateral"}
    for store in (drr, low, down):
        for i in store.ids():
            subject = store.item_attrs(i)["subject"]
            assert subject in main.subjects() and store.item_attrs(i)["split"] == main.item_attrs(subject)["split"]
    assert drr.read("ct00_ap").ndim == 2 and drr.meta("ct00_ap").modality == "XR"
    np.testing.assert_allclose(down.meta("ct00").spacing, np.array(main.meta("ct00").spacing) * 2, rtol=0.05)
    assert low.meta("ct00").intensity == main.meta("ct00").intensity  # same window: pairs compare directly
    assert np.abs(low.read("ct00") - main.read("ct00")).mean() > 0
    report = json.loads(cli("inspect", tmp_path / "prep", "--json").output)
    assert set(report["stores"]) == {"main", "drr", "lowdose", "downsample2"}


def test_sequence_mode_and_in_plane_fit(tmp_path):
    make_cts(tmp_path / "raw", 1, shape=(30, 20, 16))
    res = cli("preprocess", tmp_path / "raw", "--out", tmp_path / "prep", "--mode", "sequence", "--fit", "16,16",
              "--set", "mode.length=4", "--set", "mode.stride=4", "--window", "bone")
    assert res.exit_code == 0, res.output
    store = Store.open(store_path(tmp_path / "prep"))
    assert len(store.ids()) == 4
    arr, meta = store.read_item(store.ids()[1])
    assert arr.shape == (16, 16, 4) and meta.attrs["slice_start"] == 4
    assert meta.spacing[0] == pytest.approx(meta.spacing[1]) and meta.spacing[2] == pytest.approx(2.0)


@pytest.mark.parametrize("mode, extra", [("sequence", ["--set", "mode.length=4", "--set", "mode.stride=2"]),
                                         ("slices", ["--set", "mode.min_foreground=0.2"])])
def test_derived_stores_per_item_in_sequence_and_slices_modes(tmp_path, mode, extra):
    """lowdose and downsample:2 are cut like main: same ids, splits, subjects; geometry of the pieces."""
    make_cts(tmp_path / "raw", 2, shape=(20, 20, 12))
    res = cli("preprocess", tmp_path / "raw", "--out", tmp_path / "prep", "--window", "0,2000", "--modality", "CT",
              "--mode", mode, *extra, "--derive", "lowdose", "--derive", "downsample:2")
    assert res.exit_code == 0, res.output
    main = Store.open(store_path(tmp_path / "prep"))
    low = Store.open(store_path(tmp_path / "prep", "lowdose"))
    down = Store.open(store_path(tmp_path / "prep", "downsample2"))
    assert len(main.ids()) > 2 and low.ids() == main.ids() == down.ids()
    key = "slice_start" if mode == "sequence" else "slice_index"
    for item_id in main.ids():
        (a, m), (la, lm), (da, dm) = main.read_item(item_id), low.read_item(item_id), down.read_item(item_id)
        for attr in ("subject", "split", key):
            assert low.item_attrs(item_id)[attr] == main.item_attrs(item_id)[attr] == down.item_attrs(item_id)[attr]
        assert la.shape == a.shape and lm.intensity == m.intensity and "low dose" in lm.attrs["derived_from"]
        np.testing.assert_allclose(lm.affine, m.affine)  # the same voxels, noisier
        assert 0 < np.abs(la - a).mean() < 0.2
        # in-plane halved, the slicing axis kept: item k of downsample2 covers item k of main
        assert da.shape[:2] == (a.shape[0] // 2, a.shape[1] // 2) and da.shape[2:] == a.shape[2:]
        np.testing.assert_allclose(dm.spacing[:2], np.array(m.spacing[:2]) * 2, rtol=1e-6)
        assert dm.spacing[2] == pytest.approx(m.spacing[2])
        centre = lambda meta, shape: meta.affine @ np.r_[(np.array([*shape, 1][:3]) - 1) / 2, 1.0]  # noqa: E731
        np.testing.assert_allclose(centre(dm, da.shape), centre(m, a.shape), atol=1e-6)  # same field of view
        assert dm.intensity == m.intensity
    # the noise of a slice is the same in every overlapping sequence (one low-dose scan, cut like main)
    if mode == "sequence":
        first, second = main.ids()[:2]
        np.testing.assert_array_equal(low.read(first)[..., 2:], low.read(second)[..., :2])


def test_drr_and_slicing_axis_downsampling_are_refused_outside_volume_mode(tmp_path):
    make_cts(tmp_path / "raw", 1, shape=(20, 20, 12))
    for derive, words in (("drr", "needs mode.kind volume"), ("downsample:2,2,2", "slicing axis")):
        res = cli("preprocess", tmp_path / "raw", "--out", tmp_path / "prep", "--mode", "sequence", "--derive", derive)
        assert res.exit_code == 2 and words in " ".join(res.output.split()) and "Traceback" not in res.output


# ------------------------------------------------------------------------------- real images
@pytest.mark.realdata
def test_real_lung_ct_volumes(tmp_path, real_data):
    paths = [real_data("lung1_image.nrrd"), real_data("lung2_image.nrrd")]
    res = cli("preprocess", *paths, "--out", tmp_path / "prep", "--window", "lung", "--spacing", "1.5",
              "--split", "0.5,0,0.5", "--workers", "2")
    assert res.exit_code == 0, res.output
    report = json.loads(cli("inspect", tmp_path / "prep", "--json").output)
    st = report["stores"]["main"]
    assert st["items"] == 2 and st["subjects"] == 2 and st["modalities"] == ["CT"]
    assert st["spacing_min"] == [1.5, 1.5, 1.5] and st["spacing_max"] == [1.5, 1.5, 1.5]
    assert st["splits"] == {"test": 1, "train": 1} and st["compression_ratio"] > 1.5
    store = Store.open(store_path(tmp_path / "prep"))
    arr, meta = store.read_item("lung1_image")
    # 512 x 0.57 mm ~ 292 mm -> ~195 voxels at 1.5 mm; 48 x 5 mm = 240 mm -> 160
    assert abs(arr.shape[0] - 195) <= 2 and abs(arr.shape[2] - 160) <= 1
    hu = meta.intensity.to_physical(arr)
    assert hu.min() >= -1350 - 1 and hu.max() <= 150 + 1
    assert (hu < -900).mean() > 0.2  # air around the body and in the lungs


@pytest.mark.realdata
def test_real_mr_brains_as_slices(tmp_path, real_data):
    paths = [real_data("brain1_image.nrrd"), real_data("brain2_image.nrrd")]
    res = cli("preprocess", *paths, "--out", tmp_path / "prep", "--mode", "slices", "--fit", "64,64", "--split", "0.5,0,0.5")
    assert res.exit_code == 0, res.output
    store = Store.open(store_path(tmp_path / "prep"))
    ids = store.ids()
    assert len(ids) > 20 and all(store.array(i).shape == (64, 64) for i in ids)
    assert {store.item_attrs(i)["subject"] for i in ids} == {"brain1_image", "brain2_image"}
    meta = store.meta(ids[0])
    assert meta.modality == "MR" and meta.intensity.method == "percentile"
    report = json.loads(cli("inspect", tmp_path / "prep", "--json").output)
    assert report["stores"]["main"]["shapes"] == {"64x64": len(ids)}


def test_pydicom_ct_slice(tmp_path):
    pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    res = cli("preprocess", get_testdata_file("CT_small.dcm"), "--out", tmp_path / "prep", "--mode", "slices",
              "--window", "soft-tissue")
    assert res.exit_code == 0, res.output
    store = Store.open(store_path(tmp_path / "prep"))
    (item,) = store.ids()
    arr, meta = store.read_item(item)
    assert arr.shape == (128, 128) and meta.modality == "CT" and meta.intensity.unit == "HU"
    report = cli("inspect", tmp_path / "prep")
    assert report.exit_code == 0 and "128x128" in report.output


def test_previews_hu_warning_and_subject_csv(tmp_path, caplog):
    paths = make_cts(tmp_path / "raw", 2, shape=(16, 16, 10))
    mr_like = save_nifti(tmp_path / "raw" / "notct.nii.gz", np.random.default_rng(0).uniform(0, 500, (16, 16, 10)).astype(np.float32), AFFINE)
    csv = tmp_path / "subjects.csv"
    csv.write_text(f"path,subject,split\n{paths[0]},patientA,\n{paths[1]},patientA,\nnotct.nii.gz,patientB,test\n")
    from medgen_cli.settings import PreprocessSettings, load_settings
    from medgen_cli.steps import preprocess

    settings = load_settings(PreprocessSettings, None, ["input.modality=CT"],
                             {"input.paths": [str(p) for p in (*paths, mr_like)], "input.subject_csv": str(csv)})
    with caplog.at_level("WARNING"):
        result = preprocess.run(settings, tmp_path / "prep")
    assert any("notct.nii.gz: declared CT but does not look like HU" in r.getMessage() for r in caplog.records)
    assert result.items == {"main": 3} and not result.failed
    store = Store.open(store_path(tmp_path / "prep"))
    assert sorted(store.subjects()) == ["patientA", "patientB"]
    assert store.item_attrs("ct00")["split"] == store.item_attrs("ct01")["split"] == "train"  # one subject, one split
    assert store.ids("test") == ["notct"]  # pinned by the CSV's split column
    png = tmp_path / "prep" / "previews" / "main.png"
    assert png.stat().st_size > 1000 and "previews" in require(tmp_path / "prep", "preprocessed").files


# ------------------------------------------------------------------------ issue 11: reports, 2D, signals
def test_partial_failures_commit_the_good_items_with_a_report(tmp_path):
    good = make_cts(tmp_path / "good", 2, shape=(12, 12, 8))
    bad = tmp_path / "bad.nii"
    bad.write_text("not an image")
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    (empty_dir / "notes.txt").write_text("no images here")
    res = cli("preprocess", *good, bad, empty_dir, "--out", tmp_path / "prep", "--shard", "0/2")
    assert res.exit_code == 0, res.output
    res = cli("preprocess", *good, bad, empty_dir, "--out", tmp_path / "prep", "--shard", "1/2")
    assert res.exit_code == 1 and "2input(s)failed;theotheritemswerewritten" in "".join(res.output.split())
    manifest = require(tmp_path / "prep", "preprocessed")
    report = json.loads((tmp_path / "prep" / "report.json").read_text())
    assert "report.json" in manifest.files
    assert sorted(d["subject"] for d in report["done"]) == ["ct00", "ct01"]
    assert sorted(f["path"] for f in report["failed"]) == sorted([str(bad), str(empty_dir)])  # each once, not per shard
    assert len(manifest.summary["failed"]) == 2


def test_window_left_unused_on_non_ct_inputs_is_warned_about_once(tmp_path, caplog):
    rng = np.random.default_rng(0)
    (tmp_path / "raw").mkdir()
    for i in range(3):
        save_nifti(tmp_path / "raw" / f"mr{i}.nii.gz", rng.uniform(0, 500, (12, 12, 8)).astype(np.float32), AFFINE)
    from medgen_cli.settings import PreprocessSettings, load_settings
    from medgen_cli.steps import preprocess

    settings = load_settings(PreprocessSettings, None, ["intensity.window=lung"], {"input.paths": [str(tmp_path / "raw")]})
    with caplog.at_level("WARNING"):
        preprocess.run(settings, tmp_path / "prep")
    unused = [r.getMessage() for r in caplog.records if "was not applied" in r.getMessage()]
    assert len(unused) == 1 and "to 3 input(s) that were read as MR" in unused[0]


@pytest.mark.realdata
def test_real_radiograph_in_volume_mode_is_one_2d_item(tmp_path, real_data):
    res = cli("preprocess", real_data("RG3_UNCR.dcm"), "--out", tmp_path / "prep", "--fit", "256,256")
    assert res.exit_code == 0, res.output
    arr, meta = Store.open(store_path(tmp_path / "prep")).read_item("RG3_UNCR")
    assert arr.shape == (256, 256) and meta.modality == "XR"


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        if int(text[text.rindex(")") + 2:].split()[1]) == pid and b"spawn_main" in (stat.parent / "cmdline").read_bytes():
            kids.append(int(stat.parent.name))
    return kids


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigterm_stops_the_workers_releases_the_lock_and_keeps_the_work(tmp_path):
    make_cts(tmp_path / "raw", 8, shape=(32, 32, 16))
    proc = _run_module([str(tmp_path / "raw"), "--out", str(tmp_path / "prep"), "--workers", "2", "--spacing", "0.75",
                        "--modality", "CT", "--derive", "lowdose"])
    items = tmp_path / "prep.partial" / "main.zarr" / "items"
    deadline = time.time() + 120
    while time.time() < deadline and not (items.is_dir() and any(items.iterdir())) and proc.poll() is None:
        time.sleep(0.02)
    workers = _children(proc.pid)
    proc.send_signal(signal.SIGTERM)
    try:
        assert proc.wait(timeout=30) == 1
        assert "stopped by SIGTERM" in proc.stderr.read().decode()
        assert len(workers) == 2 and not any(Path(f"/proc/{pid}").exists() for pid in workers)
        assert not list(tmp_path.glob("prep.lock*")) and not (tmp_path / "prep").exists()
        assert (tmp_path / "prep.partial" / "manifest.json").exists()  # kept for a resume
    finally:
        for pid in workers:
            if Path(f"/proc/{pid}").exists():
                os.kill(pid, signal.SIGKILL)


def _interrupt_after_first_input(monkeypatch):
    from medgen_cli.steps import preprocess as step

    original = step._Tracker.__call__

    def call(self, n, result, done):
        original(self, n, result, done)
        raise KeyboardInterrupt  # as Ctrl-C after the first input is recorded

    monkeypatch.setattr(step._Tracker, "__call__", call)
    return lambda: monkeypatch.setattr(step._Tracker, "__call__", original)


def test_resume_refuses_an_input_changed_since_the_interrupted_run(tmp_path, monkeypatch):
    paths = make_cts(tmp_path / "raw", 2)
    args = [tmp_path / "raw", "--out", tmp_path / "prep", "--modality", "CT"]
    restore = _interrupt_after_first_input(monkeypatch)
    res = cli("preprocess", *args)
    assert res.exit_code == 1 and "interrupted" in res.output
    restore()
    done = [json.loads(p.read_text())["source"] for p in (tmp_path / "prep.partial" / "progress").glob("*.json")]
    assert len(done) == 1
    changed = Path(done[0])
    save_nifti(changed, sphere_phantom(seed=5, radius=0.2), np.eye(4))  # new content, new size/time
    res = cli("preprocess", *args)
    assert res.exit_code == 2 and "Traceback" not in res.output
    text = "".join(res.output.split())
    assert "changedaftertheinterruptedrun" in text and changed.name in text and "--overwrite" in text
    assert not (tmp_path / "prep").exists() and (tmp_path / "prep.partial").exists()  # nothing lost either way
    res = cli("preprocess", *args, "--overwrite")
    assert res.exit_code == 0, res.output
    assert len(Store.open(store_path(tmp_path / "prep")).complete_ids()) == len(paths)


def test_resume_of_unchanged_inputs_goes_on(tmp_path, monkeypatch):
    make_cts(tmp_path / "raw", 2)
    args = [tmp_path / "raw", "--out", tmp_path / "prep", "--modality", "CT"]
    restore = _interrupt_after_first_input(monkeypatch)
    assert cli("preprocess", *args).exit_code == 1
    restore()
    res = cli("preprocess", *args)
    assert res.exit_code == 0 and "1 inputs resumed" in " ".join(res.output.split()), res.output
