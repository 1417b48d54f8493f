"""make_loader: seeded order, rank shards, resuming mid-epoch, patch epochs."""

import pytest
import torch
from torch.utils.data import Dataset

from medgen_cli.data import PatchDataset, make_loader, set_epoch


class Indices(Dataset):
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return i


def flat(loader):
    return [int(i) for batch in loader for i in batch]


def test_seeded_order():
    ds = Indices(20)
    a = flat(make_loader(ds, 4, shuffle=True, seed=7))
    assert sorted(a) == list(range(20)) and a != list(range(20))
    assert flat(make_loader(ds, 4, shuffle=True, seed=7)) == a
    assert flat(make_loader(ds, 4, shuffle=True, seed=7, epoch=1)) != a
    assert flat(make_loader(ds, 4, shuffle=False, seed=7)) == list(range(20))
    loader = make_loader(ds, 4, shuffle=True, seed=7)
    set_epoch(loader, 1)
    assert flat(loader) == flat(make_loader(ds, 4, shuffle=True, seed=7, epoch=1))


def test_rank_shards_are_disjoint_and_cover():
    ds = Indices(16)
    shards = [flat(make_loader(ds, 2, shuffle=True, seed=3, rank=r, world_size=2)) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 8
    assert not set(shards[0]) & set(shards[1])
    assert sorted(shards[0] + shards[1]) == list(range(16))
    with pytest.raises(ValueError, match=r"rank must be in \[0, 2\), got 2"):
        make_loader(ds, 2, shuffle=True, seed=3, rank=2, world_size=2)


@pytest.mark.parametrize("world_size", [1, 2])
def test_start_batch_skips_to_the_tail(world_size):
    ds = Indices(22)
    full = list(make_loader(ds, 3, shuffle=True, seed=5, epoch=2, world_size=world_size))
    resumed = make_loader(ds, 3, shuffle=True, seed=5, epoch=2, world_size=world_size, start_batch=2)
    tail = list(resumed)
    assert len(resumed) == len(full) - 2 == len(tail)
    assert [t.tolist() for t in tail] == [t.tolist() for t in full[2:]]
    set_epoch(resumed, 3)  # the next epoch is whole again
    assert len(list(resumed)) == len(full)
    with pytest.raises(ValueError, match="past the end"):
        make_loader(ds, 3, shuffle=True, seed=5, start_batch=99)


def test_loader_errors():
    with pytest.raises(ValueError, match="no batch of 8"):
        make_loader(Indices(5), 8, shuffle=True, seed=0)
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        make_loader(Indices(5), 0, shuffle=True, seed=0)


def test_patch_epochs_follow_the_loader(make_store, ramp):
    store = make_store("main", {"a": (ramp((16, 16)), "s1", "train"), "b": (ramp((16, 16)), "s2", "train")})

    def origins(**kw):
        loader = make_loader(PatchDataset(store, "train", 4, samples_per_item=3, seed=1), 2, True, 0, **kw)
        return [tuple(o) for batch in loader for o in batch["origin"].tolist()]

    assert origins(epoch=1) == origins(epoch=1)
    assert origins(epoch=1) != origins(epoch=0)
    assert origins(epoch=1, start_batch=1) == origins(epoch=1)[2:]


def test_workers_read_the_store(make_store, ramp):
    store = make_store("main", {f"i{k}": (ramp((8, 8), k), f"s{k}", "train") for k in range(4)})
    ds = PatchDataset(store, "train", 4, seed=2)
    single = [b["image"] for b in make_loader(ds, 2, True, 0)]
    multi = [b["image"] for b in make_loader(ds, 2, True, 0, num_workers=2)]
    assert all(torch.equal(a, b) for a, b in zip(single, multi)) and len(multi) == 2
