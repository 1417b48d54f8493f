"""Nearest training items of samples (the memorisation check over a whole split, a chunk at a
time) and the pairing of conditional samples with their target items."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..errors import UsageError
from ..io.store import Store
from .distribution import memorisation_check
from .features import Progress

MEMORISATION_CHUNK = 64  # training items held in memory at once by the nearest-item search


def nearest_training(samples: torch.Tensor, store: Store, train_ids: Sequence[str], data_range: float,
                     threshold: float, progress: Progress | None = None) -> tuple[list[str], np.ndarray, np.ndarray]:
    """For every sample the most similar training item (SSIM, ``memorisation_check``) and a flag.

    The training items are read ``MEMORISATION_CHUNK`` at a time, so memory stays bounded for any
    split size; each chunk is searched by ``memorisation_check`` and the best match kept.

    Args:
        samples: (N, 1, *spatial) stored values.
        store: the store of the training items.
        train_ids: the training items.
        data_range: ``L`` of SSIM.
        threshold: SSIM above which a sample is flagged.
        progress: ``progress(done, total, text)`` over training items.

    Returns:
        (nearest training item id per sample, its SSIM (N,), flagged (N,) bool).
    """
    n = samples.shape[0]
    best = np.full(n, -np.inf)
    nearest = [""] * n
    for start in range(0, len(train_ids), MEMORISATION_CHUNK):
        ids = list(train_ids[start:start + MEMORISATION_CHUNK])
        arrays = [store.read(i) for i in ids]
        for item_id, arr in zip(ids, arrays):
            if arr.shape != tuple(samples.shape[2:]):
                raise UsageError(f"training item {item_id} has shape {list(arr.shape)} but the samples "
                                 f"{list(samples.shape[2:])}; the memorisation check compares equal shapes")
        result = memorisation_check(samples, torch.from_numpy(np.stack(arrays))[:, None], data_range, threshold)
        for k in np.flatnonzero(result.similarity > best):
            best[k], nearest[k] = result.similarity[k], ids[int(result.nearest[k])]
        if progress:
            progress(start + len(ids), len(train_ids), "memorisation")
    return nearest, best, best > threshold


def pair_with_targets(samples: Store, sample_ids: Sequence[str], target: Store, split: str | None,
                      where: str) -> list[tuple[str, str, str]]:
    """(sample id, subject, target item id) for every conditional sample.

    A sample of a prior joined by item names its ``condition_item``: its target is the item of that
    id (derived stores share the ids of ``main``). Otherwise its target is the one item of its
    ``condition_subject``.

    Args:
        samples: the samples store; each item has a ``condition_subject`` attribute (and
            ``condition_item`` when drawn from a prior joined by item).
        sample_ids: the samples to pair.
        target: the ground-truth store.
        split: only target items of this split (None: every split).
        where: the target artefact, named in error messages.
    """
    by_subject = target.subjects(split)
    in_split = f" (split {split})" if split else ""
    items = {i for ids in by_subject.values() for i in ids}
    pairs = []
    for sample_id in sample_ids:
        attrs = samples.item_attrs(sample_id)
        subject, item = attrs.get("condition_subject"), attrs.get("condition_item")
        if not subject and not item:
            raise UsageError(f"sample {sample_id} has no condition_subject attribute: the samples are unconditional; "
                             "evaluate them with --data instead of --target")
        if item:
            if item not in items:
                raise UsageError(f"condition item {item} of sample {sample_id} has no item of the same id in {where}{in_split}; "
                                 "give the preprocessed artefact whose store was encoded as the prior's condition")
            pairs.append((sample_id, str(subject or ""), item))
            continue
        found = by_subject.get(subject, [])
        if not found:
            raise UsageError(f"subject {subject} of sample {sample_id} has no item in {where}{in_split}")
        if len(found) > 1:
            raise UsageError(f"subject {subject} has {len(found)} items in {where}{in_split}; conditional "
                             "evaluation needs one target item per subject (choose a store or split with one)")
        pairs.append((sample_id, subject, found[0]))
    return pairs
