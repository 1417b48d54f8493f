"""Autoencoders: shapes in 2D/3D (incl. anisotropic factors), latent/index round trips, training
signal, config round trip, argument errors."""

import json

import pytest
import torch
from medgen_cli.models import KLVAE, VQVAE, VQVAE2, build_autoencoder

SIZE = 16
KINDS = ("vqvae", "vqgan", "vqvae2", "klvae")  # the tiny configs are in conftest.py


def image(spatial_dims, batch=2, channels=2, shape=None):
    return torch.randn(batch, channels, *(shape or (SIZE,) * spatial_dims))


def phantom(spatial_dims, batch=2, channels=2, shape=None):
    """Smooth blobs: a compressible fixed batch (noise cannot be learnt in 20 steps)."""
    shape = shape or (SIZE,) * spatial_dims
    grid = torch.stack(torch.meshgrid(*(torch.linspace(-1, 1, n) for n in shape), indexing="ij"))  # (D, *shape)
    centres = torch.rand(batch, channels, spatial_dims, *(1,) * spatial_dims) - 0.5
    r2 = (grid - centres).pow(2).sum(2)  # (B, C, *shape)
    return torch.exp(-r2 / 0.2) * 2 - 1


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("kind", KINDS)
def test_forward_shapes_and_interface(kind, spatial_dims, tiny_autoencoder):
    model = tiny_autoencoder(kind, spatial_dims)
    x = image(spatial_dims)
    out = model(x)
    assert out.reconstruction.shape == x.shape
    assert out.loss_terms["reconstruction"].ndim == 0
    assert all(torch.isfinite(v) for v in out.loss_terms.values())
    spatial = (SIZE,) * spatial_dims
    latents = model.encode_to_latents(x)
    assert latents.shape == (2, *model.latent_shape(spatial))
    assert latents.shape[1] == model.latent_channels
    assert model.decode_latents(latents).shape == x.shape
    assert model.downsample_factor == (4,) * spatial_dims if kind != "klvae" else (2,) * spatial_dims
    assert model.last_layer_weight() is model.decoder.conv_out.weight
    assert model.is_vq == (kind != "klvae")
    if kind == "klvae":
        assert set(out.loss_terms) == {"reconstruction", "kl"}
        assert out.indices is None


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_vqvae_indices_round_trip(spatial_dims, tiny_autoencoder):
    model = tiny_autoencoder("vqvae", spatial_dims).eval()
    x = image(spatial_dims)
    out = model(x)
    indices = model.encode_to_indices(x)
    assert indices.shape == (2, *model.index_shape((SIZE,) * spatial_dims)) == out.indices.shape
    assert indices.dtype == torch.int64 and torch.equal(indices, out.indices)
    # straight-through z + (q - z) differs from q by rounding only
    close = dict(atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(model.decode_indices(indices), out.reconstruction, **close)
    torch.testing.assert_close(model.decode_latents(model.encode_to_latents(x)), out.reconstruction, **close)
    torch.testing.assert_close(model.quantizer.indices_to_latents(indices), model.encode_to_latents(x))


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_vqvae2_hierarchy(spatial_dims, tiny_autoencoder):
    model = tiny_autoencoder("vqvae2", spatial_dims).eval()
    x = image(spatial_dims)
    out = model(x)
    top, bottom = model.encode_to_indices(x)
    top_grid, bottom_grid = model.index_shape((SIZE,) * spatial_dims)
    assert top.shape == (2, *top_grid) == (2, *(2,) * spatial_dims)
    assert bottom.shape == (2, *bottom_grid) == (2, *(4,) * spatial_dims)
    assert torch.equal(top, out.indices[0]) and torch.equal(bottom, out.indices[1])
    assert out.perplexity.shape == (2,)
    assert {"commitment_top", "commitment_bottom"} <= set(out.loss_terms)
    close = dict(atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(model.decode_indices(top, bottom), out.reconstruction, **close)
    torch.testing.assert_close(model.decode_latents(model.encode_to_latents(x)), out.reconstruction, **close)


@pytest.mark.parametrize("kind", KINDS)
def test_anisotropic_3d_downsampling(kind, tiny_autoencoder):
    extra = {"top_downsample": [(2, 2, 1)]} if kind == "vqvae2" else {}
    model = tiny_autoencoder(kind, 3, downsample=((2, 2, 1), (2, 2, 1)), **extra)
    x = image(3, shape=(16, 16, 4))
    out = model(x)
    assert out.reconstruction.shape == x.shape
    assert model.downsample_factor == (4, 4, 1)
    assert model.encode_to_latents(x).shape[2:] == (4, 4, 4)
    if kind == "vqvae2":
        assert model.encode_to_indices(x)[0].shape == (2, 2, 2, 4)


def test_factorized_attention_and_options(tiny_autoencoder):
    model = tiny_autoencoder(
        "vqvae", 3, factorized_3d=True, attention_levels=(1,), mid_attention=True, num_heads=2,
        dropout=0.1, norm="batch", upsample_mode="transpose", ema=False,
    )
    x = image(3, shape=(16, 16, 8))
    out = model(x)
    assert out.reconstruction.shape == x.shape
    assert "codebook" in out.loss_terms
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv3d)]
    assert any(c.kernel_size == (3, 3, 1) for c in convs) and any(c.kernel_size == (1, 1, 3) for c in convs)


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("kind", KINDS)
def test_loss_decreases(kind, spatial_dims, tiny_autoencoder):
    model = tiny_autoencoder(kind, spatial_dims).train()
    torch.manual_seed(1)
    x = phantom(spatial_dims, shape=(16,) * spatial_dims if spatial_dims == 2 else (16, 16, 8))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(20):
        loss = sum(model(x).loss_terms.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-3:]) / 3 < 0.5 * losses[0], losses


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("kind", KINDS)
def test_config_round_trip(kind, spatial_dims, tiny_autoencoder):
    model = tiny_autoencoder(kind, spatial_dims, attention_levels=(1,), downsample=None)
    config = model.config()
    assert config["kind"] == kind and config["spatial_dims"] == spatial_dims
    assert json.loads(json.dumps(config)) == config  # plain JSON types only
    rebuilt = build_autoencoder(**json.loads(json.dumps(config)))
    assert type(rebuilt) is type(model) and rebuilt.config() == config
    a, b = model.state_dict(), rebuilt.state_dict()
    assert list(a) == list(b)
    assert all(a[k].shape == b[k].shape for k in a)
    rebuilt.load_state_dict(a)  # a checkpoint loads into the rebuilt model


