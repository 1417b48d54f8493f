"""`medgen preprocess` with label masks: pairing rules, every geometric step, derived stores, refusals, resume, inspect."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from medgen_cli.artefacts import require
from medgen_cli.cli import app
from medgen_cli.meta import ImageMeta
from medgen_cli.io.store import Store, store_path
from medgen_cli.settings import PreprocessSettings, load_settings
from medgen_cli.steps import preprocess
from tests.conftest import sphere_phantom, write_nifti

runner = CliRunner()
AFFINE = np.array([[-1.5, 0, 0, 40.0], [0, 1.5, 0, -30.0], [0, 0, 2.0, 10.0], [0, 0, 0, 1]])
SHAPE = (24, 24, 16)
SPHERE, AIR_BOX = 1, 3  # labels: the bright sphere (+400 HU) and a box of air (-1000 HU)
SUFFIX = ["--masks", "suffix:_label"]  # the CLI flag (masks.source)
CT = ["--window", "0,2000", "--modality", "CT"]


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def phantom_labels(shape=SHAPE, radius=0.3) -> np.ndarray:
    """Label 1 on the phantom's sphere (same formula as `sphere_phantom`), label 3 on a box of air in a corner."""
    grids = np.meshgrid(*[np.linspace(-0.5, 0.5, n) for n in shape], indexing="ij")
    r = np.sqrt(sum(g**2 for g in grids))
    labels = np.where(r < radius, SPHERE, 0).astype(np.int16)
    labels[1:6, 1:6, 1:5] = AIR_BOX
    return labels


def make_pairs(folder: Path, n: int, label_dir: Path | None = None, label_name: str = "{stem}_label.nii.gz") -> list[Path]:
    """``ctNN_image.nii.gz`` CT phantoms with label maps ``ctNN_label.nii.gz`` (or named as asked)."""
    folder.mkdir(parents=True, exist_ok=True)
    (label_dir or folder).mkdir(parents=True, exist_ok=True)
    images = []
    for i in range(n):
        images.append(write_nifti(folder / f"ct{i:02d}_image.nii.gz", sphere_phantom(SHAPE, radius=0.3, seed=i), AFFINE))
        name = label_name.format(stem=f"ct{i:02d}")
        write_nifti((label_dir or folder) / name, phantom_labels(), AFFINE)
    return images


def stores(prep: Path, name: str = "main") -> Store:
    return Store.open(store_path(prep, name))


def hu_inside(prep: Path, label: int, image_store: str = "main", mask_store: str = "masks") -> float:
    """Mean HU of the image over every voxel the mask gives ``label``, over all items."""
    images, masks = stores(prep, image_store), stores(prep, mask_store)
    total, count = 0.0, 0
    for item in images.ids():
        arr, meta = images.read_item(item)
        inside = masks.read(item, dtype=None) == label
        total += float(meta.intensity.to_physical(arr)[inside].sum())
        count += int(inside.sum())
    return total / count


MODES = {
    "volume": ["--spacing", "2.1", "--shape", "14,20,14"],  # resample, then crop one axis and pad another
    "slices": ["--mode", "slices", "--fit", "20,20", "--set", "mode.min_foreground=0"],
    "sequence": ["--mode", "sequence", "--spacing", "1.7", "--set", "mode.length=4", "--set", "mode.stride=3"],
}


