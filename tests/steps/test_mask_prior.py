"""Mask-conditioned diffusion priors: label fractions on the latent grid, train-prior -> sample --condition PREP
-> evaluate with the per-label intensity table, refusals (unseen label, wrong grid), and unchanged older priors."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from medgen_cli.artefacts import require
from medgen_cli.cli import app
from medgen_cli.data.masks import label_fractions
from medgen_cli.errors import UsageError
from medgen_cli.io.store import Store, store_path
from medgen_cli.models.priors import UNetPrior
from medgen_cli.sampling import DDIMScheduler, make_sampler, sample_diffusion
from medgen_cli.settings import SettingsError, TrainPriorSettings, load_settings
from medgen_cli.steps import evaluate_masks, train_prior
from medgen_cli.loaders.prior import load_prior
from medgen_cli.train.diffusion_task import DiffusionLoss
from tests.conftest import write_nifti
from tests.steps.test_diffusion_prior import TINY_UNET, diffusion_settings
from tests.train.helpers import TINY

runner = CliRunner()
AFFINE = np.array([[-2.0, 0, 0, 30.0], [0, 2.0, 0, -20.0], [0, 0, 4.0, 10.0], [0, 0, 0, 1]])
SHAPE = (16, 16, 4)  # four axial 16x16 slices per subject
DISK, RING = 1, 2
HU = {0: 0.0, DISK: 600.0, RING: -600.0}  # the mask decides the intensity


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def phantom(seed: int, shape=SHAPE, extra_label: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(HU image, labels): per slice a bright disk (label 1) inside a dark ring (label 2) of varying size."""
    rng = np.random.default_rng(seed)
    i, j = np.meshgrid(*[np.arange(n) - (n - 1) / 2 for n in shape[:2]], indexing="ij")
    labels = np.zeros(shape, np.int16)
    for k in range(shape[2]):
        r = np.hypot(i - rng.integers(-2, 3), j - rng.integers(-2, 3))
        inner = 2.5 + rng.random() * 2
        labels[..., k] = np.where(r < inner, DISK, np.where(r < inner + 2.5, RING, 0))
    if extra_label is not None:
        labels[:2, :2] = extra_label
    image = np.vectorize(HU.get)(np.where(labels > 2, 0, labels)).astype(np.float32)
    return image + rng.normal(0, 10, shape).astype(np.float32), labels


def write_subjects(folder: Path, n: int, shape=SHAPE, extra_label: int | None = None, affine=AFFINE) -> Path:
    folder.mkdir(parents=True)
    for s in range(n):
        image, labels = phantom(s, shape, extra_label)
        write_nifti(folder / f"ph{s:02d}_image.nii.gz", image, affine)
        write_nifti(folder / f"ph{s:02d}_label.nii.gz", labels, affine)
    return folder


def prep(raw: Path, out: Path, fit: str = "16,16") -> Path:
    res = cli("preprocess", raw, "--out", out, "--modality", "CT", "--window", "0,2000", "--mode", "slices",
              "--fit", fit, "--masks", "suffix:_label", "--split", "0.5,0.25,0.25", "--set", "mode.min_foreground=0",
              "--set", "runtime.workers=0")
    assert res.exit_code == 0, res.output
    return out


@dataclass
class Masked:
    root: Path
    prep: Path
    lat: Path
    prior: Path


@pytest.fixture(scope="module")
def masked(tmp_path_factory) -> Masked:
    root = tmp_path_factory.mktemp("masked")
    data = prep(write_subjects(root / "raw", 4), root / "prep")
    res = cli("train-ae", "--data", data, "--out", root / "ae", "--steps", "2", "--device", "cpu", "--set",
              "model.kind=klvae", "--set", "model.channels=8,8", "--set", "model.num_res_blocks=1", "--set",
              "data.batch_size=4", "--set", "train.val_every=0", "--set", "train.checkpoint_every=2", "--set",
              "train.save_images=0", *[a for t in TINY["klvae"] for a in ("--set", t)])
    assert res.exit_code == 0, res.output
    res = cli("encode-latents", "--ae", root / "ae", "--data", data, "--out", root / "lat", "--device", "cpu")
    assert res.exit_code == 0, res.output
    prior = train_prior.run(diffusion_settings(root / "lat", "condition.masks=true"), root / "prior").out
    return Masked(root, data, root / "lat", prior)


