"""Resampling: both backends against SimpleITK's own ``sitk.Resample`` in world space."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from medgen_cli.meta import LPS_TO_RAS
from medgen_cli.preprocess import spatial as S


def _sitk_geometry(affine):
    """(spacing, origin, direction) of an ITK image (LPS) for a RAS voxel->world affine."""
    lps = LPS_TO_RAS @ affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    return spacing.tolist(), lps[:3, 3].tolist(), (lps[:3, :3] / spacing).ravel().tolist()


def _sitk_reference(arr, meta, out_shape, out_meta, order):
    """Resample ``arr`` onto the output grid the ITK way: images in LPS, arrays as (z, y, x)."""
    img = sitk.GetImageFromArray(np.ascontiguousarray(arr.transpose(2, 1, 0)))
    spacing, origin, direction = _sitk_geometry(meta.affine)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    img.SetDirection(direction)
    spacing, origin, direction = _sitk_geometry(out_meta.affine)
    interp = {"nearest": sitk.sitkNearestNeighbor, "linear": sitk.sitkLinear, "bspline": sitk.sitkBSpline}[order]
    ref = sitk.Resample(img, list(out_shape), sitk.Transform(), interp, origin, spacing, direction,
                        -999.0, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(ref).transpose(2, 1, 0)


CASES = {
    "down": ((1.3, 1.7, 2.9), (20, 18, 12)),
    "up": ((0.55, 0.73, 1.1), (20, 18, 12)),  # no nearest-neighbour ties (x = k + 0.5)
    "mixed-keep": ((0.9, None, 3.7), (20, 18, 12)),
}


@pytest.mark.parametrize("backend", ["torch", "sitk"])
@pytest.mark.parametrize("order", ["nearest", "linear", "bspline"])
@pytest.mark.parametrize("case", list(CASES))
def test_matches_sitk_resample(case, order, backend, make_meta, oblique_direction, smooth_field, to_world):
    new_spacing, shape = CASES[case]
    meta = make_meta((1.0, 1.2, 2.0), (12.0, -30.0, 4.0), oblique_direction)
    arr = smooth_field(shape, meta.affine)
    out, m = S.resample(arr, meta, new_spacing, order=order, antialias=False, backend=backend)
    want = [s if s is not None else old for s, old in zip(new_spacing, meta.spacing)]
    np.testing.assert_allclose(m.spacing, want, rtol=1e-12)
    # Field of view: n_new = round(n * s / s_new), centred on the same world point.
    assert out.shape == tuple(int(np.floor(n * s / t + 0.5)) for n, s, t in zip(shape, meta.spacing, want))
    np.testing.assert_allclose(to_world(m.affine, (np.array(out.shape) - 1) / 2),
                               to_world(meta.affine, (np.array(shape) - 1) / 2), atol=1e-9)
    np.testing.assert_allclose(m.direction, meta.direction, atol=1e-12)
    ref = _sitk_reference(arr, meta, out.shape, m, order)
    assert (ref != -999).all()  # every output point lies inside the input
    tol = 0 if order == "nearest" else 2e-5
    np.testing.assert_allclose(out[1:-1, 1:-1, 1:-1], ref[1:-1, 1:-1, 1:-1], atol=tol)


@pytest.mark.parametrize("order", ["linear", "bspline"])
def test_backends_agree_with_antialiasing(order, make_meta, smooth_field):
    meta = make_meta((0.7, 0.7, 1.25))
    arr = smooth_field((48, 40, 24), meta.affine)
    a, ma = S.resample(arr, meta, 1.5, order=order, backend="torch")
    b, mb = S.resample(arr, meta, 1.5, order=order, backend="sitk")
    np.testing.assert_array_equal(ma.affine, mb.affine)
    assert a.shape == b.shape == (22, 19, 20)
    # Sampled (torch) vs ITK's discrete Gaussian kernels differ slightly; the field spans [-1.5, 1.5].
    assert np.abs(a - b)[3:-3, 3:-3, 3:-3].max() < 2e-3
    assert np.abs(a - b).max() < 2e-2


def test_antialiasing_removes_aliasing(make_meta):
    """A checkerboard at the input's Nyquist frequency must vanish when downsampled, not alias."""
    meta = make_meta((1.0, 1.0, 1.0))
    arr = (np.indices((32, 32, 8)).sum(0) % 2).astype(np.float32)
    for backend in ("torch", "sitk"):
        out, _ = S.resample(arr, meta, (2.5, 2.5, None), backend=backend)
        assert np.abs(out - 0.5)[2:-2, 2:-2].max() < 0.1  # sitk 0.053, torch 0.008
        raw, _ = S.resample(arr, meta, (2.5, 2.5, None), antialias=False, backend=backend)
        assert np.abs(raw - 0.5).max() > 0.4


def test_resample_2d_and_labels(make_meta):
    meta = make_meta((0.5, 0.5, 3.0))
    labels = np.zeros((30, 20), np.int16)
    labels[5:20, 4:12] = 3
    for backend in ("torch", "sitk"):
        out, m = S.resample(labels, meta, (1.0, None), order="nearest", backend=backend)
        assert out.dtype == np.int16 and out.shape == (15, 20)
        assert set(np.unique(out)) == {0, 3}
        np.testing.assert_allclose(m.spacing, (1.0, 0.5, 3.0))
    same, m = S.resample(labels.astype(np.float32), meta, None)
    np.testing.assert_array_equal(same, labels)
    np.testing.assert_array_equal(m.affine, meta.affine)


def test_resample_bad_parameters(make_meta):
    a = np.zeros((4, 4, 4), np.float32)
    for kwargs, msg in [({"spacing": 0}, "spacing"), ({"spacing": (1, 1)}, "spacing"),
                        ({"spacing": 1, "order": "cubic"}, "order"), ({"spacing": 1, "backend": "gpu"}, "backend")]:
        with pytest.raises(ValueError, match=msg):
            S.resample(a, make_meta(), **kwargs)


def test_gaussian_filter_preserves_mean_and_smooths():
    noise = np.random.default_rng(0).normal(size=(64, 64)).astype(np.float32)
    out = S.gaussian_filter(noise, 2.0)
    assert out.std() < 0.25 * noise.std()
    assert abs(float(out.mean() - noise.mean())) < 0.02
    np.testing.assert_array_equal(S.gaussian_filter(noise, 0), noise)
    with pytest.raises(ValueError, match="sigma"):
        S.gaussian_filter(noise, (1, 2, 3))
