"""``medgen encode-latents``: ids, subjects and splits kept, codes and KL means x scale, geometry, resume."""

import numpy as np
import pytest
import torch
from zarr.storage import LocalStore

from medgen_cli.artefacts import ArtefactError, require
from medgen_cli.errors import UsageError
from medgen_cli.io.store import Store, store_path
from medgen_cli.settings import EncodeSettings
from medgen_cli.steps import encode_latents
from medgen_cli.loaders.autoencoder import load_autoencoder

from tests.steps.conftest import encode_settings


def _stores(chain, name):
    data = Store.open(store_path(chain.prep, "main" if name == "vq3d" else "drr"))
    return data, Store.open(store_path(chain.latents[name]))


def _images(data, ids):
    return torch.from_numpy(np.stack([data.read(i) for i in ids]))[:, None]


@pytest.mark.parametrize("name", ["vq", "vq3d"])
def test_codes_keep_ids_subjects_splits_and_geometry(chain, name):
    data, lat = _stores(chain, name)
    assert lat.ids() == data.ids() and len(lat.ids()) >= 6
    for item_id in lat.ids():
        a, d = lat.item_attrs(item_id), data.item_attrs(item_id)
        assert (a["subject"], a["split"], a["source_id"], a.get("view")) == (d["subject"], d["split"], item_id, d.get("view"))
    manifest = require(chain.latents[name], "latents")
    s = manifest.summary
    spatial_dims = 3 if name == "vq3d" else 2
    assert s["is_vq"] and s["ae_kind"] == "vqvae" and s["num_embeddings"] == 32 and s["latent_scale"] is None
    assert s["grid_shape"] == [4] * spatial_dims and s["stores"]["main"]["factor"] == [4] * spatial_dims
    assert {r.role for r in manifest.inputs} == {"autoencoder", "data"}

    model, _ = load_autoencoder(chain.ae[name])
    ids = lat.ids()
    with torch.no_grad():
        expected = model.encode_to_indices(_images(data, ids)).numpy()
    for k, item_id in enumerate(ids):
        codes = lat.array(item_id)[...]
        assert codes.dtype == np.int16 and codes.shape == (4,) * spatial_dims
        np.testing.assert_array_equal(codes, expected[k])

    # the grid's geometry: voxel axes 4x longer, the first latent voxel centred on the first 4 image voxels
    meta, image_meta = lat.meta(ids[0]), data.meta(ids[0])
    factor = np.ones(3)
    factor[:spatial_dims] = 4
    np.testing.assert_allclose(meta.affine[:3, :3], image_meta.affine[:3, :3] * factor)
    np.testing.assert_allclose(meta.affine[:3, 3], image_meta.affine[:3, :3] @ ((factor - 1) / 2) + image_meta.affine[:3, 3])
    assert meta.intensity.method == "identity" and meta.modality == image_meta.modality


def test_vqvae2_writes_bottom_and_top_grids(chain):
    data, bottom = _stores(chain, "vq2")
    top = Store.open(store_path(chain.latents["vq2"], "top"))
    assert top.ids() == bottom.ids() == data.ids()
    s = require(chain.latents["vq2"], "latents").summary
    assert s["stores"]["main"]["level"] == "bottom" and s["stores"]["top"]["grid_shape"] == [2, 2]
    model, _ = load_autoencoder(chain.ae["vq2"])
    with torch.no_grad():
        t, b = model.encode_to_indices(_images(data, data.ids()[:2]))
    for k, item_id in enumerate(data.ids()[:2]):
        np.testing.assert_array_equal(top.array(item_id)[...], t[k].numpy())
        np.testing.assert_array_equal(bottom.array(item_id)[...], b[k].numpy())


def test_kl_latents_are_posterior_means_times_the_scale(chain, tmp_path):
    data, lat = _stores(chain, "kl")
    model, info = load_autoencoder(chain.ae["kl"])
    ids = lat.ids()
    with torch.no_grad():
        mean = model.encode_mean(_images(data, ids)).numpy()
    stored = np.stack([lat.array(i)[...] for i in ids])
    assert stored.dtype == np.float32 and stored.shape == mean.shape  # (N, C, *grid): channels kept
    np.testing.assert_allclose(stored, mean * info["latent_scale"], rtol=1e-5, atol=1e-6)
    s = require(chain.latents["kl"], "latents").summary
    assert not s["is_vq"] and s["latent_scale"] == info["latent_scale"] and s["latent_channels"] == 4
    assert lat.item_attrs(ids[0])["latent_scale"] == info["latent_scale"]

    half = encode_latents.run(encode_settings(chain.ae["kl"], chain.prep, "drr", "dtype=float16"), tmp_path / "lat16")
    lat16 = Store.open(store_path(half.out))
    assert lat16.array(ids[0]).dtype == np.float16
    np.testing.assert_allclose(lat16.array(ids[0])[...], stored[0], rtol=1e-2, atol=1e-2)


