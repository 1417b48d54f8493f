"""Rectified flow: the path and its velocity, the shift, training times, and the Euler / Heun samplers."""

import json
import math

import pytest
import torch
from torch import nn

from medgen_cli.models.priors.unet import UNetPrior, timestep_embedding
from medgen_cli.sampling import (
    FlowEulerScheduler,
    FlowHeunScheduler,
    make_sampler,
    resolution_shift,
    sample_diffusion,
    shift_time,
)

FLOWS = [FlowEulerScheduler, FlowHeunScheduler]


def test_path_and_velocity_closed_forms():
    sched = FlowEulerScheduler()
    gen = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 2, 4, 4, generator=gen), torch.randn(3, 2, 4, 4, generator=gen)
    t = torch.tensor([0.0, 0.3, 1.0])
    xt = sched.add_noise(x0, noise, t)
    for i, ti in enumerate(t.tolist()):  # written out per sample: x_t = (1 − t) x_0 + t ε
        torch.testing.assert_close(xt[i], (1 - ti) * x0[i] + ti * noise[i])
    torch.testing.assert_close(sched.target_for(x0, noise, t), noise - x0)
    # the target is the time derivative of the path (central difference; the path is linear in t)
    h = 1e-3
    deriv = (sched.add_noise(x0, noise, 0.5 + h) - sched.add_noise(x0, noise, 0.5 - h)) / (2 * h)
    torch.testing.assert_close(deriv, sched.target_for(x0, noise, 0.5), atol=1e-3, rtol=1e-3)
    # and a velocity prediction determines x_0 and ε at (x_t, t)
    v = sched.target_for(x0, noise, t)
    torch.testing.assert_close(sched.pred_to_x0(v, xt, t), x0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sched.pred_to_eps(v, xt, t), noise, atol=1e-5, rtol=1e-5)


def _shift_reference(t, s):
    return s * t / (1 + (s - 1) * t)


@pytest.mark.parametrize("s", [0.5, 1.0, 3.0])
def test_shift_closed_form_and_monotonicity(s):
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    shifted = shift_time(t, s)
    torch.testing.assert_close(shifted, _shift_reference(t, s))
    assert shifted[0] == 0 and shifted[-1] == 1
    assert (shifted.diff() > 0).all()  # strictly increasing
    inner = t[1:-1]
    logit = lambda u: torch.log(u) - torch.log1p(-u)  # noqa: E731
    torch.testing.assert_close(logit(shift_time(inner, s)), logit(inner) + math.log(s))  # a shift of the logit
    if s > 1:
        assert (shift_time(inner, s) > inner).all()  # more time at high noise
    with pytest.raises(ValueError, match="-1"):
        shift_time(t, -1.0)


def test_resolution_dependent_shift():
    assert resolution_shift(64 * 64, 32 * 32) == pytest.approx(2.0)  # √(4096 / 1024), SD3
    assert resolution_shift(32**3, 16**3, exponent=1 / 3) == pytest.approx(2.0)  # side-length ratio, MONAI
    sched = FlowEulerScheduler(shift=1.5, base_grid_numel=1024, grid_numel=4096)
    assert sched.effective_shift == pytest.approx(3.0)
    sched.set_timesteps(4)
    uniform = torch.tensor([1.0, 0.75, 0.5, 0.25], dtype=torch.float64)
    torch.testing.assert_close(sched.timesteps, _shift_reference(uniform, 3.0))
    assert sched.next_time(sched.timesteps[-1]) == 0.0
    with pytest.raises(ValueError, match="grid_numel"):
        FlowEulerScheduler(base_grid_numel=1024)


