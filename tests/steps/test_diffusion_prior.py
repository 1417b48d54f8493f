"""Latent diffusion priors through ``train-prior`` and ``sample``: KL and VQ continuous latents in 2D and
3D, conditioning on paired latents of another grid size, guidance, exact resume, settings and bad input."""

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from medgen_cli.artefacts import require
from medgen_cli.data.latents import LatentCodec, read_latent, resize_latents
from medgen_cli.errors import UsageError
from medgen_cli.io.store import Store, store_path
from medgen_cli.models.priors import UNetPrior
from medgen_cli.sampling.schedulers import DDIMScheduler
from medgen_cli.settings import PreprocessSettings, SettingsError, TrainAESettings, TrainPriorSettings, load_settings
from medgen_cli.steps import encode_latents, preprocess, sample, train_ae, train_prior
from medgen_cli.loaders.autoencoder import load_autoencoder
from medgen_cli.loaders.prior import load_prior
from medgen_cli.train.diffusion_task import DiffusionLoss

from tests.steps.conftest import encode_settings, sample_settings
from tests.train.helpers import TINY

TINY_UNET = ["diffusion.base_channels=8", "diffusion.channel_mults=1,2", "diffusion.num_res_blocks=1",
             "diffusion.num_heads=2", "diffusion.num_groups=4", "diffusion.num_train_timesteps=50", "diffusion.steps=3"]


def diffusion_settings(latents: Path, *overrides: str) -> TrainPriorSettings:
    """A 3-step CPU run of a tiny diffusion UNet."""
    base = [f"data.path={latents}", "prior.kind=diffusion", "data.batch_size=2", "train.steps=3", "train.val_every=3",
            "train.checkpoint_every=3", "train.log_every=1", "train.val_items=4", "runtime.device=cpu", "optim.lr=3e-3"]
    return load_settings(TrainPriorSettings, None, [*base, *TINY_UNET, *overrides])


def _store(out: Path, name: str) -> dict[str, np.ndarray]:
    store = Store.open(store_path(out, name))
    return {i: store.read(i) for i in store.ids()}


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]


@dataclass
class Pair:
    """3D KL latents of the CTs (8^3 grids) and of their downsample:2 copies (4^3 grids), one autoencoder."""

    prep: Path
    ae: Path
    full: Path
    low: Path


@pytest.fixture(scope="module")
def pair(chain) -> Pair:
    root = chain.root / "diffusion_pair"
    prep = root / "prep"
    preprocess.run(load_settings(PreprocessSettings, None, [
        f"input.paths=[{chain.root / 'raw'}]", "input.modality=CT", "intensity.window=0,2000",
        "derive.outputs=[downsample:2]", "split.fractions=0.5,0.25,0.25", "runtime.workers=0"]), prep)
    ae = root / "ae_kl3d"
    train_ae.run(load_settings(TrainAESettings, None, [
        f"data.path={prep}", "model.kind=klvae", "model.channels=8,8", "model.num_res_blocks=1", "data.batch_size=2",
        "train.steps=2", "train.val_every=0", "train.checkpoint_every=2", "train.save_images=0", "runtime.device=cpu",
        *TINY["klvae"]]), ae)
    assert sorted(require(prep, "preprocessed").summary["stores"]) == ["downsample2", "main"]
    full = encode_latents.run(encode_settings(ae, prep, "main"), root / "lat_full").out
    low = encode_latents.run(encode_settings(ae, prep, "downsample2"), root / "lat_low").out
    return Pair(prep, ae, full, low)


