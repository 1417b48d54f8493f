"""Tile planning and tile aggregation for sliding-window inference, for any spatial rank.

Two small objects in the spirit of torchio's ``GridSampler`` / ``GridAggregator``:

- `TilePlan` cuts a grid into tiles. Everything is counted in *grid units*: one unit is the
  autoencoder's coarsest downsampling factor per axis (e.g. 4 x 4 x 4 image voxels, or one latent
  voxel), so every tile starts and ends on a latent boundary at every resolution of the network
  and latent grids join without seams. Each tile is a *core* plus a *halo* on each side (clipped
  at the volume's border); the cores partition the grid, so every voxel belongs to exactly one
  core.
- `TileAggregator` writes tile outputs back into an output array (numpy or zarr: anything
  indexable by a tuple of slices) at that output's resolution (``scale`` voxels per grid unit):
  either the core only (``blend=0``, exact when the halo covers the network's receptive field)
  or the core extended by ``blend`` units with raised-cosine weights. The per-axis weights of two
  neighbouring tiles sum to one and the tiles form a Cartesian grid, so the weights of all tiles
  sum to one everywhere and no weight-sum array is needed.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Tile", "TilePlan", "TileAggregator", "as_units", "axis_segments", "blend_ramp"]


def as_units(value: int | Sequence[int], spatial_dims: int, name: str) -> tuple[int, ...]:
    """An int (or a one-element sequence) repeated per axis, or one non-negative int per axis."""
    out = (int(value),) * spatial_dims if isinstance(value, (int, np.integer)) else tuple(int(v) for v in value)
    out = out * spatial_dims if len(out) == 1 else out
    if len(out) != spatial_dims or any(v < 0 for v in out):
        raise ValueError(f"{name}={value!r} must be one non-negative integer or {spatial_dims} of them")
    return out


@dataclass(frozen=True)
class Tile:
    """One tile, in grid units.

    Args:
        index: position in the plan (row-major over the per-axis segments).
        start, stop: the region computed (core plus halo, clipped to the grid).
        core_start, core_stop: the region this tile owns (cores partition the grid).
    """

    index: int
    start: tuple[int, ...]
    stop: tuple[int, ...]
    core_start: tuple[int, ...]
    core_stop: tuple[int, ...]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(b - a for a, b in zip(self.start, self.stop))

    def region(self, scale: Sequence[int]) -> tuple[slice, ...]:
        """The computed region at a resolution of ``scale`` voxels per grid unit."""
        return tuple(slice(a * s, b * s) for a, b, s in zip(self.start, self.stop, scale))

    def core(self, scale: Sequence[int]) -> tuple[slice, ...]:
        """The core, absolute, at ``scale`` voxels per grid unit."""
        return tuple(slice(a * s, b * s) for a, b, s in zip(self.core_start, self.core_stop, scale))

    def core_in_tile(self, scale: Sequence[int]) -> tuple[slice, ...]:
        """The core relative to the tile's start, at ``scale`` voxels per grid unit."""
        return tuple(slice((a - t) * s, (b - t) * s) for a, b, t, s in zip(self.core_start, self.core_stop, self.start, scale))


def axis_segments(length: int, core: int) -> list[tuple[int, int]]:
    """Balanced cores of at most ``core`` units covering ``range(length)``."""
    n = max(1, math.ceil(length / core))
    cuts = [round(i * length / n) for i in range(n + 1)]
    return [(a, b) for a, b in zip(cuts[:-1], cuts[1:])]


