"""Few-step samplers through ``train-prior`` and ``sample``: a rectified-flow prior trained and sampled through
the real CLI, DPM-Solver++ on a diffusion prior, wrong-family refusals, guidance scale 1 = the conditional
model and seed determinism for every sampler, and priors written before the objective existed."""

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from medgen_cli.cli import app
from medgen_cli.errors import UsageError
from medgen_cli.io.store import Store, store_path
from medgen_cli.sampling import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    FlowEulerScheduler,
    sample_diffusion,
    sampler_names,
)
from medgen_cli.settings import SampleSettings, SettingsError, TrainPriorSettings, load_settings
from medgen_cli.settings.diffusion import DIFFUSION_SAMPLERS, FLOW_SAMPLERS
from medgen_cli.priors import diffusion as _diffusion
from medgen_cli.steps import sample, train_prior
from medgen_cli.loaders.prior import load_prior
from medgen_cli.train.diffusion_task import DiffusionLoss

from tests.steps.conftest import sample_settings

UNET = ["diffusion.base_channels=8", "diffusion.channel_mults=1,2", "diffusion.num_res_blocks=1",
        "diffusion.num_heads=2", "diffusion.num_groups=4", "diffusion.steps=3", "diffusion.p_uncond=0.5"]
RUN = ["prior.kind=diffusion", "data.batch_size=2", "train.val_every=3", "train.checkpoint_every=3",
       "train.log_every=1", "train.val_items=4", "optim.lr=3e-3"]
GRID = (8, 8)  # the chain's 2D KL latents (4 channels) of 16x16 DRRs


def _sets(*overrides: str) -> list[str]:
    return [arg for o in overrides for arg in ("--set", o)]


def _codes(out: Path) -> torch.Tensor:
    store = Store.open(store_path(out, "codes"))
    return torch.from_numpy(np.stack([store.read(i) for i in store.ids()]))


def _cli(*args: str):
    res = CliRunner().invoke(app, [*map(str, args)])
    return res, " ".join(res.output.split())


@pytest.fixture(scope="module")
def flow_prior(chain, tmp_path_factory) -> Path:
    """A label-conditioned rectified-flow prior trained for 3 steps through ``medgen train-prior``."""
    out = tmp_path_factory.mktemp("flow") / "prior"
    res, text = _cli("train-prior", "--latents", chain.latents["kl"], "--out", out, "--steps", 3, "--device", "cpu",
                     "--label", "view", *_sets(*RUN, *UNET, "diffusion.objective=flow", "diffusion.sample_every=3",
                                               "diffusion.sample_steps=2", "diffusion.sample_items=2"))
    assert res.exit_code == 0, text
    return out


@pytest.fixture(scope="module")
def diffusion_prior(chain, tmp_path_factory) -> Path:
    """A label-conditioned eps diffusion prior (T = 50) trained for 3 steps."""
    out = tmp_path_factory.mktemp("diffusion") / "prior"
    settings = load_settings(TrainPriorSettings, None, [
        f"data.path={chain.latents['kl']}", "train.steps=3", "runtime.device=cpu", "condition.label=view",
        "diffusion.num_train_timesteps=50", *RUN, *UNET])
    return train_prior.run(settings, out).out


def _prior_for(name: str, flow_prior: Path, diffusion_prior: Path) -> Path:
    return flow_prior if name in FLOW_SAMPLERS else diffusion_prior


