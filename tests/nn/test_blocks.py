"""Blocks and layers: shapes for 2D/3D, per-axis factors, ReZero identity, factorised conv."""

import pytest
import torch
from torch import nn

from medgen_cli.nn.blocks import ConvLayer, Downsample, ResBlock, Upsample
from medgen_cli.nn.layers import as_tuple, conv_cls, make_norm


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_layers_by_rank(spatial_dims):
    assert conv_cls(spatial_dims) is (nn.Conv2d if spatial_dims == 2 else nn.Conv3d)
    for kind in ("batch", "group", "instance", "none"):
        norm = make_norm(spatial_dims, kind, 8, num_groups=4)
        x = torch.randn(2, 8, *(4,) * spatial_dims)
        assert norm(x).shape == x.shape


def test_layer_errors():
    with pytest.raises(ValueError, match="spatial_dims=4"):
        conv_cls(4)
    with pytest.raises(ValueError, match="norm='layer'"):
        make_norm(2, "layer", 8)
    with pytest.raises(ValueError, match="num_groups=3"):
        make_norm(2, "group", 8, num_groups=3)
    with pytest.raises(ValueError, match=r"\(2, 2\)"):
        as_tuple((2, 2), 3, "factor")


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("rezero", [False, True])
def test_resblock_shapes(spatial_dims, rezero):
    torch.manual_seed(0)
    block = ResBlock(spatial_dims, 4, 8, emb_channels=6, num_groups=4, dropout=0.1, rezero=rezero)
    x = torch.randn(2, 4, *(8,) * spatial_dims)
    assert block(x, torch.randn(2, 6)).shape == (2, 8, *(8,) * spatial_dims)
    with pytest.raises(ValueError, match="needs emb"):
        block(x)
    ss = ResBlock(spatial_dims, 4, emb_channels=6, num_groups=4, scale_shift=True)
    assert ss(x, torch.randn(2, 6)).shape == x.shape


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_rezero_block_is_identity_at_init(spatial_dims):
    torch.manual_seed(0)
    block = ResBlock(spatial_dims, 8, num_groups=4, rezero=True)
    x = torch.randn(2, 8, *(8,) * spatial_dims)
    torch.testing.assert_close(block(x), x)
    assert block.gate.item() == 0.0
    block(x).sum().backward()
    assert block.gate.grad is not None and block.gate.grad.abs() > 0  # the gate learns


def test_factorized_conv_shape_and_kernels():
    torch.manual_seed(0)
    layer = ConvLayer(3, 4, 8, kernel_size=3, factorized=True)
    plane, axial = layer.conv
    assert plane.kernel_size == (3, 3, 1) and axial.kernel_size == (1, 1, 3)
    assert layer(torch.randn(1, 4, 8, 8, 6)).shape == (1, 8, 8, 8, 6)
    strided = ConvLayer(3, 4, 8, kernel_size=3, stride=(2, 2, 2), factorized=True)
    assert strided(torch.randn(1, 4, 8, 8, 6)).shape == (1, 8, 4, 4, 3)
    block = ResBlock(3, 4, 8, num_groups=4, factorized=True)
    assert block(torch.randn(1, 4, 8, 8, 4)).shape == (1, 8, 8, 8, 4)
    with pytest.raises(ValueError, match="spatial_dims >= 2"):
        ConvLayer(1, 4, 4, factorized=True)


@pytest.mark.parametrize(
    ("spatial_dims", "factor"), [(2, 2), (2, (2, 1)), (3, 2), (3, (2, 2, 1)), (3, (4, 2, 1))]
)
@pytest.mark.parametrize("mode", [("conv", "nearest"), ("avgpool", "transpose")])
def test_down_up_per_axis(spatial_dims, factor, mode):
    torch.manual_seed(0)
    shape = (16,) * spatial_dims
    f = as_tuple(factor, spatial_dims)
    down = Downsample(spatial_dims, 4, 8, factor=factor, mode=mode[0])
    up = Upsample(spatial_dims, 8, 4, factor=factor, mode=mode[1])
    x = torch.randn(1, 4, *shape)
    y = down(x)
    assert y.shape == (1, 8, *(s // k for s, k in zip(shape, f)))
    assert up(y).shape == x.shape


def test_factor_errors():
    with pytest.raises(ValueError, match="factor"):
        Downsample(3, 4, factor=(2, 0, 1))
    with pytest.raises(ValueError, match="mode='bilinear'"):
        Upsample(2, 4, mode="bilinear")


def test_depth_to_space_matches_pixel_shuffle_and_generalises_to_3d():
    import torch.nn.functional as F

    from medgen_cli.nn.blocks import depth_to_space

    x = torch.randn(2, 12, 5, 7)
    torch.testing.assert_close(depth_to_space(x, (2, 2)), F.pixel_shuffle(x, 2))
    v = torch.randn(1, 2 * 8, 3, 4, 5)
    out = depth_to_space(v, (2, 2, 2))
    assert out.shape == (1, 2, 6, 8, 10)
    # channel c * 8 + (i * 4 + j * 2 + k) lands at (2d + i, 2h + j, 2w + k)
    assert out[0, 1, 2 * 1 + 1, 2 * 2 + 0, 2 * 3 + 1] == v[0, 1 * 8 + 1 * 4 + 0 * 2 + 1, 1, 2, 3]
    anisotropic = depth_to_space(torch.randn(1, 4 * 3, 2, 2, 2), (2, 2, 1))
    assert anisotropic.shape == (1, 3, 4, 4, 2)
    with pytest.raises(ValueError, match="do not fit"):
        depth_to_space(torch.randn(1, 6, 4, 4), (2, 2))


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_shuffle_upsample_starts_as_nearest_upsampling_of_one_convolution(spatial_dims):
    """ICNR: the sub-pixel convolution's sub-positions share one filter, so it equals nearest(conv(x))."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    up = Upsample(spatial_dims, 4, 3, 2, mode="shuffle")
    x = torch.randn(2, 4, *(5,) * spatial_dims)
    conv = up.conv.conv
    base = F.conv2d if spatial_dims == 2 else F.conv3d
    n = 2**spatial_dims
    expected = F.interpolate(base(x, conv.weight[::n], conv.bias[::n], padding=1), scale_factor=2, mode="nearest")
    torch.testing.assert_close(up(x), expected)