class TilePlan:
    """Tiles of a grid of ``grid_shape`` units: cores of at most ``core`` units, ``halo`` units each side.

    Args:
        grid_shape: units per axis (image shape / unit).
        core: largest core per axis (one int or one per axis); the cores of an axis are balanced.
        halo: context per side and axis, clipped at the grid's border.
    """

    def __init__(self, grid_shape: Sequence[int], core: int | Sequence[int], halo: int | Sequence[int] = 0):
        self.grid_shape = tuple(int(g) for g in grid_shape)
        sd = len(self.grid_shape)
        if not sd or any(g < 1 for g in self.grid_shape):
            raise ValueError(f"grid_shape={tuple(grid_shape)!r} must be positive sizes")
        self.core = as_units(core, sd, "core")
        if any(c < 1 for c in self.core):
            raise ValueError(f"core={core!r} must be at least one grid unit per axis")
        self.halo = as_units(halo, sd, "halo")
        self.segments = [axis_segments(g, c) for g, c in zip(self.grid_shape, self.core)]
        self.tiles: list[Tile] = []
        for index, cores in enumerate(itertools.product(*self.segments)):
            core_start = tuple(a for a, _ in cores)
            core_stop = tuple(b for _, b in cores)
            start = tuple(max(0, a - h) for a, h in zip(core_start, self.halo))
            stop = tuple(min(g, b + h) for b, h, g in zip(core_stop, self.halo, self.grid_shape))
            self.tiles.append(Tile(index, start, stop, core_start, core_stop))

    @classmethod
    def for_image(cls, shape: Sequence[int], unit: Sequence[int], tile: Sequence[int] | int,
                  halo: Sequence[int] | int = 0) -> TilePlan:
        """Plan in image voxels: ``tile`` (core) and ``halo`` sizes are rounded to whole ``unit``s
        (core down, halo up); ``shape`` must be a multiple of ``unit``."""
        sd = len(shape)
        unit = as_units(unit, sd, "unit")
        if any(u < 1 for u in unit) or any(s % u for s, u in zip(shape, unit)):
            raise ValueError(f"shape={tuple(shape)!r} is not a multiple of the downsampling unit {unit}")
        tile, halo = as_units(tile, sd, "tile"), as_units(halo, sd, "halo")
        core = tuple(max(1, t // u) for t, u in zip(tile, unit))
        return cls([s // u for s, u in zip(shape, unit)], core, [-(-h // u) for h, u in zip(halo, unit)])

    def __len__(self) -> int:
        return len(self.tiles)

    def __iter__(self):
        return iter(self.tiles)

    @property
    def max_tile_shape(self) -> tuple[int, ...]:
        """Largest computed region per axis, in units."""
        return tuple(max(t.shape[i] for t in self.tiles) for i in range(len(self.grid_shape)))

    @property
    def overhead(self) -> float:
        """Units computed over units owned (1.0 = no overlap)."""
        return sum(math.prod(t.shape) for t in self.tiles) / math.prod(self.grid_shape)

    def max_blend(self) -> tuple[int, ...]:
        """Widest blend per axis: within the halo and at most half of the smallest core."""
        return tuple(min(h, min(b - a for a, b in seg) // 2) for h, seg in zip(self.halo, self.segments))

    def describe(self) -> str:
        cores = [max(b - a for a, b in seg) for seg in self.segments]
        return (f"{len(self)} tiles over a {list(self.grid_shape)}-unit grid, cores <= {cores} units, "
                f"halo {list(self.halo)}, overhead {self.overhead:.2f}x")


def blend_ramp(n: int) -> np.ndarray:
    """Weights of ``n`` voxels centred on a tile boundary, rising from 0 to 1: the raised cosine
    s(t) = (1 + sin(pi t / 2)) / 2 at the voxel centres t in (-1, 1). s(t) + s(-t) = 1, so the
    tile before the boundary (weights reversed) and the tile after it sum to one."""
    t = (np.arange(n) + 0.5 - n / 2) / (n / 2)
    return (0.5 + 0.5 * np.sin(np.pi / 2 * t)).astype(np.float32)


class TileAggregator:
    """Writes tile outputs into ``out`` (shape (*lead, *spatial)) at ``scale`` voxels per grid unit.

    Args:
        out: numpy or zarr array (zero-filled when ``blend`` > 0, since blended tiles are added).
        plan: the tile plan.
        scale: voxels of this output per grid unit, per axis.
        blend: 0 writes each tile's core only; > 0 writes the core widened by ``blend`` units per
            side (not past the volume) weighted by raised-cosine ramps over +-``blend`` units around
            each core boundary. Needs floating-point outputs and ``blend`` <= ``plan.max_blend()``.
    """

    def __init__(self, out: Any, plan: TilePlan, scale: Sequence[int], blend: int | Sequence[int] = 0):
        sd = len(plan.grid_shape)
        self.out, self.plan = out, plan
        self.scale = as_units(scale, sd, "scale")
        self.blend = as_units(blend, sd, "blend")
        spatial = tuple(out.shape[-sd:])
        expected = tuple(g * s for g, s in zip(plan.grid_shape, self.scale))
        if spatial != expected:
            raise ValueError(f"output spatial shape {spatial} does not match the plan's {expected}")
        if any(self.blend):
            if not np.issubdtype(np.dtype(out.dtype), np.floating):
                raise ValueError(f"blend={self.blend} needs a floating-point output, not {out.dtype}")
            if any(b > m for b, m in zip(self.blend, plan.max_blend())):
                raise ValueError(f"blend={self.blend} exceeds what the plan allows per axis {plan.max_blend()}")

    def _axis(self, tile: Tile, axis: int) -> tuple[slice, slice, np.ndarray | None]:
        """(destination slice, slice within the tile output, weights or None) along one axis."""
        s, w, g = self.scale[axis], self.blend[axis], self.plan.grid_shape[axis]
        a, b = tile.core_start[axis], tile.core_stop[axis]
        lo = a - w if a > 0 else a
        hi = b + w if b < g else b
        dst = slice(lo * s, hi * s)
        src = slice((lo - tile.start[axis]) * s, (hi - tile.start[axis]) * s)
        if not w:
            return dst, src, None
        weights = np.ones((hi - lo) * s, np.float32)
        ramp = blend_ramp(2 * w * s)
        if a > 0:
            weights[: 2 * w * s] = ramp
        if b < g:
            weights[-2 * w * s:] *= ramp[::-1]
        return dst, src, weights

    def add(self, tile: Tile, values: np.ndarray) -> None:
        """Write one tile's output (*lead, *tile spatial at this scale)."""
        sd = len(self.plan.grid_shape)
        expected = tuple(n * s for n, s in zip(tile.shape, self.scale))
        if tuple(values.shape[-sd:]) != expected:
            raise ValueError(f"tile {tile.index} output has spatial shape {tuple(values.shape[-sd:])}, expected {expected}")
        parts = [self._axis(tile, i) for i in range(sd)]
        dst = (Ellipsis, *(p[0] for p in parts))
        src = values[(Ellipsis, *(p[1] for p in parts))]
        if not any(self.blend):
            self.out[dst] = src
            return
        weight = np.ones((1,) * sd, np.float32)
        for i, (_, _, w) in enumerate(parts):
            if w is not None:
                weight = weight * w.reshape([-1 if j == i else 1 for j in range(sd)])
        self.out[dst] = self.out[dst] + (src * weight).astype(self.out.dtype, copy=False)
