"""Stores on s3:// through zarr + fsspec, against moto's S3 server started on 127.0.0.1 in the test."""

from __future__ import annotations

import numpy as np
import pytest

from medgen_cli.meta import ImageMeta, IntensityMapping
from medgen_cli.io.store import Store
from tests.io.moto_helpers import moto_bucket

pytest.importorskip("s3fs", reason="s3fs is in the dev extra; install with pip install -e '.[dev]'")
pytest.importorskip("moto.server", reason="moto[server] is in the dev extra")


@pytest.fixture(scope="module")
def s3():
    with moto_bucket() as options:
        yield options


def test_store_round_trip_and_patch_dataset_on_s3(s3):
    from medgen_cli.data import ItemDataset, PatchDataset

    mapping = IntensityMapping(method="window", unit="HU", in_low=-1000, in_high=1000, out_low=-1, out_high=1, clip=True)
    rng = np.random.default_rng(0)
    url = "s3://medgen/prep/main.zarr"
    store = Store.create(url, storage_options=s3)
    arrays = {}
    for i, split in enumerate(["train", "train", "test"]):
        arr = rng.uniform(-1, 1, (20, 18, 12)).astype(np.float32)
        arrays[f"ct{i}"] = arr
        store.write(f"ct{i}", arr, ImageMeta(affine=np.diag([0.7, 0.7, 2.5, 1.0]), modality="CT", subject=f"s{i}",
                                             intensity=mapping), split=split, chunks=(8, 8, 8))
    again = Store.open(url, storage_options=s3)
    assert again.ids() == ["ct0", "ct1", "ct2"] and again.ids("test") == ["ct2"]
    arr, meta = again.read_item("ct1")
    np.testing.assert_allclose(arr, arrays["ct1"], atol=1e-3)
    assert meta.intensity == mapping and meta.spacing == pytest.approx((0.7, 0.7, 2.5))
    assert again.summary()["items"] == 3
    # the training datasets read straight from the bucket, patches by region
    items = ItemDataset(again, split="train")
    assert len(items) == 2 and tuple(items[0]["image"].shape) == (1, 20, 18, 12)
    patches = PatchDataset(again, "train", (8, 8, 8), seed=0)
    sample = patches[0]
    o = [int(v) for v in sample["origin"]]
    expected = arrays[sample["id"]][o[0]:o[0] + 8, o[1]:o[1] + 8, o[2]:o[2] + 8]
    np.testing.assert_allclose(sample["image"][0].numpy(), expected, atol=1e-3)


def test_stacked_items_on_s3(s3):
    """The stacked layout (issue 14) through fsspec: shards and segments are objects in the bucket, read by zarr."""
    from medgen_cli.data import ItemDataset

    rng = np.random.default_rng(1)
    url = "s3://medgen/lat/main.zarr"
    items = [(f"x{k:03d}", rng.uniform(-1, 1, (8, 8)).astype(np.float32), ImageMeta(subject=f"s{k % 3}"))
             for k in range(20)]
    Store.create(url, storage_options=s3).write_many(items, dtype="float32", split="train")
    again = Store.open(url, storage_options=s3)
    assert again.attrs["medgen_store"] == 2 and again.ids("train") == [i for i, _, _ in items]
    for (item_id, arr, _), got in zip(items, again.read_many([i for i, _, _ in items])):
        np.testing.assert_array_equal(got, arr)
    np.testing.assert_array_equal(again.read("x007", (slice(1, 3), slice(None))), items[7][1][1:3])
    assert again.check()["damaged"] == {} and again.summary()["items"] == 20
    batch = ItemDataset(again, split="train").__getitems__([3, 0, 19])
    assert [s["id"] for s in batch] == ["x003", "x000", "x019"]
    np.testing.assert_array_equal(batch[2]["image"][0].numpy(), items[19][1])
