import json
import math

import pytest
import torch

from medgen_cli.sampling.diffusion import sample_diffusion
from medgen_cli.sampling.schedulers import (
    DDIMScheduler,
    DDPMScheduler,
    NoiseSchedule,
    cosine_alphas_cumprod,
    make_scheduler,
)

SCHEDULES = ["linear", "scaled_linear", "cosine"]


@pytest.mark.parametrize("beta_schedule", SCHEDULES)
def test_add_noise_matches_q_xt_given_x0(beta_schedule):
    sched = DDPMScheduler(num_train_timesteps=100, beta_schedule=beta_schedule, beta_start=1e-3, beta_end=0.03)
    gen = torch.Generator().manual_seed(0)
    x0 = torch.tensor([0.8, -0.5, 0.0])
    for t in (0, 30, 99):
        noise = torch.randn(20000, 3, generator=gen)
        xt = sched.add_noise(x0.expand(20000, 3), noise, torch.full((20000,), t))
        abar = sched.schedule.alphas_cumprod[t].item()
        torch.testing.assert_close(xt.mean(0), math.sqrt(abar) * x0, atol=0.03, rtol=0)
        torch.testing.assert_close(xt.var(0), torch.full((3,), 1 - abar), atol=0.03, rtol=0.05)


def test_cosine_schedule_matches_the_closed_form():
    T = 1000
    sched = NoiseSchedule(T, "cosine")
    closed = cosine_alphas_cumprod(T)  # ᾱ(t) for t = 0..T
    assert sched.betas.max() <= 0.999
    unclipped = sched.betas < 0.999
    assert unclipped[: T - 5].all()  # only the last few steps are clipped
    torch.testing.assert_close(sched.alphas_cumprod[unclipped], closed[1:][unclipped], rtol=1e-9, atol=1e-12)
    s = 0.008
    f = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    assert abs(sched.alphas_cumprod[499].item() - f(500) / f(0)) < 1e-9


def test_linear_schedules():
    lin = NoiseSchedule(10, "linear", 1e-4, 0.02)
    assert lin.betas[0].item() == pytest.approx(1e-4) and lin.betas[-1].item() == pytest.approx(0.02)
    sl = NoiseSchedule(10, "scaled_linear", 1e-4, 0.04)
    diffs = sl.betas.sqrt().diff()
    torch.testing.assert_close(diffs, diffs[:1].expand_as(diffs))
    assert sl.betas[-1].item() == pytest.approx(0.04)


@pytest.mark.parametrize("prediction_type", ["eps", "v", "x0"])
def test_conversions_are_consistent(prediction_type):
    sched = DDIMScheduler(num_train_timesteps=50, beta_schedule="cosine", prediction_type=prediction_type)
    gen = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(4, 2, 5, 5, generator=gen), torch.randn(4, 2, 5, 5, generator=gen)
    t = torch.tensor([0, 10, 25, 45])
    xt = sched.add_noise(x0, noise, t)
    target = sched.target_for(x0, noise, t)
    torch.testing.assert_close(sched.pred_to_x0(target, xt, t), x0, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(sched.pred_to_eps(target, xt, t), noise, atol=1e-4, rtol=1e-4)


def test_v_target_definition():
    sched = DDIMScheduler(num_train_timesteps=20, prediction_type="v")
    x0, noise, t = torch.ones(1, 3), torch.full((1, 3), 2.0), torch.tensor([7])
    abar = sched.schedule.alphas_cumprod[7].item()
    expected = math.sqrt(abar) * 2.0 - math.sqrt(1 - abar) * 1.0
    torch.testing.assert_close(sched.target_for(x0, noise, t), torch.full((1, 3), expected))


def _oracle(sched, x0, noise):
    """A denoiser that knows the answer: returns the true target for its parameterisation."""

    def model(x, t):
        return sched.target_for(x0, noise, t)

    return model


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("prediction_type", ["eps", "v", "x0"])
def test_ddim_eta0_with_true_noise_recovers_x0(spatial_dims, prediction_type):
    sched = DDIMScheduler(num_train_timesteps=100, beta_schedule="linear", prediction_type=prediction_type)
    gen = torch.Generator().manual_seed(2)
    shape = (2, 1) + (6,) * spatial_dims
    x0, noise = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
    sched.set_timesteps(10)
    x_T = sched.add_noise(x0, noise, sched.timesteps[0])
    out = sample_diffusion(_oracle(sched, x0, noise), sched, shape, num_inference_steps=10, x_T=x_T)
    assert (out - x0).abs().max().item() < 1e-4


def test_ddim_eta0_is_deterministic():
    sched = DDIMScheduler(num_train_timesteps=50)
    model = lambda x, t: 0.3 * x  # noqa: E731
    x_T = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(3))
    a = sample_diffusion(model, sched, x_T.shape, num_inference_steps=5, x_T=x_T, generator=torch.Generator().manual_seed(4))
    b = sample_diffusion(model, sched, x_T.shape, num_inference_steps=5, x_T=x_T, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    c = sample_diffusion(model, sched, x_T.shape, num_inference_steps=5, x_T=x_T, eta=1.0, generator=torch.Generator().manual_seed(4))
    assert not torch.allclose(a, c)


def test_ddim_eta1_noise_is_the_ddpm_posterior_variance():
    sched = DDIMScheduler(num_train_timesteps=100, prediction_type="x0")
    sched.set_timesteps(100)
    x0, xt = torch.zeros(20000, 1), torch.zeros(20000, 1)
    out = sched.step(x0, 50, xt, eta=1.0, generator=torch.Generator().manual_seed(6))
    ddpm = DDPMScheduler(num_train_timesteps=100, prediction_type="x0")
    ref = ddpm.step(x0, 50, xt, generator=torch.Generator().manual_seed(6))
    assert abs(out.var().item() / ref.var().item() - 1) < 0.05


def test_ddpm_with_true_x0_ends_at_x0():
    sched = DDPMScheduler(num_train_timesteps=30, prediction_type="x0")
    x0 = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(7))
    out = sample_diffusion(lambda x, t: x0, sched, x0.shape, num_inference_steps=30, generator=torch.Generator().manual_seed(8))
    torch.testing.assert_close(out, x0)