# ------------------------------------------------------------------------------------- channels
def _blockwise(labels: np.ndarray, values, factor) -> np.ndarray:
    """Label fractions by explicit loops over the latent voxels (the reference)."""
    grid = [s // f for s, f in zip(labels.shape, factor)]
    out = np.zeros((len(values), *grid))
    for index in np.ndindex(*grid):
        block = labels[tuple(slice(g * f, (g + 1) * f) for g, f in zip(index, factor))]
        for c, v in enumerate(values):
            out[(c, *index)] = np.mean(block == v)
    return out


@pytest.mark.parametrize("shape, factor", [((8, 12), (2, 4)), ((8, 4, 6), (4, 2, 3))])
def test_label_fractions_match_blockwise_loops(shape, factor):
    labels = np.random.default_rng(0).integers(0, 4, size=(2, *shape))
    values = [0, 1, 2, 3, 9]  # a value absent from the maps gives a zero channel
    got = label_fractions(torch.from_numpy(labels), values, factor)
    assert got.shape == (2, 5, *[s // f for s, f in zip(shape, factor)])
    for b in range(2):
        np.testing.assert_allclose(got[b].numpy(), _blockwise(labels[b], values, factor), atol=1e-6)
    np.testing.assert_allclose(got.sum(1).numpy(), 1.0, atol=1e-6)  # every voxel has exactly one label


def test_label_fractions_refuse_unseen_values_and_uneven_grids():
    labels = torch.tensor([[[0, 1], [2, 7]]])
    with pytest.raises(ValueError, match=r"label value\(s\) \[7\] are not among the labels \[0, 1, 2\]"):
        label_fractions(labels, [0, 1, 2], (2, 2))
    with pytest.raises(ValueError, match="does not divide"):
        label_fractions(labels, [0, 1, 2, 7], (4, 2))


def test_settings_refuse_masks_outside_diffusion_and_with_latent_conditions(tmp_path):
    with pytest.raises(SettingsError, match="condition.masks needs prior.kind = 'diffusion'"):
        load_settings(TrainPriorSettings, None, ["condition.masks=true"])
    with pytest.raises(SettingsError, match="exclude each other"):
        load_settings(TrainPriorSettings, None, ["prior.kind=diffusion", "condition.masks=true",
                                                 f"condition.paths=[{tmp_path}]"])
    s = load_settings(TrainPriorSettings, None, ["prior.kind=diffusion", "condition.masks=true",
                                                 "diffusion.guidance_scale=2"])
    assert s.condition.masks is True  # guidance is allowed: the masks make the prior conditional


# ----------------------------------------------------------------------------------- end to end
def test_prior_records_labels_and_takes_their_channels(masked):
    model, info = load_prior(masked.prior)
    assert info["masks"]["labels"] == [0, DISK, RING] and info["masks"]["factor"] == [2, 2]
    assert info["masks"]["path"] == str(masked.prep.resolve()) and info["masks"]["store"] == "masks"
    assert model.cond_channels == 3  # one per label value, no condition latents
    assert require(masked.prior, "prior").summary["conditional"] is True


def test_sample_draws_per_mask_and_stores_the_pairs(masked):
    out = masked.root / "samples"
    res = cli("sample", "--prior", masked.prior, "--condition", masked.prep, "--set", "condition.split=test",
              "-n", "2", "--steps", "2", "--device", "cpu", "--out", out)
    assert res.exit_code == 0, res.output
    data_masks = Store.open(store_path(masked.prep, "masks"))
    data = Store.open(store_path(masked.prep, "main"))
    wanted = data.ids("test")
    samples, masks = Store.open(store_path(out, "samples")), Store.open(store_path(out, "masks"))
    assert sorted(samples.ids()) == sorted(masks.ids()) == sorted(f"{i}_s{k:02d}" for i in wanted for k in range(2))
    for item in wanted:
        for k in range(2):
            sid = f"{item}_s{k:02d}"
            np.testing.assert_array_equal(masks.read(sid, dtype=None), data_masks.read(item, dtype=None))
            np.testing.assert_allclose(samples.meta(sid).affine, data_masks.meta(item).affine)
            assert samples.item_attrs(sid)["condition_item"] == item
            assert masks.item_attrs(sid)["labels"] == data_masks.item_attrs(item)["labels"]
    manifest = require(out, "samples")
    assert any(ref.role == "masks" for ref in manifest.inputs) and manifest.summary["conditional"]
    # guidance against the unconditional model is open to mask-conditioned priors
    res = cli("sample", "--prior", masked.prior, "--condition", masked.prep, "--subject", data.meta(wanted[0]).subject,
              "-n", "1", "--steps", "2", "--guidance-scale", "2", "--device", "cpu", "--out", masked.root / "guided")
    assert res.exit_code == 0, res.output
    # the pair exports as files: images and their masks
    res = cli("export", out, "--store", "masks", "--format", "nifti", "--out", masked.root / "masks_nii")
    assert res.exit_code == 0, res.output
    assert len(list((masked.root / "masks_nii").rglob("*.nii.gz"))) == len(masks.ids())


def test_evaluate_reports_per_label_statistics_as_numpy_does(masked):
    samples = masked.root / "samples_eval"
    res = cli("sample", "--prior", masked.prior, "--condition", masked.prep, "--set", "condition.split=test",
              "-n", "1", "--steps", "2", "--device", "cpu", "--out", samples)
    assert res.exit_code == 0, res.output
    res = cli("evaluate", "--samples", samples, "--data", masked.prep, "--split", "test", "--device", "cpu",
              "--out", masked.root / "eval")
    assert res.exit_code == 0, res.output
    assert "label 1 generated" in res.output and "per label (HU)" in res.output
    table = json.loads((masked.root / "eval" / "metrics.json").read_text())["per_label"]
    assert table["unit"] == "HU" and table["split"] == "test"

    def direct(artefact: Path, store: str, ids: list[str]) -> dict[int, np.ndarray]:
        images, masks = Store.open(store_path(artefact, store)), Store.open(store_path(artefact, "masks"))
        values: dict[int, list] = {}
        for i in ids:
            arr, meta = images.read_item(i)
            hu, lab = meta.intensity.to_physical(arr), masks.read(i, dtype=None)
            for v in np.unique(lab):
                values.setdefault(int(v), []).append(hu[lab == v])
        return {v: np.concatenate(x) for v, x in values.items()}

    real = direct(masked.prep, "main", Store.open(store_path(masked.prep, "main")).ids("test"))
    gen = direct(samples, "samples", Store.open(store_path(samples, "samples")).ids())
    assert sorted(table["labels"]) == ["0", "1", "2"]
    for v in (0, DISK, RING):
        row = table["labels"][str(v)]
        for side, x in (("real", real[v]), ("generated", gen[v])):
            assert row[side]["voxels"] == x.size
            np.testing.assert_allclose([row[side][k] for k in ("mean", "std", "p5", "p50", "p95")],
                                       [x.mean(), x.std(), *np.percentile(x, [5, 50, 95])], rtol=1e-5, atol=1e-3)
        np.testing.assert_allclose(row["mean_difference"], gen[v].mean() - real[v].mean(), rtol=1e-5, atol=1e-3)
    # the real side holds what the phantom put there: bright disks, dark rings
    assert table["labels"]["1"]["real"]["mean"] > 500 and table["labels"]["2"]["real"]["mean"] < -500
    assert (masked.root / "eval" / "pictures" / "mask_overlay.png").stat().st_size > 0
    assert (masked.root / "eval" / "per_label.csv").read_text().startswith("label,set,mean")


def test_label_stats_pool_items():
    a = (np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([[0, 1], [1, 1]]))
    b = (np.array([[10.0]]), np.array([[1]]))
    stats = evaluate_masks.label_stats([a, b])
    assert stats[1]["voxels"] == 4 and stats[1]["items"] == 2 and stats[0]["items"] == 1
    assert stats[1]["mean"] == pytest.approx(np.mean([2, 3, 4, 10]))
    table = evaluate_masks.compare({0: stats[0]}, stats)
    assert table["1"]["real"] is None and table["1"]["mean_difference"] is None
    assert table["0"]["mean_difference"] == 0


def test_label_stats_stream_with_bounded_memory():
    """Beyond the cap, mean and std stay exact and the percentiles come from a uniform sample of the values."""
    rng = np.random.default_rng(3)
    pairs = [(rng.normal(100 * k, 50, (40, 50)), rng.integers(0, 2, (40, 50))) for k in range(6)]
    exact = evaluate_masks.label_stats(pairs)
    capped = evaluate_masks.label_stats(pairs, cap=2000)
    for label in (0, 1):
        x = np.concatenate([v[m == label] for v, m in pairs])
        assert exact[label]["percentiles_from"] == x.size and capped[label]["percentiles_from"] == 2000
        np.testing.assert_allclose([capped[label][k] for k in ("mean", "std")], [x.mean(), x.std()], rtol=1e-9)
        np.testing.assert_allclose([exact[label][f"p{q}"] for q in (5, 50, 95)], np.percentile(x, [5, 50, 95]))
        # a uniform sample of 2,000 of ~6,000 values: every item contributes, percentiles within a few HU
        np.testing.assert_allclose([capped[label][f"p{q}"] for q in (5, 50, 95)], np.percentile(x, [5, 50, 95]),
                                   atol=15)
    assert evaluate_masks.label_stats(pairs, cap=2000) == capped  # seeded: reruns agree


def test_flow_priors_take_masks_too(masked):
    """The rectified-flow objective trains and samples on the same mask channels."""
    unet = [o for o in TINY_UNET if not o.startswith("diffusion.num_train_timesteps")]
    settings = load_settings(TrainPriorSettings, None, [
        f"data.path={masked.lat}", "prior.kind=diffusion", "data.batch_size=2", "train.steps=3", "train.val_every=3",
        "train.checkpoint_every=3", "runtime.device=cpu", *unet, "diffusion.objective=flow", "condition.masks=true"])
    out = train_prior.run(settings, masked.root / "flow_prior").out
    model, info = load_prior(out)
    assert info["diffusion"]["objective"] == "flow" and info["masks"]["labels"] == [0, DISK, RING]
    assert model.cond_channels == 3
    item = Store.open(store_path(masked.prep, "masks")).ids("test")[0]
    res = cli("sample", "--prior", out, "--condition", masked.prep, "--set", "condition.split=test", "-n", "1",
              "--steps", "2", "--sampler", "flow_heun", "--device", "cpu", "--out", masked.root / "flow_s")
    assert res.exit_code == 0, res.output
    assert f"{item}_s00" in Store.open(store_path(masked.root / "flow_s", "masks"))


# ------------------------------------------------------------------------------------- refusals
def test_sample_refuses_unseen_labels_and_other_grids(masked):
    other = prep(write_subjects(masked.root / "raw7", 2, extra_label=7), masked.root / "prep7")
    res = cli("sample", "--prior", masked.prior, "--condition", other, "-n", "1", "--out", masked.root / "s7")
    assert res.exit_code == 2, res.output
    assert "label value(s) [7]" in res.output and "never saw in training" in res.output
    assert "Traceback" not in res.output and not (masked.root / "s7").exists()

    wide = prep(write_subjects(masked.root / "raw24", 2, shape=(24, 24, 2)), masked.root / "prep24", fit="24,24")
    res = cli("sample", "--prior", masked.prior, "--condition", wide, "-n", "1", "--out", masked.root / "s24")
    assert res.exit_code == 2, res.output
    assert "[24, 24]" in res.output and "draws [16, 16] images" in res.output and "Traceback" not in res.output

    res = cli("sample", "--prior", masked.prior, "-n", "1", "--out", masked.root / "s_none")
    assert res.exit_code == 2 and "pass --condition PREP" in res.output


def test_masks_of_a_named_artefact_are_an_input_of_the_prior(masked, tmp_path):
    out = train_prior.run(diffusion_settings(masked.lat, f"condition.masks={masked.prep}"), tmp_path / "prior").out
    refs = {ref.role: ref.path for ref in require(out, "prior").inputs}
    assert refs["masks"] == str(masked.prep.resolve())
    assert load_prior(out)[1]["masks"]["labels"] == [0, DISK, RING]


def test_train_refuses_data_without_masks(masked, tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    write_nifti(raw / "plain.nii.gz", phantom(0)[0], AFFINE)
    write_nifti(raw / "plain2.nii.gz", phantom(1)[0], AFFINE)
    plain = tmp_path / "plain"
    res = cli("preprocess", raw, "--out", plain, "--modality", "CT", "--window", "0,2000", "--mode", "slices",
              "--fit", "16,16", "--set", "mode.min_foreground=0", "--set", "runtime.workers=0")
    assert res.exit_code == 0, res.output
    with pytest.raises(UsageError, match=r"has no mask store 'masks' \(condition.masks\)"):
        train_prior.run(diffusion_settings(masked.lat, f"condition.masks={plain}"), tmp_path / "prior")
    assert not (tmp_path / "prior").exists()


def test_priors_without_masks_sample_as_before(masked):
    """A prior trained without condition.masks has no masks entry, draws unconditionally and refuses
    --condition as before."""
    out = train_prior.run(diffusion_settings(masked.lat), masked.root / "plain_prior").out
    model, info = load_prior(out)
    assert "masks" not in info and model.cond_channels == 0
    res = cli("sample", "--prior", out, "-n", "2", "--steps", "2", "--device", "cpu", "--out", masked.root / "plain_s")
    assert res.exit_code == 0, res.output
    assert not Path(store_path(masked.root / "plain_s", "masks")).exists()
    res = cli("sample", "--prior", out, "--condition", masked.prep, "-n", "1", "--out", masked.root / "plain_c")
    assert res.exit_code == 2 and "not conditioned on other latents" in res.output


# ------------------------------------------------------------------------------------- learning
def test_mask_channels_teach_where_bright_and_dark_go():
    """A tiny UNet trained on latents that the masks decide (+1 on label 1, -1 on label 2, 0 elsewhere),
    given only the label fractions, samples brighter values on label 1 than on label 2."""
    torch.manual_seed(0)
    labels = torch.from_numpy(np.stack([phantom(s, (8, 8, 1))[1][..., 0] for s in range(64)])).long()
    cond = label_fractions(labels, [0, DISK, RING], (1, 1))  # (64, 3, 8, 8)
    x0 = (cond[:, 1:2] - cond[:, 2:3]).float()  # (64, 1, 8, 8)
    unet = UNetPrior(2, 1, base_channels=16, channel_mults=[1, 2], num_res_blocks=1, attention_levels=[],
                     mid_attention=False, num_heads=2, num_groups=4, cond_channels=3)
    loss_fn = DiffusionLoss(DDIMScheduler(num_train_timesteps=100, beta_schedule="linear", beta_start=1e-3,
                                          beta_end=0.05), p_uncond=0.1)
    opt = torch.optim.Adam(unet.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(150):
        pick = torch.randint(0, 64, (16,), generator=g)
        loss = loss_fn(unet, {"x0": x0[pick], "cond": cond[pick]}, g)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    unet.eval()
    test = label_fractions(torch.from_numpy(np.stack([phantom(100 + s, (8, 8, 1))[1][..., 0] for s in range(8)])).long(),
                           [0, DISK, RING], (1, 1))
    sampler = make_sampler("ddim", **loss_fn.scheduler.config())
    with torch.no_grad():
        x = sample_diffusion(unet, sampler, (8, 1, 8, 8), cond={"cond": test}, num_inference_steps=10,
                             generator=torch.Generator().manual_seed(1))
    disk, ring = x[:, 0][test[:, 1] == 1].mean(), x[:, 0][test[:, 2] == 1].mean()
    assert disk > ring + 0.8, (float(disk), float(ring))


def test_guidance_drops_the_mask_channels():
    """Guidance scale 0 is the unconditional model: the mask channels are dropped, which equals drawing with no
    mask at all, and differs from the conditional model (scale 1)."""
    torch.manual_seed(0)
    unet = UNetPrior(2, 2, base_channels=8, channel_mults=[1, 2], num_res_blocks=1, attention_levels=[],
                     mid_attention=False, num_heads=2, num_groups=4, cond_channels=3).eval()
    with torch.no_grad():  # the output convolution starts at zero: give every weight a value
        for weight in unet.parameters():
            weight.normal_(0, 0.1)
    labels = torch.from_numpy(np.stack([phantom(s, (8, 8, 1))[1][..., 0] for s in range(2)])).long()
    cond = {"cond": label_fractions(labels, [0, DISK, RING], (1, 1))}
    sampler = make_sampler("ddim", **DDIMScheduler(num_train_timesteps=50).config())

    def draw(scale: float, c=cond):
        return sample_diffusion(unet, sampler, (2, 2, 8, 8), cond=c, guidance_scale=scale, num_inference_steps=4,
                                generator=torch.Generator().manual_seed(3))

    with torch.no_grad():
        uncond, plain, none = draw(0.0), draw(1.0), draw(1.0, None)
    torch.testing.assert_close(uncond, none, atol=1e-5, rtol=1e-5)
    assert (plain - uncond).abs().max() > 1e-3  # the masks change what is drawn


def test_samples_take_the_geometry_of_masks_from_another_artefact(masked):
    """Masks of other people, with another origin and spacing: each sample carries its own mask's geometry (not
    a training item's that happens to share its id)."""
    moved = np.array([[-1.5, 0, 0, -40.0], [0, 1.5, 0, 55.0], [0, 0, 3.0, -12.0], [0, 0, 0, 1]])
    other = prep(write_subjects(masked.root / "raw_other", 4, affine=moved), masked.root / "prep_other")
    out = masked.root / "samples_other"
    res = cli("sample", "--prior", masked.prior, "--condition", other, "--set", "condition.split=test",
              "-n", "1", "--steps", "2", "--device", "cpu", "--out", out)
    assert res.exit_code == 0, res.output
    other_masks, train_masks = Store.open(store_path(other, "masks")), Store.open(store_path(masked.prep, "masks"))
    samples = Store.open(store_path(out, "samples"))
    assert samples.ids()
    for sid in samples.ids():
        item = samples.item_attrs(sid)["condition_item"]
        np.testing.assert_allclose(samples.meta(sid).affine, other_masks.meta(item).affine)
        assert not np.allclose(samples.meta(sid).affine, train_masks.meta(train_masks.ids()[0]).affine)
