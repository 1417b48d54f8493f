"""Where masks live in an artefact: which mask store pairs with which image store, and their labels.

Preprocess writes the label masks of store ``main`` into the store ``masks`` under the same item ids
(``lowdose`` lies on main's grid, so ``masks`` pairs with it too); a derived store on another grid
(``downsampleF``) gets its own ``masks_downsampleF``; DRRs (projections) have no mask. Mask items
are int16 label arrays with the same shape and affine as their image item, and record ``labels``
(the values present) and ``label_counts`` (``{label: voxels}``) in their attributes.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

MASK_STORE = "masks"
SAME_GRID_AS_MAIN = ("main", "lowdose")  # image stores whose items lie on main's grid
NO_MASK_STORES = ("drr",)


def mask_store_name(store: str) -> str | None:
    """The mask store paired with image store ``store`` (None for DRRs, which have no mask)."""
    if store in NO_MASK_STORES:
        return None
    return MASK_STORE if store in SAME_GRID_AS_MAIN else f"{MASK_STORE}_{store}"


def is_mask_store(store: str) -> bool:
    """Whether a store name is one of the mask stores (``masks``, ``masks_<derived>``)."""
    return store == MASK_STORE or store.startswith(MASK_STORE + "_")


def label_summary(store) -> dict[str, Any]:
    """``{"items", "labels": {label: voxels}, "items_per_label": {label: items}}`` of a mask store
    (a ``medgen_cli.io.store.Store``), from its items' attributes alone (no voxel is read)."""
    voxels: Counter = Counter()
    items: Counter = Counter()
    ids = store.ids()
    for item_id in ids:
        counts = store.item_attrs(item_id).get("label_counts") or {}
        for label, n in counts.items():
            voxels[int(label)] += int(n)
            items[int(label)] += 1
    return {"items": len(ids), "labels": {str(k): voxels[k] for k in sorted(voxels)},
            "items_per_label": {str(k): items[k] for k in sorted(items)}}
