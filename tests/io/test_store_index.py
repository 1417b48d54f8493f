"""The store's item index: one key listing per Store, so completion checks and resume are linear (issue 11).

Before the index, ``Store.is_complete`` listed every key of the group on each call, so a resume over
1,044 items listed the store 1,044 times (8.7 min against 26 s fresh). These tests count the listings
the zarr store actually performs (wrapping ``LocalStore.list_dir`` / ``list_prefix`` / ``list``).
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from zarr.storage import LocalStore

from medgen_cli.data import ItemDataset
from medgen_cli.data.latents import LatentsDataset
from medgen_cli.meta import ImageMeta
from medgen_cli.io.store import Store

N_ITEMS = 1000
LEFT = 100


@pytest.fixture
def listings(monkeypatch):
    """Count the key listings of every local zarr store: ``listings["n"]``."""
    count = {"n": 0}
    for name in ("list_dir", "list_prefix", "list"):
        original = getattr(LocalStore, name)

        def counted(self, *args, _original=original, **kwargs):
            count["n"] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(LocalStore, name, counted)
    return count


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """A store of 1,000 tiny items, the last 100 left incomplete (an interrupted run)."""
    path = tmp_path_factory.mktemp("big") / "main.zarr"
    store = Store.create(path)
    for i in range(N_ITEMS):
        store.write(f"i{i:04d}", np.full((2, 2), i % 7), ImageMeta(subject=f"s{i // 10:03d}"), dtype="int16",
                    split="train" if i % 5 else "val")
    for i in range(N_ITEMS - LEFT, N_ITEMS):
        store.set_attrs(f"i{i:04d}", complete=False)
    return path


def test_resume_lists_the_store_once_over_1000_items(big, listings, tmp_path):
    shutil.copytree(big, tmp_path / "main.zarr")
    listings["n"] = 0
    store = Store.create(tmp_path / "main.zarr")  # the writer of a resumed run
    todo = [f"i{i:04d}" for i in range(N_ITEMS) if not store.is_complete(f"i{i:04d}")]
    assert todo == [f"i{i:04d}" for i in range(N_ITEMS - LEFT, N_ITEMS)]
    assert all(i in store for i in todo) and "nope" not in store
    assert store.complete_ids() == {f"i{i:04d}" for i in range(N_ITEMS - LEFT)}
    assert listings["n"] == 1  # (one per call before: 1,000 + listings)

    for item_id in todo:  # resuming keeps the index current without listing again
        store.write(item_id, np.ones((2, 2)), ImageMeta(), dtype="int16")
        assert store.is_complete(item_id)
    assert len(store.ids()) == N_ITEMS and listings["n"] == 1


def test_readers_and_datasets_list_a_store_a_bounded_number_of_times(big, listings):
    store = Store.open(big)
    ids = store.ids()
    assert len(ids) == N_ITEMS - LEFT and len(store.ids("val")) == 180
    assert len(store.subjects()) == 90 and all(store.is_complete(i) for i in ids)
    attrs = [store.item_attrs(i)["split"] for i in ids]
    assert attrs.count("val") == 180
    ItemDataset(store, ids=ids)  # checks every id is complete
    LatentsDataset(store, "train", levels={"top": store})  # checks every id in the other level
    assert listings["n"] == 1


def test_a_new_store_object_sees_items_written_by_another(tmp_path):
    writer = Store.create(tmp_path / "s.zarr")
    writer.write("a", np.zeros((2, 2)), ImageMeta())
    reader = Store.open(tmp_path / "s.zarr")
    assert reader.ids() == ["a"]
    writer.write("b", np.zeros((2, 2)), ImageMeta())
    assert Store.open(tmp_path / "s.zarr").ids() == ["a", "b"]
    assert reader.ids() == ["a"]  # an index is a snapshot of its Store object ...
    reader.refresh()
    assert reader.ids() == ["a", "b"]  # ... until it is refreshed


def test_reading_one_item_does_not_list_the_store(big, listings):
    store = Store.open(big)
    np.testing.assert_array_equal(store.read("i0003"), np.full((2, 2), 3.0))
    assert store.meta("i0003").subject == "s000" and listings["n"] == 0


def test_create_survives_another_process_creating_the_same_store(tmp_path, monkeypatch):
    """Two preprocess workers may create one store at the same moment; the loser opens the winner's."""
    import zarr

    import medgen_cli.io.store as store_mod

    real = zarr.open_group
    calls = []

    def racing(path, **kw):
        calls.append(path)
        if len(calls) == 1:  # the other process wins the race: it creates the group, we see ContainsGroupError
            Store.create(path, name="main")
            raise zarr.errors.ContainsGroupError("A group exists in store")
        return real(path, **kw)

    monkeypatch.setattr(store_mod.zarr, "open_group", racing)
    s = Store.create(tmp_path / "main.zarr", name="main")
    assert len(calls) == 3  # the lost attempt, the winner's own open, the retry
    monkeypatch.setattr(store_mod.zarr, "open_group", real)
    assert Store.open(tmp_path / "main.zarr").ids() == [] and s.path.endswith("main.zarr")