@pytest.mark.parametrize("mode", list(MODES))
def test_masks_sit_on_each_items_grid(tmp_path, mode):
    make_pairs(tmp_path / "raw", 2)
    res = cli("preprocess", tmp_path / "raw", "--out", tmp_path / "prep", *CT, *MODES[mode], *SUFFIX)
    assert res.exit_code == 0, res.output
    main, masks = stores(tmp_path / "prep"), stores(tmp_path / "prep", "masks")
    assert main.ids() == masks.ids() and all(i.startswith(("ct00_image", "ct01_image")) for i in main.ids())
    assert len(main.ids()) > 2 or mode == "volume"
    for item in main.ids():
        image, labels = main.read(item), masks.read(item, dtype=None)
        assert labels.shape == image.shape and labels.dtype == np.int16
        np.testing.assert_allclose(masks.meta(item).affine, main.meta(item).affine, atol=1e-9)
        attrs = masks.item_attrs(item)
        values, counts = np.unique(labels, return_counts=True)
        assert attrs["labels"] == values.tolist() and set(values) <= {0, SPHERE, AIR_BOX}
        assert attrs["label_counts"] == {str(v): int(c) for v, c in zip(values, counts)}
        assert attrs["split"] == main.item_attrs(item)["split"] and attrs["subject"] == main.item_attrs(item)["subject"]
    # the image went through linear resampling, the mask through nearest: they still agree in space
    assert hu_inside(tmp_path / "prep", SPHERE) > 250  # the sphere is +400 HU (its rim is partial volume)
    assert hu_inside(tmp_path / "prep", AIR_BOX) < -900  # air
    report = json.loads((tmp_path / "prep" / "report.json").read_text())
    assert sorted(Path(p).name for p in report["masks_among_inputs"]) == ["ct00_label.nii.gz", "ct01_label.nii.gz"]
    assert report["done"][0]["mask"].endswith("ct00_label.nii.gz")


def test_a_mask_on_another_grid_lands_in_the_same_place(tmp_path):
    """The same label map stored flipped, with other axes order and a margin, gives identical masks."""
    make_pairs(tmp_path / "a", 1)
    make_pairs(tmp_path / "b", 1)
    labels = np.pad(phantom_labels(), ((0, 0), (3, 2), (0, 0)))[::-1].transpose(2, 0, 1)  # (k, i, j), i reversed
    affine = np.zeros((4, 4))
    affine[:, 0] = AFFINE[:, 2]
    affine[:, 1] = -AFFINE[:, 0]
    affine[:, 2] = AFFINE[:, 1]
    affine[:, 3] = AFFINE @ np.array([0, -3, 0, 1.0]) + (SHAPE[0] - 1) * AFFINE[:, 0] * np.array([1, 1, 1, 0])
    write_nifti(tmp_path / "b" / "ct00_label.nii.gz", np.ascontiguousarray(labels), affine)
    args = [*CT, "--spacing", "1.9", *SUFFIX]
    assert cli("preprocess", tmp_path / "a", "--out", tmp_path / "pa", *args).exit_code == 0
    assert cli("preprocess", tmp_path / "b", "--out", tmp_path / "pb", *args).exit_code == 0
    a, b = stores(tmp_path / "pa", "masks"), stores(tmp_path / "pb", "masks")
    np.testing.assert_array_equal(a.read("ct00_image", dtype=None), b.read("ct00_image", dtype=None))


def test_derived_stores_and_their_masks(tmp_path):
    make_pairs(tmp_path / "raw", 1)
    res = cli("preprocess", tmp_path / "raw", "--out", tmp_path / "prep", *CT, "--derive", "downsample:2",
              "--derive", "lowdose", "--derive", "drr", *SUFFIX)
    assert res.exit_code == 0, res.output
    down, mdown = stores(tmp_path / "prep", "downsample2"), stores(tmp_path / "prep", "masks_downsample2")
    assert mdown.ids() == down.ids() == ["ct00_image"]
    assert mdown.array("ct00_image").shape == down.array("ct00_image").shape == (12, 12, 8)
    np.testing.assert_allclose(mdown.meta("ct00_image").affine, down.meta("ct00_image").affine)
    assert hu_inside(tmp_path / "prep", AIR_BOX, "downsample2", "masks_downsample2") < -900
    summary = require(tmp_path / "prep", "preprocessed").summary["masks"]
    assert summary["pairs"] == {"downsample2": "masks_downsample2", "lowdose": "masks", "main": "masks"}  # drr: none
    labels = stores(tmp_path / "prep", "masks").read("ct00_image", dtype=None)
    assert summary["labels"] == {str(v): int((labels == v).sum()) for v in np.unique(labels)}
    assert not (tmp_path / "prep" / "masks_drr.zarr").exists()