# ----------------------------------------------------------------------------------- end to end
def test_a_flow_prior_trains_and_samples_with_heun_through_the_cli(flow_prior, tmp_path):
    model, info = load_prior(flow_prior)
    # the stored scheduler: rectified flow, resolution-aware shift sized by the 8x8 latent grid
    expected = FlowEulerScheduler(time_sampling="uniform", shift=1.0, base_grid_numel=1024, grid_numel=64).config()
    assert info["diffusion"]["objective"] == "flow" and info["diffusion"]["scheduler"] == expected
    assert info["diffusion"]["min_snr_gamma"] is None and info["classes"] == ["ap", "lateral"]
    assert info["sampling"] == {"scheduler": "flow_euler", "steps": 3, "eta": 0.0, "guidance_scale": 1.0}
    records = [json.loads(line) for line in (flow_prior / "metrics.jsonl").read_text().splitlines()]
    (val,) = [r for r in records if r["phase"] == "val"]
    assert math.isfinite(val["loss"]) and math.isfinite(val["sample_latent_std"])  # the flow sampler's tier ran

    res, text = _cli("sample", "--prior", flow_prior, "--out", tmp_path / "s", "--sampler", "flow_heun", "--steps", 3,
                     "-n", 2, "--seed", 4, "--label", "ap", "--device", "cpu")
    assert res.exit_code == 0, text
    assert Store.open(store_path(tmp_path / "s", "samples")).item_attrs("sample_0001")["strategy"] == "flow_heun"
    # Heun written out (Karras et al. 2022, Alg. 1) on the shifted grid s u / (1 + (s - 1) u), s = (64 / 1024)^0.5
    s = (64 / 1024) ** 0.5
    grid = [s * u / (1 + (s - 1) * u) for u in (1.0, 2 / 3, 1 / 3, 0.0)]
    labels = torch.zeros(2, dtype=torch.long)  # "ap"

    def v(x, t):
        return model(x, torch.full((2,), t, dtype=torch.float64).float() * 1000.0, labels=labels)

    x = torch.randn((2, 4, *GRID), generator=torch.Generator().manual_seed(sample._seed(4, "", 0)))
    with torch.no_grad():
        for t, t_next in zip(grid[:-1], grid[1:]):
            d = v(x, t)
            x_euler = x + (t_next - t) * d
            x = x_euler if t_next == 0 else x + (t_next - t) * 0.5 * (d + v(x_euler, t_next))
    torch.testing.assert_close(_codes(tmp_path / "s"), x, atol=1e-5, rtol=1e-5)


