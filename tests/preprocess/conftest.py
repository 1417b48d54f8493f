"""Shared helpers for the preprocess tests: geometry builders and small smooth phantoms."""

from __future__ import annotations

import numpy as np
import pytest

from medgen_cli.meta import ImageMeta, affine_from_geometry


def _rotation(axis: int, degrees: float) -> np.ndarray:
    c, s = np.cos(np.deg2rad(degrees)), np.sin(np.deg2rad(degrees))
    a, b = [x for x in range(3) if x != axis]
    r = np.eye(3)
    r[a, a], r[a, b], r[b, a], r[b, b] = c, -s, s, c
    return r


@pytest.fixture
def make_meta():
    """make_meta(spacing, origin=(0,0,0), direction=eye, **meta_fields) -> ImageMeta."""

    def make(spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=None, **fields):
        direction = np.eye(3) if direction is None else np.asarray(direction, dtype=np.float64)
        return ImageMeta(affine=affine_from_geometry(spacing, origin, direction), **fields)

    return make


@pytest.fixture
def oblique_direction():
    """A permuted, flipped and slightly rotated direction matrix (LPS-like, not axis aligned)."""
    perm = np.array([[-1.0, 0, 0], [0, 0, -1.0], [0, 1.0, 0]])  # i -> L, j -> S, k -> P
    return _rotation(2, 10.0) @ perm


@pytest.fixture
def to_world():
    """to_world(affine, idx) -> (..., 3) world mm for voxel indices idx (..., ndim)."""

    def world(affine, idx):
        idx = np.asarray(idx, dtype=np.float64)
        full = np.zeros(idx.shape[:-1] + (4,))
        full[..., : idx.shape[-1]] = idx
        full[..., 3] = 1.0
        return (full @ np.asarray(affine).T)[..., :3]

    return world


@pytest.fixture
def smooth_field(to_world):
    """smooth_field(shape, affine) -> float32 array of a smooth function of world position."""

    def field(shape, affine):
        grids = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
        w = to_world(affine, np.stack(grids, axis=-1))
        v = np.sin(w[..., 0] / 9.0) * np.cos(w[..., 1] / 11.0) + 0.5 * np.sin(w[..., 2] / 7.0 + 0.3)
        return v.astype(np.float32)

    return field
