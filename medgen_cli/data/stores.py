"""Opening the stores a dataset reads, and facts about their items: ids of a split, a common shape, the
data range; item values as tensors with a channel axis. Shared by the datasets of `medgen_cli.data`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..io.store import Store

__all__ = ["StoreLike", "common_shape", "data_range", "open_store", "split_ids", "to_tensor"]

StoreLike = Store | str | Path


def open_store(store_or_path: StoreLike, storage_options: dict | None = None) -> Store:
    """A :class:`Store` as given, or opened read-only from a path or fsspec URL."""
    if isinstance(store_or_path, Store):
        return store_or_path
    if isinstance(store_or_path, (str, Path)):
        return Store.open(store_or_path, storage_options=storage_options)
    raise ValueError(f"expected a Store, a path or a URL, got {type(store_or_path).__name__}: {store_or_path!r}")


def split_ids(store: Store, split: str | None, ids: Sequence[str] | None = None) -> list[str]:
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


def common_shape(store: Store, ids: Sequence[str]) -> tuple[int, ...]:
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


def to_tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None]  # (1, *spatial)


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
    ids = split_ids(store, split)
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
