"""The stacked layout (issue 14): items of one shape as rows of one sharded array, attributes in columns.

References: the per-item layout written through `Store.write` (same items, same API answers), and zarr
itself (it reads the shards medgen encodes; medgen reads shards zarr encodes).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr

from medgen_cli.artefacts import ArtefactWriter
from medgen_cli.data import ItemDataset
from medgen_cli.data.loader import make_loader
from medgen_cli.errors import StepFailed
from medgen_cli.io import stacked
from medgen_cli.meta import ImageMeta, IntensityMapping
from medgen_cli.io.store import DamagedStore, Store
from medgen_cli.io.store import store_path
from medgen_cli.steps import inspect as inspect_step

MAPPING = IntensityMapping(method="window", unit="HU", in_low=-1000, in_high=1000, out_low=-1, out_high=1, clip=True)


def make_items(n: int = 40, size: int = 8, seed: int = 0) -> list[tuple[str, np.ndarray, ImageMeta, str]]:
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        affine = np.diag([0.7, 0.7, 2.5, 1.0])
        affine[2, 3] = 2.5 * k
        meta = ImageMeta(affine=affine, modality="CT", subject=f"s{k % 4}", intensity=MAPPING,
                         attrs={"slice_index": k, **({"view": "ap"} if k % 3 == 0 else {})})
        out.append((f"ct{k // 10}_s{k % 10:04d}", rng.uniform(-1, 1, (size, size)).astype(np.float32), meta,
                    "val" if k % 4 == 3 else "train"))
    return out


@pytest.fixture
def pair(tmp_path, monkeypatch):
    """The same items in the per-item layout (old.zarr) and in the stacked one (the preprocessed artefact
    ``tmp_path/prep``'s main.zarr; shards of 16 rows)."""
    monkeypatch.setattr(stacked, "MAX_ROWS_PER_SHARD", 16)
    items = make_items()
    artefact = ArtefactWriter(tmp_path / "prep", "preprocessed", {})
    old, new = Store.create(tmp_path / "old.zarr"), Store.create(store_path(artefact.open()))
    for item_id, arr, meta, split in items:
        old.write(item_id, arr, meta, split=split, dtype="float32")
    writer = new.stack_writer()
    for item_id, arr, meta, split in items:
        writer.add(item_id, arr, meta, dtype="float32", split=split)
    writer.flush()
    artefact.commit({})
    return Store.open(tmp_path / "old.zarr"), Store.open(store_path(tmp_path / "prep")), items


def shard_files(path):
    return sorted(path.glob("stacks/*/data/c/*/0/0"))


def test_round_trip_equals_the_per_item_layout(pair):
    old, new, items = pair
    assert new.attrs["medgen_store"] == 2 and old.attrs["medgen_store"] == 1
    assert new.ids() == old.ids() and new.ids("val") == old.ids("val") and new.ids("train") == old.ids("train")
    assert new.subjects() == old.subjects() and new.subjects("val") == old.subjects("val")
    for item_id, arr, _, _ in items:
        assert new.item_attrs(item_id) == old.item_attrs(item_id)
        assert new.meta(item_id).to_attrs() == old.meta(item_id).to_attrs()
        np.testing.assert_array_equal(new.read(item_id), old.read(item_id))
        np.testing.assert_array_equal(new.read(item_id, (slice(2, 5), slice(None))), arr[2:5])
        assert new.array(item_id).shape == (8, 8) and new.array(item_id).dtype == np.float32
    ids = new.ids()[::-3]
    for a, b in zip(new.read_many(ids), old.read_many(ids)):
        np.testing.assert_array_equal(a, b)
    assert new.attr_values(ids, "view") == [old.item_attrs(i).get("view") for i in ids]
    keep = ("items", "subjects", "splits", "shapes", "dtypes", "modalities", "intensity", "spacing_min", "spacing_max")
    assert {k: new.summary()[k] for k in keep} == {k: old.summary()[k] for k in keep}
    # 40 items in shards of 16: 3 shard objects and 3 segments, not 80 objects
    assert len(shard_files(new.group.store.root)) == 3


def test_zarr_reads_the_shards_medgen_encodes_and_medgen_reads_what_zarr_encodes(pair, tmp_path, monkeypatch):
    _, new, items = pair
    assert len(new.ids()) == len(items)
    loc = new._stacks.locs[items[21][0]]
    data = zarr.open_array(str((tmp_path / "prep" / "main.zarr") / "stacks" / loc.segment.group / "data"), mode="r")
    np.testing.assert_array_equal(data[loc.row], items[21][1])  # zarr's own decoder
    monkeypatch.setattr(stacked, "make_codec", lambda arr: None)  # let zarr encode the shards (and decode them)
    store = Store.create(tmp_path / "z.zarr")
    store.write_many([(i, a, m) for i, a, m, _ in items], dtype="float32", split="train")
    monkeypatch.undo()
    again = Store.open(tmp_path / "z.zarr")
    assert again.ids() == new.ids() and again._stacks._local(loc.segment.group) is not None  # medgen's reader
    for (item_id, arr, _, _), got in zip(items, again.read_many([i for i, _, _, _ in items])):
        np.testing.assert_array_equal(got, arr)


def test_an_interrupted_batch_is_not_complete_and_a_resume_completes_it(tmp_path, monkeypatch):
    items = make_items(30)
    store = Store.create(tmp_path / "main.zarr")
    store.write_many([(i, a, m) for i, a, m, _ in items[:10]], dtype="float32")

    def crash(*args):  # after the data of the batch, before its completion record
        raise KeyboardInterrupt

    monkeypatch.setattr(stacked.Segment, "encode", crash)
    with pytest.raises(KeyboardInterrupt):
        Store.create(tmp_path / "main.zarr").write_many([(i, a, m) for i, a, m, _ in items[10:]], dtype="float32")
    monkeypatch.undo()
    assert len(shard_files(tmp_path / "main.zarr")) == 2  # the data of the interrupted batch is there...
    resumed = Store.create(tmp_path / "main.zarr")
    assert resumed.ids() == [i for i, _, _, _ in items[:10]]  # ...but none of its items counts as complete
    todo = [(i, a, m) for i, a, m, _ in items if not resumed.is_complete(i)]
    resumed.write_many(todo, dtype="float32")
    final = Store.open(tmp_path / "main.zarr")
    assert final.ids() == sorted(i for i, _, _, _ in items) and final.check()["damaged"] == {}
    for item_id, arr, _, _ in items:
        np.testing.assert_array_equal(final.read(item_id), arr)
    assert len(shard_files(tmp_path / "main.zarr")) == 3  # the orphan shard was not rewritten


def test_an_item_written_again_reads_its_latest_version(tmp_path):
    items = make_items(5)
    store = Store.create(tmp_path / "main.zarr")
    store.write_many([(i, a, m) for i, a, m, _ in items], dtype="float32", split="train")
    store.write_many([(items[2][0], items[2][1] + 1, items[2][2])], dtype="float32", split="val")
    again = Store.open(tmp_path / "main.zarr")
    assert len(again.ids()) == 5 and again.ids("val") == [items[2][0]]
    np.testing.assert_array_equal(again.read(items[2][0]), items[2][1] + 1)


def test_a_deleted_shard_is_named_by_reads_and_by_inspect_check(pair, tmp_path):
    _, new, items = pair
    lost = shard_files(tmp_path / "prep" / "main.zarr")[1]
    lost.unlink()  # rows 16..31
    store = Store.open(tmp_path / "prep" / "main.zarr")
    victim = next(i for i in store.ids() if 16 <= store._stacks.locs[i].row < 32)
    with pytest.raises(DamagedStore, match=rf"main.zarr item {victim}: shard 1 of stack .* is missing or damaged"):
        store.read(victim)
    with pytest.raises(DamagedStore, match="is missing or damaged"):
        store.read_many(store.ids())
    report = store.check()
    assert len(report["damaged"]) == 16 and all("shard 1 of stack" in r and "absent" in r for r in report["damaged"].values())
    with pytest.raises(StepFailed, match="16 damaged item"):
        inspect_step.run(tmp_path / "prep", check=True)


@pytest.mark.parametrize("where", ["chunk", "index"])
def test_a_corrupted_shard_fails_its_checksum_and_is_reported(pair, tmp_path, where):
    path = shard_files(tmp_path / "prep" / "main.zarr")[0]
    data = bytearray(path.read_bytes())
    data[40 if where == "chunk" else len(data) - 30] ^= 0xFF
    path.write_bytes(bytes(data))
    store = Store.open(tmp_path / "prep" / "main.zarr")
    first = next(i for i in store.ids() if store._stacks.locs[i].row == 0)
    if where == "chunk":
        with pytest.raises(DamagedStore, match=rf"item {first}: its row is missing or damaged \(checksum mismatch\)"):
            store.read(first)
    bad = store.check()["damaged"]
    assert first in bad and ("checksum mismatch" in bad[first] or "does not decode" in bad[first])
    with pytest.raises(StepFailed, match="damaged item"):
        inspect_step.run(tmp_path / "prep", check=True)


def test_an_unreadable_segment_is_reported_and_never_overwritten(pair, tmp_path):
    seg = sorted((tmp_path / "prep" / "main.zarr").glob("stacks/*/segments/*.json"))[0]
    seg.write_text("{not json")
    store = Store.create(tmp_path / "prep" / "main.zarr")
    assert len(store.ids()) == 40 - 16
    assert any("segment is unreadable" in r for r in store.check()["damaged"].values())
    store.write_many([(i, a, m) for i, a, m, _ in make_items(3, seed=5)], dtype="float32")
    assert seg.read_text() == "{not json"


def test_old_stores_read_and_newer_formats_are_refused_by_name(tmp_path):
    old = Store.create(tmp_path / "old.zarr")
    old.write("a", np.ones((4, 4)), ImageMeta(), dtype="float32")
    assert Store.open(tmp_path / "old.zarr").attrs["medgen_store"] == 1 and Store.open(tmp_path / "old.zarr").ids() == ["a"]
    zarr.open_group(str(tmp_path / "old.zarr"), mode="r+").attrs["medgen_store"] = 3
    with pytest.raises(ValueError, match="has store format 3, newer than this medgen reads"):
        Store.open(tmp_path / "old.zarr")


@pytest.mark.parametrize("workers", [0, 1])
def test_item_dataset_reads_whole_batches_from_the_stack(pair, workers, monkeypatch):
    old, new, _ = pair
    calls = []
    original = Store.read_many
    monkeypatch.setattr(Store, "read_many", lambda self, ids, *a: calls.append(len(ids)) or original(self, ids, *a))
    loader = make_loader(ItemDataset(new, split="train"), batch_size=8, shuffle=True, seed=3, num_workers=workers)
    reference = make_loader(ItemDataset(old, split="train"), batch_size=8, shuffle=True, seed=3)
    for got, want in zip(loader, reference):
        assert got["id"] == want["id"] and got["subject"] == want["subject"]
        torch.testing.assert_close(got["image"], want["image"], rtol=0, atol=0)
    if workers == 0:
        assert calls and set(calls) == {8}  # one read per batch, not per item


def test_patches_of_stacked_items_are_regions_of_the_item(pair):
    from medgen_cli.data import PatchDataset

    _, new, items = pair
    arrays = {i: a for i, a, _, _ in items}
    patches = PatchDataset(new, "train", 4, samples_per_item=2, seed=1)
    for k in (0, 5, 17):
        sample = patches[k]
        o = [int(v) for v in sample["origin"]]
        np.testing.assert_array_equal(sample["image"][0].numpy(), arrays[sample["id"]][o[0]:o[0] + 4, o[1]:o[1] + 4])


def test_a_stack_with_damaged_metadata_is_reported_by_check(pair, tmp_path):
    meta = next((tmp_path / "prep" / "main.zarr").glob("stacks/*/data/zarr.json"))
    meta.write_text("{broken")
    store = Store.open(tmp_path / "prep" / "main.zarr")
    assert store.ids() == []
    report = store.check()
    assert any("metadata is missing or damaged" in r for r in report["damaged"].values())
    with pytest.raises(StepFailed, match="damaged"):
        inspect_step.run(tmp_path / "prep", check=True)