def test_logit_normal_and_uniform_training_times():
    gen = torch.Generator().manual_seed(1)
    ln = FlowEulerScheduler(time_sampling="logit_normal", logit_mean=0.5, logit_std=0.8)
    t = ln.sample_train_t(40000, generator=gen).double()
    assert t.dtype != torch.long and 0 < t.min() and t.max() < 1
    logit = torch.log(t) - torch.log1p(-t)
    assert abs(logit.mean() - 0.5) < 0.02 and abs(logit.std() - 0.8) < 0.02
    ln3 = FlowEulerScheduler(time_sampling="logit_normal", logit_mean=0.5, logit_std=0.8, shift=3.0)
    shifted = ln3.sample_train_t(40000, generator=gen).double()
    assert abs((torch.log(shifted) - torch.log1p(-shifted)).mean() - (0.5 + math.log(3.0))) < 0.02
    u = FlowEulerScheduler(time_sampling="uniform").sample_train_t(40000, generator=gen).double()
    assert abs(u.mean() - 0.5) < 0.01 and abs(u.var() - 1 / 12) < 0.003
    a = ln.sample_train_t(5, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, ln.sample_train_t(5, generator=torch.Generator().manual_seed(2)))


@pytest.mark.parametrize("cls", FLOWS)
@pytest.mark.parametrize("n", [1, 3, 10])
def test_point_mass_is_recovered_exactly(cls, n):
    # x_0 = c for every sample: the exact velocity is v(x, t) = (x − c) / t and every path is straight,
    # so Euler (and Heun) land on c from any start noise in any number of steps
    c = torch.tensor([0.7, -1.2]).reshape(1, 2, 1, 1)
    sched = cls(shift=2.0)
    x_T = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(3))
    model = lambda x, t: (x - c) / (t.reshape(-1, 1, 1, 1) / 1000)  # noqa: E731  the model sees t · 1000
    out = sample_diffusion(model, sched, x_T.shape, num_inference_steps=n, x_T=x_T)
    torch.testing.assert_close(out, c.expand_as(out), atol=1e-5, rtol=0)


def _gaussian_velocity(mu, s):
    """Exact v(x, t) = E[ε − x_0 | x_t = x] for x_0 ~ N(mu, s²); its ODE maps noise z to mu + s z."""

    def model(x, t_in):
        t = (t_in / 1000).to(x.dtype).reshape(-1, *[1] * (x.ndim - 1))
        a, b = 1 - t, t
        var = a * a * s * s + b * b
        return (b - a * s * s) * (x - a * mu) / var - mu

    return model