# ------------------------------------------------------------------------------------- end to end
@pytest.mark.parametrize("latents, spatial_dims", [("kl", 2), ("vq", 2), ("vq3d", 3)])
def test_train_then_sample_end_to_end(chain, tmp_path, latents, spatial_dims):
    out = train_prior.run(diffusion_settings(chain.latents[latents]), tmp_path / "prior").out
    manifest = require(out, "prior")
    for file in ("model.safetensors", "model.json", "metrics.jsonl", "plots/losses.png", "settings.yaml"):
        assert (out / file).is_file(), file
    assert manifest.summary["steps"] == 3 and {"loss", "mse"} <= set(manifest.summary["val"])
    model, info = load_prior(out)
    lat = require(chain.latents[latents], "latents").summary
    assert isinstance(model, UNetPrior) and info["kind"] == "diffusion"
    assert info["config"]["spatial_dims"] == spatial_dims and info["config"]["in_channels"] == lat["latent_channels"]
    assert info["grid_shape"] == lat["grid_shape"] and info["latent"]["is_vq"] == lat["is_vq"]
    if lat["is_vq"]:  # codebook vectors scaled to unit std over the training codes
        ae, _ = load_autoencoder(chain.ae[latents])
        store = Store.open(store_path(chain.latents[latents]))
        codes = torch.cat([read_latent(store, i).reshape(-1) for i in store.ids("train")])
        vectors = ae.quantizer.codebook[codes]
        assert info["latent"]["scale"] == pytest.approx(1 / vectors.std(unbiased=False).item(), rel=1e-4)
    else:
        assert info["latent"]["scale"] == lat["latent_scale"]
    assert info["sampling"] == {"scheduler": "ddim", "steps": 3, "eta": 0.0, "guidance_scale": 1.0}
    assert info["diffusion"]["scheduler"]["num_train_timesteps"] == 50

    runs = [sample.run(sample_settings(out, f"runtime.seed={seed}"), tmp_path / f"s{n}") for n, seed in enumerate((5, 5, 6))]
    first = runs[0].out
    assert runs[0].summary["sampler"] == info["sampling"] and runs[0].summary["strategy"] == "ddim"
    images, codes = _store(first, "samples"), _store(first, "codes")
    again, other = _store(runs[1].out, "samples"), _store(runs[2].out, "samples")
    assert list(images) == ["sample_0000", "sample_0001", "sample_0002"]
    assert all(np.array_equal(images[i], again[i]) for i in images)
    assert not any(np.array_equal(images[i], other[i]) for i in images)
    data = Store.open(store_path(chain.prep, "main" if spatial_dims == 3 else "drr"))
    reference = data.meta(data.ids("train")[0])
    samples = Store.open(store_path(first, "samples"))
    ae, ae_info = load_autoencoder(chain.ae[latents])
    for item_id, image in images.items():
        meta = samples.meta(item_id)
        assert image.shape == (16,) * spatial_dims and samples.item_attrs(item_id)["strategy"] == "ddim"
        np.testing.assert_allclose(meta.affine, sample.representative_geometry(data, image.shape)[0])
        assert meta.intensity == reference.intensity
        assert codes[item_id].dtype == np.float32 and codes[item_id].shape == (lat["latent_channels"], *lat["grid_shape"])
        z = torch.from_numpy(codes[item_id])[None]
        with torch.no_grad():  # VQ: continuous latents snapped by decode_latents; KL: stored units / latent_scale
            decoded = ae.decode_latents(z if lat["is_vq"] else z / ae_info["latent_scale"])[0, 0].numpy()
        lo, hi = sorted((reference.intensity.out_low, reference.intensity.out_high))
        np.testing.assert_allclose(image, np.clip(decoded, lo, hi), atol=1e-5)
        assert (first / "nifti" / f"{item_id}.nii.gz").is_file()
    assert (first / "previews" / "samples.png").is_file()