def test_a_diffusion_prior_samples_with_dpm_solver(diffusion_prior, tmp_path):
    model, info = load_prior(diffusion_prior)
    assert info["diffusion"]["objective"] == "diffusion" and info["sampling"]["scheduler"] == "ddim"
    run = sample.run(sample_settings(diffusion_prior, "num_samples=2", "sampler.scheduler=dpmpp_2m", "sampler.steps=3",
                                     "condition.label=lateral", "runtime.seed=2"), tmp_path / "s")
    assert run.summary["sampler"] == {"scheduler": "dpmpp_2m", "steps": 3, "eta": 0.0, "guidance_scale": 1.0}
    assert run.summary["strategy"] == "dpmpp_2m"
    sched = DPMSolverMultistepScheduler.from_config(info["diffusion"]["scheduler"])
    sched.set_timesteps(3)
    assert sched.timesteps.tolist() == [49, 32, 16]  # trailing: from the noisiest step
    x = torch.randn((2, 4, *GRID), generator=torch.Generator().manual_seed(sample._seed(2, "", 0)))
    labels = torch.ones(2, dtype=torch.long)  # "lateral"
    with torch.no_grad():
        for t in sched.timesteps.tolist():
            x = sched.step(model(x, torch.full((2,), t), labels=labels), t, x)
    torch.testing.assert_close(_codes(run.out), x, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("which, args, message", [
    ("diffusion", ["--sampler", "flow_euler"],
     "--sampler flow_euler cannot sample {p}: flow_euler is a flow sampler, and a diffusion prior takes ddim, ddpm or dpmpp_2m."),
    ("flow", ["--sampler", "ddim"],
     "--sampler ddim cannot sample {p}: ddim is a diffusion sampler, and a flow prior takes flow_euler or flow_heun."),
    ("flow", ["--eta", "0.3"], "--eta 0.3 applies to the ddim sampler only; flow_euler is deterministic and takes eta 0."),
    ("diffusion", ["--sampler", "dpmpp_2m", "--eta", "0.5"],
     "sampler.eta = 0.5 applies to the ddim sampler only; dpmpp_2m is deterministic and takes eta 0"),
    ("diffusion", ["--sampler", "euler"], "'sampler.scheduler' = 'euler'"),
])
def test_a_sampler_of_the_wrong_family_is_one_sentence_and_exit_2(flow_prior, diffusion_prior, tmp_path, which, args,
                                                                  message):
    prior = flow_prior if which == "flow" else diffusion_prior
    res, text = _cli("sample", "--prior", prior, "--out", tmp_path / "s", "--device", "cpu", *args)
    assert res.exit_code == 2 and message.format(p=prior) in text, text
    assert "Traceback" not in res.output and not (tmp_path / "s").exists()


# ---------------------------------------------------------------------------- every sampler
@pytest.mark.parametrize("name", sampler_names())
def test_guidance_one_is_the_conditional_model_and_a_seed_reproduces(flow_prior, diffusion_prior, tmp_path, name):
    prior = _prior_for(name, flow_prior, diffusion_prior)
    model, info = load_prior(prior)

    def draw(tag, seed, scale):
        overrides = [f"sampler.scheduler={name}", "sampler.steps=3", "condition.label=ap", f"runtime.seed={seed}",
                     f"sampler.guidance_scale={scale}", "num_samples=2", "nifti=false", "previews=false"]
        return _codes(sample.run(sample_settings(prior, *overrides), tmp_path / tag).out)

    first, again, other, guided = draw("a", 5, 1), draw("b", 5, 1), draw("c", 6, 1), draw("g", 5, 2.5)
    assert torch.equal(first, again) and not torch.allclose(first, other)
    assert torch.isfinite(guided).all() and not torch.allclose(first, guided)
    labels = torch.zeros(2, dtype=torch.long)
    conditional = sample_diffusion(lambda x, t: model(x, t, labels=labels), _diffusion.make_prior_sampler(info, name),
                                   (2, 4, *GRID), num_inference_steps=3,
                                   generator=torch.Generator().manual_seed(sample._seed(5, "", 0)))
    torch.testing.assert_close(first, conditional, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------ older priors
def test_a_prior_without_an_objective_samples_exactly_as_before(diffusion_prior, tmp_path):
    old = tmp_path / "old_prior"
    shutil.copytree(diffusion_prior, old)
    info = json.loads((old / "model.json").read_text())
    del info["diffusion"]["objective"]  # model.json as written before flow priors existed
    (old / "model.json").write_text(json.dumps(info))
    common = ["num_samples=2", "condition.label=ap", "runtime.seed=9", "nifti=false", "previews=false"]
    new_run = sample.run(sample_settings(diffusion_prior, *common), tmp_path / "new")
    old_run = sample.run(sample_settings(old, *common), tmp_path / "old")
    assert old_run.summary["sampler"] == new_run.summary["sampler"] == info["sampling"]
    assert torch.equal(_codes(old_run.out), _codes(new_run.out))
    # ... and as DDIM did before the registry: the loop written out with the stored config
    model, _ = load_prior(old)
    sched = DDIMScheduler.from_config(info["diffusion"]["scheduler"])
    sched.set_timesteps(3)
    x = torch.randn((2, 4, *GRID), generator=torch.Generator().manual_seed(sample._seed(9, "", 0)))
    with torch.no_grad():
        for t in sched.timesteps.tolist():
            x = sched.step(model(x, torch.full((2,), t), labels=torch.zeros(2, dtype=torch.long)), t, x)
    torch.testing.assert_close(_codes(old_run.out), x, atol=1e-5, rtol=1e-5)
    assert sample.run(sample_settings(old, *common, "sampler.scheduler=dpmpp_2m"), tmp_path / "dpm").ids
    with pytest.raises(UsageError, match="flow_heun is a flow sampler, and a diffusion prior takes"):
        sample.run(sample_settings(old, *common, "sampler.scheduler=flow_heun"), tmp_path / "flow")


# ------------------------------------------------------------------------------ the flow loss
class _FlowOracle(torch.nn.Module):
    """Knows x_0, so returns the exact velocity ε − x_0 for any (x_t, t · 1000); records the times it sees."""

    def __init__(self, x0):
        super().__init__()
        self.x0, self.times = x0, []
        self.weight = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x_t, t, null_mask=None):
        self.times.append(t)
        s = (t / 1000.0).reshape(-1, *[1] * (x_t.ndim - 1))
        noise = (x_t - (1 - s) * self.x0) / s
        return noise - self.x0 + self.weight


def test_the_flow_loss_regresses_the_velocity_at_shifted_times():
    sched = FlowEulerScheduler(time_sampling="logit_normal", shift=3.0)
    x0 = torch.randn(6, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    oracle = _FlowOracle(x0)
    assert DiffusionLoss(sched)(oracle, {"x0": x0}, torch.Generator().manual_seed(1))["loss"].item() < 1e-8
    # the draws written out: t = shift(sigmoid(n)), then the noise; a zero model's loss is |ε − x_0|²
    g = torch.Generator().manual_seed(1)
    u = torch.sigmoid(torch.randn(6, generator=g))
    t = 3 * u / (1 + 2 * u)
    noise = torch.randn(x0.shape, generator=g)
    torch.testing.assert_close(oracle.times[0], t * 1000)
    zero = lambda x, t, **kw: torch.zeros_like(x)  # noqa: E731
    zero.training = True
    out = DiffusionLoss(sched)(zero, {"x0": x0}, torch.Generator().manual_seed(1))
    torch.testing.assert_close(out["loss"], (noise - x0).pow(2).mean())
    with pytest.raises(ValueError, match="min_snr_gamma = 5.0 weights diffusion losses"):
        DiffusionLoss(sched, min_snr_gamma=5.0)


# ---------------------------------------------------------------------------------- settings
def _prior(*overrides: str) -> TrainPriorSettings:
    return load_settings(TrainPriorSettings, None, ["prior.kind=diffusion", *overrides])


def test_the_settings_name_the_registered_samplers_and_default_by_objective():
    assert DIFFUSION_SAMPLERS == sampler_names("diffusion") and FLOW_SAMPLERS == sampler_names("flow")
    flow = _prior("diffusion.objective=flow", "diffusion.steps=5000", "diffusion.flow_shift=3")
    assert flow.diffusion.sampler == "flow_euler" and _prior().diffusion.sampler == "ddim"
    assert TrainPriorSettings.model_validate(flow.model_dump(mode="json")) == flow  # resolved: sampler named
    assert flow.diffusion.flow_scheduler_args(64)["shift"] == 3.0 and flow.diffusion.flow_scheduler_args(64)["base_grid_numel"] is None
    assert load_settings(SampleSettings, None, ["sampler.scheduler=flow_heun", "sampler.eta=0"]).sampler.scheduler == "flow_heun"
    with pytest.raises(SettingsError, match="flow_euler is deterministic and takes eta 0"):
        load_settings(SampleSettings, None, ["sampler.scheduler=flow_euler", "sampler.eta=0.3"])


@pytest.mark.parametrize("overrides, message", [
    (["diffusion.objective=flow", "diffusion.sampler=ddim"],
     "diffusion.sampler = 'ddim' cannot sample a prior of diffusion.objective = 'flow': ddim is a diffusion sampler, "
     "and a flow prior takes flow_euler or flow_heun"),
    (["diffusion.sampler=flow_heun"], "flow_heun is a flow sampler, and a diffusion prior takes ddim, ddpm or dpmpp_2m"),
    (["diffusion.objective=flow", "diffusion.prediction=v"],
     "diffusion.prediction = 'v' applies to diffusion.objective = 'diffusion' only, not 'flow'"),
    (["diffusion.objective=flow", "diffusion.min_snr_gamma=5"], "diffusion.min_snr_gamma = 5.0 applies to diffusion.objective"),
    (["diffusion.flow_shift=2"], "diffusion.flow_shift = 2.0 applies to diffusion.objective = 'flow' only, not 'diffusion'"),
    (["diffusion.sampler=dpmpp_2m", "diffusion.eta=0.5"], "dpmpp_2m is deterministic and takes eta 0"),
    (["diffusion.objective=flow", "diffusion.flow_shift=2", "diffusion.flow_base_grid_numel=4096"],
     "diffusion.flow_base_grid_numel sizes the resolution-aware shift, but diffusion.flow_shift = 2.0 fixes it"),
    (["prior.kind=transformer", "diffusion.objective=flow"], "diffusion.objective applies to prior.kind = 'diffusion' only"),
])
def test_settings_of_the_other_objective_are_refused(overrides, message):
    with pytest.raises(SettingsError, match=message.replace("(", r"\(").replace(".", r"\.")):
        _prior(*overrides)