def _errors(cls, steps, shift=1.0):
    z = torch.randn(500, 1, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    mu, s = 0.5, 0.6
    out = {}
    for n in steps:
        x = sample_diffusion(_gaussian_velocity(mu, s), cls(shift=shift), z.shape, num_inference_steps=n, x_T=z)
        out[n] = float((x - (mu + s * z)).abs().max())
    return out


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_gaussian_data_is_recovered_euler_first_order_heun_second(shift):
    steps = (16, 32, 64)
    euler, heun = _errors(FlowEulerScheduler, steps, shift), _errors(FlowHeunScheduler, steps, shift)
    for a, b in zip(steps, steps[1:]):
        assert 1.7 < euler[a] / euler[b] < 2.3, euler
        assert 3.4 < heun[a] / heun[b] < 4.6, heun
    assert heun[64] < min(euler[64] / 8, 0.01)


def _linear_ode_errors(cls, k, steps):
    """dx/dt = k x from t = 1 to 0: x(0) = x(1) e^{−k}."""
    out = []
    for n in steps:
        sched = cls()
        sched.set_timesteps(n)
        x = torch.tensor([1.0], dtype=torch.float64)
        for t in sched.timesteps.tolist():
            x = sched.solve_step(lambda y, _t: k * y, t, x)
        out.append(abs(float(x) - math.exp(-k)))
    return out


def test_euler_and_heun_orders_on_a_linear_ode():
    steps = (8, 16, 32, 64)
    for cls, order in ((FlowEulerScheduler, 1), (FlowHeunScheduler, 2)):
        e = _linear_ode_errors(cls, 1.3, steps)
        measured = [math.log2(a / b) for a, b in zip(e, e[1:])]
        assert all(abs(m - order) < 0.15 for m in measured), (cls.__name__, measured)


def test_heun_calls_the_model_twice_per_step_except_the_last():
    calls = []

    def model(x, t):
        calls.append(float(t[0]))
        return torch.zeros_like(x)

    sample_diffusion(model, FlowHeunScheduler(), (2, 1, 4), num_inference_steps=4)
    assert len(calls) == 2 * 4 - 1
    torch.testing.assert_close(torch.tensor(calls), 1000 * torch.tensor([1, 0.75, 0.75, 0.5, 0.5, 0.25, 0.25]))
    calls.clear()
    sample_diffusion(model, FlowEulerScheduler(), (2, 1, 4), num_inference_steps=4)
    assert calls == [1000.0, 750.0, 500.0, 250.0]


def test_unet_takes_continuous_times():
    t = torch.tensor([500.0, 500.25])
    emb = timestep_embedding(t, 8)
    freqs = [10000 ** (-k / 4) for k in range(4)]  # the sinusoid written out
    expected = torch.tensor([[math.cos(ti * f) for f in freqs] + [math.sin(ti * f) for f in freqs]
                             for ti in t.tolist()])
    torch.testing.assert_close(emb, expected, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(emb[0], emb[1])  # fractional times are not rounded away
    unet = UNetPrior(2, 2, base_channels=8, channel_mults=(1, 2), num_res_blocks=1, num_groups=4)
    nn.init.normal_(unet.out[-1].weight, std=0.1)  # the output layer starts at zero
    x = torch.randn(1, 2, 8, 8, generator=torch.Generator().manual_seed(5))
    sched = FlowEulerScheduler()
    a = unet(x, sched.model_timestep(torch.tensor([0.5])))
    b = unet(x, sched.model_timestep(torch.tensor([0.50025])))
    assert a.shape == x.shape and not torch.allclose(a, b)


def test_flow_training_objective_learns_a_gaussian():
    # a small MLP trained on the objective (times, path, target as DiffusionLoss will use them), then Heun
    torch.manual_seed(0)
    mu, s = torch.tensor([1.0, -0.5]), torch.tensor([0.5, 0.3])
    sched = FlowHeunScheduler(time_sampling="uniform")
    net = nn.Sequential(nn.Linear(3, 64), nn.SiLU(), nn.Linear(64, 64), nn.SiLU(), nn.Linear(64, 2))
    model = lambda x, t_in: net(torch.cat([x, t_in[:, None] / 1000], dim=1))  # noqa: E731
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    lr = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 800)
    gen = torch.Generator().manual_seed(6)
    for _ in range(800):
        x0 = mu + s * torch.randn(256, 2, generator=gen)
        t = sched.sample_train_t(256, generator=gen)
        noise = torch.randn(256, 2, generator=gen)
        pred = model(sched.add_noise(x0, noise, t), sched.model_timestep(t))
        loss = (pred - sched.target_for(x0, noise, t)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        lr.step()
    with torch.no_grad():
        x = sample_diffusion(model, sched, (4000, 2), num_inference_steps=10, generator=gen)
    assert (x.mean(0) - mu).abs().max() < 0.05, x.mean(0)
    assert (x.std(0) - s).abs().max() < 0.05, x.std(0)


@pytest.mark.parametrize("cls", FLOWS)
def test_config_round_trip(cls):
    sched = cls(time_sampling="uniform", logit_mean=0.2, logit_std=1.3, shift=2.0, base_grid_numel=512, grid_numel=4096,
                shift_exponent=1 / 3, time_scale=1.0)
    cfg = json.loads(json.dumps(sched.config()))
    again = cls.from_config(cfg)
    assert again.config() == sched.config() and again.effective_shift == sched.effective_shift
    assert type(make_sampler(cls.registry_name, **cfg)) is cls


@pytest.mark.parametrize(
    "kwargs",
    [{"time_sampling": "beta"}, {"logit_std": 0.0}, {"shift": 0.0}, {"shift_exponent": -1.0}, {"time_scale": 0.0},
     {"base_grid_numel": 0, "grid_numel": 10}],
)
def test_bad_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        FlowEulerScheduler(**kwargs)


def test_bad_runtime_arguments_raise():
    sched = FlowHeunScheduler()
    with pytest.raises(ValueError, match="num_inference_steps"):
        sched.set_timesteps(0)
    sched.set_timesteps(4)
    with pytest.raises(ValueError, match="0.6"):
        sched.step(torch.zeros(1), 0.6, torch.zeros(1))
    with pytest.raises(ValueError, match="eta = 0.3"):
        sample_diffusion(lambda x, t: x, sched, (1, 1, 4), num_inference_steps=2, eta=0.3)
