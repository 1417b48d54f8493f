"""Damaged stores fail by name (issue 11): a lost chunk is not a blank image, bad bytes are not a codec
error without context, and `Store.check` finds every kind of damage without false alarms."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import zarr
from zarr.storage import LocalStore

from medgen_cli.data import ItemDataset
from medgen_cli.errors import StepFailed
from medgen_cli.meta import ImageMeta
from medgen_cli.io.store import DamagedStore, Store


def chunk(store_dir, item, *coords):
    return store_dir.joinpath("items", item, "c", *map(str, coords))


@pytest.fixture
def store_dir(tmp_path):
    """A store inside a preprocessed artefact: 2D items a, b, zeros and a 3D item v of 2x2x1 chunks."""
    (tmp_path / "manifest.json").write_text(json.dumps({"kind": "preprocessed"}))
    path = tmp_path / "main.zarr"
    store = Store.create(path)
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        store.write(name, rng.normal(size=(8, 8)), ImageMeta(subject=name), dtype="float32")
    store.write("zeros", np.zeros((8, 8)), ImageMeta(), dtype="float32")  # equal to the fill value
    store.write("v", rng.normal(size=(8, 8, 4)), ImageMeta(), dtype="float32", chunks=(4, 4, 4))
    return path


def refused(call, *phrases):
    with pytest.raises(DamagedStore) as info:
        call()
    text = str(info.value)
    assert isinstance(info.value, StepFailed) and info.value.exit_code == 1
    assert "\n" not in text and "Traceback" not in text
    for phrase in phrases:
        assert phrase in text, text
    return text


def test_a_clean_store_reads_and_checks_clean_even_where_it_equals_the_fill_value(store_dir):
    assert chunk(store_dir, "zeros", 0, 0).is_file()  # every chunk is written, blank ones too
    store = Store.open(store_dir)
    np.testing.assert_array_equal(store.read("zeros"), np.zeros((8, 8)))
    report = store.check()
    assert report["damaged"] == {} and report["items"] == 4 and report["chunks"] == 3 + 4


def test_a_deleted_chunk_is_named_instead_of_read_as_blank(store_dir):
    chunk(store_dir, "a", 0, 0).unlink()
    store = Store.open(store_dir)
    text = refused(lambda: store.read("a"), str(store_dir), "item a", "chunk 0.0 is missing or damaged",
                   "re-run medgen preprocess")
    assert text.endswith(".")
    np.testing.assert_array_equal(store.read("b").shape, (8, 8))  # other items still read
    assert store.check()["damaged"] == {"a": "chunk 0.0 is absent"}


def test_a_region_read_checks_only_the_chunks_it_touches(store_dir):
    chunk(store_dir, "v", 1, 0, 0).unlink()
    store = Store.open(store_dir)
    assert store.read("v", (slice(0, 4), slice(0, 8), slice(0, 4))).shape == (4, 8, 4)
    refused(lambda: store.read("v", (slice(2, 6), slice(0, 2), slice(None))), "item v", "chunk 1.0.0")
    refused(lambda: store.read("v"), "chunk 1.0.0")


@pytest.mark.parametrize("damage", [b"", b"not blosc at all", "flip"])
def test_a_corrupted_chunk_names_store_item_and_chunk(store_dir, damage):
    path = chunk(store_dir, "v", 0, 1, 0)
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[16:40] = bytes(24)  # inside the compressed stream
    path.write_bytes(bytes(data) if damage == "flip" else damage)
    store = Store.open(store_dir)
    refused(lambda: store.read("v"), str(store_dir), "item v", "chunk 0.1.0 is missing or damaged")
    assert list(store.check()["damaged"]) == ["v"] and "chunk 0.1.0" in store.check()["damaged"]["v"]


@pytest.mark.parametrize("damage", ["garbage", "missing fields", "deleted"])
def test_damaged_item_metadata_is_named(store_dir, damage):
    meta = store_dir / "items" / "b" / "zarr.json"
    if damage == "deleted":
        meta.unlink()
    else:
        meta.write_text("{\"zarr_format\": 3, \"node_type\": \"array\"}" if damage == "missing fields" else "{garbage")
    store = Store.open(store_dir)
    refused(lambda: store.read("b"), str(store_dir), "item b", "metadata (zarr.json)")
    refused(store.ids, "item b", "metadata (zarr.json)")  # an item never silently drops out of a listing
    assert list(store.check()["damaged"]) == ["b"]


@pytest.mark.parametrize("which, damage", [("", "{garbage"), ("", None), ("items", "[1, 2")])
def test_damaged_group_metadata_is_named(store_dir, which, damage):
    meta = store_dir / which / "zarr.json"
    meta.unlink() if damage is None else meta.write_text(damage)
    refused(lambda: Store.open(store_dir), str(store_dir), "zarr.json", "re-run medgen preprocess")


def test_damaged_geometry_attributes_are_named(store_dir):
    Store.create(store_dir).set_attrs("a", affine="not a matrix")
    refused(lambda: Store.open(store_dir).meta("a"), "item a", "geometry attributes")


def test_a_writer_rewrites_an_item_whose_metadata_is_damaged(store_dir):
    (store_dir / "items" / "b" / "zarr.json").write_text("{garbage")
    store = Store.create(store_dir)
    assert store.ids() == ["a", "v", "zeros"] and not store.is_complete("b")  # resume redoes it
    store.write("b", np.ones((8, 8)), ImageMeta(), dtype="float32")
    assert Store.open(store_dir).read("b").sum() == 64


def test_items_written_before_chunk_records_keep_their_blank_chunks(tmp_path):
    """An item without ``all_chunks`` (medgen <= 0.1 wrote none) may omit blank chunks on purpose."""
    store = Store.create(tmp_path / "old.zarr")
    store.write("old", np.zeros((8, 8)), ImageMeta(), dtype="float32")
    arr = zarr.open_array(tmp_path / "old.zarr" / "items" / "old", mode="a")
    attrs = dict(arr.attrs)
    attrs.pop("all_chunks")
    arr.attrs.clear()
    arr.attrs.update(attrs)
    chunk(tmp_path / "old.zarr", "old", 0, 0).unlink()  # what write_empty_chunks=False left
    old = Store.open(tmp_path / "old.zarr")
    np.testing.assert_array_equal(old.read("old"), np.zeros((8, 8)))
    report = old.check()
    assert report["damaged"] == {} and report["unverified"] == 1


def test_a_damaged_item_read_in_a_loader_worker_is_still_one_sentence(store_dir):
    chunk(store_dir, "a", 0, 0).unlink()
    loader = torch.utils.data.DataLoader(ItemDataset(Store.open(store_dir), ids=["a", "b"]), num_workers=1)
    refused(lambda: next(iter(loader)), "item a", "chunk 0.0 is missing or damaged")


def test_writing_through_the_array_keeps_blank_chunks(store_dir):
    """``store.array(id)[...] = values`` (as some callers do) must not drop a chunk equal to the fill value."""
    Store.open(store_dir, mode="r+").array("a")[...] = 0
    assert chunk(store_dir, "a", 0, 0).is_file()
    np.testing.assert_array_equal(Store.open(store_dir).read("a"), np.zeros((8, 8)))


def test_only_chunks_that_read_as_blank_are_looked_up(store_dir, monkeypatch):
    """The cost of detecting lost chunks: one existence check per all-zero chunk read, none otherwise."""
    calls = []
    original = LocalStore.exists
    monkeypatch.setattr(LocalStore, "exists", lambda self, key: calls.append(key) or original(self, key))
    store = Store.open(store_dir)
    store.read("a"), store.read("v")
    assert calls == []
    store.read("zeros")
    assert calls == ["items/zeros/c/0/0"]