def test_pattern_and_csv_rules(tmp_path):
    images = make_pairs(tmp_path / "img", 2, label_dir=tmp_path / "seg", label_name="{stem}_image_seg.nii.gz")
    pattern = "masks.source=pattern:{dir}/../seg/{stem}_seg.nii.*"
    res = cli("preprocess", tmp_path / "img", "--out", tmp_path / "p1", *CT, "--set", pattern)
    assert res.exit_code == 0, res.output
    assert stores(tmp_path / "p1", "masks").item_attrs("ct01_image")["mask_source"] == str(
        tmp_path / "img" / ".." / "seg" / "ct01_image_seg.nii.gz")
    table = tmp_path / "subjects.csv"
    table.write_text("path,subject,mask\n" + "".join(f"{p.name},s{i},seg/ct{i:02d}_image_seg.nii.gz\n"
                                                     for i, p in enumerate(images)))
    res = cli("preprocess", tmp_path / "img", "--out", tmp_path / "p2", *CT, "--subject-csv", table, "--set", "masks.source=csv")
    assert res.exit_code == 0, res.output
    masks = stores(tmp_path / "p2", "masks")
    assert masks.ids() == ["ct00_image", "ct01_image"] and masks.item_attrs("ct00_image")["subject"] == "s0"
    np.testing.assert_array_equal(masks.read("ct00_image"), stores(tmp_path / "p1", "masks").read("ct00_image"))


