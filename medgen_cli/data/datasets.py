"""torch Datasets over medgen item stores: whole items and random patches (paired items: ``paired.py``;
opening stores, split ids, data range: ``stores.py``).

Every dataset returns dicts of tensors with a channel axis, ``image: (1, *spatial)`` float32,
reading through :class:`~medgen_cli.io.store.Store`, so local paths and fsspec URLs both work.
With ``masks=True`` (off by default) a sample also holds ``mask: (1, *spatial)`` int64, the label
map of the same item id from the mask store preprocess paired with the image store (``masks`` for
``main``; see :mod:`medgen_cli.io.masks`), or from a mask store given explicitly; a patch reads the
same region of the mask (padding is label 0).
Randomness never comes from global state: a patch is a function of ``(seed, epoch, index)``, and
the loader's order a function of ``(seed, epoch)``, so a resumed run sees the same data as an
uninterrupted one (see :mod:`medgen_cli.data.loader`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .masks import MaskOption, mask_tensor, open_mask_store
from .paired import JOINS, PairedDataset, resolve_join
from .stores import StoreLike, common_shape, data_range, open_store, split_ids, to_tensor

__all__ = ["JOINS", "ItemDataset", "PatchDataset", "PairedDataset", "StoreLike", "data_range", "open_mask_store",
           "open_store", "resolve_join"]


class ItemDataset(Dataset):
    """Whole items of a store, all of one shape.

    Each sample is ``{"image": (1, *spatial) float32, "id": str, "subject": str}``, plus
    ``"mask": (1, *spatial) int64`` with ``masks``.

    Args:
        store_or_path: a :class:`Store`, or a store path / fsspec URL.
        split: only items of this split (None: all items).
        ids: explicit item ids instead of a split.
        storage_options: fsspec options used when opening a URL.
        masks: also yield each item's label map (see `open_mask_store`; default off).
    """

    def __init__(self, store_or_path: StoreLike, split: str | None = None, ids: Sequence[str] | None = None,
                 storage_options: dict | None = None, masks: MaskOption = False):
        self.store = open_store(store_or_path, storage_options)
        self.ids = split_ids(self.store, split, ids)
        self.shape = common_shape(self.store, self.ids)
        self.subjects = [str(s) for s in self.store.attr_values(self.ids, "subject", "")]
        self.masks = open_mask_store(self.store, masks, self.ids, storage_options)

    @property
    def spatial_dims(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item_id = self.ids[index]
        sample = {"image": to_tensor(self.store.read(item_id)), "id": item_id, "subject": self.subjects[index]}
        if self.masks is not None:
            sample["mask"] = mask_tensor(self.masks, item_id)
        return sample

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        """The samples of a whole batch (the DataLoader asks for them at once): stacked items are read
        with one selection per stack group, one slice of each shard, instead of one read per item."""
        ids = [self.ids[i] for i in indices]
        samples = [{"image": to_tensor(a), "id": i, "subject": self.subjects[k]}
                   for k, i, a in zip(indices, ids, self.store.read_many(ids))]
        if self.masks is not None:
            for sample in samples:
                sample["mask"] = mask_tensor(self.masks, sample["id"])
        return samples


class PatchDataset(Dataset):
    """Random fixed-size patches, reading only the patch region of each item.

    Sample ``index`` is patch ``index % samples_per_item`` of item ``index // samples_per_item``;
    its origin is drawn from ``(seed, epoch, index)`` alone, so call :meth:`set_epoch` each epoch
    (``loader.set_epoch`` does) and a resumed run reproduces the same patches. An item smaller
    than the patch along an axis is placed at a random offset inside the patch and the rest is
    padded with the item's background value (origins are then negative).

    Each sample is ``{"image": (1, *patch_size), "id", "subject", "origin": int64 (spatial_dims,)}``
    where ``origin`` is the patch's first voxel in item coordinates, plus ``"mask": (1, *patch_size)
    int64`` (the same region of the item's label map, padded with label 0) with ``masks``.

    Args:
        store_or_path: a :class:`Store`, or a store path / fsspec URL.
        split: split to sample from (None: all items).
        patch_size: patch shape; one int applies to every axis.
        samples_per_item: patches drawn from each item per epoch.
        seed: base seed of the patch positions.
        pad_value: value of padded voxels; None uses the item's background: the lower stored end of
            a clipped intensity mapping, else the item's minimum (read once, only when padding).
        storage_options: fsspec options used when opening a URL.
        masks: also yield the patch of each item's label map (see `open_mask_store`; default off).
    """

    def __init__(self, store_or_path: StoreLike, split: str | None, patch_size: int | Sequence[int],
                 samples_per_item: int = 1, seed: int = 0, pad_value: float | None = None,
                 storage_options: dict | None = None, masks: MaskOption = False):
        self.store = open_store(store_or_path, storage_options)
        self.ids = split_ids(self.store, split)
        self.shapes = [tuple(self.store.array(i).shape) for i in self.ids]
        ranks = {len(s) for s in self.shapes}
        if len(ranks) != 1:
            raise ValueError(
                f"{self.store.path}: items of split {split!r} mix ranks {sorted(ranks)}; patches need one rank"
            )
        ndim = ranks.pop()
        size = (patch_size,) * ndim if isinstance(patch_size, int) else tuple(int(p) for p in patch_size)
        if len(size) == 1:
            size = size * ndim
        if len(size) != ndim or any(p < 1 for p in size):
            raise ValueError(
                f"patch_size must be one positive int or {ndim} of them for {ndim}D items, got {patch_size!r}"
            )
        if samples_per_item < 1:
            raise ValueError(f"samples_per_item must be >= 1, got {samples_per_item}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.patch_size = size
        self.samples_per_item = int(samples_per_item)
        self.seed = int(seed)
        self.epoch = 0
        self.pad_value = pad_value
        self.subjects = [str(self.store.item_attrs(i).get("subject", "")) for i in self.ids]
        self._background: dict[str, float] = {}
        self.masks = open_mask_store(self.store, masks, self.ids, storage_options)

    @property
    def spatial_dims(self) -> int:
        return len(self.patch_size)

    def set_epoch(self, epoch: int) -> None:
        """Select the patch positions of ``epoch`` (call before iterating; workers copy it)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.ids) * self.samples_per_item

    def origin(self, index: int) -> tuple[int, ...]:
        """Patch origin of sample ``index`` in the current epoch (may be negative when padding)."""
        shape = self.shapes[index // self.samples_per_item]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        # one formula for both cases: [0, s - p] when the item is larger, [s - p, 0] when smaller
        return tuple(int(rng.integers(min(0, s - p), max(0, s - p) + 1)) for s, p in zip(shape, self.patch_size))

    def background(self, item_id: str) -> float:
        """Value used to pad ``item_id`` (see ``pad_value``)."""
        if self.pad_value is not None:
            return float(self.pad_value)
        if item_id not in self._background:
            attrs = self.store.item_attrs(item_id)
            mapping = self.store.meta(item_id).intensity
            if "background" in attrs:
                value = float(attrs["background"])
            elif mapping.clip:
                value = float(min(mapping.out_low, mapping.out_high))
            else:  # unbounded (z-score, identity): the true minimum; one full read per item and process
                value = float(self.store.read(item_id).min())
            self._background[item_id] = value
        return self._background[item_id]

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} patches")
        item = index // self.samples_per_item
        item_id, shape = self.ids[item], self.shapes[item]
        origin = self.origin(index)
        src = tuple(slice(max(o, 0), min(o + p, s)) for o, p, s in zip(origin, self.patch_size, shape))
        data = self.store.read(item_id, region=src)
        dst = tuple(slice(r.start - o, r.stop - o) for r, o in zip(src, origin))
        if data.shape != self.patch_size:
            patch = np.full(self.patch_size, self.background(item_id), dtype=np.float32)
            patch[dst] = data
            data = patch
        sample = {"image": to_tensor(data), "id": item_id, "subject": self.subjects[item],
                  "origin": torch.tensor(origin, dtype=torch.int64)}
        if self.masks is not None:
            labels = mask_tensor(self.masks, item_id, src)
            if tuple(labels.shape[1:]) != self.patch_size:
                padded = torch.zeros((1, *self.patch_size), dtype=torch.int64)  # label 0 outside the item
                padded[(slice(None), *dst)] = labels
                labels = padded
            sample["mask"] = labels
        return sample
