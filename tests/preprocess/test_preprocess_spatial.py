"""Spatial transforms: reorient, crop/pad and fit keep every voxel's world position."""

from __future__ import annotations

import numpy as np
import pytest

from medgen_cli.preprocess import spatial as S


def _check_same_world(arr, meta, out, out_meta, to_world):
    """Every voxel of ``out`` that comes from ``arr`` sits at the same world point with the same value."""
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in out.shape], indexing="ij"), -1).reshape(-1, out.ndim)
    world = to_world(out_meta.affine, idx)
    src = (np.c_[world, np.ones(len(world))] @ np.linalg.inv(meta.affine).T)[:, : arr.ndim]
    np.testing.assert_allclose(src, np.round(src), atol=1e-9)  # lands on input voxel centres
    src = np.round(src).astype(int)
    inside = np.all((src >= 0) & (src < np.array(arr.shape)), axis=1)
    np.testing.assert_array_equal(out[tuple(idx[inside].T)], arr[tuple(src[inside].T)])
    return inside


@pytest.mark.parametrize("target", ["RAS", "LPS", "LAS", "PIR", "SLA", "ILP"])
def test_reorient_round_trip(target, make_meta, oblique_direction, to_world):
    arr = np.random.default_rng(0).normal(size=(5, 6, 7)).astype(np.float32)
    meta = make_meta((0.8, 1.1, 2.5), (10.0, -3.0, 7.0), oblique_direction)
    out, m = S.reorient(arr, meta, target)
    assert S.orientation_code(m) == target
    assert _check_same_world(arr, meta, out, m, to_world).all()
    back, mb = S.reorient(out, m, S.orientation_code(meta))
    np.testing.assert_array_equal(back, arr)
    np.testing.assert_allclose(mb.affine, meta.affine, atol=1e-12)


def test_reorient_2d_stays_2d(make_meta, to_world):
    # A coronal slice: i along L, j along S, normal (third column) along A.
    direction = np.array([[-1.0, 0, 0], [0, 0, 1.0], [0, 1.0, 0]])
    meta = make_meta((0.7, 0.9, 3.0), (5.0, 2.0, -4.0), direction)
    arr = np.arange(20, dtype=np.float32).reshape(4, 5)
    out, m = S.reorient(arr, meta, "RAS")
    assert out.shape == (4, 5)
    assert S.orientation_code(m)[:2] == "RS"  # in-plane axes reoriented, normal third
    assert _check_same_world(arr, meta, out, m, to_world).all()
    out, m = S.reorient(arr, meta, "SRA")  # swaps the in-plane axes
    assert out.shape == (5, 4) and _check_same_world(arr, meta, out, m, to_world).all()


def test_reorient_rejects_bad_code(make_meta):
    with pytest.raises(ValueError, match="RAS"):
        S.reorient(np.zeros((2, 2, 2)), make_meta(), "RAR")


@pytest.mark.parametrize("mode", ["center", "foreground"])
@pytest.mark.parametrize("shape", [(4, 12, 5), (14, 3, 9), (10, 8, 6)])
def test_crop_or_pad_keeps_world(mode, shape, make_meta, oblique_direction, to_world):
    arr = np.zeros((10, 8, 6), np.float32)
    arr[6:9, 1:4, 2:5] = np.arange(27, dtype=np.float32).reshape(3, 3, 3) + 1
    meta = make_meta((0.5, 0.7, 2.0), (1.0, 2.0, 3.0), oblique_direction)
    out, m = S.crop_or_pad(arr, meta, shape, mode=mode, background=-5, threshold=0.5)
    assert out.shape == shape
    inside = _check_same_world(arr, meta, out, m, to_world)
    assert np.all(out.reshape(-1)[~inside] == -5)  # padding holds the background
    if mode == "foreground":  # the 3x3x3 foreground fits in every target shape: all kept
        assert sorted(out[out > 0].tolist()) == list(range(1, 28))


def test_crop_or_pad_foreground_centres_box(make_meta):
    arr = np.zeros((20, 20), np.float32)
    arr[14:18, 2:4] = 1
    out, m = S.crop_or_pad(arr, make_meta(), (8, 8), mode="foreground")
    box = S.foreground_bbox(out, 0.5)
    assert box == (slice(2, 6), slice(2, 4))  # rows centred; columns kept inside the image
    assert m.origin == (12.0, 0.0, 0.0)


def test_foreground_bbox():
    a = np.zeros((5, 6, 7))
    a[1:3, 2, 4:7] = 2
    assert S.foreground_bbox(a, 1) == (slice(1, 3), slice(2, 3), slice(4, 7))
    assert S.foreground_bbox(a, 2) is None


@pytest.mark.parametrize(
    "shape,spacing,size",
    [
        ((40, 30, 10), (0.5, 0.8, 3.0), (32, 32, 32)),
        ((50, 20), (0.6, 1.5), (24, 16)),
        ((16, 16, 16), (1, 1, 1), (16, 16, 16)),
    ],
)
def test_fit(shape, spacing, size, make_meta, to_world):
    meta = make_meta(spacing + (1.0,) * (3 - len(spacing)), (3.0, -2.0, 1.0))
    arr = np.random.default_rng(1).uniform(size=shape).astype(np.float32)
    out, m = S.fit(arr, meta, size, background=-1)
    assert out.shape == tuple(size)
    expected = max(n * s / t for n, s, t in zip(shape, spacing, size))
    np.testing.assert_allclose(m.spacing[: len(size)], expected, rtol=1e-12)
    # The field of view stays centred: centres agree within half an output voxel.
    c_in = to_world(meta.affine, (np.array(shape) - 1) / 2)
    c_out = to_world(m.affine, (np.array(size) - 1) / 2)
    assert np.abs(c_in - c_out).max() <= expected / 2 + 1e-9
    assert out.min() >= -1


def test_spatial_bad_parameters(make_meta):
    a = np.zeros((4, 4, 4), np.float32)
    with pytest.raises(ValueError, match="shape"):
        S.crop_or_pad(a, make_meta(), (4, 4))
    with pytest.raises(ValueError, match="mode"):
        S.crop_or_pad(a, make_meta(), (4, 4, 4), mode="middle")
    with pytest.raises(ValueError, match="size"):
        S.fit(a, make_meta(), (4, 0, 4))
    with pytest.raises(ValueError, match="2D"):
        S.reorient(np.zeros(4), make_meta())
