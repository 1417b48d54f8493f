"""Derived images: DRR geometry and brightness, the low-dose noise model, downsampling."""

from __future__ import annotations

import numpy as np
import pytest

from medgen_cli.preprocess import derive as D


@pytest.fixture
def sphere_ct(make_meta):
    """Water block in air with a dense (bone-like) sphere off-centre; RAS axes, 1 mm voxels."""
    arr = np.full((24, 20, 16), -1000.0, np.float32)
    arr[2:22, 3:17, 2:14] = 0.0
    i, j, k = np.indices(arr.shape)
    arr[(i - 6) ** 2 + (j - 10) ** 2 + (k - 9) ** 2 <= 9] = 1500.0
    return arr, make_meta((1.0, 1.0, 1.0), (-12.0, -10.0, -8.0), modality="CT", subject="p7")


def test_drr_bright_where_sphere_projects(sphere_ct, to_world):
    arr, meta = sphere_ct
    img, m = D.drr(arr, meta, "ap", output="intensity")
    assert img.shape == (24, 16) and img.dtype == np.float32
    assert np.unravel_index(np.argmax(img), img.shape) == (6, 9)
    assert img.min() == 0.0 and 0 < img.max() < 1  # air only -> exactly 0
    assert (m.modality, m.subject, m.attrs["view"]) == ("XR", "p7", "ap")
    assert "DRR" in m.attrs["derived_from"]
    mp = m.intensity
    assert (mp.method, mp.unit, mp.in_low, mp.in_high, mp.out_low, mp.out_high, mp.clip) == (
        "identity", "1-exp(-line integral)", 0.0, 1.0, 0.0, 1.0, True)
    np.testing.assert_allclose(m.spacing[:2], (1.0, 1.0))
    # The detector pixel of the sphere lies on the sphere centre's ray (same x and z).
    np.testing.assert_allclose(to_world(m.affine, [6, 9])[[0, 2]], to_world(meta.affine, [6, 10, 9])[[0, 2]])
    lateral, ml = D.drr(arr, meta, "lateral")
    assert lateral.shape == (20, 16) and np.unravel_index(np.argmax(lateral), lateral.shape) == (10, 9)


def test_drr_water_slab_by_hand(make_meta):
    # 10 voxels x 2 mm of water along A: integral = 0.02/mm * 20 mm = 0.4.
    arr = np.zeros((3, 10, 4), np.float32)
    img, _ = D.drr(arr, make_meta((1.0, 2.0, 1.0)), "ap", output="intensity")
    np.testing.assert_allclose(img, 1 - np.exp(-0.4), rtol=1e-6)
    # the default, the log radiograph, is the line integral itself (optical depth)
    depth, m = D.drr(arr, make_meta((1.0, 2.0, 1.0)), "ap")
    np.testing.assert_allclose(depth, 0.4, rtol=1e-6)
    assert m.intensity.unit == "optical depth"
    with pytest.raises(ValueError, match="output"):
        D.drr(arr, make_meta((1.0, 2.0, 1.0)), "ap", output="png")


def test_drr_axis_comes_from_the_affine(sphere_ct, oblique_direction):
    arr, meta = sphere_ct
    ref, mref = D.drr(arr, meta, "ap")
    # Same object, axes stored as (A, R, S) with A flipped: the rays must follow voxel axis 0.
    swapped = np.ascontiguousarray(arr.transpose(1, 0, 2)[::-1])
    aff = meta.affine[:, [1, 0, 2, 3]].copy()
    aff[:, 3] = meta.affine @ np.array([0, arr.shape[1] - 1, 0, 1.0])
    aff[:, 0] *= -1
    m2 = meta.with_affine(aff)
    assert D.projection_axis(m2, "ap") == 0 and D.projection_axis(m2, "lateral") == 1
    img, m = D.drr(swapped, m2, "ap")
    np.testing.assert_allclose(img, ref, rtol=1e-6)
    np.testing.assert_allclose(m.affine[:, :2], mref.affine[:, :2])
    # An oblique, permuted orientation (i ~ L, j = S, k ~ P): AP is voxel axis 2.
    tilted = meta.with_affine(np.block([[oblique_direction, np.zeros((3, 1))], [np.zeros((1, 3)), 1]]))
    assert D.projection_axis(tilted, "ap") == 2 and D.projection_axis(tilted, "lateral") == 0
    with pytest.raises(ValueError, match="view"):
        D.drr(arr, meta, "pa")


def test_lowdose_noise_model(make_meta):
    flat = np.zeros((96, 96, 32), np.float32)
    meta = make_meta((1.0, 1.0, 1.0), modality="CT", subject="p1")
    out, m = D.lowdose(flat, meta, dose_fraction=0.25, seed=5, sigma_full=10.0)
    expected = 10.0 * np.sqrt(0.75 / 0.25)
    assert abs(out.std() / expected - 1) < 0.05 and abs(out.mean()) < 0.5
    assert m.attrs["noise_sigma"] == pytest.approx(expected) and m.subject == "p1"
    np.testing.assert_array_equal(D.lowdose(flat, meta, 0.25, seed=5)[0], out)
    assert not np.array_equal(D.lowdose(flat, meta, 0.25, seed=6)[0], out)
    corr, _ = D.lowdose(flat, meta, dose_fraction=0.5, seed=1, correlation_mm=1.0)
    interior = corr[8:-8, 8:-8, 8:-8]
    assert abs(interior.std() / 10.0 - 1) < 0.05  # sigma = 10 * sqrt(0.5 / 0.5)
    lag1 = np.corrcoef(interior[1:].ravel(), interior[:-1].ravel())[0, 1]
    assert lag1 > 0.5  # spatially correlated; white noise would give ~0
    np.testing.assert_array_equal(D.lowdose(flat, meta, 1.0)[0], flat)
    with pytest.raises(ValueError, match="dose_fraction"):
        D.lowdose(flat, meta, 0.0)


def test_downsample(make_meta, to_world):
    arr = np.random.default_rng(0).uniform(size=(32, 30, 12)).astype(np.float32)
    meta = make_meta((0.5, 0.5, 2.0), (1.0, 2.0, 3.0), subject="s")
    out, m = D.downsample(arr, meta, 2)
    assert out.shape == (16, 15, 6)
    np.testing.assert_allclose(m.spacing, (1.0, 1.0, 4.0))
    np.testing.assert_allclose(to_world(m.affine, [7.5, 7, 2.5]), to_world(meta.affine, [15.5, 14.5, 5.5]))
    assert m.subject == "s" and "downsample" in m.attrs["derived_from"]
    out, m = D.downsample(arr, meta, 4, axes="inplane")
    assert out.shape == (8, 8, 12) and m.spacing[2] == 2.0  # 30/4 = 7.5 rounds to 8
    out, m = D.downsample(arr, meta, (2, 3, 1))
    assert out.shape == (16, 10, 12)
    np.testing.assert_allclose(m.spacing, (1.0, 1.5, 2.0))
    with pytest.raises(ValueError, match="factor"):
        D.downsample(arr, meta, 0.5)
    with pytest.raises(ValueError, match="axes"):
        D.downsample(arr, meta, 2, axes="xy")
