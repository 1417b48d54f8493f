"""ItemDataset, PatchDataset, PairedDataset and data_range over tiny synthetic stores."""

import logging

import numpy as np
import pytest
import torch

from medgen_cli.data import ItemDataset, PairedDataset, PatchDataset, data_range
from medgen_cli.meta import ImageMeta, IntensityMapping
from medgen_cli.io.store import Store

ZSCORE = IntensityMapping(method="zscore", in_low=0.0, in_high=1.0, out_low=0.0, out_high=1.0, clip=False)


@pytest.mark.parametrize("shape", [(8, 6), (6, 5, 4)])
def test_item_dataset_shapes(make_store, ramp, shape):
    store = make_store("main", {
        "a": (ramp(shape), "s1", "train"), "b": (ramp(shape, 1.0), "s2", "train"), "c": (ramp(shape), "s3", "val"),
    })
    ds = ItemDataset(store.path, split="train")  # opened from a path
    assert len(ds) == 2 and ds.spatial_dims == len(shape)
    sample = ds[1]
    assert sample["image"].shape == (1, *shape) and sample["image"].dtype == torch.float32
    assert (sample["id"], sample["subject"]) == ("b", "s2")
    np.testing.assert_array_equal(sample["image"][0].numpy(), ramp(shape, 1.0))
    assert [ItemDataset(store, ids=["c"])[0]["id"]] == ["c"]


def test_item_dataset_errors(make_store, ramp):
    store = make_store("main", {"a": (ramp((8, 8)), "s1", "train"), "b": (ramp((8, 6)), "s2", "train")})
    with pytest.raises(ValueError, match=r"'a' is \(8, 8\), 'b' is \(8, 6\).*--fit/--shape"):
        ItemDataset(store, split="train")
    with pytest.raises(ValueError, match="no items in split 'test'"):
        ItemDataset(store, split="test")
    with pytest.raises(ValueError, match="not found"):
        ItemDataset(store, ids=["zz"])


@pytest.mark.parametrize("shape,patch", [((12, 10), (4, 6)), ((10, 9, 8), (4, 4, 4))])
def test_patch_reads_only_the_region(make_store, ramp, monkeypatch, shape, patch):
    store = make_store("main", {"a": (ramp(shape), "s1", "train"), "b": (ramp(shape, 5.0), "s2", "train")})
    full = {i: store.read(i) for i in store.ids()}
    regions = []
    real_read = Store.read

    def spy(self, item_id, region=None):
        regions.append(region)
        return real_read(self, item_id, region)

    monkeypatch.setattr(Store, "read", spy)
    ds = PatchDataset(store, "train", patch, samples_per_item=3, seed=1)
    assert len(ds) == 6
    for idx in range(len(ds)):
        s = ds[idx]
        origin = tuple(s["origin"].tolist())
        assert s["image"].shape == (1, *patch) and s["id"] == ("a" if idx < 3 else "b")
        want = full[s["id"]][tuple(slice(o, o + p) for o, p in zip(origin, patch))]
        np.testing.assert_array_equal(s["image"][0].numpy(), want)
    assert len(regions) == len(ds) and all(r is not None for r in regions)
    assert all(tuple(sl.stop - sl.start for sl in r) == patch for r in regions)


def test_patch_determinism(make_store, ramp):
    store = make_store("main", {"a": (ramp((32, 32)), "s1", "train")})
    ds = PatchDataset(store, "train", 4, samples_per_item=4, seed=3)
    first = [ds.origin(i) for i in range(4)]
    assert len(set(first)) > 1  # patches of one item differ
    again = PatchDataset(store, "train", 4, samples_per_item=4, seed=3)
    assert [again.origin(i) for i in range(4)] == first
    assert torch.equal(again[2]["image"], ds[2]["image"])
    ds.set_epoch(1)
    assert [ds.origin(i) for i in range(4)] != first
    ds.set_epoch(0)
    assert [ds.origin(i) for i in range(4)] == first
    other = PatchDataset(store, "train", 4, samples_per_item=4, seed=4)
    assert [other.origin(i) for i in range(4)] != first


