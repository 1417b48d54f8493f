"""Fault cases of issue 11, part B: damaged stores are refused by name, never read as blank images.

Before: a deleted chunk read as a blank (fill value) image that evaluate scored and export wrote; a
corrupted chunk or item metadata raised a blosc or JSON error naming neither the store nor the item.
Every case damages a copy of a small artefact made by medgen itself, runs the real CLI, and checks the
exit code (1: the step ran and met damage), the one sentence naming the store and the item, that no
traceback was printed, that the damaged input is left as it was, and that no complete output was made.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from medgen_cli.errors import StepFailed
from medgen_cli.steps import encode_latents, inspect as inspect_step, train_ae
from tests.faults.conftest import assert_refused, invoke, snapshot
from tests.steps.conftest import encode_settings
from tests.train.helpers import make_prep, tiny_settings

TRAIN_AE = ["--set", "model.channels=8,8", "--set", "model.num_res_blocks=1", "--set", "model.embedding_dim=8",
            "--set", "model.num_embeddings=32", "--set", "data.batch_size=2", "--set", "train.val_every=0",
            "--set", "train.save_images=0", "--steps", "2", "--device", "cpu"]


@dataclass
class Pipe:
    prep: Path  # 2D 16^2 items item00..item03 (train), item04, item05 (val)
    ae: Path
    lat: Path


@pytest.fixture(scope="module")
def pipe(tmp_path_factory) -> Pipe:
    root = tmp_path_factory.mktemp("store_faults")
    prep = make_prep(root / "prep", 2, n_train=4, n_val=2)
    train_ae.run(tiny_settings(prep, "vqvae", "train.steps=2", "train.val_every=0", "train.save_images=0"), root / "ae")
    encode_latents.run(encode_settings(root / "ae", prep, "main"), root / "lat")
    return Pipe(prep, root / "ae", root / "lat")


def copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def item_dir(artefact: Path, item: str, store: str = "main") -> Path:
    return artefact / f"{store}.zarr" / "items" / item


def delete_chunk(artefact: Path, item: str) -> None:
    (item_dir(artefact, item) / "c" / "0" / "0").unlink()


def corrupt_chunk(artefact: Path, item: str) -> None:
    path = item_dir(artefact, item) / "c" / "0" / "0"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte: the checksum catches what blosc would not
    path.write_bytes(bytes(data))


def refused_intact(result, root: Path, before: dict, *phrases: str) -> None:
    assert_refused(result, 1, *phrases)
    assert snapshot(root) == before, "the damaged input was changed"


# ------------------------------------------------------------------------------ reads in each step
def test_evaluate_refuses_a_deleted_chunk_instead_of_scoring_a_blank_image(pipe, tmp_path):
    prep = copy(pipe.prep, tmp_path / "prep")
    delete_chunk(prep, "item04")
    before = snapshot(prep)
    res = invoke("evaluate", "--ae", pipe.ae, "--data", prep, "--split", "val", "--out", tmp_path / "ev")
    refused_intact(res, prep, before, f"{prep}/main.zarr item item04", "chunk 0.0 is missing or damaged",
                   "re-run medgen preprocess")
    assert not (tmp_path / "ev").exists()


def test_export_refuses_a_deleted_chunk_instead_of_writing_a_blank_image(pipe, tmp_path):
    prep = copy(pipe.prep, tmp_path / "prep")
    delete_chunk(prep, "item02")
    before = snapshot(prep)
    res = invoke("export", prep, "--format", "nifti", "--out", tmp_path / "x")
    refused_intact(res, prep, before, f"{prep}/main.zarr item item02", "chunk 0.0 is missing or damaged")
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.partial").exists()


def test_train_ae_refuses_a_deleted_chunk_of_its_data(pipe, tmp_path):
    prep = copy(pipe.prep, tmp_path / "prep")
    delete_chunk(prep, "item01")
    before = snapshot(prep)
    res = invoke("train-ae", "--data", prep, "--out", tmp_path / "ae", *TRAIN_AE)
    refused_intact(res, prep, before, f"{prep}/main.zarr item item01", "chunk 0.0 is missing or damaged")
    assert not (tmp_path / "ae").exists()


def test_train_ae_with_loader_workers_still_prints_one_sentence(pipe, tmp_path):
    prep = copy(pipe.prep, tmp_path / "prep")
    delete_chunk(prep, "item03")
    before = snapshot(prep)
    res = invoke("train-ae", "--data", prep, "--out", tmp_path / "ae", *TRAIN_AE, "--set", "data.num_workers=1")
    refused_intact(res, prep, before, f"{prep}/main.zarr item item03", "chunk 0.0 is missing or damaged")
    assert "worker" not in res.output


def test_encode_latents_refuses_a_deleted_chunk(pipe, tmp_path):
    prep = copy(pipe.prep, tmp_path / "prep")
    delete_chunk(prep, "item05")
    before = snapshot(prep)
    res = invoke("encode-latents", "--ae", pipe.ae, "--data", prep, "--out", tmp_path / "lat", "--device", "cpu")
    refused_intact(res, prep, before, f"{prep}/main.zarr item item05", "chunk 0.0 is missing or damaged")
    assert not (tmp_path / "lat").exists()


def test_export_decode_refuses_a_deleted_latent_shard(pipe, tmp_path):
    lat = copy(pipe.lat, tmp_path / "lat")
    shards = sorted((lat / "main.zarr" / "stacks").glob("*/data/c/0/0/0"))  # 2D latents are stacked
    assert len(shards) == 1 and not (lat / "main.zarr" / "items" / "item00").exists()
    shards[0].unlink()
    before = snapshot(lat)
    res = invoke("export", lat, "--decode", "--format", "nifti", "--out", tmp_path / "x", "--device", "cpu")
    refused_intact(res, lat, before, f"{lat}/main.zarr item item0", f"shard 0 of stack {shards[0].parents[4].name} "
                   "is missing or damaged", "re-run medgen encode-latents")
    assert not (tmp_path / "x").exists()


# ------------------------------------------------------------------------------ kinds of damage
def test_a_corrupted_chunk_is_named_not_a_codec_error(pipe, tmp_path):
    prep = copy(pipe.prep, tmp_path / "prep")
    corrupt_chunk(prep, "item01")
    before = snapshot(prep)
    res = invoke("export", prep, "--format", "nifti", "--out", tmp_path / "x")
    refused_intact(res, prep, before, f"{prep}/main.zarr item item01", "chunk 0.0 is missing or damaged")
    assert "blosc" not in res.output.lower()


def test_a_truncated_chunk_is_named_in_evaluate(pipe, tmp_path):
    prep = copy(pipe.prep, tmp_path / "prep")
    (item_dir(prep, "item05") / "c" / "0" / "0").write_bytes(b"\x02\x01")
    before = snapshot(prep)
    res = invoke("evaluate", "--ae", pipe.ae, "--data", prep, "--split", "val", "--out", tmp_path / "ev")
    refused_intact(res, prep, before, f"{prep}/main.zarr item item05", "chunk 0.0 is missing or damaged")


@pytest.mark.parametrize("content", [b"{\"zarr_format\": 3, \"node_ty", b"\x00\xff garbage", None])
def test_damaged_item_metadata_is_named(pipe, tmp_path, content):
    prep = copy(pipe.prep, tmp_path / "prep")
    meta = item_dir(prep, "item02") / "zarr.json"
    meta.unlink() if content is None else meta.write_bytes(content)
    before = snapshot(prep)
    res = invoke("export", prep, "--format", "nifti", "--out", tmp_path / "x")
    refused_intact(res, prep, before, f"{prep}/main.zarr item item02", "metadata (zarr.json)")
    assert not (tmp_path / "x").exists()


def test_damaged_item_metadata_is_named_in_encode_latents(pipe, tmp_path):
    prep = copy(pipe.prep, tmp_path / "prep")
    (item_dir(prep, "item04") / "zarr.json").write_text("[]")
    before = snapshot(prep)
    res = invoke("encode-latents", "--ae", pipe.ae, "--data", prep, "--out", tmp_path / "lat", "--device", "cpu")
    refused_intact(res, prep, before, f"{prep}/main.zarr item item04", "metadata (zarr.json) is damaged")


@pytest.mark.parametrize("which", ["zarr.json", "items/zarr.json"])
def test_damaged_group_metadata_is_named(pipe, tmp_path, which):
    prep = copy(pipe.prep, tmp_path / "prep")
    (prep / "main.zarr" / which).write_text("{\"zarr_format\": 3,")
    before = snapshot(prep)
    res = invoke("export", prep, "--format", "nifti", "--out", tmp_path / "x")
    refused_intact(res, prep, before, f"{prep}/main.zarr", "zarr.json", "damaged", "re-run medgen preprocess")


def test_a_deleted_group_metadata_is_damage_not_a_missing_store(pipe, tmp_path):
    lat = copy(pipe.lat, tmp_path / "lat")
    (lat / "main.zarr" / "zarr.json").unlink()
    before = snapshot(lat)
    res = invoke("export", lat, "--decode", "--format", "nifti", "--out", tmp_path / "x", "--device", "cpu")
    refused_intact(res, lat, before, f"{lat}/main.zarr", "metadata (zarr.json) is missing")


# ------------------------------------------------------------------------------ inspect --check
def test_check_passes_a_clean_artefact(pipe):
    before = snapshot(pipe.lat)
    res = invoke("inspect", pipe.lat, "--check")
    assert res.exit_code == 0, res.output
    assert "no damage found" in res.output and "6 item(s)" in res.output and "Traceback" not in res.output
    assert snapshot(pipe.lat) == before


@pytest.mark.parametrize("damage, item, phrase", [
    (delete_chunk, "item03", "chunk 0.0 is absent"),
    (corrupt_chunk, "item00", "chunk 0.0 does not decode"),
    (lambda a, i: (item_dir(a, i) / "zarr.json").write_text("{"), "item05", "metadata (zarr.json) is damaged"),
    (lambda a, i: (item_dir(a, i) / "zarr.json").unlink(), "item01", "metadata (zarr.json) is missing"),
])
def test_check_finds_each_kind_of_damage_and_exits_1_naming_the_item(pipe, tmp_path, damage, item, phrase):
    prep = copy(pipe.prep, tmp_path / "prep")
    damage(prep, item)
    before = snapshot(prep)
    res = invoke("inspect", prep, "--check")
    refused_intact(res, prep, before, f"main.zarr item {item}", phrase, "1 damaged item(s) or store(s) of 6 item(s)",
                   "re-run medgen preprocess")


def test_check_names_a_store_whose_group_metadata_is_damaged(pipe, tmp_path):
    prep = copy(pipe.prep, tmp_path / "prep")
    (prep / "main.zarr" / "zarr.json").write_text("not json")
    before = snapshot(prep)
    refused_intact(invoke("inspect", prep, "--check"), prep, before, "main.zarr", "the store's metadata (zarr.json) is damaged")


def test_check_lists_the_first_20_damaged_items_and_counts_the_rest(tmp_path):
    prep = make_prep(tmp_path / "prep", 2, n_train=23, n_val=0, size=4)
    for i in range(23):
        delete_chunk(prep, f"item{i:02d}")
    before = snapshot(prep)
    res = invoke("inspect", prep, "--check")
    refused_intact(res, prep, before, "23 damaged item(s)", "main.zarr item item19 (chunk 0.0 is absent)", "and 3 more")
    assert "item20" not in res.output
    with pytest.raises(StepFailed) as info:  # the step's own API: the full report rides on the exception
        inspect_step.run(prep, check=True)
    assert len(info.value.report["check"]["damaged"]) == 23


def test_inspect_without_check_shows_a_damaged_store_and_the_rest(pipe, tmp_path):
    prep = copy(pipe.prep, tmp_path / "prep")
    (item_dir(prep, "item02") / "zarr.json").write_text("{")
    res = invoke("inspect", prep)
    assert res.exit_code == 0 and "Traceback" not in res.output
    assert "item item02" in " ".join(res.output.split()) and "lineage" in res.output


def test_inspect_of_a_self_referencing_artefact_prints_a_bounded_lineage(pipe, tmp_path):
    ae = copy(pipe.ae, tmp_path / "ae")
    manifest = json.loads((ae / "manifest.json").read_text())
    manifest["inputs"].append({"role": "data", "path": str(ae), "kind": "autoencoder", "sha256": "0" * 64})
    (ae / "manifest.json").write_text(json.dumps(manifest))
    res = invoke("inspect", ae)
    assert res.exit_code == 0 and "Traceback" not in res.output
    assert "".join(f"(cycle: {ae} already shown)".split()) in "".join(res.output.split())  # rich wraps long paths
    assert len(res.output.splitlines()) < 60
    report = inspect_step.run(ae)
    assert np.all([c.get("cycle") for c in report["lineage"]["inputs"] if c["path"] == str(ae)])