@pytest.mark.parametrize("kind", KINDS)
def test_per_level_res_blocks(kind, tiny_autoencoder):
    """num_res_blocks=(0, 1): no residual block at full resolution, one at the lower level, per pyramid."""
    from medgen_cli.nn.blocks import ResBlock

    def full_res_blocks(model):
        # blocks that run at the input resolution: before the encoder's first downsampling
        count = 0
        encoder = model.enc_bottom if kind == "vqvae2" else model.encoder
        for layer in encoder.body:
            if type(layer).__name__ == "Downsample":
                break
            count += isinstance(layer, ResBlock)
        return count

    uniform, cheap = tiny_autoencoder(kind, 2), tiny_autoencoder(kind, 2, num_res_blocks=(0, 1))
    n_blocks = lambda m: sum(isinstance(x, ResBlock) for x in m.modules())
    assert full_res_blocks(uniform) == 1 and full_res_blocks(cheap) == 0
    assert n_blocks(uniform) - n_blocks(cheap) == 2  # one in the encoder, one in the decoder (vqvae2: bottom pyramid)
    x = phantom(2)
    assert cheap(x).reconstruction.shape == x.shape
    rebuilt = build_autoencoder(**json.loads(json.dumps(cheap.config())))
    rebuilt.load_state_dict(cheap.state_dict())
    with pytest.raises(ValueError, match="num_res_blocks"):
        tiny_autoencoder(kind, 2, num_res_blocks=(0, 0))
    with pytest.raises(ValueError, match="num_res_blocks"):
        tiny_autoencoder(kind, 2, num_res_blocks=(1, 1, 1))


def test_registry_kinds_and_vqgan_defaults():
    gan = build_autoencoder("vqgan", 2, channels=(8,), num_groups=4)
    assert isinstance(gan, VQVAE) and gan.kind == "vqgan" and gan.config()["recon_loss"] == "l1"
    assert isinstance(build_autoencoder("vqvae2", 2, channels=(8,), top_channels=(8,), num_groups=4), VQVAE2)
    assert isinstance(build_autoencoder("klvae", 2, channels=(8,), num_groups=4), KLVAE)


def test_klvae_posterior():
    torch.manual_seed(0)
    model = KLVAE(2, in_channels=2, channels=(8, 16), num_groups=4, logvar_min=-2.0, logvar_max=1.0)
    x = image(2)
    mean, logvar = model.encode(x)
    assert mean.shape == logvar.shape == (2, 4, 8, 8)
    assert logvar.min() >= -2.0 and logvar.max() <= 1.0
    torch.testing.assert_close(model.encode_mean(x), mean)
    g = torch.Generator().manual_seed(3)
    z1 = model.sample(mean, logvar, generator=g)
    z2 = model.sample(mean, logvar, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(z1, z2)
    out = model(x, sample_posterior=False)
    kl = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).flatten(1).sum(1).mean()
    torch.testing.assert_close(out.loss_terms["kl"], model.kl_weight * kl / x[0].numel())
    torch.testing.assert_close(out.reconstruction, model.decode(mean))


def test_bad_arguments():
    with pytest.raises(ValueError, match="kind='vae'"):
        build_autoencoder("vae", 2)
    with pytest.raises(ValueError, match="num_embedings"):
        build_autoencoder("vqvae", 2, num_embedings=4)
    with pytest.raises(ValueError, match="one factor per level"):
        VQVAE(2, channels=(8, 16), num_groups=4, downsample=(2,))
    with pytest.raises(ValueError, match=r"\(2, 2\)"):
        VQVAE(3, channels=(8, 16), num_groups=4, downsample=((2, 2), (2, 2)))
    with pytest.raises(ValueError, match="factorized_3d"):
        VQVAE(2, channels=(8,), num_groups=4, factorized_3d=True)
    with pytest.raises(ValueError, match="recon_loss='l3'"):
        VQVAE(2, channels=(8,), num_groups=4, recon_loss="l3")
    with pytest.raises(ValueError, match="attention_levels"):
        VQVAE(2, channels=(8,), num_groups=4, attention_levels=(3,))
    model = VQVAE(2, channels=(8, 16), num_groups=4)
    with pytest.raises(ValueError, match="not divisible"):
        model(torch.randn(1, 1, 10, 16))
    with pytest.raises(ValueError, match="spatial axes"):
        model(torch.randn(1, 1, 16, 16, 16))
    with pytest.raises(ValueError, match="input_shape"):
        model.latent_shape((16, 16, 16))


@pytest.mark.parametrize("kind", KINDS)
def test_bf16_autocast_forward(kind, tiny_autoencoder):
    model = tiny_autoencoder(kind, 2)
    x = image(2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
        sum(out.loss_terms.values()).backward()
    assert all(v.dtype == torch.float32 for v in out.loss_terms.values())
    if model.is_vq:
        assert out.perplexity.dtype == torch.float32
