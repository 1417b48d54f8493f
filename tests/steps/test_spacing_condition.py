"""Spacing-conditioned diffusion priors (``condition.spacing``): log-spacing channels against numpy, the
normalisation in model.json, train-prior -> sample on phantoms of two spacings (the samples carry the
spacing they were drawn for), masks + spacing, flow, guidance, refusals and unchanged older priors."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from medgen_cli.artefacts import require
from medgen_cli.cli import app
from medgen_cli.data.spacing import SpacingChannels
from medgen_cli.io.store import Store, store_path
from medgen_cli.models.priors import UNetPrior
from medgen_cli.sampling import DDIMScheduler, make_sampler, sample_diffusion
from medgen_cli.settings import SampleSettings, SettingsError, TrainPriorSettings, load_settings
from medgen_cli.steps import sample, train_prior
from medgen_cli.loaders.prior import load_prior
from tests.conftest import write_nifti
from tests.steps.test_diffusion_prior import TINY_UNET, diffusion_settings
from tests.steps.test_mask_prior import phantom
from tests.train.helpers import TINY

runner = CliRunner()
SHAPE = (16, 16, 2)
FINE, COARSE = (0.7, 0.7, 3.0), (1.4, 1.4, 3.0)  # in-plane spacings of the two phantom groups (mm)


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


# ------------------------------------------------------------------------------------- channels
@pytest.mark.parametrize("dims", [2, 3])
def test_channels_match_numpy(dims):
    rng = np.random.default_rng(dims)
    train = rng.uniform(0.5, 3.0, size=(7, dims))
    channels = SpacingChannels.fit(train)
    logs = np.log(train)
    np.testing.assert_allclose(channels.mean, logs.mean(0), rtol=1e-12)
    np.testing.assert_allclose(channels.std, logs.std(0), rtol=1e-12)
    np.testing.assert_allclose(channels.median, np.median(train, 0), atol=5e-7)  # recorded to the micrometre
    np.testing.assert_allclose(channels.low, train.min(0), atol=5e-7)
    np.testing.assert_allclose(channels.high, train.max(0), atol=5e-7)
    grid = (4, 6, 2)[:dims]
    query = rng.uniform(0.3, 4.0, size=(3, dims))
    got = channels(torch.from_numpy(query), grid)
    assert got.shape == (3, dims, *grid) and got.dtype == torch.float32
    for b in range(3):
        for a in range(dims):
            want = np.full(grid, (np.log(query[b, a]) - logs[:, a].mean()) / logs[:, a].std())
            np.testing.assert_allclose(got[b, a].numpy(), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(channels(list(query[0]), grid).numpy(), got[0].numpy())  # unbatched
    assert SpacingChannels.from_info(channels.info()) == channels  # the model.json round trip


def test_constant_spacings_give_zero_channels_and_bad_ones_are_refused():
    channels = SpacingChannels.fit([[1.0, 2.0]] * 3)
    assert channels.std == (1.0, 1.0)
    assert torch.equal(channels([1.0, 2.0], (2, 2)), torch.zeros(2, 2, 2))
    with pytest.raises(ValueError, match="3 spacing value"):
        channels([1.0, 1.0, 1.0], (2, 2))
    with pytest.raises(ValueError, match="positive"):
        SpacingChannels.fit([[1.0, 0.0]])
    assert channels.outside([0.49, 2.0]) and channels.outside([1.0, 4.1]) and not channels.outside([0.6, 3.9])


def test_settings_refuse_spacing_for_token_priors_and_bad_values():
    with pytest.raises(SettingsError, match="condition.spacing needs prior.kind = 'diffusion'"):
        load_settings(TrainPriorSettings, None, ["prior.kind=transformer", "condition.spacing=true"])
    s = load_settings(TrainPriorSettings, None, ["prior.kind=diffusion", "condition.spacing=true",
                                                 "diffusion.guidance_scale=2"])
    assert s.condition.spacing is True  # spacing makes the prior conditional: guidance is allowed
    assert load_settings(SampleSettings, None, ["condition.spacing=0.7,0.8"]).condition.spacing == [0.7, 0.8]
    with pytest.raises(SettingsError, match="positive spacings"):
        load_settings(SampleSettings, None, ["condition.spacing=0.7,-1"])


def test_guidance_drops_the_spacing_channels():
    """Scale 1 is the conditional model alone, scale 0 equals drawing without any spacing (the channels dropped)."""
    torch.manual_seed(0)
    unet = UNetPrior(2, 2, base_channels=8, channel_mults=[1, 2], num_res_blocks=1, attention_levels=[],
                     mid_attention=False, num_heads=2, num_groups=4, cond_channels=2).eval()
    with torch.no_grad():
        for weight in unet.parameters():
            weight.normal_(0, 0.1)
    channels = SpacingChannels.fit([[0.7, 0.7], [1.4, 1.4]])
    cond = {"cond": channels(torch.tensor([[0.7, 0.7], [1.4, 1.4]]), (8, 8))}
    sampler = make_sampler("ddim", **DDIMScheduler(num_train_timesteps=50).config())

    def draw(scale: float, c=cond):
        return sample_diffusion(unet, sampler, (2, 2, 8, 8), cond=c, guidance_scale=scale, num_inference_steps=4,
                                generator=torch.Generator().manual_seed(3))

    with torch.no_grad():
        uncond, plain, none, guided = draw(0.0), draw(1.0), draw(1.0, None), draw(2.0)
        manual = sample_diffusion(unet, sampler, (2, 2, 8, 8), cond={**cond, "null_mask": torch.zeros(2, dtype=torch.bool)},
                                  num_inference_steps=4, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(plain, manual)  # scale 1 = the conditional pass alone
    torch.testing.assert_close(uncond, none, atol=1e-5, rtol=1e-5)
    assert (plain - uncond).abs().max() > 1e-3 and (guided - plain).abs().max() > 1e-3


# ----------------------------------------------------------------------------------- end to end
def affine(spacing) -> np.ndarray:
    return np.array([[-spacing[0], 0, 0, 30.0], [0, spacing[1], 0, -20.0], [0, 0, spacing[2], 10.0], [0, 0, 0, 1]])


@dataclass
class Spaced:
    root: Path
    prep: Path
    lat: Path
    prior: Path


@pytest.fixture(scope="module")
def spaced(tmp_path_factory) -> Spaced:
    """Phantoms of two in-plane spacings, preprocessed without resampling; a prior conditioned on spacing."""
    root = tmp_path_factory.mktemp("spaced")
    raw = root / "raw"
    raw.mkdir()
    for s in range(6):
        image, labels = phantom(s, SHAPE)
        write_nifti(raw / f"ph{s:02d}_image.nii.gz", image, affine(FINE if s % 2 else COARSE))
        write_nifti(raw / f"ph{s:02d}_label.nii.gz", labels, affine(FINE if s % 2 else COARSE))
    prep = root / "prep"
    res = cli("preprocess", raw, "--out", prep, "--modality", "CT", "--window", "0,2000", "--mode", "slices",
              "--shape", "16,16", "--masks", "suffix:_label", "--split", "0.67,0.33,0", "--set",
              "mode.min_foreground=0", "--set", "runtime.workers=0")
    assert res.exit_code == 0, res.output
    res = cli("train-ae", "--data", prep, "--out", root / "ae", "--steps", "2", "--device", "cpu", "--set",
              "model.kind=klvae", "--set", "model.channels=8,8", "--set", "model.num_res_blocks=1", "--set",
              "data.batch_size=4", "--set", "train.val_every=0", "--set", "train.checkpoint_every=2", "--set",
              "train.save_images=0", *[a for t in TINY["klvae"] for a in ("--set", t)])
    assert res.exit_code == 0, res.output
    res = cli("encode-latents", "--ae", root / "ae", "--data", prep, "--out", root / "lat", "--device", "cpu")
    assert res.exit_code == 0, res.output
    prior = train_prior.run(diffusion_settings(root / "lat", "condition.spacing=true", "diffusion.p_uncond=0.2"),
                            root / "prior").out
    return Spaced(root, prep, root / "lat", prior)


def _train_spacings(prep: Path) -> np.ndarray:
    data = Store.open(store_path(prep, "main"))
    return np.array([data.meta(i).spacing[:2] for i in data.ids("train")])


def test_items_have_two_spacings_and_model_json_records_their_normalisation(spaced):
    train = _train_spacings(spaced.prep)
    assert {tuple(np.round(s, 6)) for s in train} == {FINE[:2], COARSE[:2]}  # no resampling happened
    model, info = load_prior(spaced.prior)
    assert model.cond_channels == 2  # one per axis of the 2D latent grid
    s = info["spacing"]
    np.testing.assert_allclose(s["log_mean"], np.log(train).mean(0), atol=1e-6)  # stored spacings are float32
    np.testing.assert_allclose(s["log_std"], np.log(train).std(0), atol=1e-6)
    np.testing.assert_allclose(s["median"], np.median(train, 0), rtol=1e-6)
    np.testing.assert_allclose([s["min"], s["max"]], [FINE[:2], COARSE[:2]], rtol=1e-6)
    summary = require(spaced.prior, "prior").summary
    assert summary["conditional"] is True and summary["spacing"] is True


def test_sample_is_written_with_the_spacing_it_was_drawn_for(spaced, caplog):
    out = spaced.root / "s07"
    res = cli("sample", "--prior", spaced.prior, "-n", "2", "--steps", "2", "--device", "cpu", "--out", out,
              "--set", "condition.spacing=0.7,0.9")
    assert res.exit_code == 0, res.output
    samples = Store.open(store_path(out, "samples"))
    for i in samples.ids():
        np.testing.assert_allclose(samples.meta(i).spacing[:2], (0.7, 0.9), rtol=1e-9)
        assert samples.item_attrs(i)["condition_spacing"] == [0.7, 0.9]
    assert require(out, "samples").summary["spacing"] == [[0.7, 0.9]]
    # the default is the training median; the channels change what is drawn from the same noise
    default = spaced.root / "s_median"
    res = cli("sample", "--prior", spaced.prior, "-n", "2", "--steps", "2", "--device", "cpu", "--out", default)
    assert res.exit_code == 0, res.output
    median = load_prior(spaced.prior)[1]["spacing"]["median"]
    drawn = Store.open(store_path(default, "samples"))
    np.testing.assert_allclose(drawn.meta("sample_0000").spacing[:2], median, rtol=1e-9)
    codes_a, codes_b = Store.open(store_path(out, "codes")), Store.open(store_path(default, "codes"))
    assert np.abs(codes_a.read("sample_0000") - codes_b.read("sample_0000")).max() > 0
    # far outside the trained range: warned, not refused
    s = load_settings(SampleSettings, None, [f"prior={spaced.prior}", "num_samples=1", "sampler.steps=2",
                                             "runtime.device=cpu", "condition.spacing=5,5", "previews=false"])
    logger = logging.getLogger("medgen_cli.steps._spacing_condition")  # the CLI stops medgen's logs propagating
    logger.addHandler(caplog.handler)
    try:
        sample.run(s, spaced.root / "s_far")
    finally:
        logger.removeHandler(caplog.handler)
    assert "beyond" in caplog.text and "factor of 2" in caplog.text
    np.testing.assert_allclose(Store.open(store_path(spaced.root / "s_far", "samples")).meta("sample_0000").spacing[:2],
                               (5, 5))


def test_guidance_scale_one_is_the_conditional_model(spaced):
    base = ["--prior", spaced.prior, "-n", "1", "--steps", "2", "--device", "cpu", "--set", "condition.spacing=0.7,0.7"]
    for name, extra in (("g_default", []), ("g_one", ["--guidance-scale", "1"]), ("g_two", ["--guidance-scale", "2"])):
        res = cli("sample", *base, *extra, "--out", spaced.root / name)
        assert res.exit_code == 0, res.output
    codes = {n: Store.open(store_path(spaced.root / n, "codes")).read("sample_0000") for n in ("g_default", "g_one", "g_two")}
    np.testing.assert_array_equal(codes["g_default"], codes["g_one"])
    assert np.abs(codes["g_two"] - codes["g_one"]).max() > 0


def test_sample_refuses_wrong_spacings(spaced):
    res = cli("sample", "--prior", spaced.prior, "-n", "1", "--out", spaced.root / "bad3", "--set",
              "condition.spacing=1,1,1")
    assert res.exit_code == 2 and "gives 3 value(s)" in res.output and "Traceback" not in res.output
    assert not (spaced.root / "bad3").exists()


def test_masks_and_spacing_together(spaced):
    """Each mask's samples are drawn for, and written with, the spacing of the mask's item."""
    prior = train_prior.run(diffusion_settings(spaced.lat, "condition.spacing=true", "condition.masks=true"),
                            spaced.root / "mask_prior").out
    model, info = load_prior(prior)
    assert model.cond_channels == len(info["masks"]["labels"]) + 2
    out = spaced.root / "mask_s"
    res = cli("sample", "--prior", prior, "--condition", spaced.prep, "-n", "1", "--steps", "2", "--device", "cpu",
              "--out", out)
    assert res.exit_code == 0, res.output
    masks = Store.open(store_path(spaced.prep, "masks"))
    samples = Store.open(store_path(out, "samples"))
    seen = set()
    for item in masks.ids():
        meta = samples.meta(f"{item}_s00")
        want = masks.meta(item).spacing[:2]
        np.testing.assert_allclose(meta.spacing[:2], want)
        np.testing.assert_allclose(samples.item_attrs(f"{item}_s00")["condition_spacing"], want)
        seen.add(tuple(np.round(want, 6)))
    assert len(seen) == 2  # both spacings were drawn for
    res = cli("sample", "--prior", prior, "--condition", spaced.prep, "-n", "1", "--out", spaced.root / "both",
              "--set", "condition.spacing=1,1")
    assert res.exit_code == 2 and "drop condition.spacing" in res.output


def test_flow_priors_take_spacing_too(spaced):
    unet = [o for o in TINY_UNET if not o.startswith("diffusion.num_train_timesteps")]
    settings = load_settings(TrainPriorSettings, None, [
        f"data.path={spaced.lat}", "prior.kind=diffusion", "data.batch_size=2", "train.steps=3", "train.val_every=3",
        "train.checkpoint_every=3", "runtime.device=cpu", *unet, "diffusion.objective=flow", "condition.spacing=true"])
    out = train_prior.run(settings, spaced.root / "flow_prior").out
    model, info = load_prior(out)
    assert info["diffusion"]["objective"] == "flow" and model.cond_channels == 2
    res = cli("sample", "--prior", out, "-n", "1", "--steps", "2", "--sampler", "flow_heun", "--device", "cpu",
              "--out", spaced.root / "flow_s", "--set", "condition.spacing=1.4,1.4")
    assert res.exit_code == 0, res.output
    meta = Store.open(store_path(spaced.root / "flow_s", "samples")).meta("sample_0000")
    np.testing.assert_allclose(meta.spacing[:2], (1.4, 1.4))


def test_priors_without_spacing_sample_as_before(spaced):
    out = train_prior.run(diffusion_settings(spaced.lat), spaced.root / "plain_prior").out
    model, info = load_prior(out)
    assert "spacing" not in info and model.cond_channels == 0
    res = cli("sample", "--prior", out, "-n", "1", "--steps", "2", "--device", "cpu", "--out", spaced.root / "plain_s")
    assert res.exit_code == 0, res.output
    assert "condition_spacing" not in Store.open(store_path(spaced.root / "plain_s", "samples")).item_attrs("sample_0000")
    res = cli("sample", "--prior", out, "-n", "1", "--out", spaced.root / "plain_x", "--set", "condition.spacing=1,1")
    assert res.exit_code == 2 and "trained without condition.spacing" in res.output


def test_spacing_with_condition_latents_and_labels(spaced):
    """Condition latents (joined by item), a class label and spacing in one v-prediction prior; a sample drawn for
    a condition item takes, and is written with, the spacing of that item."""
    prior = train_prior.run(diffusion_settings(spaced.lat, "condition.spacing=true", "condition.label=slice_index",
                                               f"condition.paths=[{spaced.lat}]", "diffusion.prediction=v"),
                            spaced.root / "joined_prior").out
    model, info = load_prior(prior)
    assert info["join"] == "item" and info["classes"] == ["0", "1"]
    assert model.cond_channels == info["latent"]["channels"] + 2
    data = Store.open(store_path(spaced.prep, "main"))
    for subject in ("ph00_image", "ph01_image"):  # one of each spacing
        out = spaced.root / f"joined_{subject}"
        res = cli("sample", "--prior", prior, "--subject", subject, "--label", "1", "-n", "1", "--steps", "2",
                  "--device", "cpu", "--out", out)
        assert res.exit_code == 0, res.output
        samples = Store.open(store_path(out, "samples"))
        for sid in samples.ids():
            item = samples.item_attrs(sid)["condition_item"]
            np.testing.assert_allclose(samples.meta(sid).spacing[:2], data.meta(item).spacing[:2], rtol=1e-6)
            np.testing.assert_allclose(samples.item_attrs(sid)["condition_spacing"], data.meta(item).spacing[:2], rtol=1e-6)
