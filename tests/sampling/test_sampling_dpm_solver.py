"""DPM-Solver++ (2M): its first-order limit is DDIM, its order is 2, and it beats DDIM on Gaussian data."""

import math

import pytest
import torch

from medgen_cli.sampling import DDIMScheduler, DPMSolverMultistepScheduler, make_sampler, sample_diffusion

LDM = dict(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)


def _steps(sched, model, x, n):
    """Run the scheduler by hand, returning the state after every step."""
    sched.set_timesteps(n)
    states = []
    for t in sched.timesteps.tolist():
        x = sched.step(model(x, torch.full((x.shape[0],), t)), t, x)
        states.append(x)
    return states


@pytest.mark.parametrize("prediction_type", ["eps", "v", "x0"])
@pytest.mark.parametrize("spacing", ["trailing", "linspace"])
def test_first_order_is_ddim_eta0_step_for_step(prediction_type, spacing):
    cfg = dict(num_train_timesteps=200, beta_schedule="cosine", prediction_type=prediction_type,
               timestep_spacing=spacing)
    model = lambda x, t: 0.4 * x + 1e-3 * t.reshape(-1, 1, 1, 1)  # noqa: E731  any non-trivial denoiser
    x_T = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    ddim = _steps(DDIMScheduler(**cfg), model, x_T, 7)
    dpm = _steps(DPMSolverMultistepScheduler(**cfg, solver_order=1), model, x_T, 7)
    for a, b in zip(ddim, dpm):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    dpm2 = _steps(DPMSolverMultistepScheduler(**cfg, solver_order=2), model, x_T, 7)
    torch.testing.assert_close(dpm2[0], ddim[0])  # the first step of 2M is first order
    assert not torch.allclose(dpm2[3], ddim[3], atol=1e-4)  # later steps are not


def test_2m_follows_algorithm_2_on_uneven_log_snr_steps():
    # Lu et al. 2022b, Algorithm 2, written out with math on the ᾱ of the schedule; n = 6 trailing steps
    # of a 1000-step schedule have log-SNR steps of very different lengths (r_i far from 1)
    sched = DPMSolverMultistepScheduler(**LDM, prediction_type="x0")
    abar = sched.schedule.alphas_cumprod.tolist()
    x0_of_t = lambda t: 0.2 + 0.5 * math.cos(t / 150)  # noqa: E731  the model's x̂_0 at step t
    model = lambda x, t: torch.full_like(x, x0_of_t(int(t[0])))  # noqa: E731
    sched.set_timesteps(6)
    ts = sched.timesteps.tolist()
    alpha = lambda t: math.sqrt(abar[t]) if t >= 0 else 1.0  # noqa: E731
    sigma = lambda t: math.sqrt(1 - abar[t]) if t >= 0 else 0.0  # noqa: E731
    lam = lambda t: math.log(alpha(t) / sigma(t))  # noqa: E731
    x, expected = 0.9, []
    targets = ts[1:] + [-1]
    for i, (t, s) in enumerate(zip(ts, targets)):
        if s < 0:  # the last step to σ = 0
            x = x0_of_t(t)
        else:
            h = lam(s) - lam(t)
            d = x0_of_t(t)
            if i > 0:
                r = (lam(t) - lam(ts[i - 1])) / h
                d = (1 + 1 / (2 * r)) * x0_of_t(t) - 1 / (2 * r) * x0_of_t(ts[i - 1])
            x = sigma(s) / sigma(t) * x - alpha(s) * (math.exp(-h) - 1) * d
        expected.append(x)
    rs = [(lam(t) - lam(p)) / (lam(s) - lam(t)) for p, t, s in zip(ts, ts[1:], targets[1:-1])]
    assert max(abs(r - 1) for r in rs) > 0.2  # else the test could not tell r from 1/r
    got = []
    sample_diffusion(model, sched, (1, 1), num_inference_steps=6, x_T=torch.full((1, 1), 0.9, dtype=torch.float64),
                     callback=lambda i, t, x: got.append(float(x)))
    assert got == pytest.approx(expected, rel=1e-10, abs=1e-12)


def _x0_oracle_error(name, n):
    """|x − exact| at t = 499 for a denoiser whose x̂_0 = c0 + c1 sin(λ) depends on λ only.

    Then the ODE is solved exactly by x_s = (σ_s/σ_t) x_t + σ_s ∫ e^λ (c0 + c1 sin λ) dλ (Lu et al. 2022b,
    Sec. 4), with ∫ e^λ sin λ dλ = e^λ (sin λ − cos λ) / 2.
    """
    sched = make_sampler(name, **LDM, prediction_type="x0")
    abar = sched.schedule.alphas_cumprod
    lam = lambda t: 0.5 * (math.log(abar[t]) - math.log1p(-abar[t]))  # noqa: E731
    c0, c1, x_start = 0.3, 0.8, 0.7
    model = lambda x, t: torch.full_like(x, c0 + c1 * math.sin(lam(int(t[0]))))  # noqa: E731
    seen = {}
    sample_diffusion(model, sched, (1, 1), num_inference_steps=n, x_T=torch.full((1, 1), x_start, dtype=torch.float64),
                     callback=lambda i, t, x: seen.setdefault(sched.previous_timestep(t), float(x)))
    F = lambda l: c0 * math.exp(l) + c1 * math.exp(l) * (math.sin(l) - math.cos(l)) / 2  # noqa: E731
    s_t, s_s = math.sqrt(1 - abar[999]), math.sqrt(1 - abar[499])
    exact = s_s / s_t * x_start + s_s * (F(lam(499)) - F(lam(999)))
    return abs(seen[499] - exact)


