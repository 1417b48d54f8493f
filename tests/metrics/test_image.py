"""Paired image metrics against scikit-image (SSIM, PSNR) and an independent MS-SSIM reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from medgen_cli.meta import ImageMeta, IntensityMapping
from medgen_cli.metrics import (
    MS_SSIM_WEIGHTS,
    codebook_perplexity,
    codebook_usage,
    mae,
    ms_ssim,
    ms_ssim_plan,
    physical_metrics,
    psnr,
    resolve_data_range,
    rmse,
    ssim,
    ssim_slicewise,
)

TOL = 1e-4
WINDOW = IntensityMapping(method="window", unit="HU", in_low=-1000, in_high=1000, out_low=-1, out_high=1, clip=True)


def sk_ssim(x: np.ndarray, y: np.ndarray, data_range: float, **kw) -> float:
    return structural_similarity(x, y, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                 data_range=data_range, **kw)


def ref_ms_ssim(x: np.ndarray, y: np.ndarray, data_range: float, max_scales: int = 5) -> float:
    """MS-SSIM from scipy Gaussian moments (per-axis radius) and skimage SSIM, written independently."""
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    win = [min(11, n - (1 - n % 2)) for n in x.shape]
    # scales: an axis is halved while its half is still >= its window
    sizes = [list(x.shape)]
    while len(sizes) < max_scales:
        nxt = [n // 2 if n // 2 >= w else n for n, w in zip(sizes[-1], win)]
        if nxt == sizes[-1]:
            break
        sizes.append(nxt)
    weights = np.array(MS_SSIM_WEIGHTS[: len(sizes)])
    weights /= weights.sum()
    values = []
    for s in range(len(sizes)):
        radius = [(w - 1) // 2 for w in win]
        crop = tuple(slice(r, n - r) for r, n in zip(radius, x.shape))

        def blur(a):
            return gaussian_filter(a, sigma=1.5, radius=radius, mode="reflect")[crop]

        mx, my = blur(x), blur(y)
        vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
        if s < len(sizes) - 1:
            values.append(((2 * cxy + c2) / (vx + vy + c2)).mean())
            for axis, (n, m) in enumerate(zip(sizes[s], sizes[s + 1])):
                if m != n:  # 2-voxel means, odd size floored
                    idx = [slice(None)] * x.ndim
                    idx[axis] = slice(0, 2 * m)
                    x, y = x[tuple(idx)], y[tuple(idx)]
                    shape = list(x.shape)
                    shape[axis : axis + 1] = [m, 2]
                    x, y = x.reshape(shape).mean(axis + 1), y.reshape(shape).mean(axis + 1)
        elif all(w == 11 for w in win):
            values.append(sk_ssim(x, y, data_range))
        else:
            values.append((((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))).mean())
    return float(np.prod(np.maximum(values, 0) ** weights))


def noisy(x: np.ndarray, seed: int, sigma: float = 0.1, blur: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y = gaussian_filter(x, blur) if blur else x.copy()
    return y + sigma * rng.standard_normal(x.shape)


def real_slices(real_data):
    """A brain MR volume in voxel order (i, j, k), scaled to about [0, 1.7]."""
    import SimpleITK as sitk

    arr = sitk.GetArrayFromImage(sitk.ReadImage(str(real_data("brain1_image.nrrd")))).astype(np.float64)
    arr = arr.transpose(2, 1, 0)
    return arr / np.percentile(arr, 99.5)


# --------------------------------------------------------------------------- SSIM
def test_ssim_2d_matches_skimage_on_random_images():
    rng = np.random.default_rng(0)
    x = rng.random((3, 1, 40, 37))
    y = np.clip(noisy(x, 1, 0.2), 0, 1)
    got = ssim(y, x, 1.0).numpy()
    want = [sk_ssim(x[b, 0], y[b, 0], 1.0) for b in range(3)]
    assert got.shape == (3,)
    np.testing.assert_allclose(got, want, atol=TOL)


def test_ssim_2d_multichannel_averages_channels():
    rng = np.random.default_rng(1)
    x = rng.random((1, 2, 24, 24))
    y = noisy(x, 2, 0.1)
    want = sk_ssim(x[0], y[0], 1.0, channel_axis=0)
    assert abs(float(ssim(torch.tensor(y), torch.tensor(x), 1.0)[0]) - want) < TOL


def test_ssim_3d_matches_skimage_and_kornia():
    import kornia

    rng = np.random.default_rng(3)
    x = rng.random((2, 1, 16, 18, 20))
    y = noisy(x, 4, 0.15, blur=0.7)
    got = ssim(y, x, 1.0).numpy()
    want = [sk_ssim(x[b, 0], y[b, 0], 1.0) for b in range(2)]
    np.testing.assert_allclose(got, want, atol=TOL)
    dense = kornia.metrics.ssim3d(torch.tensor(y), torch.tensor(x), 11, 1.0, eps=0.0, padding="valid")
    # kornia builds its dense 11^3 window in float32: agreement to float32 precision
    np.testing.assert_allclose(got, dense.flatten(1).mean(1).numpy(), atol=1e-6)


@pytest.mark.parametrize("axis", [0, 2])
def test_ssim_slicewise_is_the_mean_over_slices(axis):
    rng = np.random.default_rng(5)
    x = rng.random((1, 1, 14, 16, 12))
    y = noisy(x, 6, 0.1)
    got = float(ssim_slicewise(y, x, 1.0, axis=axis)[0])
    want = np.mean([sk_ssim(np.take(x[0, 0], k, axis), np.take(y[0, 0], k, axis), 1.0)
                    for k in range(x.shape[2 + axis])])
    assert abs(got - want) < TOL


def test_ssim_rejects_bad_inputs():
    x = torch.rand(1, 1, 16, 16)
    with pytest.raises(ValueError, match="data_range"):
        ssim(x, x, None)
    with pytest.raises(ValueError, match="data_range"):
        ssim(x, x, -1.0)
    with pytest.raises(ValueError, match="same shape"):
        ssim(x, x[..., :8], 1.0)
    with pytest.raises(ValueError, match="ms_ssim"):
        ssim(torch.rand(1, 1, 16, 16, 8), torch.rand(1, 1, 16, 16, 8), 1.0)
    with pytest.raises(ValueError, match="axis"):
        ssim_slicewise(torch.rand(1, 1, 12, 12, 12), torch.rand(1, 1, 12, 12, 12), 1.0, axis=3)


# --------------------------------------------------------------------------- MS-SSIM
def test_ms_ssim_plan_adapts_to_small_images_and_thin_volumes():
    assert [s.shape for s in ms_ssim_plan((64, 64))] == [(64, 64), (32, 32), (16, 16)]
    assert len(ms_ssim_plan((256, 256))) == 5
    thin = ms_ssim_plan((64, 64, 8))
    assert [s.shape for s in thin] == [(64, 64, 8), (32, 32, 8), (16, 16, 8)]
    assert thin[0].windows == (11, 11, 7)
    assert ms_ssim_plan((8, 8))[0].windows == (7, 7) and len(ms_ssim_plan((8, 8))) == 1
    assert len(ms_ssim_plan((256, 256), max_scales=2)) == 2
    for plan in (ms_ssim_plan((64, 64)), thin, ms_ssim_plan((300, 40, 9))):
        assert all(min(n - w for n, w in zip(s.shape, s.windows)) >= 0 for s in plan)
    with pytest.raises(ValueError, match="window_size"):
        ms_ssim_plan((64, 64), window_size=10)


@pytest.mark.parametrize("shape", [(64, 64), (45, 70), (40, 36, 8), (24, 24, 11)])
def test_ms_ssim_matches_reference_on_random_images(shape):
    rng = np.random.default_rng(7)
    x = rng.random((2, 1, *shape))
    y = noisy(x, 8, 0.2, blur=1.0)
    got = ms_ssim(y, x, 1.0).numpy()
    want = [ref_ms_ssim(x[b, 0], y[b, 0], 1.0) for b in range(2)]
    np.testing.assert_allclose(got, want, atol=TOL)


def test_ms_ssim_single_scale_equals_ssim_and_identity_is_one():
    rng = np.random.default_rng(9)
    x = torch.tensor(rng.random((2, 1, 32, 32)))
    y = torch.tensor(noisy(x.numpy(), 10, 0.05))
    assert torch.allclose(ms_ssim(y, x, 1.0, max_scales=1), ssim(y, x, 1.0), atol=1e-10)
    assert torch.allclose(ms_ssim(x, x, 1.0), torch.ones(2, dtype=torch.float64))
    tiny = torch.rand(1, 1, 6, 5, 3)
    assert float(ms_ssim(tiny, tiny, 1.0)[0]) == pytest.approx(1.0)


# --------------------------------------------------------------------------- PSNR, MAE, RMSE
def test_psnr_mae_rmse_match_numpy_and_skimage():
    rng = np.random.default_rng(11)
    x = rng.random((3, 1, 20, 20, 6))
    y = noisy(x, 12, 0.05)
    got = psnr(y, x, 1.0).numpy()
    want = [peak_signal_noise_ratio(x[b], y[b], data_range=1.0) for b in range(3)]
    np.testing.assert_allclose(got, want, atol=TOL)
    np.testing.assert_allclose(mae(y, x).numpy(), np.abs(y - x).reshape(3, -1).mean(1), atol=1e-12)
    np.testing.assert_allclose(rmse(y, x).numpy(), np.sqrt(((y - x) ** 2).reshape(3, -1).mean(1)), atol=1e-12)
    assert math.isinf(float(psnr(x, x, 1.0)[0]))


def test_psnr_follows_the_mapping_range_and_is_right_in_hu():
    target = torch.zeros(1, 1, 8, 8)
    pred = torch.full((1, 1, 8, 8), 0.01)  # stored 0.01 = 10 HU under a -1000..1000 window to [-1, 1]
    window01 = IntensityMapping(method="window", unit="HU", in_low=-1000, in_high=1000, out_low=0, out_high=1,
                                clip=True)
    assert resolve_data_range(WINDOW, target) == 2.0
    assert resolve_data_range(ImageMeta(intensity=window01), target) == 1.0
    wide, narrow = psnr(pred, target, resolve_data_range(WINDOW, target)), psnr(pred, target, 1.0)
    assert float(wide - narrow) == pytest.approx(20 * math.log10(2.0))
    hu = physical_metrics(pred, target, WINDOW)
    assert float(hu["mae"][0]) == pytest.approx(10.0)
    assert float(hu["rmse"][0]) == pytest.approx(10.0)
    assert float(hu["psnr"][0]) == pytest.approx(10 * math.log10(2000.0**2 / 100.0))  # 46.02 dB
    # the same stored error under a 0..1 window spans 2000 HU in half the stored range: 20 HU
    assert float(physical_metrics(pred, target, window01)["mae"][0]) == pytest.approx(20.0)


def test_resolve_data_range_of_unclipped_mapping_uses_the_reference():
    zscore = IntensityMapping(method="zscore", in_low=100, in_high=300, out_low=0, out_high=1, clip=False)
    ref = np.array([[-2.0, 0.5], [3.0, 1.0]])
    assert resolve_data_range(zscore, ref) == 5.0
    with pytest.raises(ValueError, match="constant"):
        resolve_data_range(zscore, np.ones(4))


# --------------------------------------------------------------------------- real images
@pytest.mark.realdata
def test_metrics_match_skimage_on_real_images(real_data):
    vol = real_slices(real_data)  # (256, 256, 25)
    x2 = vol[:, :, 12]
    y2 = noisy(x2, 13, 0.03, blur=1.0)
    rng2 = float(x2.max() - x2.min())
    t = lambda a: torch.tensor(a)[None, None]  # noqa: E731
    assert abs(float(ssim(t(y2), t(x2), rng2)[0]) - sk_ssim(x2, y2, rng2)) < TOL
    assert abs(float(psnr(t(y2), t(x2), rng2)[0]) - peak_signal_noise_ratio(x2, y2, data_range=rng2)) < TOL
    assert len(ms_ssim_plan(x2.shape)) == 5
    assert abs(float(ms_ssim(t(y2), t(x2), rng2)[0]) - ref_ms_ssim(x2, y2, rng2)) < TOL
    x3 = vol[100:148, 100:148, :]  # 48 x 48 x 25
    y3 = noisy(x3, 14, 0.03, blur=1.0)
    rng3 = float(x3.max() - x3.min())
    assert abs(float(ssim(t(y3), t(x3), rng3)[0]) - sk_ssim(x3, y3, rng3)) < TOL
    assert abs(float(ms_ssim(t(y3), t(x3), rng3)[0]) - ref_ms_ssim(x3, y3, rng3)) < TOL
    thin = (x3[:, :, 8:16], y3[:, :, 8:16])  # an 8-slice volume: MS-SSIM adapts instead of failing
    assert abs(float(ms_ssim(t(thin[1]), t(thin[0]), rng3)[0]) - ref_ms_ssim(*thin, rng3)) < TOL
    want = np.mean([sk_ssim(x3[:, :, k], y3[:, :, k], rng3) for k in range(x3.shape[2])])
    assert abs(float(ssim_slicewise(t(y3), t(x3), rng3, axis=2)[0]) - want) < TOL


# --------------------------------------------------------------------------- codebook
def test_codebook_usage_and_perplexity():
    idx = np.array([[0, 1], [2, 3]]).repeat(5, axis=0)  # 4 of 8 codes, equally often
    assert codebook_usage(idx, 8) == 0.5
    assert codebook_perplexity(torch.tensor(idx), 8) == pytest.approx(4.0)
    assert codebook_perplexity(np.zeros(10, dtype=np.int64), 8) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="0..7"):
        codebook_usage(np.array([0, 8]), 8)
    with pytest.raises(ValueError, match="integers"):
        codebook_usage(np.array([0.5]), 8)
