"""Paired items: target items joined to the items of condition stores, by subject or by item id
(X-ray views and their CT, low-dose and full-dose, the derived stores of one preprocess artefact)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from ..io.store import Store
from .masks import MaskOption, mask_tensor, open_mask_store
from .stores import StoreLike, common_shape, open_store, to_tensor

log = logging.getLogger(__name__)

__all__ = ["JOINS", "PairedDataset", "resolve_join", "view_order"]


def view_order(store: Store, ids: Sequence[str]) -> list[str]:
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
        self.shape = common_shape(self.target, [t for t, _, _ in self.samples])
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
            subj: [view_order(store, subjects[subj]) for store, subjects in zip(self.conditions, cond_subjects)]
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
                common_shape(store, [lists[k][pos] for lists in per_key.values()])
        self.condition_shapes = [tuple(store.array(i).shape) for store, ids in zip(self.conditions, ref) for i in ids]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        target_id, subject, cond_ids = self.samples[index]
        conditions, names = [], []
        for store, ids in zip(self.conditions, cond_ids):
            for item_id in ids:
                conditions.append(to_tensor(store.read(item_id)))
                names.append(item_id)
        sample = {"image": to_tensor(self.target.read(target_id)), "condition": conditions, "id": target_id,
                  "subject": subject, "condition_ids": names}
        if self.masks is not None:
            sample["mask"] = mask_tensor(self.masks, target_id)
        return sample
