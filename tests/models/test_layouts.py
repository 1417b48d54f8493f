"""Encoder/decoder layouts: "strided" (downsample before each level) against "full", the middle
block switch, and models saved before either existed (fixtures written by the earlier code)."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from medgen_cli.models import build_autoencoder
from medgen_cli.nn.blocks import ResBlock

DATA = Path(__file__).parent / "data"
LEGACY = sorted(p.stem.removeprefix("legacy_") for p in DATA.glob("legacy_*.json"))
KINDS = ("vqvae", "vqgan", "vqvae2", "klvae")


def tiny(kind, spatial_dims, **kw):
    torch.manual_seed(0)
    base = dict(channels=(8, 16), num_res_blocks=1, num_groups=4)
    if kind == "klvae":
        base["latent_channels"] = 4
    else:
        base.update(embedding_dim=4, num_embeddings=16)
    if kind == "vqvae2":
        base.update(channels=(8, 8), top_channels=(8,))
    return build_autoencoder(kind, spatial_dims, in_channels=1, **{**base, **kw})


@pytest.mark.parametrize("name", LEGACY)
def test_models_saved_before_the_layouts_rebuild_exactly(name):
    """A model.json written before `layout`, `mid_blocks` and `quantizer` existed rebuilds the same network."""
    assert len(LEGACY) == 4
    info = json.loads((DATA / f"legacy_{name}.json").read_text())
    assert "layout" not in info["config"] and "quantizer" not in info["config"]
    model = build_autoencoder(**info["config"])
    model.load_state_dict(load_file(DATA / f"legacy_{name}.safetensors"))  # strict: same modules, same shapes
    model.eval()
    io = load_file(DATA / f"legacy_{name}_io.safetensors")
    with torch.no_grad():
        out = model.decode_latents(model.encode_to_latents(io["input"]))
    torch.testing.assert_close(out, io["output"], atol=1e-5, rtol=1e-5)
    config = model.config()
    assert config["layout"] == "full" and config["mid_blocks"] == 2 and config["res_kernels"] == [3, 3]
    if model.is_vq:
        assert config["quantizer"] == "vq" and config["vq_gradient"] == "ste"


def _blocks_at(model, resolution, x):
    """Residual blocks whose input has spatial size ``resolution`` (forward hooks on one pass)."""
    seen = []
    hooks = [m.register_forward_hook(lambda m, inp, out: seen.append(inp[0].shape[-1]))
             for m in model.modules() if isinstance(m, ResBlock)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return sum(s == resolution for s in seen), len(seen)


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("kind", KINDS)
def test_strided_layout_keeps_the_latent_grid_and_skips_full_resolution(kind, spatial_dims):
    full, strided = tiny(kind, spatial_dims), tiny(kind, spatial_dims, layout="strided")
    x = torch.randn(2, 1, *(16,) * spatial_dims)
    assert strided.downsample_factor == full.downsample_factor
    assert strided.encode_to_latents(x).shape == full.encode_to_latents(x).shape
    out = strided(x)
    assert out.reconstruction.shape == x.shape
    assert _blocks_at(strided, 16, x)[0] == 0 < _blocks_at(full, 16, x)[0]
    assert _blocks_at(strided, 16, x)[1] == _blocks_at(full, 16, x)[1]  # the same blocks, one level down
    assert strided.last_layer_weight() is strided.decoder.conv_out.weight
    sum(out.loss_terms.values()).backward()
    assert strided.decoder.conv_out.weight.grad is not None
    rebuilt = build_autoencoder(**json.loads(json.dumps(strided.config())))
    rebuilt.load_state_dict(strided.state_dict())
    assert rebuilt.config()["layout"] == "strided"


def _flops(model, x):
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops()


def test_strided_layout_and_no_middle_cut_the_arithmetic():
    x = torch.randn(1, 1, 32, 32)
    full = tiny("vqvae", 2, num_res_blocks=2)
    strided = tiny("vqvae", 2, num_res_blocks=2, layout="strided")
    lean = tiny("vqvae", 2, num_res_blocks=2, layout="strided", mid_blocks=0)
    f_full, f_strided, f_lean = (_flops(m, x) for m in (full, strided, lean))
    assert f_strided < 0.5 * f_full and f_lean < f_strided
    n_blocks = lambda m: sum(isinstance(b, ResBlock) for b in m.modules())
    assert n_blocks(strided) - n_blocks(lean) == 4  # two middle blocks in the encoder, two in the decoder
    light = tiny("vqvae", 2, num_res_blocks=2, layout="strided", mid_blocks=0, res_kernels=(3, 1))
    assert _flops(light, x) < 0.8 * f_lean
    block = next(b for b in light.modules() if isinstance(b, ResBlock))
    assert block.conv1.conv.kernel_size == (3, 3) and block.conv2.conv.kernel_size == (1, 1)
    assert light.config()["res_kernels"] == [3, 1]
    rebuilt = build_autoencoder(**json.loads(json.dumps(light.config())))
    rebuilt.load_state_dict(light.state_dict())
    with pytest.raises(ValueError, match=r"kernels=\[3, 2\]"):
        tiny("vqvae", 2, res_kernels=(3, 2))


@pytest.mark.parametrize("mode", ["nearest", "transpose"])
def test_strided_decoder_upsampling_modes_and_anisotropic_factors(mode):
    model = tiny("vqvae", 3, layout="strided", upsample_mode=mode, downsample=((2, 2, 1), (2, 2, 2)))
    x = torch.randn(1, 1, 16, 16, 8)
    assert model(x).reconstruction.shape == x.shape
    assert model.encode_to_latents(x).shape[2:] == (4, 4, 4)


def test_middle_attention_without_middle_blocks():
    model = tiny("klvae", 2, layout="strided", mid_blocks=0, mid_attention=True)
    kinds = [type(m).__name__ for m in model.encoder.body]
    assert "SpatialSelfAttention" in kinds
    assert model(torch.randn(1, 1, 16, 16)).reconstruction.shape == (1, 1, 16, 16)
    with pytest.raises(ValueError, match="layout='diagonal'"):
        tiny("vqvae", 2, layout="diagonal")
    with pytest.raises(ValueError, match="mid_blocks=-1"):
        tiny("vqvae", 2, mid_blocks=-1)
