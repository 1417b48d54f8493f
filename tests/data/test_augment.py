"""build_augmentation: flips on the right axes, identity when off, shapes, seeding, fill, intensity."""

import pytest
import torch

from medgen_cli.data import build_augmentation
from medgen_cli.settings.common import AugmentSettings


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_flip_each_axis(spatial_dims):
    x = torch.randn(2, 1, *(5, 6, 7)[:spatial_dims])
    for axis in range(spatial_dims):
        flip = [0.0] * spatial_dims
        flip[axis] = 1.0
        aug = build_augmentation(spatial_dims, enabled=True, flip=flip)
        assert torch.equal(aug(x), torch.flip(x, dims=(2 + axis,)))


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_identity_when_off(spatial_dims):
    assert build_augmentation(spatial_dims, AugmentSettings(enabled=False).model_dump()) is None  # default is on (issue 13)
    assert build_augmentation(spatial_dims, enabled=False, flip=(1.0,), rotate=10) is None
    assert build_augmentation(spatial_dims, enabled=True) is None  # every range is zero


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_shape_and_seed(spatial_dims):
    opts = AugmentSettings(enabled=True, flip=(0.5,), rotate=15, scale=(0.9, 1.1), translate=0.1,
                           intensity_shift=0.1, intensity_scale=0.1).model_dump()
    aug = build_augmentation(spatial_dims, opts)
    x = torch.rand(3, 1, *(8,) * spatial_dims) * 2 - 1
    torch.manual_seed(0)
    a = aug(x)
    torch.manual_seed(0)
    b = aug(x)
    assert a.shape == x.shape and a.dtype == x.dtype
    assert torch.equal(a, b) and not torch.equal(a, x)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_affine_fills_with_background(spatial_dims):
    aug = build_augmentation(spatial_dims, enabled=True, scale=(0.5, 0.5))  # zoom out: borders come from outside
    x = torch.full((1, 1, *(8,) * spatial_dims), -1.0)
    x[(..., *(slice(2, 6),) * spatial_dims)] = 1.0
    out = aug(x)
    assert out.min() >= -1 - 1e-5 and torch.allclose(out[(..., *(0,) * spatial_dims)], torch.tensor(-1.0))


def test_intensity_pivots_on_fill():
    aug = build_augmentation(2, enabled=True, intensity_scale=0.5)
    x = torch.full((4, 1, 4, 4), -1.0)
    x[..., 1, 1] = 1.0
    out = aug(x)
    assert torch.equal(out[..., 0, 0], x[..., 0, 0])  # background kept
    assert not torch.equal(out, x)


def test_gamma_matches_its_definition():
    """t -> t ** g on the [-1, 1] interval with log g ~ U(-gamma, gamma), one g per sample."""
    from medgen_cli.data.augment import GammaJitter

    x = torch.linspace(-1, 1, 16).reshape(1, 1, 4, 4).repeat(64, 1, 1, 1)
    torch.manual_seed(3)
    g = torch.exp((torch.rand(64, 1, 1, 1) * 2 - 1) * 0.4)
    expected = 2 * ((x + 1) / 2) ** g - 1
    torch.manual_seed(3)
    out = GammaJitter(0.4)(x)
    torch.testing.assert_close(out, expected)
    assert torch.equal(out[..., 0, 0], x[..., 0, 0]) and torch.allclose(out[..., -1, -1], x[..., -1, -1])  # ends fixed
    mid = out[:, 0, 1, 3]  # x = -1/15 (just below the middle)
    assert (mid > x[0, 0, 1, 3]).any() and (mid < x[0, 0, 1, 3]).any()  # both directions occur
    assert (out.flatten(1).diff(dim=1) >= 0).all()  # a monotone curve keeps the order of intensities
    beyond = GammaJitter(0.4)(torch.tensor([1.2, -1.1]).reshape(2, 1, 1, 1))
    torch.testing.assert_close(beyond.flatten(), torch.tensor([1.2, -1.1]))  # outside [fill, top]: unchanged
    aug = build_augmentation(2, enabled=True, gamma=0.3, intensity_scale=0.1)
    assert [type(t).__name__ for t in aug.transforms] == ["GammaJitter", "IntensityJitter"]


def test_errors():
    with pytest.raises(ValueError, match="spatial_dims must be 2 or 3, got 4"):
        build_augmentation(4, enabled=True)
    with pytest.raises(ValueError, match=r"unknown augmentation option\(s\) \['flips'\]"):
        build_augmentation(2, enabled=True, flips=(1.0,))
    with pytest.raises(ValueError, match=r"one per spatial axis \(3\)"):
        build_augmentation(3, enabled=True, flip=(0.5, 0.5))
    aug = build_augmentation(2, enabled=True, flip=(1.0,))
    with pytest.raises(ValueError, match=r"got shape \(1, 4, 4\)"):
        aug(torch.zeros(1, 4, 4))
