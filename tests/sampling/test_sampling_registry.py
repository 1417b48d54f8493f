"""The sampler registry, and what the loop promises for every registered sampler: guidance, seeds, configs."""

import json

import pytest
import torch
from torch import nn

from medgen_cli.sampling import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    FlowEulerScheduler,
    FlowHeunScheduler,
    Sampler,
    make_sampler,
    make_scheduler,
    register_sampler,
    sample_diffusion,
    sampler_class,
    sampler_family,
    sampler_names,
)

# one config per family, as a prior stores it (the training scheduler's config)
CONFIGS = {
    "diffusion": DDIMScheduler(num_train_timesteps=50, beta_schedule="cosine", prediction_type="v").config(),
    "flow": FlowEulerScheduler(shift=2.0).config(),
}
NAMES = sampler_names()


def _make(name):
    return make_sampler(name, **CONFIGS[sampler_family(name)])


class ToyDenoiser(nn.Module):
    """Output depends on x, t and a condition unless null_mask drops it; records each call's batch size."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(0.1))
        self.batches = []

    def forward(self, x, t, cond=None, null_mask=None):
        self.batches.append(x.shape[0])
        c = torch.zeros_like(x) if cond is None else cond
        if null_mask is not None:
            c = torch.where(null_mask.reshape(-1, *[1] * (x.ndim - 1)), torch.full_like(c, -0.2), c)
        return self.scale * x + 0.3 * c + 1e-4 * t.float().reshape(-1, *[1] * (x.ndim - 1))


def test_the_registry_holds_every_sampler_by_family():
    assert NAMES == ("ddim", "ddpm", "dpmpp_2m", "flow_euler", "flow_heun")
    assert sampler_names("flow") == ("flow_euler", "flow_heun")
    assert sampler_names("diffusion") == ("ddim", "ddpm", "dpmpp_2m")
    classes = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler, "dpmpp_2m": DPMSolverMultistepScheduler,
               "flow_euler": FlowEulerScheduler, "flow_heun": FlowHeunScheduler}
    for name, cls in classes.items():
        assert sampler_class(name) is cls and cls.registry_name == name
        assert type(make_scheduler(name, **CONFIGS[cls.family])) is cls  # the old name still works


def test_unknown_names_and_foreign_configs_are_value_errors():
    with pytest.raises(ValueError, match="'euler_a'.*ddim, ddpm, dpmpp_2m, flow_euler, flow_heun"):
        make_sampler("euler_a")
    with pytest.raises(ValueError, match="'heun'"):
        make_scheduler("heun")
    with pytest.raises(ValueError, match="family must be one of"):
        sampler_names("score")
    with pytest.raises(ValueError, match="'ddim'.*time_sampling"):
        make_sampler("ddim", **CONFIGS["flow"])  # a flow prior's config cannot build a diffusion sampler
    with pytest.raises(ValueError, match="'flow_heun'.*beta_schedule"):
        make_sampler("flow_heun", **CONFIGS["diffusion"])


def test_registering_a_name_twice_or_without_a_family_is_refused():
    with pytest.raises(ValueError, match="'ddim' is already registered"):
        register_sampler("ddim")(type("Other", (DDIMScheduler,), {}))
    with pytest.raises(ValueError, match="family"):
        register_sampler("nameless")(type("NoFamily", (Sampler,), {}))
    assert "nameless" not in sampler_names()


@pytest.mark.parametrize("name", NAMES)
def test_config_round_trip(name):
    sched = _make(name)
    cfg = json.loads(json.dumps(sched.config()))
    again = make_sampler(name, **cfg)
    assert type(again) is type(sched) and again.config() == sched.config()
    assert type(sched).from_config(cfg).config() == cfg


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_guidance_scale_one_is_the_conditional_model(name, spatial_dims):
    shape = (2, 1) + (4,) * spatial_dims
    cond = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    x_T = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    model = ToyDenoiser()
    out = sample_diffusion(model, _make(name), shape, cond={"cond": cond}, guidance_scale=1.0, num_inference_steps=4,
                           x_T=x_T, generator=torch.Generator().manual_seed(2))
    assert set(model.batches) == {2}  # conditional passes only
    ref = sample_diffusion(lambda x, t: model(x, t, cond=cond), _make(name), shape, num_inference_steps=4, x_T=x_T,
                           generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(out, ref)


@pytest.mark.parametrize("name", NAMES)
def test_guidance_combines_one_batched_pass_per_evaluation(name):
    shape, s = (3, 2, 4, 4), 2.5
    cond = torch.randn(shape, generator=torch.Generator().manual_seed(3))
    x_T = torch.randn(shape, generator=torch.Generator().manual_seed(4))
    model = ToyDenoiser()
    out = sample_diffusion(model, _make(name), shape, cond={"cond": cond}, guidance_scale=s, num_inference_steps=3,
                           x_T=x_T, generator=torch.Generator().manual_seed(5))
    assert set(model.batches) == {6}  # conditional and unconditional together, at every evaluation (Heun's too)

    def guided(x, t):  # written out: uncond + s (cond − uncond)
        c = model(x, t, cond=cond, null_mask=torch.zeros(3, dtype=torch.bool))
        u = model(x, t, cond=cond, null_mask=torch.ones(3, dtype=torch.bool))
        return u + s * (c - u)

    ref = sample_diffusion(guided, _make(name), shape, num_inference_steps=3, x_T=x_T,
                           generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(out, ref)
    plain = sample_diffusion(lambda x, t: model(x, t, cond=cond), _make(name), shape, num_inference_steps=3, x_T=x_T,
                             generator=torch.Generator().manual_seed(5))
    assert not torch.allclose(out, plain)  # guidance changed the result


@pytest.mark.parametrize("name", NAMES)
def test_a_seed_reproduces_the_samples(name):
    def draw(seed):
        return sample_diffusion(ToyDenoiser(), _make(name), (2, 1, 4, 4), num_inference_steps=5,
                                generator=torch.Generator().manual_seed(seed))

    a, b, c = draw(7), draw(7), draw(8)
    assert torch.equal(a, b) and not torch.allclose(a, c)
    assert torch.isfinite(a).all()


def test_sampler_families_and_eta_come_from_the_classes():
    from medgen_cli.sampling import deterministic_names, family_clash
    from medgen_cli.settings.diffusion import DETERMINISTIC_SAMPLERS, SamplerName

    assert DETERMINISTIC_SAMPLERS == deterministic_names() == ("dpmpp_2m", "flow_euler", "flow_heun")
    assert [n for n in sampler_names() if sampler_class(n).takes_eta] == ["ddim", "ddpm"]
    assert SamplerName.__args__ == sampler_names()
    from medgen_cli.sampling.catalogue import SAMPLERS

    for name, entry in SAMPLERS.items():  # the torch-free catalogue agrees with the classes
        assert (entry.family, entry.takes_eta) == (sampler_class(name).family, sampler_class(name).takes_eta)
    assert family_clash("ddim", "diffusion") is None
    assert family_clash("ddim", "flow") == "ddim is a diffusion sampler, and a flow prior takes flow_euler or flow_heun"
