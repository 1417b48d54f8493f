"""Set-level metrics: Fréchet distance, MMD, intensity distance, diversity, memorisation check."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import wasserstein_distance

from medgen_cli.meta import IntensityMapping
from medgen_cli.metrics import (
    diversity,
    frechet_distance,
    intensity_distance,
    memorisation_check,
    mmd_rbf,
    wasserstein_1d,
)

WINDOW = IntensityMapping(method="window", unit="HU", in_low=-1000, in_high=1000, out_low=-1, out_high=1, clip=True)


def gaussian_features(n=200, d=6, seed=0, shift=0.0):
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((d, d)) / np.sqrt(d)
    return rng.standard_normal((n, d)) @ mix + shift


def test_frechet_distance_of_identical_sets_is_zero():
    f = gaussian_features()
    assert frechet_distance(f, f) == pytest.approx(0.0, abs=1e-8)


def test_frechet_distance_of_shifted_sets_is_the_squared_mean_shift():
    f = gaussian_features()
    shift = np.array([1.0, -2.0, 0.5, 0.0, 3.0, 0.25])
    assert frechet_distance(f, f + shift) == pytest.approx(float(shift @ shift), rel=1e-8)


def test_frechet_distance_of_scaled_sets_matches_the_closed_form():
    f = gaussian_features(seed=1)
    f = f - f.mean(0)
    cov = np.cov(f.T)
    # S_b = 4 S_a: tr(S + 4S - 2 * 2S) = tr(S)
    assert frechet_distance(torch.tensor(f), torch.tensor(2 * f)) == pytest.approx(np.trace(cov), rel=1e-8)
    with pytest.raises(ValueError, match="dimensions"):
        frechet_distance(f, f[:, :3])


def test_mmd_is_near_zero_for_one_distribution_and_larger_for_two():
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((150, 4)), rng.standard_normal((150, 4))
    same = mmd_rbf(a, b)
    different = mmd_rbf(a, b + 1.0)
    assert abs(same) < 0.01
    assert different > 10 * max(abs(same), 1e-3)
    assert mmd_rbf(a, a) <= 1e-12 + mmd_rbf(a, b + 1.0)
    with pytest.raises(ValueError, match="bandwidth"):
        mmd_rbf(a, b, bandwidth=0.0)


def test_wasserstein_matches_scipy_and_intensity_distance_is_in_hu():
    rng = np.random.default_rng(3)
    u, v = rng.normal(0, 1, 300), rng.normal(0.5, 2, 170)
    assert wasserstein_1d(u, v) == pytest.approx(wasserstein_distance(u, v), rel=1e-10)
    reals = [rng.uniform(-1, 0.9, (16, 16)) for _ in range(3)]
    samples = [r + 0.05 for r in reals]  # +0.05 stored = +50 HU
    assert intensity_distance(samples, reals, WINDOW) == pytest.approx(50.0, rel=1e-9)
    assert intensity_distance(np.stack(reals), reals, WINDOW) == pytest.approx(0.0, abs=1e-9)


def test_diversity_is_one_for_copies_and_lower_for_different_samples():
    x = torch.rand(1, 1, 32, 32, dtype=torch.float64)
    assert diversity(x.repeat(4, 1, 1, 1), 1.0) == pytest.approx(1.0)
    assert diversity(torch.rand(4, 1, 32, 32), 1.0) < 0.3
    with pytest.raises(ValueError, match="at least 2"):
        diversity(x, 1.0)


def phantom(seed: int, shape=(48, 48)) -> np.ndarray:
    """A subject: a few ellipses of tissue (stored values, -1 air .. 1) with texture, seeded."""
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    img = np.full(shape, -1.0)
    for _ in range(4):
        cy, cx, ry, rx = rng.uniform(-0.4, 0.4), rng.uniform(-0.4, 0.4), rng.uniform(0.2, 0.5), rng.uniform(0.2, 0.5)
        img[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1] = rng.uniform(-0.2, 0.8)
    return img + 0.05 * rng.standard_normal(shape)


@pytest.mark.parametrize("max_candidates", [16, 2])
def test_memorisation_flags_a_training_item_but_not_a_new_subject(max_candidates):
    training = np.stack([phantom(s) for s in range(6)])[:, None]
    copy = training[3] + 0.02 * np.random.default_rng(9).standard_normal(training[3].shape)
    samples = np.stack([copy, phantom(100)[None]])
    result = memorisation_check(samples, training, data_range=2.0, max_candidates=max_candidates)
    assert result.flagged.tolist() == [True, False]
    assert result.nearest[0] == 3
    assert result.similarity[0] > 0.9 and result.similarity[1] < 0.6
    assert result.records()[0] == {"sample": 0, "nearest_train": 3, "ssim": pytest.approx(result.similarity[0]),
                                   "flagged": True}


@pytest.mark.realdata
def test_memorisation_on_real_slices(real_data):
    import SimpleITK as sitk

    def load(name):
        arr = sitk.GetArrayFromImage(sitk.ReadImage(str(real_data(name)))).astype(np.float64)
        return arr / np.percentile(arr, 99.5)  # (z, y, x); a 2D slice per z

    brain1, brain2 = load("brain1_image.nrrd"), load("brain2_image.nrrd")
    training = brain1[[6, 9, 12, 15, 18], None, ::2, ::2]  # subject 1, 128 x 128
    copy = training[2] + 0.02 * np.random.default_rng(0).standard_normal(training[2].shape)
    other = brain2[None, 12, ::2, ::2]  # subject 2, same level
    result = memorisation_check(np.stack([copy, other]), training, data_range=1.0)
    assert result.flagged.tolist() == [True, False]
    assert result.nearest[0] == 2