def test_an_interrupted_run_resumes_where_it_stopped(chain, tmp_path):
    settings = encode_settings(chain.ae["vq"], chain.prep, "drr", "batch_size=2")

    def stop_after_first_batch(done, total, text):
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        encode_latents.run(settings, tmp_path / "lat", progress=stop_after_first_batch)
    assert Store.open(store_path(tmp_path / "lat.partial")).ids() == Store.open(store_path(chain.prep, "drr")).ids()[:2]
    result = encode_latents.run(settings, tmp_path / "lat")
    assert (result.skipped, result.encoded) == (2, result.summary["items"] - 2)
    resumed, straight = Store.open(store_path(tmp_path / "lat")), Store.open(store_path(chain.latents["vq"]))
    assert resumed.ids() == straight.ids()
    for item_id in straight.ids():
        np.testing.assert_array_equal(resumed.array(item_id)[...], straight.array(item_id)[...])


def test_a_resume_encodes_only_the_items_left_and_lists_each_store_once(chain, tmp_path, monkeypatch):
    """Issue 11: a resume used to list the output store once per item (quadratic); now it costs the items left."""
    settings = encode_settings(chain.ae["vq"], chain.prep, "drr", "batch_size=2")
    total = len(Store.open(store_path(chain.prep, "drr")).ids())

    def stop(done, total, text):
        if done == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        encode_latents.run(settings, tmp_path / "lat", progress=stop)
    encoded, listings = [], []
    original = encode_latents._encode
    monkeypatch.setattr(encode_latents, "_encode",
                        lambda model, info, batch, *a: encoded.append(len(batch)) or original(model, info, batch, *a))
    for name in ("list_dir", "list_prefix", "list"):
        method = getattr(LocalStore, name)
        monkeypatch.setattr(LocalStore, name, lambda self, *a, _m=method, _n=name: listings.append(_n) or _m(self, *a))
    result = encode_latents.run(settings, tmp_path / "lat")
    assert sum(encoded) == result.encoded == total - 4 and result.skipped == 4  # the model saw only what was left
    assert len(listings) <= 3 < total  # data store, output store (and nothing per item)
    straight = Store.open(store_path(chain.latents["vq"]))
    resumed = Store.open(store_path(tmp_path / "lat"))
    assert resumed.ids() == straight.ids()
    for item_id in straight.ids():
        np.testing.assert_array_equal(resumed.read(item_id, dtype=None), straight.read(item_id, dtype=None))


def test_bad_inputs_are_one_sentence_usage_errors(chain, tmp_path):
    with pytest.raises(UsageError, match="has no store named 'nope'"):
        encode_latents.run(encode_settings(chain.ae["vq"], chain.prep, "nope"), tmp_path / "a")
    with pytest.raises(ArtefactError, match="preprocessed artefact, but a autoencoder"):
        encode_latents.run(encode_settings(chain.prep, chain.prep, "drr"), tmp_path / "b")
    with pytest.raises(UsageError, match="is 2D but the autoencoder is 3D"):
        encode_latents.run(encode_settings(chain.ae["vq3d"], chain.prep, "drr"), tmp_path / "c")
    with pytest.raises(UsageError, match="no autoencoder given"):
        encode_latents.run(EncodeSettings(data=str(chain.prep), store="drr"), tmp_path / "d")
    assert not (tmp_path / "a").exists() and not (tmp_path / "c.partial").exists()


@pytest.mark.parametrize("name, coloured", [("vq", True), ("vq2", True), ("kl", False), ("vq3d", True)])
def test_latent_preview_shows_images_next_to_their_code_maps(chain, name, coloured):
    """previews/latents.png: grey images, VQ codes in a qualitative colour map, KL channels in grey."""
    import matplotlib.image

    png = chain.latents[name] / "previews" / "latents.png"
    assert "previews" in require(chain.latents[name], "latents").files
    rgb = matplotlib.image.imread(png)[..., :3]
    colour = (np.abs(rgb[..., 0] - rgb[..., 1]) + np.abs(rgb[..., 1] - rgb[..., 2])) > 0.1
    assert colour.any() == coloured  # only code maps bring colour into the picture