def test_ddpm_sampler_and_overridden_steps(chain, tmp_path):
    out = train_prior.run(diffusion_settings(chain.latents["kl"]), tmp_path / "prior").out
    runs = [sample.run(sample_settings(out, "num_samples=2", "sampler.scheduler=ddpm", "sampler.steps=5"), tmp_path / f"s{n}")
            for n in range(2)]
    assert runs[0].summary["sampler"] == {"scheduler": "ddpm", "steps": 5, "eta": 0.0, "guidance_scale": 1.0}
    a, b = _store(runs[0].out, "samples"), _store(runs[1].out, "samples")
    assert all(np.array_equal(a[i], b[i]) for i in a)  # ancestral noise comes from the per-batch generator
    assert Store.open(store_path(runs[0].out, "samples")).item_attrs("sample_0000")["strategy"] == "ddpm"


# ------------------------------------------------------------------------------------ conditional
def test_conditional_on_a_smaller_grid_trains_samples_all_and_guides(pair, tmp_path):
    settings = diffusion_settings(pair.full, f"condition.paths=[{pair.low}]", "diffusion.sample_every=3",
                                  "diffusion.sample_items=2", "diffusion.sample_steps=2", "diffusion.p_uncond=0.5")
    out = train_prior.run(settings, tmp_path / "prior").out
    model, info = load_prior(out)
    (cond,) = info["conditions"]
    assert cond["grid_shape"] == [4, 4, 4] and info["grid_shape"] == [8, 8, 8] and cond["items_per_subject"] == 1
    assert info["config"]["cond_channels"] == 4 and info["condition_latents"][0]["resized"] is True
    (val,) = [r for r in _records(out) if r["phase"] == "val"]
    assert {"loss", "sample_ssim", "sample_psnr", "ae_ssim", "ae_psnr", "sample_latent_std"} <= set(val)
    assert -1 <= val["sample_ssim"] <= 1 and np.isfinite(val["sample_psnr"])

    every = sample.run(sample_settings(out, "num_samples=1", "condition.all_subjects=true"), tmp_path / "all")
    ct = Store.open(store_path(pair.prep))
    assert every.ids == [f"{s}_s00" for s in sorted(ct.subjects())]
    samples = Store.open(store_path(every.out, "samples"))
    for item_id in every.ids:
        subject = samples.item_attrs(item_id)["condition_subject"]
        image, meta = samples.read_item(item_id)
        assert image.shape == (16, 16, 16) and meta.intensity.unit == "HU"
        np.testing.assert_allclose(meta.affine, ct.meta(subject).affine)  # the subject's own CT geometry

    # guidance scale 1 is the conditional model alone: replay the DDIM loop by hand, condition resized
    one = sample.run(sample_settings(out, "num_samples=2", "condition.subject=ct01", "runtime.seed=3",
                                     "sampler.guidance_scale=1"), tmp_path / "g1")
    low = Store.open(store_path(pair.low))
    c = resize_latents(read_latent(low, low.subjects()["ct01"][0])[None], (8, 8, 8)).expand(2, -1, -1, -1, -1)
    sched = DDIMScheduler.from_config(info["diffusion"]["scheduler"])
    sched.set_timesteps(3)
    generator = torch.Generator().manual_seed(sample._seed(3, "ct01", 0))
    x = torch.randn((2, 4, 8, 8, 8), generator=generator)
    with torch.no_grad():
        for t in sched.timesteps.tolist():
            x = sched.step(model(x, torch.full((2,), t), cond=c), t, x)
    codes = _store(one.out, "codes")
    torch.testing.assert_close(torch.from_numpy(np.stack([codes["ct01_s00"], codes["ct01_s01"]])), x, atol=1e-5, rtol=1e-5)
    guided = sample.run(sample_settings(out, "num_samples=2", "condition.subject=ct01", "runtime.seed=3",
                                        "sampler.guidance_scale=3"), tmp_path / "g3")
    assert guided.summary["sampler"]["guidance_scale"] == 3.0
    assert not np.allclose(_store(guided.out, "codes")["ct01_s00"], codes["ct01_s00"])


