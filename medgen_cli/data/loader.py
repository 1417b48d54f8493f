"""Reproducible, resumable, rank-aware data loading.

The order of an epoch is a function of ``(seed, epoch)`` only: a ``torch.Generator`` seeded with
``seed + epoch`` on one process, or ``torch.utils.data.distributed.DistributedSampler`` (the same
rule, then one shard per rank) under ``torchrun``. A resumed run therefore rebuilds the order of
the interrupted epoch and skips the batches it already trained on by slicing the index list
(``start_batch``), without loading them.

Per epoch, call :func:`set_epoch` on the loader: it sets the sampler's order and the dataset's
epoch (random patch positions). Workers are not persistent, so each epoch's workers get a fresh
copy of the dataset with the new epoch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sized

import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torch.utils.data.distributed import DistributedSampler

__all__ = ["ResumableSampler", "make_loader", "set_epoch"]


class ResumableSampler(Sampler[int]):
    """Sample indices of one rank's shard in a seeded per-epoch order, optionally skipping a prefix.

    Args:
        dataset: the dataset (only its length is used).
        batch_size: samples per batch, to turn ``start_batch`` into a number of samples.
        shuffle: random order (else ``0..n-1``, sharded).
        seed: base seed; epoch ``e`` uses ``seed + e`` as torch's DistributedSampler does.
        rank, world_size: this process and the number of processes (``world_size > 1`` shards
            with DistributedSampler).
        drop_last: under several processes, drop the tail so shards are equal (else pad by
            repeating samples, DistributedSampler's rule).
    """

    def __init__(self, dataset: Sized, batch_size: int, shuffle: bool = True, seed: int = 0, rank: int = 0,
                 world_size: int = 1, drop_last: bool = True):
        if world_size < 1:
            raise ValueError(f"world_size must be >= 1, got {world_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.n = len(dataset)
        self.batch_size, self.shuffle, self.seed = int(batch_size), bool(shuffle), int(seed)
        self.rank, self.world_size, self.drop_last = int(rank), int(world_size), bool(drop_last)
        self._dist = (
            DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed,
                               drop_last=drop_last)
            if world_size > 1 else None
        )
        self.epoch = 0
        self.start_batch = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Use the order of ``epoch`` and skip its first ``start_batch`` batches (this epoch only)."""
        if start_batch < 0:
            raise ValueError(f"start_batch must be >= 0, got {start_batch}")
        self.epoch = int(epoch)
        if self._dist is not None:
            self._dist.set_epoch(self.epoch)
        if start_batch * self.batch_size > self.shard_size:
            raise ValueError(
                f"start_batch {start_batch} is past the end of the epoch ({self.shard_size} samples per process "
                f"in batches of {self.batch_size})"
            )
        self.start_batch = int(start_batch)

    @property
    def shard_size(self) -> int:
        """Samples of this rank in a whole epoch."""
        return self.n if self._dist is None else self._dist.num_samples

    def order(self) -> list[int]:
        """The whole epoch's indices for this rank (before skipping)."""
        if self._dist is not None:
            return list(iter(self._dist))
        if not self.shuffle:
            return list(range(self.n))
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        return torch.randperm(self.n, generator=g).tolist()

    def __iter__(self) -> Iterator[int]:
        return iter(self.order()[self.start_batch * self.batch_size:])

    def __len__(self) -> int:
        return self.shard_size - self.start_batch * self.batch_size


def make_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
    drop_last: bool = True,
    *,
    epoch: int = 0,
    start_batch: int = 0,
    pin_memory: bool = False,
    multiprocessing_context: str | None = None,
) -> DataLoader:
    """A DataLoader whose order depends only on ``(seed, epoch)`` and this rank's shard.

    Args:
        dataset: any map-style dataset (``set_epoch(epoch)`` is called when it has one).
        batch_size: samples per batch on this process.
        shuffle: random order per epoch (training) or fixed order (validation).
        seed: base seed of the order.
        rank, world_size: this process and the number of processes (torchrun's RANK, WORLD_SIZE).
        num_workers: DataLoader worker processes.
        drop_last: drop the last incomplete batch (and, with several processes, the uneven tail).
        epoch: the epoch the loader starts in.
        start_batch: batches of that epoch to skip (resume mid-epoch); later epochs start at 0.
        pin_memory: pin batches for faster host-to-GPU copies.
        multiprocessing_context: worker start method ("fork", "spawn", "forkserver"; None: default).
    """
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    sampler = ResumableSampler(dataset, batch_size, shuffle=shuffle, seed=seed, rank=rank,
                               world_size=world_size, drop_last=drop_last)
    if sampler.shard_size == 0 or (drop_last and sampler.shard_size < batch_size):
        raise ValueError(
            f"{len(dataset)} samples over {world_size} process(es) give no batch of {batch_size}; "
            "lower batch_size or set drop_last=False"
        )
    loader = DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers, drop_last=drop_last,
        pin_memory=pin_memory, generator=torch.Generator().manual_seed(seed),
        multiprocessing_context=multiprocessing_context if num_workers > 0 else None,
    )
    set_epoch(loader, epoch, start_batch)
    return loader


def set_epoch(loader: DataLoader, epoch: int, start_batch: int = 0) -> None:
    """Point a loader from :func:`make_loader` (its sampler and dataset) at ``epoch``."""
    sampler = loader.sampler
    if not isinstance(sampler, ResumableSampler):
        raise ValueError(f"set_epoch needs a loader from make_loader, got a sampler {type(sampler).__name__}")
    sampler.set_epoch(epoch, start_batch)
    if hasattr(loader.dataset, "set_epoch"):
        loader.dataset.set_epoch(epoch)
