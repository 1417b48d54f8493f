"""Label maps beside the images in the datasets: find the mask store of an image store, read an item's labels.

Preprocess writes the masks of store ``main`` into ``masks`` under the same item ids (see
:mod:`medgen_cli.io.masks`); `open_mask_store` finds it beside an image store and checks that every
item has a mask of its shape, `mask_tensor` reads one as ``(1, *spatial)`` int64.
"""

from __future__ import annotations

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
