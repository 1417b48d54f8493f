"""Tiled encode / decode of medgen autoencoders against whole-volume inference.

Each tiny model is built through the registry with medgen's default layout and made realistic
(conftest.realistic). Tiles are 16^3 cores on a 48^3 phantom; the halo is the measured receptive
field, so tiled and whole-volume results must agree to float error (1e-3 in stored units is the
bar) and the difference image must not be larger, or jump, at the tile borders.
"""

from __future__ import annotations

import copy
import logging

import numpy as np
import pytest
import torch
import zarr

from medgen_cli.inference import AutoencoderTiler, TilingOptions

from .conftest import borders, no_seam, phantom, seams, tiny

TOL = 1e-3


def roundtrip(tiler: AutoencoderTiler, x: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """(codes or latents, decoded image) the way the steps encode and decode."""
    if tiler.model.is_vq:
        codes = tiler.encode_indices(x)
        return codes, tiler.decode_indices(*codes)
    z = tiler.encode_latents(x)
    return [z], tiler.decode_latents(z)


@pytest.mark.parametrize("kind, size", [("klvae", 48), ("vqvae", 64)])
def test_tiled_equals_whole_volume_3d(kind, size):
    # medgen's default layout (two residual blocks per level, 9 norm layers each way); receptive
    # fields KL 12 voxels (factor 2), VQ 20 (factor 4), so 16^3 cores with halos stay inside the volume
    x = phantom((size,) * 3)
    model = tiny(kind, 3, x)
    codes0, image0 = roundtrip(AutoencoderTiler(model, TilingOptions(mode="never")), x)
    tiler = AutoencoderTiler(model, TilingOptions(mode="always", tile_size=16))
    codes, image = roundtrip(tiler, x)
    run = tiler.last_run
    assert run is not None and run.tiles == (size // 16) ** 3 and run.passes == 9 + 1  # a pass per norm, the write
    assert max(tiler.last_plan.max_tile_shape) * tiler.unit[0] < size  # tiles smaller than the volume
    for c, c0 in zip(codes, codes0):
        if kind == "vqvae":
            assert (c == c0).mean() > 0.999  # float noise may flip a code that sits on a tie, nothing more
        else:
            assert np.abs(c - c0).max() < TOL
    assert np.abs(image - image0).max() < TOL
    measures = seams(image - image0, borders(tiler, 3))
    assert no_seam(measures["level"]) and no_seam(measures["jump"]), measures


def test_seams_only_without_whole_volume_statistics_or_context():
    x = phantom()
    model = tiny("klvae", 3, x)
    z0 = AutoencoderTiler(model, TilingOptions(mode="never")).encode_latents(x)
    whole = AutoencoderTiler(model, TilingOptions(mode="never")).decode_latents(z0)
    exact = AutoencoderTiler(model, TilingOptions(mode="always", tile_size=16))
    diff = exact.decode_latents(z0) - whole
    measures = seams(diff, borders(exact, 3))
    assert np.abs(diff).max() < TOL and no_seam(measures["level"]) and no_seam(measures["jump"]), measures
    naive = AutoencoderTiler(model, TilingOptions(mode="always", tile_size=16, norm_passes=1))
    per_tile = naive.decode_latents(z0) - whole
    assert np.abs(per_tile).max() > 10 * TOL
    assert not no_seam(seams(per_tile, borders(naive, 3))["jump"])  # each tile shifted its own way
    blind = AutoencoderTiler(model, TilingOptions(mode="always", tile_size=16, halo=0))
    no_context = blind.decode_latents(z0) - whole
    assert not no_seam(seams(no_context, borders(blind, 3))["jump"])  # zero padding at every tile edge


def test_vqvae2_codes_and_images_match():
    x = phantom()
    model = tiny("vqvae2", 3, x, num_res_blocks=(1,))
    (top0, bottom0), image0 = roundtrip(AutoencoderTiler(model, TilingOptions(mode="never")), x)
    tiler = AutoencoderTiler(model, TilingOptions(mode="always", tile_size=16))
    (top, bottom), image = roundtrip(tiler, x)
    assert tiler.unit == (8, 8, 8) and tiler.last_run.tiles == 27  # tiles aligned to the top codes
    assert (top == top0).mean() > 0.999 and (bottom == bottom0).mean() > 0.999
    assert np.abs(image - image0).max() < TOL


@pytest.mark.parametrize("kind, layout", [("klvae", "strided"), ("vqvae", "full")])
def test_2d_model_on_a_large_image(kind, layout):
    x = phantom((96, 80))
    model = tiny(kind, 2, x, layout=layout, mid_blocks=1 if layout == "full" else 0)
    _, image0 = roundtrip(AutoencoderTiler(model, TilingOptions(mode="never")), x)
    tiler = AutoencoderTiler(model, TilingOptions(mode="always", tile_size=24))
    _, image = roundtrip(tiler, x)
    assert tiler.last_run.tiles > 4
    assert np.abs(image - image0).max() < TOL


def test_budget_decides_between_whole_and_tiled():
    x = phantom()
    model = tiny("klvae", 3, x, num_res_blocks=(1,))
    roomy = AutoencoderTiler(model, TilingOptions(max_gib=8))
    z0 = roomy.encode_latents(x)
    assert roomy.last_run is None  # fits: whole-volume inference, no tiling cost
    whole_gib = roomy.probe_cost("encode_latents").tile_bytes((24, 24, 24)) / 2**30
    tight = AutoencoderTiler(model, TilingOptions(max_gib=0.8 * whole_gib))
    z = tight.encode_latents(x)
    assert tight.last_run is not None and tight.last_run.tiles > 1
    assert np.abs(z - z0).max() < TOL
    with pytest.raises(ValueError, match="too small"):
        AutoencoderTiler(model, TilingOptions(max_gib=0.01 * whole_gib)).encode_latents(x)


def test_decode_streams_into_a_zarr_array(tmp_path):
    x = phantom()
    model = tiny("klvae", 3, x, num_res_blocks=(1,))
    tiler = AutoencoderTiler(model, TilingOptions(mode="always", tile_size=16))
    z = tiler.encode_latents(torch.from_numpy(x))  # tensors in, as the steps hold them
    expected = tiler.decode_latents(z)
    out = zarr.create_array(str(tmp_path / "image.zarr"), shape=expected.shape, chunks=(1, 1, 16, 16, 16),
                            dtype="float32", fill_value=0)
    assert tiler.decode_latents(z, out=out) is out
    assert np.abs(out[...] - expected).max() < 1e-6


def test_smaller_halo_blends_and_attention_warns(caplog):
    x = phantom()
    model = tiny("klvae", 3, x, num_res_blocks=(1,))
    z = AutoencoderTiler(model, TilingOptions(mode="never")).encode_latents(x)
    whole = AutoencoderTiler(model, TilingOptions(mode="never")).decode_latents(z)
    errors = {}
    for halo in (0, 8):
        errors[halo] = np.abs(AutoencoderTiler(model, TilingOptions(mode="always", tile_size=16, halo=halo)).decode_latents(z)
                              - whole).max()
    assert errors[0] > 2 * errors[8]  # more context, less error (blended over the 8-voxel halo)
    attentive = tiny("klvae", 3, x, num_res_blocks=(1,), mid_blocks=1, mid_attention=True)
    with caplog.at_level(logging.WARNING, logger="medgen_cli.inference"):
        AutoencoderTiler(attentive, TilingOptions(mode="always", tile_size=16)).encode_latents(x)
    assert "global self-attention" in caplog.text


def test_options_refuse_bad_values():
    with pytest.raises(ValueError, match="mode='sometimes'"):
        TilingOptions(mode="sometimes")
    with pytest.raises(ValueError, match="max_gib=0"):
        TilingOptions(max_gib=0)
    with pytest.raises(ValueError, match="norm_passes=0"):
        TilingOptions(norm_passes=0)


def test_a_tile_size_of_another_rank_and_an_indivisible_shape_are_refused():
    x = phantom((16, 16, 16))
    model = tiny("klvae", 3, x, num_res_blocks=(1,))
    with pytest.raises(ValueError, match=r"tiling\.tile_size = \[16, 16\] has 2 values but the autoencoder is 3D"):
        AutoencoderTiler(model, TilingOptions(tile_size=(16, 16)))
    for mode in ("never", "always"):
        with pytest.raises(ValueError, match=r"spatial shape \[16, 16, 15\] is not divisible by the autoencoder's "
                                             r"downsampling factor \[2, 2, 2\]"):
            AutoencoderTiler(model, TilingOptions(mode=mode)).encode_latents(x[..., :15])


def test_half_precision_weights_take_half_precision_tiles():
    x = phantom((32, 32, 32))
    model = tiny("klvae", 3, x, num_res_blocks=(1,))
    z0 = AutoencoderTiler(model, TilingOptions(mode="never")).encode_latents(x)
    half = AutoencoderTiler(copy.deepcopy(model).to(torch.bfloat16), TilingOptions(mode="always", tile_size=16))
    z = half.encode_latents(x)  # float32 in, as the steps read it
    assert half.last_run.tiles == 8 and z.dtype == np.float32  # numpy has no bf16: results come back as float32
    assert np.abs(z - z0).max() < 0.05 * np.abs(z0).max()  # bf16 keeps ~3 significant digits
