"""Voxel spacing as condition channels of a diffusion or flow prior (``condition.spacing``).

A spacing-conditioned prior sees, besides its other condition channels, one channel per spatial axis
holding ``(log(spacing_mm) - mean) / std`` of that axis, constant over the latent grid. The log makes
halving and doubling the spacing symmetric; ``mean`` and ``std`` are those of the training items'
log spacings (per axis), recorded in ``model.json`` so sampling rebuilds the same channels.

- `SpacingChannels`: the normalisation (from training spacings or ``model.json``) and the channels.
- `image_spacing`: the spacing (mm) of an item's image along its first ``spatial_dims`` voxel axes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..meta import ImageMeta

__all__ = ["MIN_STD", "SpacingChannels", "image_spacing"]

MIN_STD = 1e-6  # below this the log spacings are constant: the std is taken as 1 (the channels are then 0)


def image_spacing(meta: ImageMeta, spatial_dims: int, factor: Sequence[int] | None = None) -> list[float]:
    """Spacing (mm) of an image's first ``spatial_dims`` voxel axes; ``factor``: ``meta`` is that of a latent
    grid downsampled by it (`medgen_cli.data.latents.latent_meta`), whose image spacing is its own divided by it."""
    spacing = np.asarray(meta.spacing[:spatial_dims], dtype=np.float64)
    if factor is not None:
        spacing = spacing / np.asarray(factor[:spatial_dims], dtype=np.float64)
    return [round(float(v), 6) for v in spacing]  # micrometres: float32 affines are not re-read as 0.69999999


@dataclass(frozen=True)
class SpacingChannels:
    """Spacing (mm) -> normalised log-spacing channels.

    Args:
        mean: per-axis mean of log(spacing_mm) over the training items.
        std: per-axis standard deviation of it (1 where the training spacings are constant).
        median: per-axis median training spacing (mm), the default of ``medgen sample``.
        low: per-axis smallest training spacing (mm).
        high: per-axis largest training spacing (mm).
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    median: tuple[float, ...]
    low: tuple[float, ...]
    high: tuple[float, ...]

    @property
    def channels(self) -> int:
        return len(self.mean)

    @classmethod
    def fit(cls, spacings: Sequence[Sequence[float]]) -> "SpacingChannels":
        """The normalisation of training spacings (N, spatial_dims) in mm."""
        s = np.asarray(spacings, dtype=np.float64)
        if s.ndim != 2 or not len(s):
            raise ValueError("no training spacings given")
        if not (np.all(np.isfinite(s)) and np.all(s > 0)):
            raise ValueError(f"voxel spacings must be positive numbers, got {s[~(np.isfinite(s) & (s > 0)).all(1)][0]}")
        logs = np.log(s)
        std = logs.std(axis=0)
        std = np.where(std < MIN_STD, 1.0, std)

        def t(x, digits: int | None = None) -> tuple[float, ...]:
            return tuple(float(v) if digits is None else round(float(v), digits) for v in x)

        mm = 6  # spacings in mm to the micrometre (1.0499999999999998 -> 1.05)
        return cls(t(logs.mean(axis=0)), t(std), t(np.median(s, axis=0), mm), t(s.min(axis=0), mm), t(s.max(axis=0), mm))

    @classmethod
    def from_info(cls, info: dict[str, Any]) -> "SpacingChannels":
        """From the ``spacing`` entry of ``model.json`` (`info`)."""
        return cls(*(tuple(float(v) for v in info[k]) for k in ("log_mean", "log_std", "median", "min", "max")))

    def info(self) -> dict[str, Any]:
        """The ``spacing`` entry of ``model.json``."""
        return {"channels": self.channels, "log_mean": list(self.mean), "log_std": list(self.std),
                "median": list(self.median), "min": list(self.low), "max": list(self.high)}

    def __call__(self, spacing: Sequence[float] | Tensor, grid: Sequence[int]) -> Tensor:
        """(D,) or (B, D) spacings in mm -> (D, *grid) or (B, D, *grid) float32 channels."""
        s = torch.as_tensor(spacing, dtype=torch.float64)
        if s.shape[-1] != self.channels:
            raise ValueError(f"{s.shape[-1]} spacing value(s) given, but the prior takes {self.channels} (one per axis)")
        if not bool(torch.all(torch.isfinite(s) & (s > 0))):
            raise ValueError(f"voxel spacings must be positive numbers, got {s.tolist()}")
        z = (s.log() - torch.tensor(self.mean, dtype=torch.float64)) / torch.tensor(self.std, dtype=torch.float64)
        lead = tuple(z.shape)
        z = z.float().reshape(*lead, *[1] * len(grid))  # (..., D, 1, ...)
        return z.expand(*lead, *[int(g) for g in grid]).contiguous()

    def outside(self, spacing: Sequence[float], factor: float = 2.0) -> bool:
        """True when an axis of ``spacing`` lies beyond the training range by more than ``factor``."""
        return any(v < lo / factor or v > hi * factor for v, lo, hi in zip(spacing, self.low, self.high))
