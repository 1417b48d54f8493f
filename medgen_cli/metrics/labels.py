"""Per-label intensity statistics: for every label value of a mask, the statistics of the values it
covers (mean, standard deviation, 5th/50th/95th percentiles, voxel and item counts), pooled over
many images and streamed so that memory stays bounded, and the comparison of two such tables (real
against generated: the difference of their means). Used by ``medgen evaluate`` for the samples of a
mask-conditioned prior (``steps.evaluate_masks``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

PERCENTILES = (5, 50, 95)
PERCENTILE_SAMPLE = 1_000_000  # values per label kept for the percentiles (mean and std use every value)


class _LabelValues:
    """One label's values, streamed: exact count, mean and std, and a uniform random sample without
    replacement of at most ``cap`` values for the percentiles (each value gets a random key; the ``cap``
    smallest keys are kept), so memory stays bounded however many volumes are pooled."""

    def __init__(self, cap: int, rng: np.random.Generator):
        self.cap, self.rng = cap, rng
        self.n, self.total, self.squares, self.items = 0, 0.0, 0.0, 0
        self.kept, self.keys = np.empty(0), np.empty(0)

    def add(self, x: np.ndarray) -> None:
        self.n += x.size
        self.total += float(x.sum())
        self.squares += float(np.square(x).sum())
        self.items += 1
        self.kept = np.concatenate([self.kept, x])
        self.keys = np.concatenate([self.keys, self.rng.random(x.size)])
        if self.kept.size > self.cap:
            keep = np.argpartition(self.keys, self.cap)[: self.cap]
            self.kept, self.keys = self.kept[keep], self.keys[keep]

    def stats(self) -> dict[str, Any]:
        mean = self.total / self.n
        std = float(np.sqrt(max(self.squares / self.n - mean * mean, 0.0)))
        p = np.percentile(self.kept, PERCENTILES)
        return {"mean": mean, "std": std, **{f"p{q}": float(v) for q, v in zip(PERCENTILES, p)},
                "voxels": self.n, "items": self.items, "percentiles_from": int(self.kept.size)}


def label_stats(pairs: Iterable[tuple[np.ndarray, np.ndarray]], cap: int = PERCENTILE_SAMPLE,
                seed: int = 0) -> dict[int, dict[str, Any]]:
    """``{label: {mean, std, p5, p50, p95, voxels, items, percentiles_from}}`` of the values each label covers,
    pooled over ``(values, labels)`` pairs of equal shapes (values in the units wanted, e.g. HU). Mean and std
    use every value; the percentiles are exact up to ``cap`` values per label, beyond that those of a uniform
    random sample of ``cap`` of them (``percentiles_from``; seeded, so reruns agree)."""
    rng = np.random.default_rng(seed)
    pooled: dict[int, _LabelValues] = {}
    for values, labels in pairs:
        values, labels = np.asarray(values, np.float64), np.asarray(labels)
        if values.shape != labels.shape:
            raise ValueError(f"values {values.shape} and labels {labels.shape} differ in shape")
        for v in np.unique(labels):
            pooled.setdefault(int(v), _LabelValues(cap, rng)).add(values[labels == v])
    return {label: pooled[label].stats() for label in sorted(pooled)}


def compare(real: dict[int, dict[str, Any]], generated: dict[int, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per label (as text keys): the real and generated statistics (None when absent) and the
    difference of means (generated - real)."""
    out = {}
    for label in sorted(set(real) | set(generated)):
        r, g = real.get(label), generated.get(label)
        out[str(label)] = {"real": r, "generated": g,
                           "mean_difference": g["mean"] - r["mean"] if r is not None and g is not None else None}
    return out