def test_convergence_orders_on_an_exactly_solvable_ode():
    # trailing spacing with n = 10, 20, 40, 80 all pass through t = 499
    errors = {name: [_x0_oracle_error(name, n) for n in (10, 20, 40, 80)] for name in ("ddim", "dpmpp_2m")}
    rates = {name: [a / b for a, b in zip(e, e[1:])] for name, e in errors.items()}
    assert all(1.6 < r < 2.4 for r in rates["ddim"]), rates  # first order: the error halves
    assert all(3.3 < r < 4.8 for r in rates["dpmpp_2m"]), rates  # second order: it quarters
    assert errors["dpmpp_2m"][-1] < errors["ddim"][-1] / 5


def _gaussian(mu, s):
    """Exact ε-prediction for x_0 ~ N(mu, s²) and the exact ODE map from x at ᾱ_T to x_0 = mu + s z."""

    def eps(sched):
        def model(x, t):
            abar = sched.schedule.alphas_cumprod[t.long()].reshape(-1, *[1] * (x.ndim - 1)).to(x.dtype)
            a2, s2 = abar, 1 - abar  # α², σ²
            return s2.sqrt() / (a2 * s * s + s2) * (x - a2.sqrt() * mu)  # σ (x − α μ) / (α² s² + σ²)

        return model

    def exact(x_T, abar_T):
        z = (x_T - math.sqrt(abar_T) * mu) / math.sqrt(abar_T * s * s + 1 - abar_T)
        return mu + s * z

    return eps, exact


@pytest.mark.parametrize(("n", "gain"), [(5, 0.95), (10, 0.8), (20, 0.7)])
def test_2m_with_exact_eps_beats_ddim_on_gaussian_data(n, gain):
    eps, exact = _gaussian(mu=0.5, s=0.6)
    x_T = torch.randn(4000, 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ddim, dpm = DDIMScheduler(**LDM), DPMSolverMultistepScheduler(**LDM)
    ref = exact(x_T, float(ddim.schedule.alphas_cumprod[999]))
    err = {}
    for sched in (ddim, dpm):
        err[sched] = (sample_diffusion(eps(sched), sched, x_T.shape, num_inference_steps=n, x_T=x_T) - ref).abs().mean()
    assert err[dpm] < gain * err[ddim], (float(err[dpm]), float(err[ddim]))
    # extrapolating x̂_0 to σ = 0 (linear in 1/SNR) is exact to first order for Gaussian data
    final2 = DPMSolverMultistepScheduler(**LDM, final_step_first_order=False)
    err2 = (sample_diffusion(eps(final2), final2, x_T.shape, num_inference_steps=n, x_T=x_T) - ref).abs().mean()
    assert err2 < 0.8 * err[dpm], (float(err2), float(err[dpm]))


@pytest.mark.parametrize("prediction_type", ["eps", "v", "x0"])
def test_true_noise_recovers_x0(prediction_type):
    # a denoiser returning the true target keeps x on the forward path: every step is exact
    sched = DPMSolverMultistepScheduler(num_train_timesteps=100, prediction_type=prediction_type)
    gen = torch.Generator().manual_seed(2)
    x0, noise = torch.randn(2, 1, 6, 6, generator=gen), torch.randn(2, 1, 6, 6, generator=gen)
    sched.set_timesteps(8)
    x_T = sched.add_noise(x0, noise, sched.timesteps[0])
    out = sample_diffusion(lambda x, t: sched.target_for(x0, noise, t), sched, x0.shape, num_inference_steps=8, x_T=x_T)
    assert (out - x0).abs().max() < 1e-4


def test_runtime_errors_and_restart():
    sched = DPMSolverMultistepScheduler(num_train_timesteps=50)
    sched.set_timesteps(5)
    ts = sched.timesteps.tolist()
    x = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="without the steps before it"):
        sched.step(x, ts[2], x)
    sched.step(x, ts[0], x)
    with pytest.raises(ValueError, match=f"t = {ts[2]}"):
        sched.step(x, ts[2], x)  # skipped ts[1]
    with pytest.raises(ValueError, match="eta = 0.5"):
        sched.step(x, ts[0], x, eta=0.5)
    with pytest.raises(ValueError, match="solver_order"):
        DPMSolverMultistepScheduler(solver_order=3)
    # sampling twice with one scheduler gives the same result (history restarts at the first timestep)
    model = lambda x, t: 0.2 * x  # noqa: E731
    x_T = torch.randn(1, 1, 4, 4, generator=torch.Generator().manual_seed(3))
    a = sample_diffusion(model, sched, x_T.shape, num_inference_steps=6, x_T=x_T)
    b = sample_diffusion(model, sched, x_T.shape, num_inference_steps=6, x_T=x_T)
    assert torch.equal(a, b)
