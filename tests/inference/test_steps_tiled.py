"""Tiled inference through the steps (issue 14): encode-latents, sample, evaluate and export --decode
give the whole-volume results (``tiling.mode=never``) when every volume is cut into tiles
(``tiling.mode=always``), within 1e-3 in stored units and without seams at the tile borders, for a
3D VQ-VAE and a 3D KL-VAE; ``auto`` tiles only above the memory budget; the CLI takes the setting.

The autoencoders are trained for one step and then given realistic weights (ReZero gates opened,
norm affines spread: `tests.inference.conftest.realistic`), so tiles that saw the wrong context or
the wrong normalisation statistics would show. Volumes are 32 x 32 x 48 CT-like phantoms, cut
into three tiles along the last axis (borders at 16 and 32): the halos (the receptive fields) then
leave the outer tiles smaller than the volume for both models.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from safetensors.torch import save_file

from medgen_cli.artefacts import ArtefactWriter
from medgen_cli.errors import UsageError
from medgen_cli.inference import AutoencoderTiler, TilingOptions
from medgen_cli.meta import ImageMeta
from medgen_cli.io.store import Store, store_path
from medgen_cli.settings import EncodeSettings, EvaluateSettings, ExportSettings, TrainPriorSettings, load_settings
from medgen_cli.steps import encode_latents, evaluate, export, sample, train_ae, train_prior
from medgen_cli.loaders.autoencoder import load_autoencoder
from tests.faults.conftest import assert_refused, invoke
from tests.inference.conftest import no_seam, phantom, realistic, seams
from tests.steps.conftest import PRIOR_ARGS, sample_settings
from tests.train.helpers import WINDOW, tiny_settings

SHAPE = (32, 32, 48)
BORDERS = [16, 32]  # along the last axis, in voxels
WHOLE = ["tiling.mode=never"]
TILED = ["tiling.mode=always", "tiling.tile_size=32,32,16"]
TOL = 1e-3  # stored units ([-1, 1] for the CT window -1000..1000 HU)
HU_PER_STORED = 1000.0
KINDS = ("vqvae", "klvae")
TINY_UNET = ["diffusion.base_channels=8", "diffusion.channel_mults=1,2", "diffusion.num_res_blocks=1",
             "diffusion.num_heads=2", "diffusion.num_groups=4", "diffusion.num_train_timesteps=50", "diffusion.steps=3"]


@dataclass
class Trained:
    """A 3D data artefact, a VQ-VAE and a KL-VAE with realistic weights, their whole-volume latents."""

    root: Path
    prep: Path
    ae: dict[str, Path] = field(default_factory=dict)
    latents: dict[str, Path] = field(default_factory=dict)
    samples: dict[tuple[str, str], Path] = field(default_factory=dict)

    def sampled(self, kind: str, name: str) -> Path:
        """Samples of a prior over ``kind``'s latents (maskgit for VQ, diffusion for KL), decoded
        whole (``name`` = whole) or tile by tile (tiled); the same seed, so the same codes."""
        if (kind, name) not in self.samples:
            prior = self.root / f"prior_{kind}"
            if not prior.exists():
                train_prior.run(_prior_settings(self.latents[kind], kind), prior)
            out = self.root / f"samples_{kind}_{name}"
            extra = ["sampler.steps=3"] if kind == "vqvae" else []
            sample.run(sample_settings(prior, "num_samples=2", "previews=false", "nifti=false", *extra,
                                       *(WHOLE if name == "whole" else TILED)), out)
            self.samples[kind, name] = out
        return self.samples[kind, name]


def _prior_settings(latents: Path, kind: str) -> TrainPriorSettings:
    prior = ["prior.kind=maskgit", *PRIOR_ARGS["maskgit"]] if kind == "vqvae" else ["prior.kind=diffusion", *TINY_UNET]
    return load_settings(TrainPriorSettings, None, [
        f"data.path={latents}", "data.batch_size=2", "train.steps=2", "train.val_every=2", "train.checkpoint_every=2",
        "train.val_items=2", "runtime.device=cpu", *prior])


def _make_prep(path: Path, n_train: int = 2, n_val: int = 2) -> Path:
    writer = ArtefactWriter(path, "preprocessed", {})
    store = Store.create(store_path(writer.open()))
    for i in range(n_train + n_val):
        store.write(f"item{i:02d}", phantom(SHAPE, seed=i)[0, 0], ImageMeta(subject=f"s{i}", intensity=WINDOW),
                    dtype="float32", split="train" if i < n_train else "val")
    writer.commit({})
    return path


def _give_realistic_weights(ae: Path, prep: Path) -> None:
    """Replace the artefact's weights by realistic ones (the artefact's manifest does not hash them)."""
    model, _ = load_autoencoder(ae)
    realistic(model, Store.open(store_path(prep)).read("item00")[None, None])
    save_file({k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}, str(ae / "model.safetensors"))


def _encode(trained: Trained, kind: str, out: Path, *overrides: str) -> Store:
    encode_latents.run(load_settings(EncodeSettings, None, [f"ae={trained.ae[kind]}", f"data={trained.prep}",
                                                            "runtime.device=cpu", *overrides]), out)
    return Store.open(store_path(out))


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Trained:
    root = tmp_path_factory.mktemp("tiled_steps")
    result = Trained(root, _make_prep(root / "prep"))
    for kind in KINDS:
        ae = result.ae[kind] = root / f"ae_{kind}"
        train_ae.run(tiny_settings(result.prep, kind, "train.steps=1", "train.val_every=0", "train.save_images=0",
                                   "train.checkpoint_every=1"), ae)
        _give_realistic_weights(ae, result.prep)
        result.latents[kind] = root / f"lat_{kind}"
        _encode(result, kind, result.latents[kind], *WHOLE)
    return result


def _assert_same_without_seams(whole: np.ndarray, tiled: np.ndarray) -> None:
    """max |tiled - whole| within TOL, and the difference no larger at the tile borders than inside."""
    diff = tiled.astype(np.float64) - whole
    assert np.abs(diff).max() < TOL, np.abs(diff).max()
    measures = seams(diff, [BORDERS])  # the last axis: the one cut into tiles
    assert no_seam(measures["level"]) and no_seam(measures["jump"]), measures


def _decoded_export(trained: Trained, kind: str, out: Path, overrides: list[str]) -> dict[str, np.ndarray]:
    """export --decode of the whole-volume latents, back in stored units."""
    export.run(load_settings(ExportSettings, None, ["runtime.device=cpu", *overrides],
                             {"source": str(trained.latents[kind]), "format": "nifti", "decode": True}), out)
    return {p.name: np.asanyarray(nib.load(p).dataobj, dtype=np.float64) / HU_PER_STORED
            for p in sorted(out.glob("*.nii.gz"))}


# ------------------------------------------------------------------------------------ the steps
@pytest.mark.parametrize("kind", KINDS)
def test_encode_latents_tiled_equals_whole(trained, tmp_path, kind, caplog):
    whole = Store.open(store_path(trained.latents[kind]))
    with caplog.at_level(logging.INFO, logger="medgen_cli.steps.encode_latents"):
        tiled = _encode(trained, kind, tmp_path / "lat", *TILED)
    assert "encoded tile by tile: 3 tiles" in caplog.text
    assert tiled.ids() == whole.ids() and len(whole.ids()) == 4
    for item_id in whole.ids():
        a, b = whole.read(item_id, dtype=None), tiled.read(item_id, dtype=None)
        if kind == "vqvae":  # codes: equal but for a rare near-tie between two codes
            assert a.dtype == b.dtype == np.int16 and a.shape == (8, 8, 12) and (a == b).mean() >= 0.999
        else:  # latents x latent_scale, as stored
            assert a.shape == (4, 16, 16, 24) and np.abs(a - b).max() < TOL


@pytest.mark.parametrize("kind", KINDS)
def test_export_decode_tiled_equals_whole(trained, tmp_path, kind):
    whole = _decoded_export(trained, kind, tmp_path / "whole", WHOLE)
    tiled = _decoded_export(trained, kind, tmp_path / "tiled", TILED)
    assert whole.keys() == tiled.keys() and len(whole) == 4
    for name in whole:
        assert whole[name].shape == SHAPE
        _assert_same_without_seams(whole[name], tiled[name])


def test_the_seam_measure_sees_per_tile_decoding(trained, tmp_path):
    """The control of the seam test: tiles without context and with their own statistics show."""
    whole = _decoded_export(trained, "klvae", tmp_path / "whole", WHOLE)
    naive = _decoded_export(trained, "klvae", tmp_path / "naive", [*TILED, "tiling.halo=0", "tiling.norm=tile"])
    name = sorted(whole)[0]
    measures = seams(naive[name] - whole[name], [BORDERS])
    assert np.abs(naive[name] - whole[name]).max() > 10 * TOL and not no_seam(measures["jump"]), measures


def _items_csv(out: Path) -> dict[str, dict[str, str]]:
    with (out / "items.csv").open() as f:
        return {row["item"]: row for row in csv.DictReader(f)}


@pytest.mark.parametrize("kind", KINDS)
def test_evaluate_reconstruction_tiled_equals_whole(trained, tmp_path, kind):
    results = {}
    for name, overrides in (("whole", WHOLE), ("tiled", TILED)):
        out = tmp_path / name
        evaluate.run(load_settings(EvaluateSettings, None, ["runtime.device=cpu", "max_pictures=0", *overrides],
                                   {"ae": str(trained.ae[kind]), "data": str(trained.prep), "split": "val"}), out)
        results[name] = (_items_csv(out), json.loads((out / "metrics.json").read_text()))
    (rows_w, metrics_w), (rows_t, metrics_t) = results["whole"], results["tiled"]
    assert rows_w.keys() == rows_t.keys() == {"item02", "item03"}
    for item_id, row in rows_w.items():
        # |mae_t - mae_w| and |rmse_t - rmse_w| are bounded by max |recon_t - recon_w|
        for metric in ("mae", "rmse"):
            assert abs(float(rows_t[item_id][metric]) - float(row[metric])) < TOL
        assert float(rows_t[item_id]["ssim"]) == pytest.approx(float(row["ssim"]), abs=TOL)
    if kind == "vqvae":
        assert metrics_t["codebook"] == pytest.approx(metrics_w["codebook"], abs=1e-3)


@pytest.mark.parametrize("kind", KINDS)
def test_sample_tiled_equals_whole(trained, kind):
    whole, tiled = (Store.open(store_path(trained.sampled(kind, name), "samples")) for name in ("whole", "tiled"))
    codes = [Store.open(store_path(trained.sampled(kind, name), "codes")) for name in ("whole", "tiled")]
    assert whole.ids() == tiled.ids() and len(whole.ids()) == 2
    for item_id in whole.ids():
        assert np.array_equal(codes[0].read(item_id, dtype=None), codes[1].read(item_id, dtype=None))  # same draws
        assert whole.read(item_id).shape == SHAPE
        _assert_same_without_seams(whole.read(item_id), tiled.read(item_id))


def test_evaluate_samples_encoder_features_tiled_equal_whole(trained, tmp_path):
    samples = trained.sampled("klvae", "whole")
    dist = {}
    for name, overrides in (("whole", WHOLE), ("tiled", TILED)):
        out = tmp_path / name
        evaluate.run(load_settings(EvaluateSettings, None, ["runtime.device=cpu", "max_pictures=0", *overrides],
                                   {"samples": str(samples), "data": str(trained.prep)}), out)
        dist[name] = json.loads((out / "metrics.json").read_text())["distribution"]
    for metric in ("frechet_distance", "mmd"):
        assert dist["tiled"][metric] == pytest.approx(dist["whole"][metric], rel=1e-3, abs=1e-4)


# ----------------------------------------------------------------------------------- auto mode
def test_auto_tiles_only_above_the_memory_budget(trained, tmp_path, caplog):
    model, _ = load_autoencoder(trained.ae["klvae"])
    x = Store.open(store_path(trained.prep)).read("item00")[None, None]
    probe = AutoencoderTiler(model, TilingOptions(mode="always", tile_size=16))
    probe.encode_latents(x)
    grid = [n // f for n, f in zip(SHAPE, model.downsample_factor)]
    whole_gib = probe.probe_cost("encode_latents").tile_bytes(grid) / 2**30  # the whole volume's estimate
    reference = Store.open(store_path(trained.latents["klvae"]))
    for name, max_gib, tiles in (("roomy", 64.0, False), ("tight", 0.7 * whole_gib, True)):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="medgen_cli.steps.encode_latents"):
            store = _encode(trained, "klvae", tmp_path / name, "batch_size=1", f"tiling.max_gib={max_gib}")
        assert ("encoded tile by tile" in caplog.text) == tiles, (name, caplog.text)
        for item_id in reference.ids():
            assert np.abs(store.read(item_id) - reference.read(item_id)).max() < TOL
    refused = r"item item00 .* cannot be encoded: .*too small for even the smallest tile.*tiling\.max_gib"
    with pytest.raises(UsageError, match=refused):
        _encode(trained, "klvae", tmp_path / "tiny", "batch_size=1", "tiling.max_gib=1e-6")


# ---------------------------------------------------------------------------------------- the CLI
def test_cli_takes_the_tiling_settings(trained, tmp_path):
    res = invoke("encode-latents", "--ae", trained.ae["klvae"], "--data", trained.prep, "--out", tmp_path / "lat",
                 "--device", "cpu", "--set", "tiling.mode=always", "--set", "tiling.tile_size=32,32,16")
    assert res.exit_code == 0, res.output
    manifest = json.loads((tmp_path / "lat" / "manifest.json").read_text())
    assert manifest["settings"]["tiling"]["mode"] == "always" and manifest["settings"]["tiling"]["tile_size"] == [32, 32, 16]
    whole, tiled = Store.open(store_path(trained.latents["klvae"])), Store.open(store_path(tmp_path / "lat"))
    assert max(np.abs(whole.read(i) - tiled.read(i)).max() for i in whole.ids()) < TOL


@pytest.mark.parametrize("args", [["encode-latents", "--ae", "ae", "--data", "prep"], ["sample", "--prior", "prior"],
                                  ["evaluate", "--ae", "ae", "--data", "prep"], ["export", "lat", "--decode"]])
def test_cli_refuses_a_bad_tiling_mode_in_one_sentence(tmp_path, args):
    res = invoke(*args, "--out", tmp_path / "out", "--set", "tiling.mode=sometimes")
    assert_refused(res, 2, "'tiling.mode' = 'sometimes'", "(allowed: one of 'auto', 'always', 'never')")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("step", ["encode-latents", "sample", "evaluate", "export"])
def test_config_show_documents_tiling(step):
    res = invoke("config", "show", step)
    assert res.exit_code == 0, res.output
    text = res.output
    assert "\ntiling:\n" in text and "  mode: auto" in text and "always: tile every volume" in text
    assert "  max_gib: null" in text and "  tile_size: null" in text and "  norm: exact" in text
