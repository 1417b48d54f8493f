"""torch Datasets over medgen item stores: whole items, random patches and paired items (by subject or item id).

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

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..io.store import Store
from .masks import MaskOption, mask_tensor, open_mask_store

log = logging.getLogger(__name__)

__all__ = ["JOINS", "ItemDataset", "PatchDataset", "PairedDataset", "data_range", "open_mask_store", "open_store",
           "resolve_join"]

StoreLike = Store | str | Path


def open_store(store_or_path: StoreLike, storage_options: dict | None = None) -> Store:
    """A :class:`Store` as given, or opened read-only from a path or fsspec URL."""
    if isinstance(store_or_path, Store):
        return store_or_path
    if isinstance(store_or_path, (str, Path)):
        return Store.open(store_or_path, storage_options=storage_options)
    raise ValueError(f"expected a Store, a path or a URL, got {type(store_or_path).__name__}: {store_or_path!r}")


def _split_ids(store: Store, split: str | None, ids: Sequence[str] | None = None) -> list[str]:
    if ids is not None:
        missing = [i for i in ids if not store.is_complete(i)]
        if missing:
            raise ValueError(f"{store.path}: item(s) {missing[:5]} not found (or incomplete)")
        out = list(ids)
    else:
        out = store.ids(split)
    if not out:
        where = f" in split {split!r}" if split is not None else ""
        raise ValueError(f"{store.path} has no items{where}")
    return out


def _common_shape(store: Store, ids: Sequence[str]) -> tuple[int, ...]:
    """The shape shared by all ``ids`` (from array metadata, no data read)."""
    first = tuple(store.array(ids[0]).shape)
    for item_id in ids[1:]:
        shape = tuple(store.array(item_id).shape)
        if shape != first:
            raise ValueError(
                f"{store.path}: items differ in shape ({ids[0]!r} is {first}, {item_id!r} is {shape}); "
                "whole-item batches need one shape: preprocess with --fit/--shape (geometry.fit / "
                "geometry.shape), or train on patches (data.patch_size)"
            )
    return first


def _to_tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None]  # (1, *spatial)


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
        self.ids = _split_ids(self.store, split, ids)
        self.shape = _common_shape(self.store, self.ids)
        self.subjects = [str(s) for s in self.store.attr_values(self.ids, "subject", "")]
        self.masks = open_mask_store(self.store, masks, self.ids, storage_options)

    @property
    def spatial_dims(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item_id = self.ids[index]
        sample = {"image": _to_tensor(self.store.read(item_id)), "id": item_id, "subject": self.subjects[index]}
        if self.masks is not None:
            sample["mask"] = mask_tensor(self.masks, item_id)
        return sample

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        """The samples of a whole batch (the DataLoader asks for them at once): stacked items are read
        with one selection per stack group, one slice of each shard, instead of one read per item."""
        ids = [self.ids[i] for i in indices]
        samples = [{"image": _to_tensor(a), "id": i, "subject": self.subjects[k]}
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
        self.ids = _split_ids(self.store, split)
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
        sample = {"image": _to_tensor(data), "id": item_id, "subject": self.subjects[item],
                  "origin": torch.tensor(origin, dtype=torch.int64)}
        if self.masks is not None:
            labels = mask_tensor(self.masks, item_id, src)
            if tuple(labels.shape[1:]) != self.patch_size:
                padded = torch.zeros((1, *self.patch_size), dtype=torch.int64)  # label 0 outside the item
                padded[(slice(None), *dst)] = labels
                labels = padded
            sample["mask"] = labels
        return sample


def _view_order(store: Store, ids: Sequence[str]) -> list[str]:
    return sorted(ids, key=lambda i: (str(store.item_attrs(i).get("view", "")), i))


JOINS = ("auto", "item", "subject")


def resolve_join(target: Store, conditions: Sequence[Store], join: str = "auto") -> str:
    """The join of target items to condition items: ``item`` or ``subject``.

    ``item`` pairs target item k with the condition item of the same id (derived stores of one
    preprocess artefact, and their latents, share the ids of ``main``); ``subject`` pairs it with
    every item of its subject. ``auto`` is ``item`` when every target item id is in every
    condition store, else ``subject``.

    Raises:
        ValueError: ``join`` is ``item`` but a target id is missing from a condition store (the
            message names one), or ``join`` is not one of `JOINS`.
    """
    if join not in JOINS:
        raise ValueError(f"condition.join = {join!r} must be one of {', '.join(JOINS)}")
    if join == "subject":
        return join
    ids = target.ids()
    for store in conditions:
        present = set(store.ids())
        missing = [i for i in ids if i not in present]
        if missing and join == "item":
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise ValueError(
                f"condition.join = 'item' needs every item of {target.path} in {store.path}, but {missing[0]!r}{more} "
                "is missing; condition on a store derived in the same preprocess artefact, or set condition.join "
                "to subject"
            )
        if missing:
            return "subject"
    return "item"


class PairedDataset(Dataset):
    """Target items joined to the items of one or more condition stores, by subject or by item id.

    One sample per target item. With ``join="subject"`` its conditions are all items of the same
    subject in each condition store, stores in the given order, and within a store ordered by their
    ``view`` attribute then id (so DRR views ``_ap``, ``_lateral`` keep a fixed position); subjects
    missing from any condition store are dropped with a warning, and an error is raised if none
    pair. With ``join="item"`` its condition is the item of the same id in each condition store
    (a low-dose sequence k for the full-dose sequence k), read whatever its split.

    Each sample is ``{"image": (1, *spatial), "condition": [(1, *spatial_c), ...], "id",
    "subject", "condition_ids": [str, ...]}``, plus the target's ``"mask": (1, *spatial) int64``
    with ``masks``.

    Args:
        target_store: the store of the images to generate (Store, path or URL).
        condition_stores: stores of the conditioning images (Stores, paths or URLs).
        split: split to read from every store (None: all items).
        storage_options: fsspec options used when opening URLs.
        join: "subject", "item" or "auto" (see `resolve_join`).
        masks: also yield the target item's label map (see `open_mask_store`; default off).
    """

    def __init__(self, target_store: StoreLike, condition_stores: Sequence[StoreLike], split: str | None,
                 storage_options: dict | None = None, join: str = "subject", masks: MaskOption = False):
        if isinstance(condition_stores, (Store, str, Path)) or not condition_stores:
            raise ValueError(f"condition_stores must be a non-empty list of stores, got {condition_stores!r}")
        self.target = open_store(target_store, storage_options)
        self.conditions = [open_store(s, storage_options) for s in condition_stores]
        self.join = resolve_join(self.target, self.conditions, join)
        target_subjects = self.target.subjects(split)
        if not target_subjects:
            raise ValueError(f"{self.target.path} has no items" + (f" in split {split!r}" if split else ""))
        # (target id, subject, [condition ids per store])
        if self.join == "item":
            self.samples = [(i, subj, [[i] for _ in self.conditions])
                            for subj in sorted(target_subjects) for i in target_subjects[subj]]
            self._check_layout({t: lists for t, _, lists in self.samples})
        else:
            self.samples = self._join_subjects(target_subjects, split)
        self.shape = _common_shape(self.target, [t for t, _, _ in self.samples])
        self.masks = open_mask_store(self.target, masks, [t for t, _, _ in self.samples], storage_options)

    def _join_subjects(self, target_subjects: dict[str, list[str]], split: str | None) -> list[tuple[str, str, list[list[str]]]]:
        """Every target item with all items of its subject in each condition store."""
        cond_subjects = [s.subjects(split) for s in self.conditions]
        keep = sorted(target_subjects)
        for store, subjects in zip(self.conditions, cond_subjects):
            missing = [s for s in keep if s not in subjects]
            if missing:
                log.warning("%d of %d subjects have no item in condition store %s (split %r) and are dropped, e.g. %s",
                            len(missing), len(target_subjects), store.path, split, missing[:3])
            keep = [s for s in keep if s in subjects]
        if not keep:
            raise ValueError(
                f"no subject of {self.target.path} (split {split!r}) has items in every condition store "
                f"({', '.join(s.path for s in self.conditions)}); check the stores come from the same subjects"
            )
        per_subject: dict[str, list[list[str]]] = {
            subj: [_view_order(store, subjects[subj]) for store, subjects in zip(self.conditions, cond_subjects)]
            for subj in keep
        }
        self._check_layout(per_subject)
        return [(target_id, subj, per_subject[subj]) for subj in keep for target_id in target_subjects[subj]]

    def _check_layout(self, per_key: dict[str, list[list[str]]]) -> None:
        """Every subject (or item) needs the same number of conditions per store, of one shape per position."""
        ref_key, ref = next(iter(per_key.items()))
        for k, store in enumerate(self.conditions):
            for key, lists in per_key.items():
                if len(lists[k]) != len(ref[k]):
                    raise ValueError(
                        f"{store.path}: subject {key!r} has {len(lists[k])} condition item(s) but {ref_key!r} "
                        f"has {len(ref[k])}; batches need the same views for every subject"
                    )
            for pos in range(len(ref[k])):
                _common_shape(store, [lists[k][pos] for lists in per_key.values()])
        self.condition_shapes = [tuple(store.array(i).shape) for store, ids in zip(self.conditions, ref) for i in ids]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        target_id, subject, cond_ids = self.samples[index]
        conditions, names = [], []
        for store, ids in zip(self.conditions, cond_ids):
            for item_id in ids:
                conditions.append(_to_tensor(store.read(item_id)))
                names.append(item_id)
        sample = {"image": _to_tensor(self.target.read(target_id)), "condition": conditions, "id": target_id,
                  "subject": subject, "condition_ids": names}
        if self.masks is not None:
            sample["mask"] = mask_tensor(self.masks, target_id)
        return sample


def data_range(store_or_path: StoreLike, split: str | None = None, storage_options: dict | None = None) -> float:
    """Range of stored values of a split, for PSNR/SSIM on the true range.

    Taken from the items' intensity mapping (``meta.intensity.data_range``: 2.0 for a window
    mapped onto [-1, 1]); for unclipped mappings (z-score, identity) the observed max - min over
    the split (a full read of the split).

    Raises:
        ValueError: when the split is empty, or its items' mappings give different ranges (or mix
            clipped and unclipped mappings).
    """
    store = open_store(store_or_path, storage_options)
    ids = _split_ids(store, split)
    ranges = [(item_id, store.meta(item_id).intensity.data_range) for item_id in ids]
    first_id, value = ranges[0]
    for item_id, r in ranges[1:]:
        if (r is None) != (value is None) or (r is not None and not math.isclose(r, value, rel_tol=1e-6)):
            raise ValueError(
                f"{store.path}: items of split {split!r} have different intensity ranges ({first_id!r}: {value}, "
                f"{item_id!r}: {r}); preprocess them with one intensity mapping"
            )
    if value is not None:
        return float(value)
    lo, hi = np.inf, -np.inf
    for item_id in ids:
        arr = store.read(item_id)
        lo, hi = min(lo, float(arr.min())), max(hi, float(arr.max()))
    if not hi > lo:
        raise ValueError(f"{store.path}: split {split!r} is constant ({lo}); its data range is 0")
    return hi - lo