def test_patch_pads_small_items(make_store, ramp):
    arr = ramp((3, 10))
    store = make_store("main", {"a": (arr, "s1", "train")})
    ds = PatchDataset(store, "train", (6, 4), samples_per_item=5, seed=0)
    for idx in range(len(ds)):
        s = ds[idx]
        (oi, oj), img = s["origin"].tolist(), s["image"][0].numpy()
        assert -3 <= oi <= 0 and 0 <= oj <= 6
        np.testing.assert_array_equal(img[-oi:-oi + 3], arr[:, oj:oj + 4])
        pad = np.delete(img, np.s_[-oi:-oi + 3], axis=0)
        assert pad.shape == (3, 4) and np.all(pad == -1.0)  # the window's out_low


def test_patch_pads_unclipped_with_minimum(make_store, ramp):
    arr = ramp((4, 4), offset=2.0)
    store = make_store("main", {"a": (arr, "s1", "train")}, mapping=ZSCORE)
    img = PatchDataset(store, "train", (6, 6))[0]["image"][0].numpy()
    assert img.min() == pytest.approx(2.0) and (img == arr.min()).sum() == 36 - 16 + 1
    assert PatchDataset(store, "train", (6, 6), pad_value=-5.0)[0]["image"].min() == -5.0


def test_patch_errors(make_store, ramp):
    store = make_store("main", {"a": (ramp((4, 4)), "s1", "train")})
    with pytest.raises(ValueError, match=r"patch_size.*\(4, 4, 4\)"):
        PatchDataset(store, "train", (4, 4, 4))
    with pytest.raises(ValueError, match="samples_per_item must be >= 1, got 0"):
        PatchDataset(store, "train", 2, samples_per_item=0)


def test_paired_by_subject(make_store, ramp, caplog):
    target = make_store("main", {
        f"ct{i}": (ramp((6, 6, 6), i), f"s{i}", "train") for i in range(4)
    } | {"ctv": (ramp((6, 6, 6)), "sv", "val")})
    drr_items = {}
    for i in (0, 1, 3):  # subject s2 has no DRR
        # ids that sort against the view order, to check the view attribute wins
        drr_items[f"s{i}_a"] = (ramp((6, 6), 10 + i), f"s{i}", "train", {"view": "lateral"})
        drr_items[f"s{i}_b"] = (ramp((6, 6), 20 + i), f"s{i}", "train", {"view": "ap"})
    drr = make_store("drr", drr_items)
    low = make_store("lowdose", {f"low{i}": (ramp((6, 6, 6), 30 + i), f"s{i}", "train") for i in range(4)})
    with caplog.at_level(logging.WARNING, logger="medgen_cli.data.datasets"):
        ds = PairedDataset(target, [drr.path, low], "train")
    assert "1 of 4 subjects" in caplog.text
    assert len(ds) == 3 and [s for _, s, _ in ds.samples] == ["s0", "s1", "s3"]
    sample = ds[2]
    assert sample["subject"] == "s3" and sample["id"] == "ct3"
    assert sample["condition_ids"] == ["s3_b", "s3_a", "low3"]  # ap before lateral, then the next store
    assert [c.shape for c in sample["condition"]] == [(1, 6, 6), (1, 6, 6), (1, 6, 6, 6)]
    np.testing.assert_array_equal(sample["condition"][0][0].numpy(), ramp((6, 6), 23))
    np.testing.assert_array_equal(sample["image"][0].numpy(), ramp((6, 6, 6), 3))
    batch = torch.utils.data.default_collate([ds[0], ds[1]])
    assert batch["image"].shape == (2, 1, 6, 6, 6) and batch["condition"][1].shape == (2, 1, 6, 6)


def test_paired_errors(make_store, ramp):
    target = make_store("main", {"ct0": (ramp((4, 4)), "s0", "train"), "ct1": (ramp((4, 4)), "s1", "train")})
    other = make_store("drr", {"x0": (ramp((4, 4)), "q0", "train")})
    with pytest.raises(ValueError, match="no subject"):
        PairedDataset(target, [other], "train")
    uneven = make_store("uneven", {
        "x0": (ramp((4, 4)), "s0", "train"), "y0": (ramp((4, 4)), "s0", "train"), "x1": (ramp((4, 4)), "s1", "train"),
    })
    with pytest.raises(ValueError, match="same views"):
        PairedDataset(target, [uneven], "train")
    with pytest.raises(ValueError, match="non-empty list"):
        PairedDataset(target, [], "train")


