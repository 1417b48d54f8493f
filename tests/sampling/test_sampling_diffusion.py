import pytest
import torch
from torch import nn

from medgen_cli.sampling.diffusion import sample_diffusion
from medgen_cli.sampling.schedulers import DDIMScheduler, DDPMScheduler


class ToyDenoiser(nn.Module):
    """Output depends on x, t and a conditioning image unless null_mask drops it; records batch sizes."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(0.1))
        self.batches = []

    def forward(self, x, t, cond=None, null_mask=None):
        self.batches.append(x.shape[0])
        c = torch.zeros_like(x) if cond is None else cond
        if null_mask is not None:
            c = torch.where(null_mask.reshape(-1, *[1] * (x.ndim - 1)), torch.full_like(c, -0.2), c)
        return self.scale * x + c + 1e-3 * t.reshape(-1, *[1] * (x.ndim - 1))


def _manual(model, sched, x, steps, combine):
    sched.set_timesteps(steps)
    for t in sched.timesteps.tolist():
        tb = torch.full((x.shape[0],), t)
        x = sched.step(combine(model, x, tb), t, x)
    return x


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_guidance_scale_one_is_the_conditional_model(spatial_dims):
    shape = (2, 1) + (4,) * spatial_dims
    cond = {"cond": torch.randn(shape, generator=torch.Generator().manual_seed(0))}
    x_T = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    model, sched = ToyDenoiser(), DDIMScheduler(num_train_timesteps=50)
    out = sample_diffusion(model, sched, shape, cond=cond, guidance_scale=1.0, num_inference_steps=4, x_T=x_T)
    assert model.batches == [2] * 4  # one conditional pass per step, no unconditional pass
    ref = _manual(model, sched, x_T, 4, lambda m, x, t: m(x, t, cond=cond["cond"]))
    torch.testing.assert_close(out, ref)


def test_guidance_combines_batched_passes():
    shape, s = (3, 2, 4, 4), 2.5
    cond = {"cond": torch.randn(shape, generator=torch.Generator().manual_seed(2))}
    x_T = torch.randn(shape, generator=torch.Generator().manual_seed(3))
    model, sched = ToyDenoiser(), DDIMScheduler(num_train_timesteps=50)
    out = sample_diffusion(model, sched, shape, cond=cond, guidance_scale=s, num_inference_steps=3, x_T=x_T)
    assert model.batches == [6] * 3  # conditional and unconditional passes in one batch

    def guided(m, x, t):
        c = m(x, t, cond=cond["cond"], null_mask=torch.zeros(3, dtype=torch.bool))
        u = m(x, t, cond=cond["cond"], null_mask=torch.ones(3, dtype=torch.bool))
        return u + s * (c - u)

    torch.testing.assert_close(out, _manual(model, sched, x_T, 3, guided))


def test_explicit_uncond_is_used():
    shape = (2, 1, 4, 4)
    x_T = torch.randn(shape, generator=torch.Generator().manual_seed(4))
    model, sched = ToyDenoiser(), DDIMScheduler(num_train_timesteps=20)
    cond, uncond = {"cond": torch.ones(shape)}, {"cond": torch.zeros(shape)}
    out = sample_diffusion(model, sched, shape, cond=cond, uncond=uncond, guidance_scale=0.0, num_inference_steps=2, x_T=x_T)
    ref = _manual(model, sched, x_T, 2, lambda m, x, t: m(x, t, cond=uncond["cond"]))
    torch.testing.assert_close(out, ref)


def test_seeded_generator_reproduces_and_callback_sees_every_step():
    model, sched = ToyDenoiser(), DDPMScheduler(num_train_timesteps=20)
    seen = []
    a = sample_diffusion(model, sched, (2, 1, 4, 4), num_inference_steps=5, generator=torch.Generator().manual_seed(5),
                         callback=lambda i, t, x: seen.append((i, t)))
    b = sample_diffusion(model, sched, (2, 1, 4, 4), num_inference_steps=5, generator=torch.Generator().manual_seed(5))
    c = sample_diffusion(model, sched, (2, 1, 4, 4), num_inference_steps=5, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert [i for i, _ in seen] == list(range(5)) and [t for _, t in seen] == sched.timesteps.tolist()


def test_bad_arguments_raise():
    model, sched = ToyDenoiser(), DDIMScheduler(num_train_timesteps=20)
    with pytest.raises(ValueError):
        sample_diffusion(model, sched, (1, 1, 4, 4), guidance_scale=-1.0)
    with pytest.raises(ValueError):
        sample_diffusion(model, sched, (1, 1, 4, 4), x_T=torch.zeros(1, 1, 5, 5))
