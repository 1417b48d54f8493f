"""`LatentsDataset.__getitems__` (what a DataLoader asks for a batch) gives exactly the samples `__getitem__` gives
one by one: stacked 2D codes and per-item float latents, a second level, condition items in store order, labels;
and `ContinuousLatentsDataset` passes the batch read through."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from medgen_cli.data.latents import ContinuousLatentsDataset, LatentCodec, LatentsDataset
from medgen_cli.io.store import Store
from medgen_cli.meta import ImageMeta


def _codes(tmp_path, name: str, stacked: bool, seed: int, prefix: str = "i", views: int = 1) -> Store:
    """12 ``views`` items of 4x4 int16 codes, two per subject, stacked or one array each."""
    rng = np.random.default_rng(seed)
    store = Store.create(tmp_path / f"{name}.zarr")
    writer = store.stack_writer() if stacked else None
    for k in range(12 * views):
        item_id, array = f"{prefix}{k:02d}", rng.integers(0, 32, (4, 4)).astype(np.int16)
        meta, attrs = ImageMeta(subject=f"s{k // (2 * views)}"), {"split": "train" if k < 8 * views else "val",
                                                                  "label": "ab"[k % 2]}
        if writer is not None:
            writer.add(item_id, array, meta, dtype="int16", **attrs)
        else:
            store.write(item_id, array, meta, dtype="int16", **attrs)
    if writer is not None:
        writer.flush()
    return store


def _same(a, b) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], list):
            assert len(a[key]) == len(b[key]) and all(torch.equal(x, y) for x, y in zip(a[key], b[key]))
        elif isinstance(a[key], torch.Tensor):
            assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key])
        else:
            assert a[key] == b[key]


@pytest.mark.parametrize("stacked", [True, False])
def test_a_batch_read_equals_item_reads(tmp_path, stacked):
    main = _codes(tmp_path, "main", stacked, 0)
    top = _codes(tmp_path, "top", stacked, 1)
    cond = _codes(tmp_path, "cond", not stacked, 2, prefix="c")
    ds = LatentsDataset(main, None, levels={"top": top}, condition_stores=[cond], label_attr="label",
                        classes=["a", "b"], join="subject")
    assert len(ds) > 4
    indices = [3, 0, len(ds) - 1, 2]
    batch = ds.__getitems__(indices)
    assert [s["id"] for s in batch] == [ds.samples[i][0] for i in indices]
    for index, sample in zip(indices, batch):
        _same(sample, ds[index])
        assert sample["codes"].dtype == torch.int64 and "condition" in sample and "label" in sample
    assert all(len(s["condition"]) == 2 for s in batch)  # a subject's two condition items, handed out in order


def test_float_latents_and_the_continuous_wrapper(tmp_path):
    rng = np.random.default_rng(3)
    store = Store.create(tmp_path / "kl.zarr")
    store.write_many([(f"i{k}", rng.normal(size=(3, 4, 4)).astype(np.float32), ImageMeta(subject=f"s{k}"))
                      for k in range(6)], dtype="float32", split="train")
    base = LatentsDataset(store, "train")
    wrapped = ContinuousLatentsDataset(base, LatentCodec(None, 0.5))
    indices = [5, 1, 2]
    for index, sample in zip(indices, wrapped.__getitems__(indices)):
        _same(sample, wrapped[index])
        assert sample["x0"].dtype == torch.float32
    # a DataLoader uses __getitems__ and collates as before
    (batch,) = list(DataLoader(wrapped, batch_size=6, shuffle=False))
    expected = torch.stack([wrapped[i]["x0"] for i in range(6)])
    assert torch.equal(batch["x0"], expected)


def test_a_lost_shard_is_named_by_batch_reads_as_by_item_reads(tmp_path):
    """A damaged latents store fails a batch read with the same one-sentence DamagedStore as an item read."""
    from medgen_cli.io.store import DamagedStore

    from tests.io.test_stacked_store import shard_files

    _codes(tmp_path, "main", True, 0)
    (shard,) = shard_files(tmp_path / "main.zarr")
    shard.unlink()
    ds = LatentsDataset(Store.open(tmp_path / "main.zarr"), "train")
    with pytest.raises(DamagedStore, match="main.zarr.*is missing or damaged"):
        ds[0]
    with pytest.raises(DamagedStore, match="main.zarr.*is missing or damaged"):
        ds.__getitems__([0, 1])