def test_resume_is_bit_identical_with_ema_min_snr_labels_and_the_sampling_tier(chain, tmp_path):
    settings = diffusion_settings(chain.latents["kl"], "train.steps=5", "train.checkpoint_every=2", "train.val_every=2",
                                  "optim.warmup_steps=1", "train.ema=true", "diffusion.min_snr_gamma=5",
                                  "diffusion.prediction=v", "diffusion.schedule=cosine", "condition.label=view",
                                  "diffusion.sample_every=2", "diffusion.sample_steps=2", "diffusion.sample_items=2")
    straight = train_prior.run(settings, tmp_path / "a")

    def interrupt(step, total, text):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_prior.run(settings, tmp_path / "b", progress=interrupt)
    resumed = train_prior.run(settings, tmp_path / "b", resume=True)
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    def records(path):
        return [{k: v for k, v in r.items() if k != "elapsed_s"} for r in _records(path)]

    assert records(tmp_path / "a") == records(tmp_path / "b")
    vals = [r for r in records(tmp_path / "a") if r["phase"] == "val"]
    assert [r["step"] for r in vals] == [2, 4, 5] and all("sample_latent_std" in r for r in vals)
    assert "sample_ssim" not in vals[0]  # a label is no paired target
    assert straight.info["classes"] == ["ap", "lateral"] and straight.info["weights"] == "ema"


