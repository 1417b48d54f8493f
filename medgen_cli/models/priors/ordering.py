"""Orders in which an autoregressive prior visits the cells of a 2D or 3D code grid.

An ordering is a permutation ``perm`` of the raster (C-order) indices of the grid: sequence position
i holds grid cell ``perm[i]``, so ``seq = flat[..., perm]`` and ``flat = seq[..., inv]``.

- ``raster``: row-major, as in VQ-VAE / VQGAN transformers (Esser et al. 2021).
- ``snake``: raster with every other line reversed (boustrophedon), so consecutive tokens stay
  neighbours.
- ``zigzag``: by anti-diagonals (sum of coordinates) alternating direction, as in JPEG.
- ``hilbert``: the 2D Hilbert curve (Hilbert 1891) over the enclosing power-of-two square.
- ``random``: a fixed permutation drawn from ``seed``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

ORDERINGS = ("raster", "snake", "zigzag", "hilbert", "random")


def _coords(grid_shape: Sequence[int]) -> Tensor:
    """(N, ndim) integer coordinates of every cell in raster order."""
    axes = [torch.arange(s) for s in grid_shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, len(grid_shape))


def _snake(grid_shape: Sequence[int]) -> Tensor:
    # Reverse an axis whenever the index of the enclosing "line" is odd; works for any rank by
    # reflecting each axis according to the parity of the (snaked) position along the axes before it.
    coords = _coords(grid_shape)
    keys = coords.clone()
    for d in range(1, len(grid_shape)):
        # parity of the path position of the enclosing line along axes 0..d-1
        line = torch.zeros(len(coords), dtype=torch.long)
        for e in range(d):
            line = line * grid_shape[e] + keys[:, e]
        flip = line % 2 == 1
        keys[flip, d] = grid_shape[d] - 1 - coords[flip, d]
    return _lexsort(keys)


def _zigzag(grid_shape: Sequence[int]) -> Tensor:
    coords = _coords(grid_shape)
    diag = coords.sum(dim=1)
    # within an anti-diagonal walk along the first axis, alternating direction
    along = torch.where(diag % 2 == 0, -coords[:, 0], coords[:, 0])
    keys = torch.stack([diag, along] + [coords[:, d] for d in range(1, len(grid_shape))], dim=1)
    return _lexsort(keys)


def _hilbert_index(x: Tensor, y: Tensor, side: int) -> Tensor:
    """Distance along the Hilbert curve of a side x side square (side a power of two)."""
    x, y = x.clone(), y.clone()
    d = torch.zeros_like(x)
    s = side // 2
    while s > 0:
        rx = ((x & s) > 0).long()
        ry = ((y & s) > 0).long()
        d += s * s * ((3 * rx) ^ ry)
        # rotate the quadrant so the sub-curve has the canonical orientation
        flip = (ry == 0) & (rx == 1)
        x = torch.where(flip, s - 1 - x, x)
        y = torch.where(flip, s - 1 - y, y)
        swap = ry == 0
        x, y = torch.where(swap, y, x), torch.where(swap, x, y)
        s //= 2
    return d


def _hilbert(grid_shape: Sequence[int]) -> Tensor:
    if len(grid_shape) != 2:
        raise ValueError(f"hilbert ordering supports 2D grids only, got grid_shape={tuple(grid_shape)}")
    side = 1 << max(0, math.ceil(math.log2(max(grid_shape))))
    coords = _coords(grid_shape)
    return torch.argsort(_hilbert_index(coords[:, 0], coords[:, 1], side), stable=True)


def _lexsort(keys: Tensor) -> Tensor:
    """Indices sorting rows of ``keys`` (N, K) lexicographically (first column most significant)."""
    order = torch.arange(len(keys))
    for k in reversed(range(keys.shape[1])):
        order = order[torch.argsort(keys[order, k], stable=True)]
    return order


def make_ordering(grid_shape: Sequence[int], kind: str = "raster", seed: int = 0) -> tuple[Tensor, Tensor]:
    """Permutation ``perm`` (sequence → raster index) and its inverse ``inv``, both (N,) int64.

    Args:
        grid_shape: the code grid, e.g. (16, 16) or (8, 8, 8).
        kind: one of ``raster``, ``snake``, ``zigzag``, ``hilbert`` (2D only), ``random``.
        seed: seed of the ``random`` permutation.
    """
    grid_shape = tuple(int(s) for s in grid_shape)
    if not grid_shape or any(s < 1 for s in grid_shape):
        raise ValueError(f"grid_shape must be non-empty positive sizes, got {grid_shape!r}")
    n = math.prod(grid_shape)
    if kind == "raster":
        perm = torch.arange(n)
    elif kind == "snake":
        perm = _snake(grid_shape)
    elif kind == "zigzag":
        perm = _zigzag(grid_shape)
    elif kind == "hilbert":
        perm = _hilbert(grid_shape)
    elif kind == "random":
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    else:
        raise ValueError(f"ordering must be one of {ORDERINGS}, got {kind!r}")
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(n)
    return perm, inv