@pytest.mark.parametrize("cls", [DDPMScheduler, DDIMScheduler])
def test_config_round_trip(cls):
    sched = cls(num_train_timesteps=64, beta_schedule="scaled_linear", beta_start=8.5e-4, beta_end=0.012,
                prediction_type="v", timestep_spacing="leading", clip_sample=1.0)
    cfg = json.loads(json.dumps(sched.config()))
    again = cls.from_config(cfg)
    assert again.config() == sched.config()
    assert torch.equal(again.schedule.alphas_cumprod, sched.schedule.alphas_cumprod)
    name = "ddpm" if cls is DDPMScheduler else "ddim"
    assert make_scheduler(name, **cfg).config() == sched.config()


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("n", [1, 7, 100])
def test_set_timesteps(spacing, n):
    sched = DDIMScheduler(num_train_timesteps=100, timestep_spacing=spacing)
    sched.set_timesteps(n)
    ts = sched.timesteps.tolist()
    assert len(ts) == n == len(set(ts)) and ts == sorted(ts, reverse=True)
    assert 0 <= min(ts) and max(ts) <= 99
    assert sched.previous_timestep(ts[-1]) == -1


def test_snr_weights():
    sched = DDIMScheduler(num_train_timesteps=100, prediction_type="eps")
    t = torch.arange(100)
    snr = sched.snr(t)
    w = sched.snr_weights(t, gamma=5.0)
    torch.testing.assert_close(w.double(), snr.clamp(max=5.0) / snr, rtol=1e-6, atol=0)
    assert w.max() <= 1.0 + 1e-6 and w[-1] == 1.0
    v = DDIMScheduler(num_train_timesteps=100, prediction_type="v").snr_weights(t, 5.0)
    torch.testing.assert_close(v.double(), snr.clamp(max=5.0) / (snr + 1), rtol=1e-6, atol=0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"beta_schedule": "quadratic"},
        {"prediction_type": "score"},
        {"timestep_spacing": "random"},
        {"num_train_timesteps": 0},
        {"beta_start": 0.1, "beta_end": 0.01},
        {"clip_sample": -1.0},
    ],
)
def test_bad_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        DDIMScheduler(**kwargs)


def test_bad_runtime_arguments_raise():
    sched = DDIMScheduler(num_train_timesteps=10)
    with pytest.raises(ValueError):
        sched.set_timesteps(11)
    sched.set_timesteps(5)
    with pytest.raises(ValueError, match="timestep 4"):
        sched.step(torch.zeros(1), 4, torch.zeros(1))
    with pytest.raises(ValueError):
        DDPMScheduler(variance_type="learned")