# ------------------------------------------------------------------------------------- the loss
class _Oracle(torch.nn.Module):
    """Knows x_0, so returns the exact target for any (x_t, t); records the null masks it sees."""

    def __init__(self, scheduler, x0):
        super().__init__()
        self.scheduler, self.x0, self.masks = scheduler, x0, []
        self.weight = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x_t, t, cond=None, labels=None, null_mask=None):
        self.masks.append(null_mask)
        abar = self.scheduler.schedule.alphas_cumprod[t].float().reshape(-1, *[1] * (x_t.ndim - 1))
        noise = (x_t - abar.sqrt() * self.x0) / (1 - abar).sqrt()
        return self.scheduler.target_for(self.x0, noise, t) + self.weight


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_the_task_target_is_consistent_for_every_parameterisation(prediction):
    sched = DDIMScheduler(num_train_timesteps=50, beta_schedule="cosine", prediction_type=prediction)
    x0 = torch.randn(6, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    oracle = _Oracle(sched, x0)
    out = DiffusionLoss(sched)(oracle, {"x0": x0}, torch.Generator().manual_seed(1))
    assert out["loss"].item() < 1e-8  # the true target has zero loss
    # the loss regresses target_for of the t and noise it draws, and the weights are min-SNR's
    g = torch.Generator().manual_seed(2)
    t, noise = torch.randint(0, 50, (6,), generator=g), torch.randn(x0.shape, generator=g)
    x_t, target = sched.add_noise(x0, noise, t), sched.target_for(x0, noise, t)
    torch.testing.assert_close(sched.pred_to_x0(target, x_t, t), x0, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(sched.pred_to_eps(target, x_t, t), noise, atol=1e-4, rtol=1e-4)
    zero = lambda x, t, **kw: torch.zeros_like(x)  # noqa: E731
    zero.training = True
    weighted = DiffusionLoss(sched, min_snr_gamma=5.0)(zero, {"x0": x0}, torch.Generator().manual_seed(2))
    per_item = target.pow(2).flatten(1).mean(1)
    torch.testing.assert_close(weighted["mse"], per_item.mean())
    torch.testing.assert_close(weighted["loss"], (per_item * sched.snr_weights(t, 5.0)).mean())


def test_conditions_are_dropped_in_training_only():
    sched = DDIMScheduler(num_train_timesteps=20)
    x0 = torch.zeros(64, 1, 4, 4)
    batch = {"x0": x0, "label": torch.zeros(64, dtype=torch.long)}
    oracle, loss = _Oracle(sched, x0), DiffusionLoss(sched, p_uncond=0.5)
    loss(oracle.train(), batch)
    assert 10 < int(oracle.masks[-1].sum()) < 54
    loss(oracle.eval(), batch)
    assert oracle.masks[-1] is None
    loss(oracle.train(), {"x0": x0})  # nothing to drop
    assert oracle.masks[-1] is None


def test_codec_of_vq_codes_and_resizing():
    codebook = torch.tensor([[0.0, 2.0], [4.0, -2.0]])
    codec = LatentCodec(codebook, scale=0.5)
    x = codec(torch.tensor([[[0, 1], [1, 1]]]))
    assert x.shape == (1, 2, 2, 2)
    torch.testing.assert_close(x[0, :, 0, 1], torch.tensor([2.0, -1.0]))
    torch.testing.assert_close(codec.to_autoencoder(x)[0, :, 0, 0], codebook[0])
    assert resize_latents(x, (4, 4)).shape == (1, 2, 4, 4)
    with pytest.raises(ValueError, match="cannot resize a 2D grid"):
        resize_latents(x, (4, 4, 4))


# -------------------------------------------------------------------------------- refusals
def test_bad_inputs_are_one_sentence_usage_errors(chain, tmp_path):
    with pytest.raises(UsageError, match="holds vqvae2 codes .* a diffusion prior models KL latents"):
        train_prior.run(diffusion_settings(chain.latents["vq2"]), tmp_path / "p")
    with pytest.raises(UsageError, match=r"holds \[8, 8\] latent grids, but a UNet with 5 levels needs every axis divisible by 16"):
        train_prior.run(diffusion_settings(chain.latents["kl"], "diffusion.channel_mults=1,1,1,1,1"), tmp_path / "p")
    with pytest.raises(UsageError, match="concatenates condition latents as channels of the 3D grid"):
        train_prior.run(diffusion_settings(chain.latents["vq3d"], f"condition.paths=[{chain.latents['kl']}]"), tmp_path / "p")
    assert not (tmp_path / "p.partial").exists()
    out = train_prior.run(diffusion_settings(chain.latents["kl"]), tmp_path / "prior").out
    for overrides, message in [
        (["sampler.top_k=5"], "is a diffusion prior; --top-k applies to token priors only"),
        (["sampler.guidance_scale=2"], "is unconditional; guidance needs a prior conditioned"),
        (["sampler.steps=51"], "--steps 51 exceeds the 50 diffusion steps"),
    ]:
        with pytest.raises(UsageError, match=message):
            sample.run(sample_settings(out, *overrides), tmp_path / "s")
    with pytest.raises(UsageError, match="--eta applies to diffusion priors, but .* is a transformer prior"):
        sample.run(sample_settings(chain.prior("transformer"), "sampler.eta=0.5"), tmp_path / "s")
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("overrides, message", [
    (["prior.kind=transformer", "diffusion.steps=10"], r"diffusion\.\w+ applies to prior.kind = 'diffusion' only, not 'transformer'"),
    (["prior.dropout=0.1"], "prior.dropout does not apply to prior.kind = 'diffusion'; set diffusion.dropout"),
    (["diffusion.attention_levels=2"], r"diffusion.attention_levels = \[2\] must index the 2 levels"),
    (["diffusion.num_groups=3"], "channels must be divisible by diffusion.num_groups = 3"),
    (["diffusion.num_heads=3"], "with attention must be divisible by diffusion.num_heads = 3"),
    (["diffusion.steps=60"], "diffusion.steps = 60 must not exceed diffusion.num_train_timesteps = 50"),
    (["diffusion.guidance_scale=2"], "needs a conditional prior"),
    (["diffusion.guidance_scale=2", "diffusion.p_uncond=0", "condition.label=view"], "needs diffusion.p_uncond > 0"),
])
def test_settings_are_checked(overrides, message):
    with pytest.raises(SettingsError, match=message):
        diffusion_settings(Path("lat"), *overrides)
