"""Preprocess in slices mode writes the stacked layout (issue 14): the same items, ids, attributes,
splits and subjects as the per-item layout, from one process or from workers, with derived stores and masks."""

from __future__ import annotations

import numpy as np
import pytest

from medgen_cli.io.store import Store, store_path
from medgen_cli.steps import _preprocess_source
from tests.steps.test_preprocess import cli, make_cts


def _stores(artefact):
    return {p.stem: Store.open(p) for p in sorted(artefact.glob("*.zarr"))}


def _same(new, old):
    assert new.ids() == old.ids() and new.subjects() == old.subjects()
    for split in ("train", "val", "test"):
        assert new.ids(split) == old.ids(split)
    for item_id in old.ids():
        assert new.item_attrs(item_id) == old.item_attrs(item_id)
        np.testing.assert_array_equal(new.read(item_id, dtype=None), old.read(item_id, dtype=None))


@pytest.mark.parametrize("workers", ["1", "2"])
def test_slices_are_stacked_and_equal_the_per_item_layout(tmp_path, monkeypatch, workers):
    make_cts(tmp_path / "raw", 3)
    args = ["--mode", "slices", "--set", "derive.outputs=[lowdose]", "--set", f"runtime.workers={workers}",
            "--split", "0.34,0.33,0.33"]
    res = cli("preprocess", tmp_path / "raw", "--out", tmp_path / "new", *args)
    assert res.exit_code == 0, res.output
    monkeypatch.setattr(_preprocess_source, "STACKED_MODES", ())  # the per-item layout, as before issue 14
    res = cli("preprocess", tmp_path / "raw", "--out", tmp_path / "old", "--set", "runtime.workers=1", *args[:-4], *args[-2:])
    assert res.exit_code == 0, res.output
    new, old = _stores(tmp_path / "new"), _stores(tmp_path / "old")
    assert set(new) == set(old) == {"main", "lowdose"}
    for name in new:
        assert new[name].attrs["medgen_store"] == 2 and old[name].attrs["medgen_store"] == 1
        assert not list((tmp_path / "new" / f"{name}.zarr" / "items").glob("*/zarr.json"))  # no per-item arrays
        _same(new[name], old[name])
    # one shard object per input and store, instead of two objects per slice
    shards = list((tmp_path / "new" / "main.zarr").glob("stacks/*/data/c/*/0/0"))
    assert len(shards) == 3 < len(new["main"].ids())
    res = cli("inspect", tmp_path / "new", "--check")
    assert res.exit_code == 0, res.output


def test_sharded_runs_write_their_own_stack_groups(tmp_path):
    make_cts(tmp_path / "raw", 2)
    for shard in ("0/2", "1/2"):
        res = cli("preprocess", tmp_path / "raw", "--out", tmp_path / "prep", "--mode", "slices", "--shard", shard)
        assert res.exit_code == 0, res.output
    groups = sorted(p.name for p in (tmp_path / "prep" / "main.zarr" / "stacks").iterdir() if p.is_dir())
    assert [g.split("-")[-1] for g in groups] == ["0of2", "1of2"]
    store = Store.open(store_path(tmp_path / "prep"))
    assert {i.split("_s")[0] for i in store.ids()} == {"ct00", "ct01"}
