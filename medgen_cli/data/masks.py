"""Label maps beside the images in the datasets: find the mask store of an image store, read an item's labels.

Preprocess writes the masks of store ``main`` into ``masks`` under the same item ids (see
:mod:`medgen_cli.io.masks`); `open_mask_store` finds it beside an image store and checks that every
item has a mask of its shape, `mask_tensor` reads one as ``(1, *spatial)`` int64.

Masks as the condition of a latent prior: `label_values` (the values present in some items),
`label_fractions` (one-hot label maps averaged over each latent voxel: the fraction of its image voxels
with each label, so a structure smaller than a latent voxel is not lost) and `MaskChannels` (those
fractions for one mask item, refusing a label value it was not built with).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..io.masks import mask_store_name
from ..io.store import DamagedStore, Store

MaskOption = bool | Store | str | Path | None


def open_mask_store(image_store: Store, masks: MaskOption, ids: Sequence[str],
                    storage_options: dict | None = None) -> Store | None:
    """The mask store holding a label map for every item of ``ids`` (None when ``masks`` is off).

    Args:
        image_store: the store of the images.
        masks: False/None (no masks), True (the mask store paired with ``image_store`` in its artefact,
            e.g. ``masks`` beside ``main``), or a mask store (Store, path or URL).
        ids: the image items that need a mask, of the same shape as theirs.
        storage_options: fsspec options used when opening a URL.

    Raises:
        ValueError: no paired mask store exists, or an item has no mask or one of another shape.
    """
    if masks is None or masks is False:
        return None
    if masks is True:
        base, _, leaf = image_store.path.rstrip("/").rpartition("/")
        name = leaf[: -len(".zarr")] if leaf.endswith(".zarr") else leaf
        paired = mask_store_name(name)
        if paired is None:
            raise ValueError(f"{image_store.path} holds projections (DRRs), which have no masks")
        path = f"{base}/{paired}.zarr" if base else f"{paired}.zarr"
        try:
            store = Store.open(path, storage_options=storage_options)
        except DamagedStore:
            raise
        except ValueError:
            raise ValueError(f"{image_store.path} has no paired mask store ({path}); preprocess with --masks "
                             "(masks.source) to store a label map per item") from None
    else:
        store = masks if isinstance(masks, Store) else Store.open(masks, storage_options=storage_options)
    for item_id in ids:
        if not store.is_complete(item_id):
            raise ValueError(f"{store.path} has no mask for item {item_id!r} of {image_store.path}")
        shape, want = tuple(store.array(item_id).shape), tuple(image_store.array(item_id).shape)
        if shape != want:
            raise ValueError(f"{store.path}: the mask of {item_id!r} is {shape} but its image is {want}")
    return store


def mask_tensor(store: Store, item_id: str, region: tuple[slice, ...] | None = None) -> torch.Tensor:
    """(1, *spatial) int64 labels of an item (or of a region of it)."""
    return torch.from_numpy(store.read(item_id, region=region, dtype=np.int64))[None]


# ------------------------------------------------------------------------- masks as prior conditions
def label_values(store: Store, ids: Sequence[str]) -> list[int]:
    """The label values present in the masks of ``ids``, sorted (from the items' ``labels`` attribute,
    written by preprocess; a mask without it is read)."""
    values: set[int] = set()
    for item_id in ids:
        present = store.item_attrs(item_id).get("labels")
        if present is None:
            present = np.unique(store.read(item_id, dtype=np.int64)).tolist()
        values.update(int(v) for v in present)
    return sorted(values)


def label_fractions(labels: torch.Tensor, values: Sequence[int], factor: Sequence[int]) -> torch.Tensor:
    """Label maps -> per-label fractions on the latent grid: one-hot, then averaged over each latent voxel.

    Latent voxel ``v`` covers image voxels ``f*v .. f*v + f - 1`` on every axis (as in
    `medgen_cli.data.latents.latent_meta`), so channel ``k`` of latent voxel ``v`` is the fraction of
    those voxels labelled ``values[k]``: a structure smaller than a latent voxel keeps a non-zero value.

    Args:
        labels: (B, *spatial) integer label maps.
        values: the label values, one channel each (in this order).
        factor: image voxels per latent voxel along each spatial axis.

    Returns:
        (B, len(values), *grid) float32 with ``grid = spatial // factor``.

    Raises:
        ValueError: a spatial size is not a multiple of its factor, or a label is not among ``values``.
    """
    spatial, factor = tuple(labels.shape[1:]), tuple(int(f) for f in factor)
    if len(factor) != len(spatial) or any(s % f for s, f in zip(spatial, factor)):
        raise ValueError(f"a {list(spatial)} label map does not divide into latent voxels of {list(factor)} image voxels")
    unseen = sorted(set(torch.unique(labels).tolist()) - {int(v) for v in values})
    if unseen:
        raise ValueError(f"label value(s) {unseen} are not among the labels {list(values)}")
    grid = [s // f for s, f in zip(spatial, factor)]
    split = [n for g, f in zip(grid, factor) for n in (g, f)]  # (B, g0, f0, g1, f1, ...)
    within = tuple(range(2, 1 + 2 * len(grid), 2))
    # one label at a time: a boolean map of the image's size, never a one-hot (B, L, *spatial) float array
    per_label = [(labels == int(v)).reshape(labels.shape[0], *split).sum(dim=within, dtype=torch.float32)
                 for v in values]
    return torch.stack(per_label, dim=1) / math.prod(factor)


class MaskChannels:
    """The label-fraction channels of mask items, on a prior's latent grid (`label_fractions`).

    Args:
        store: the mask store.
        values: the label values, one channel each (recorded in the prior's ``model.json``).
        factor: image voxels per latent voxel along each spatial axis.
    """

    def __init__(self, store: Store, values: Sequence[int], factor: Sequence[int]):
        if not values:
            raise ValueError(f"{store.path}: no label values to condition on")
        self.store, self.values, self.factor = store, [int(v) for v in values], [int(f) for f in factor]

    @property
    def channels(self) -> int:
        return len(self.values)

    def __call__(self, item_id: str) -> torch.Tensor:
        """(L, *grid) label fractions of one mask item (a ValueError names the item when it does not fit)."""
        try:
            return label_fractions(mask_tensor(self.store, item_id), self.values, self.factor)[0]
        except ValueError as err:
            raise ValueError(f"the mask {item_id!r} of {self.store.path}: {err}") from None
