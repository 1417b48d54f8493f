"""Diffusion noise schedules and the DDPM / DDIM reverse steps (registered as ``ddpm`` and ``ddim``).

- ``NoiseSchedule``: betas and cumulative alphas for ``linear`` and ``scaled_linear`` schedules
  (Ho et al. 2020; Rombach et al. 2022) and the ``cosine`` schedule (Nichol & Dhariwal 2021, eq. 17,
  betas clipped at 0.999).
- ``DDPMScheduler``: ancestral sampling from the posterior q(x_{t-1} | x_t, x_0) (Ho et al. 2020, eqs. 6-7).
- ``DDIMScheduler``: the non-Markovian sampler of Song et al. 2021 (eq. 12; eta = 0 is deterministic).

Both share the forward process ``add_noise`` = q(x_t | x_0), the model parameterisations
``prediction_type`` in {eps, v, x0} (v from Salimans & Ho 2022) with their conversions, and min-SNR-γ
loss weights (Hang et al. 2023). The sampling loop lives in ``sampling/diffusion.py``; the
registry (``make_sampler``, with ``make_scheduler`` kept as its alias) in ``sampling/registry.py``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from medgen_cli.sampling.registry import Sampler, make_sampler, register_sampler

BETA_SCHEDULES = ("linear", "scaled_linear", "cosine")
PREDICTION_TYPES = ("eps", "v", "x0")
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")
VARIANCE_TYPES = ("fixed_small", "fixed_large")
MAX_BETA = 0.999


def cosine_alphas_cumprod(num_train_timesteps: int, s: float = 0.008) -> Tensor:
    """Closed form ᾱ(t) = f(t) / f(0), f(t) = cos²(π/2 · (t/T + s) / (1 + s)) for t = 0..T (float64)."""
    t = torch.arange(num_train_timesteps + 1, dtype=torch.float64) / num_train_timesteps
    f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    return f / f[0]


class NoiseSchedule:
    """Variance schedule β_1..β_T of the forward process, stored 0-based (index t means step t+1).

    Args:
        num_train_timesteps: T.
        beta_schedule: ``linear`` (β evenly spaced), ``scaled_linear`` (√β evenly spaced, as in latent
            diffusion) or ``cosine`` (ᾱ from the closed form, β = 1 − ᾱ_t/ᾱ_{t−1} clipped at 0.999).
        beta_start, beta_end: first and last β of the linear schedules (unused by ``cosine``).
        cosine_s: offset s of the cosine schedule.
    """

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_schedule: str = "linear",
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        cosine_s: float = 0.008,
    ) -> None:
        if num_train_timesteps < 1:
            raise ValueError(f"num_train_timesteps must be >= 1, got {num_train_timesteps!r}")
        if beta_schedule not in BETA_SCHEDULES:
            raise ValueError(f"beta_schedule must be one of {BETA_SCHEDULES}, got {beta_schedule!r}")
        if beta_schedule != "cosine" and not 0.0 < beta_start <= beta_end < 1.0:
            raise ValueError(f"need 0 < beta_start <= beta_end < 1, got {beta_start!r}, {beta_end!r}")
        T = num_train_timesteps
        if beta_schedule == "linear":
            betas = torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
        elif beta_schedule == "scaled_linear":
            betas = torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=torch.float64) ** 2
        else:
            abar = cosine_alphas_cumprod(T, cosine_s)
            betas = (1.0 - abar[1:] / abar[:-1]).clamp(max=MAX_BETA)
        self.num_train_timesteps = T
        self.betas = betas  # (T,) float64
        self.alphas = 1.0 - betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)  # ᾱ_t


class _DiffusionScheduler(Sampler):
    """Shared by DDPM, DDIM and DPM-Solver++: forward process, parameterisations, timesteps and config."""

    family = "diffusion"
    takes_eta = True

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_schedule: str = "linear",
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        prediction_type: str = "eps",
        timestep_spacing: str = "trailing",
        clip_sample: float | None = None,
    ) -> None:
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
        if timestep_spacing not in TIMESTEP_SPACINGS:
            raise ValueError(f"timestep_spacing must be one of {TIMESTEP_SPACINGS}, got {timestep_spacing!r}")
        if clip_sample is not None and clip_sample <= 0:
            raise ValueError(f"clip_sample must be positive or None, got {clip_sample!r}")
        self.schedule = NoiseSchedule(num_train_timesteps, beta_schedule, beta_start, beta_end)
        self.num_train_timesteps = num_train_timesteps
        self.beta_schedule = beta_schedule
        self.beta_start = beta_start
        self.beta_end = beta_end
        self.prediction_type = prediction_type
        self.timestep_spacing = timestep_spacing
        self.clip_sample = clip_sample
        self.set_timesteps(num_train_timesteps)

    # -- config ---------------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """JSON-able constructor keyword arguments; ``type(self).from_config(cfg)`` rebuilds it."""
        return {
            "num_train_timesteps": self.num_train_timesteps,
            "beta_schedule": self.beta_schedule,
            "beta_start": self.beta_start,
            "beta_end": self.beta_end,
            "prediction_type": self.prediction_type,
            "timestep_spacing": self.timestep_spacing,
            "clip_sample": self.clip_sample,
        }

    # -- forward process ------------------------------------------------------------------------
    def _abar(self, t: Tensor | int, like: Tensor) -> Tensor:
        """ᾱ_t in float64 on the CPU, broadcastable against ``like`` (B, ...); t < 0 means ᾱ = 1.

        Coefficients are formed in float64 and cast with ``_c`` only when they meet the data, so
        1 − ᾱ keeps its precision near t = 0.
        """
        t = torch.as_tensor(t, dtype=torch.long).cpu()
        abar = self.schedule.alphas_cumprod
        out = torch.where(t >= 0, abar[t.clamp(min=0)], torch.ones((), dtype=abar.dtype))
        if out.ndim == 1:  # one timestep per sample
            out = out.reshape(-1, *([1] * (like.ndim - 1)))
        return out  # stays on the CPU: coefficients are tiny

    @staticmethod
    def _c(coef: Tensor, like: Tensor) -> Tensor:
        return coef.to(device=like.device, dtype=like.dtype)

    def sample_train_t(self, batch_size: int, generator: torch.Generator | None = None,
                       device: torch.device | str | None = None) -> Tensor:
        """Training timesteps (B,) int64, uniform over 0..T−1 (Ho et al. 2020, Algorithm 1)."""
        return torch.randint(0, self.num_train_timesteps, (batch_size,), device=device, generator=generator)

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor | int) -> Tensor:
        """Sample q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I) with the given standard-normal ``noise``."""
        abar = self._abar(t, x0)
        return self._c(abar.sqrt(), x0) * x0 + self._c((1.0 - abar).sqrt(), x0) * noise

    def target_for(self, x0: Tensor, noise: Tensor, t: Tensor | int) -> Tensor:
        """Training target for ``prediction_type``: ε, v = √ᾱ ε − √(1−ᾱ) x_0, or x_0."""
        if self.prediction_type == "eps":
            return noise
        if self.prediction_type == "x0":
            return x0
        abar = self._abar(t, x0)
        return self._c(abar.sqrt(), x0) * noise - self._c((1.0 - abar).sqrt(), x0) * x0

    def pred_to_x0(self, pred: Tensor, x_t: Tensor, t: Tensor | int) -> Tensor:
        """The x_0 implied by a model output at (x_t, t)."""
        if self.prediction_type == "x0":
            return pred
        abar = self._abar(t, x_t)
        a, b = self._c(abar.sqrt(), x_t), self._c((1.0 - abar).sqrt(), x_t)  # √ᾱ, √(1−ᾱ)
        if self.prediction_type == "eps":
            return (x_t - b * pred) / a
        return a * x_t - b * pred  # v

    def pred_to_eps(self, pred: Tensor, x_t: Tensor, t: Tensor | int) -> Tensor:
        """The ε implied by a model output at (x_t, t)."""
        if self.prediction_type == "eps":
            return pred
        abar = self._abar(t, x_t)
        a, b = self._c(abar.sqrt(), x_t), self._c((1.0 - abar).sqrt(), x_t)  # √ᾱ, √(1−ᾱ)
        if self.prediction_type == "x0":
            return (x_t - a * pred) / b
        return b * x_t + a * pred  # v

    def snr(self, t: Tensor | int) -> Tensor:
        """Signal-to-noise ratio ᾱ_t / (1 − ᾱ_t) (float64)."""
        t = torch.as_tensor(t, dtype=torch.long)
        abar = self.schedule.alphas_cumprod[t.cpu()]
        return (abar / (1.0 - abar)).to(t.device)

    def snr_weights(self, t: Tensor | int, gamma: float = 5.0) -> Tensor:
        """Min-SNR-γ loss weights (Hang et al. 2023) for a per-sample loss on this parameterisation.

        The weight of the x_0-loss is min(SNR, γ); expressed on ε it is min(SNR, γ)/SNR and on v
        min(SNR, γ)/(SNR + 1). Returns float32 weights shaped like ``t``.
        """
        if gamma <= 0:
            raise ValueError(f"gamma must be positive, got {gamma!r}")
        snr = self.snr(t)
        clipped = snr.clamp(max=gamma)
        if self.prediction_type == "eps":
            weights = clipped / snr
        elif self.prediction_type == "v":
            weights = clipped / (snr + 1.0)
        else:
            weights = clipped
        return weights.float()

    # -- reverse process ------------------------------------------------------------------------
    def set_timesteps(self, num_inference_steps: int) -> None:
        """Choose the descending timesteps used for sampling (stored in ``self.timesteps``).

        ``trailing`` (default) starts at T−1, the noisiest step (Lin et al. 2024, Table 2);
        ``leading`` is the DDIM paper's 0, k, 2k, ...; ``linspace`` spreads evenly over [0, T−1].
        """
        T = self.num_train_timesteps
        if not 1 <= num_inference_steps <= T:
            raise ValueError(f"num_inference_steps must be in [1, {T}], got {num_inference_steps!r}")
        n = num_inference_steps
        if self.timestep_spacing == "leading":
            steps = torch.arange(n, dtype=torch.float64) * (T // n)
        elif self.timestep_spacing == "trailing":
            steps = (T - torch.arange(n, dtype=torch.float64) * (T / n)).flip(0) - 1
        else:
            steps = torch.linspace(0, T - 1, n, dtype=torch.float64)
        self.timesteps = steps.round().long().flip(0)  # descending
        self.num_inference_steps = n
        self._prev = {int(t): int(p) for t, p in zip(self.timesteps[:-1], self.timesteps[1:])}
        self._prev[int(self.timesteps[-1])] = -1

    def previous_timestep(self, t: Tensor | int) -> int:
        """The timestep after ``t`` in ``self.timesteps`` (−1 after the last one, where ᾱ = 1)."""
        t = int(t)
        if t not in self._prev:
            raise ValueError(f"timestep {t} is not in the current timesteps {self.timesteps.tolist()}")
        return self._prev[t]

    def _x0_and_eps(self, model_output: Tensor, t: int, x_t: Tensor) -> tuple[Tensor, Tensor]:
        x0 = self.pred_to_x0(model_output, x_t, t)
        if self.clip_sample is not None:
            # Clip x_0 to the data range, then re-derive ε so the step stays consistent.
            x0 = x0.clamp(-self.clip_sample, self.clip_sample)
            abar = self._abar(t, x_t)
            return x0, (x_t - self._c(abar.sqrt(), x_t) * x0) / self._c((1.0 - abar).sqrt(), x_t)
        return x0, self.pred_to_eps(model_output, x_t, t)

    @staticmethod
    def _noise_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
        return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


@register_sampler("ddpm")
class DDPMScheduler(_DiffusionScheduler):
    """Ancestral DDPM sampler (Ho et al. 2020). With fewer inference steps than training steps the
    posterior is taken between the two chosen timesteps (β' = 1 − ᾱ_t / ᾱ_prev).

    Args:
        variance_type: ``fixed_small`` (posterior variance β̃) or ``fixed_large`` (β), Ho et al. Sec. 3.2.
        Other arguments: see ``NoiseSchedule`` and ``DDIMScheduler``.
    """

    def __init__(self, *args: Any, variance_type: str = "fixed_small", **kwargs: Any) -> None:
        if variance_type not in VARIANCE_TYPES:
            raise ValueError(f"variance_type must be one of {VARIANCE_TYPES}, got {variance_type!r}")
        self.variance_type = variance_type
        super().__init__(*args, **kwargs)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "variance_type": self.variance_type}

    def step(
        self,
        model_output: Tensor,
        t: Tensor | int,
        x_t: Tensor,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Draw x_prev ~ q(x_prev | x_t, x̂_0). ``eta`` is accepted for a common signature and unused."""
        t = int(t)
        prev = self.previous_timestep(t)
        abar_t, abar_prev = self._abar(t, x_t), self._abar(prev, x_t)
        beta = 1.0 - abar_t / abar_prev  # β' between the two timesteps
        x0, _ = self._x0_and_eps(model_output, t, x_t)
        # Posterior mean (Ho et al. eq. 7): weights on x̂_0 and on x_t.
        coef_x0 = abar_prev.sqrt() * beta / (1.0 - abar_t)
        coef_xt = (1.0 - beta).sqrt() * (1.0 - abar_prev) / (1.0 - abar_t)
        mean = self._c(coef_x0, x_t) * x0 + self._c(coef_xt, x_t) * x_t
        if prev < 0:
            return mean
        var = beta * (1.0 - abar_prev) / (1.0 - abar_t) if self.variance_type == "fixed_small" else beta
        return mean + self._c(var.sqrt(), x_t) * self._noise_like(x_t, generator)


@register_sampler("ddim")
class DDIMScheduler(_DiffusionScheduler):
    """DDIM sampler (Song et al. 2021, eq. 12); eta = 0 is deterministic, eta = 1 matches DDPM's variance.

    Args:
        num_train_timesteps, beta_schedule, beta_start, beta_end: the ``NoiseSchedule``.
        prediction_type: what the denoiser outputs: ``eps`` (noise), ``v`` (velocity) or ``x0``.
        timestep_spacing: how ``set_timesteps`` picks inference steps (``trailing``, ``leading``,
            ``linspace``).
        clip_sample: clamp predicted x_0 to [−clip_sample, clip_sample] (None = no clipping).
    """

    def step(
        self,
        model_output: Tensor,
        t: Tensor | int,
        x_t: Tensor,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """One DDIM update x_t → x_prev (prev = the next timestep in ``self.timesteps``)."""
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta!r}")
        t = int(t)
        prev = self.previous_timestep(t)
        abar_t, abar_prev = self._abar(t, x_t), self._abar(prev, x_t)  # ᾱ_prev = 1 after the last step
        x0, eps = self._x0_and_eps(model_output, t, x_t)
        # eq. 16: σ_t(η) = η √((1 − ᾱ_prev)/(1 − ᾱ_t)) √(1 − ᾱ_t/ᾱ_prev)
        sigma = eta * ((1.0 - abar_prev) / (1.0 - abar_t) * (1.0 - abar_t / abar_prev)).sqrt()
        # eq. 12, term 1: √ᾱ_prev · "predicted x_0"
        x_prev = self._c(abar_prev.sqrt(), x_t) * x0
        # eq. 12, term 2: "direction pointing to x_t", √(1 − ᾱ_prev − σ²) · ε̂
        x_prev = x_prev + self._c((1.0 - abar_prev - sigma**2).clamp(min=0).sqrt(), x_t) * eps
        # eq. 12, term 3: random noise σ_t ε_t (skipped when deterministic)
        if eta > 0 and prev >= 0:
            x_prev = x_prev + self._c(sigma, x_t) * self._noise_like(x_t, generator)
        return x_prev


def make_scheduler(name: str, **kwargs: Any) -> Sampler:
    """Alias of ``make_sampler``, kept for existing callers (any registered name, not only ddpm/ddim)."""
    return make_sampler(name, **kwargs)