def test_suffix_replacing_an_ending(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    write_nifti(raw / "case_0000.nii.gz", sphere_phantom(SHAPE, radius=0.3), AFFINE)
    write_nifti(raw / "case.nii.gz", phantom_labels(), AFFINE)
    res = cli("preprocess", raw / "case_0000.nii.gz", "--out", tmp_path / "prep", *CT, "--set", "masks.source=suffix:_0000=")
    assert res.exit_code == 0, res.output
    assert stores(tmp_path / "prep", "masks").ids() == ["case_0000"]


def squash(text) -> str:
    """Without any whitespace: rich wraps long lines anywhere, even inside a path."""
    return "".join(str(getattr(text, "output", text)).split())


def test_a_missing_mask_is_refused_or_skipped(tmp_path):
    make_pairs(tmp_path / "raw", 2)
    write_nifti(tmp_path / "raw" / "extra.nii.gz", sphere_phantom(SHAPE, seed=9), AFFINE)
    res = cli("preprocess", tmp_path / "raw", "--out", tmp_path / "prep", *CT, *SUFFIX)
    assert res.exit_code == 2 and "Traceback" not in res.output
    text = squash(res)
    assert squash(f"{tmp_path / 'raw' / 'extra.nii.gz'} has no mask") in text
    assert squash("extra_label.nii.gz does not exist (masks.source suffix:_label)") in text and "masks.missing=skip" in text
    assert not (tmp_path / "prep.partial").exists()
    res = cli("preprocess", tmp_path / "raw", "--out", tmp_path / "prep", *CT, *SUFFIX, "--set", "masks.missing=skip")
    assert res.exit_code == 0, res.output
    assert stores(tmp_path / "prep").ids() == ["ct00_image", "ct01_image"]
    report = json.loads((tmp_path / "prep" / "report.json").read_text())
    assert [Path(p).name for p in report["skipped_no_mask"]] == ["extra.nii.gz"]
    assert require(tmp_path / "prep", "preprocessed").summary["masks"]["skipped_no_mask"] == 1


@pytest.mark.parametrize("bad,words", [
    ("far", "does not overlap its image"),
    ("float", "the mask holds non-integer values (e.g."),
])
def test_an_unusable_mask_fails_its_input_in_one_sentence(tmp_path, bad, words):
    make_pairs(tmp_path / "raw", 2)
    label = tmp_path / "raw" / "ct01_label.nii.gz"
    if bad == "far":
        write_nifti(label, phantom_labels(), AFFINE + np.array([[0, 0, 0, 900.0]] + [[0] * 4] * 3))
    else:
        write_nifti(label, phantom_labels().astype(np.float32) * 0.5, AFFINE)
    res = cli("preprocess", tmp_path / "raw", "--out", tmp_path / "prep", *CT, *SUFFIX)
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert squash(f"mask {label}") in squash(res) and squash(words) in squash(res)
    assert stores(tmp_path / "prep").ids() == ["ct00_image"]  # the other input went on


def test_a_bad_rule_is_a_settings_error(tmp_path):
    make_pairs(tmp_path / "raw", 1)
    res = cli("preprocess", tmp_path / "raw", "--out", tmp_path / "prep", "--set", "masks.source=prefix:lab")
    assert res.exit_code == 2 and "masks.source" in res.output and "suffix:" in res.output
    res = cli("preprocess", tmp_path / "raw", "--out", tmp_path / "prep", "--set", "masks.source=csv")
    assert res.exit_code == 2 and squash("input.subject_csv is not set") in squash(res)


def _settings(raw: Path) -> PreprocessSettings:
    return load_settings(PreprocessSettings, None, ["masks.source=suffix:_label", "intensity.window=0,2000",
                                                    "input.modality=CT", "geometry.spacing=2.5"], {"input.paths": [str(raw)]})


def test_resume_with_masks_equals_an_uninterrupted_run(tmp_path):
    make_pairs(tmp_path / "raw", 4)
    settings = _settings(tmp_path / "raw")
    preprocess.run(settings, tmp_path / "ref")

    def stop_after_two(done, total, name):
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        preprocess.run(settings, tmp_path / "cut", progress=stop_after_two)
    partial = tmp_path / "cut.partial"
    assert len(list((partial / "progress").glob("*.json"))) == 2 and not (tmp_path / "cut").exists()
    # a mask item the interrupted run left half-written: a resume must rewrite it
    half = Store.create(store_path(partial, "masks"))
    half.write("ct02_image", np.full((3, 3, 3), 9), ImageMeta(), dtype="int16")
    half.set_attrs("ct02_image", complete=False)
    result = preprocess.run(settings, tmp_path / "cut")
    assert result.skipped == 2
    for name in ("main", "masks"):
        ref, cut = stores(tmp_path / "ref", name), stores(tmp_path / "cut", name)
        assert ref.ids() == cut.ids() and len(ref.ids()) == 4
        for item in ref.ids():
            np.testing.assert_array_equal(ref.read(item, dtype=None), cut.read(item, dtype=None))
    ref_summary = require(tmp_path / "ref", "preprocessed").summary["masks"]
    assert require(tmp_path / "cut", "preprocessed").summary["masks"] == ref_summary


def test_inspect_lists_the_labels_with_voxel_counts(tmp_path):
    make_pairs(tmp_path / "raw", 2)
    assert cli("preprocess", tmp_path / "raw", "--out", tmp_path / "prep", *CT, "--spacing", "3", *SUFFIX).exit_code == 0
    report = json.loads(cli("inspect", tmp_path / "prep", "--json").output)
    masks = stores(tmp_path / "prep", "masks")
    both = np.concatenate([masks.read(i, dtype=None).ravel() for i in masks.ids()])
    want = {str(v): int((both == v).sum()) for v in np.unique(both)}
    assert report["masks"]["stores"]["masks"]["labels"] == want and set(want) == {"0", "1", "3"}
    assert report["masks"]["pairs"] == {"main": "masks"} and report["masks"]["source"] == "suffix:_label"
    text = squash(cli("inspect", tmp_path / "prep"))
    assert "masks" in text and "main->masks" in text and squash(f"1: {want['1']:,} voxels in 2 item(s)") in text