def _sequences(make_store, name, offset, subjects=2, per_subject=3, split=lambda s: "train"):
    """Several items per subject (``s<k>_t<j>``), each marked by its index in the store's values."""
    items = {f"s{k}_t{j}": (np.full((4, 4, 2), offset + 10 * k + j, np.float32), f"s{k}", split(k))
             for k in range(subjects) for j in range(per_subject)}
    return make_store(name, items)


def test_auto_join_is_item_when_ids_match_else_subject(make_store):
    from medgen_cli.data.paired import resolve_join

    main = _sequences(make_store, "main", 0)
    low = _sequences(make_store, "lowdose", 100)
    ref = make_store("ref", {f"r{k}": (np.zeros((4, 4, 2), np.float32), f"s{k}", "train") for k in range(2)})
    assert resolve_join(main, [low]) == "item" and resolve_join(main, [low], "subject") == "subject"
    assert resolve_join(main, [ref]) == "subject" and resolve_join(main, [low, ref]) == "subject"
    with pytest.raises(ValueError, match=r"condition.join = 'item' needs every item .* but 's0_t0' \(and 5 more\) is missing"):
        resolve_join(main, [ref], "item")
    with pytest.raises(ValueError, match="must be one of auto, item, subject"):
        resolve_join(main, [low], "view")


def test_paired_by_item_takes_the_item_of_the_same_id(make_store):
    main = _sequences(make_store, "main", 0, subjects=3, split=lambda k: "val" if k == 2 else "train")
    low = _sequences(make_store, "lowdose", 100, subjects=3, split=lambda k: "test")  # the split does not matter
    ds = PairedDataset(main, [low], "train", join="auto")
    assert ds.join == "item" and len(ds) == 6 and ds.condition_shapes == [(4, 4, 2)]
    for k in range(len(ds)):
        sample = ds[k]
        assert sample["condition_ids"] == [sample["id"]]
        assert float(sample["condition"][0].mean()) == float(sample["image"].mean()) + 100
    by_subject = PairedDataset(main, [_sequences(make_store, "low_train", 100, subjects=3)], "train", join="subject")
    assert by_subject.join == "subject" and len(by_subject[0]["condition_ids"]) == 3  # every item of the subject


def test_data_range(make_store, ramp):
    store = make_store("main", {"a": (ramp((4, 4)), "s1", "train"), "b": (ramp((4, 4)), "s2", "train")})
    assert data_range(store, "train") == 2.0  # window -> [-1, 1]
    z = make_store("z", {"a": (ramp((4, 4)), "s1", "train"), "b": (ramp((4, 4), 1.0), "s2", "train")}, mapping=ZSCORE)
    assert data_range(z.path, "train") == pytest.approx(1.015)
    mixed = make_store("mixed", {"a": (ramp((4, 4)), "s1", "train")})
    narrow = IntensityMapping(method="window", in_low=0, in_high=1, out_low=0, out_high=1, clip=True)
    Store.create(mixed.path).write("b", ramp((4, 4)), ImageMeta(subject="s2", intensity=narrow), split="train")
    with pytest.raises(ValueError, match=r"different intensity ranges \('a': 2, 'b': 1\)"):
        data_range(mixed.path, "train")


def test_fsspec_url(tmp_path, ramp):
    url = f"memory://{tmp_path.name}/main.zarr"  # an fsspec URL, read through zarr's FsspecStore
    store = Store.create(url)
    store.write("a", ramp((8, 8)), ImageMeta(subject="s1"), dtype="float32", split="train")
    assert ItemDataset(url, split="train")[0]["image"].shape == (1, 8, 8)
    patch = PatchDataset(url, "train", 4, seed=0)[0]
    (oi, oj) = patch["origin"].tolist()
    np.testing.assert_array_equal(patch["image"][0].numpy(), ramp((8, 8))[oi:oi + 4, oj:oj + 4])
