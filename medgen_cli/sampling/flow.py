"""Rectified flow / flow matching on straight paths, with Euler and Heun samplers.

Follows Liu et al. 2022 ("Flow Straight and Fast"), Lipman et al. 2023 ("Flow Matching") and the
conventions of Esser et al. 2024 (SD3, "Scaling Rectified Flow Transformers"):

- time t ∈ [0, 1], t = 0 the data and t = 1 the noise (larger t = noisier, as for diffusion);
- (1) the path x_t = (1 − t) x_0 + t ε, ε ~ N(0, I);
- (2) its velocity dx_t/dt = v = ε − x_0, the training target (the model predicts v);
- (3) training times: uniform, or logit-normal t = sigmoid(m + s·n), n ~ N(0, 1) (SD3 Sec. 3.1);
- (4) the timestep shift t' = s t / (1 + (s − 1) t) (SD3 Sec. 5.3.2), i.e. logit(t') = logit(t) + log s:
  s > 1 spends more time at high noise. It depends on the latent size when ``base_grid_numel`` is
  set: s = shift · (grid_numel / base_grid_numel) ^ shift_exponent. SD3 argues with element counts
  (exponent ½: the noise needed to hide a constant image of n elements grows like √n); MONAI's
  RFlowScheduler uses the ratio of side lengths instead (exponent 1 / spatial_dims).
  The shift applies to training times and to the sampling grid alike.
- sampling integrates dx/dt = v(x, t) from t = 1 to 0 on the grid shift(linspace(1, 0, n + 1)):
  (5) Euler x_{t'} = x_t + (t' − t) v(x_t, t); (6) Heun (Karras et al. 2022, Algorithm 1) averages
  v at both ends of the step, one extra model call per step except the last (which ends at t = 0).

The denoiser sees t · ``time_scale`` (default 1000, the range of the diffusion priors' integer
steps) as a float; ``UNetPrior``'s sinusoidal embedding takes floats as they are.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from medgen_cli.sampling.registry import Sampler, register_sampler

TIME_SAMPLINGS = ("uniform", "logit_normal")


def shift_time(t: Tensor | float, shift: float) -> Tensor:
    """(4) t' = s t / (1 + (s − 1) t): a monotone map of [0, 1] onto itself (s = 1 is the identity)."""
    if shift <= 0:
        raise ValueError(f"shift must be positive, got {shift!r}")
    t = torch.as_tensor(t)
    return shift * t / (1.0 + (shift - 1.0) * t)


def resolution_shift(grid_numel: int, base_grid_numel: int, exponent: float = 0.5) -> float:
    """The resolution-dependent shift (grid_numel / base_grid_numel) ^ exponent (SD3 Sec. 5.3.2: exponent ½)."""
    if grid_numel < 1 or base_grid_numel < 1:
        raise ValueError(f"grid_numel and base_grid_numel must be positive, got {grid_numel!r}, {base_grid_numel!r}")
    return (grid_numel / base_grid_numel) ** exponent


class _FlowMatchScheduler(Sampler):
    """Shared by the flow samplers: the path, its target, training times, the shifted time grid.

    Args:
        time_sampling: training times ``uniform`` (as MONAI's default) or ``logit_normal`` (SD3's best
            for large image models, m = 0, s = 1; it rarely visits t near 0, which small denoisers then
            fit poorly: the samples come out too narrow).
        logit_mean, logit_std: m and s of the logit-normal.
        shift: the timestep shift s (at ``base_grid_numel`` when that is set); 1 = none.
        base_grid_numel: latent grid elements (spatial, channels excluded) at which ``shift`` applies;
            None = the shift does not depend on the size.
        grid_numel: latent grid elements of one sample (needed with ``base_grid_numel``).
        shift_exponent: exponent of the size ratio (½ as SD3; 1 / spatial_dims as MONAI).
        time_scale: the denoiser sees t · time_scale.
    """

    family = "flow"

    def __init__(
        self,
        time_sampling: str = "uniform",
        logit_mean: float = 0.0,
        logit_std: float = 1.0,
        shift: float = 1.0,
        base_grid_numel: int | None = None,
        grid_numel: int | None = None,
        shift_exponent: float = 0.5,
        time_scale: float = 1000.0,
    ) -> None:
        if time_sampling not in TIME_SAMPLINGS:
            raise ValueError(f"time_sampling must be one of {TIME_SAMPLINGS}, got {time_sampling!r}")
        if logit_std <= 0:
            raise ValueError(f"logit_std must be positive, got {logit_std!r}")
        if shift <= 0:
            raise ValueError(f"shift must be positive, got {shift!r}")
        if base_grid_numel is not None and grid_numel is None:
            raise ValueError(f"base_grid_numel = {base_grid_numel!r} needs grid_numel (the latent grid's elements)")
        if shift_exponent < 0:
            raise ValueError(f"shift_exponent must be >= 0, got {shift_exponent!r}")
        if time_scale <= 0:
            raise ValueError(f"time_scale must be positive, got {time_scale!r}")
        self.time_sampling = time_sampling
        self.logit_mean = float(logit_mean)
        self.logit_std = float(logit_std)
        self.shift = float(shift)
        self.base_grid_numel = base_grid_numel
        self.grid_numel = grid_numel
        self.shift_exponent = float(shift_exponent)
        self.time_scale = float(time_scale)
        size = 1.0 if base_grid_numel is None else resolution_shift(grid_numel, base_grid_numel, shift_exponent)
        self.effective_shift = self.shift * size  # s of (4)
        self.set_timesteps(1)

    def config(self) -> dict[str, Any]:
        """JSON-able constructor keyword arguments; ``from_config`` rebuilds the scheduler."""
        return {
            "time_sampling": self.time_sampling, "logit_mean": self.logit_mean, "logit_std": self.logit_std,
            "shift": self.shift, "base_grid_numel": self.base_grid_numel, "grid_numel": self.grid_numel,
            "shift_exponent": self.shift_exponent, "time_scale": self.time_scale,
        }

    # -- the path and training ------------------------------------------------------------------
    @staticmethod
    def _bt(t: Tensor | float, like: Tensor) -> Tensor:
        """t as a tensor broadcastable against ``like`` (B, ...): one time per sample, or one for all."""
        t = torch.as_tensor(t, device=like.device, dtype=like.dtype)
        return t.reshape(-1, *([1] * (like.ndim - 1))) if t.ndim == 1 else t

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor | float) -> Tensor:
        """(1) x_t = (1 − t) x_0 + t ε."""
        t = self._bt(t, x0)
        return (1.0 - t) * x0 + t * noise

    def target_for(self, x0: Tensor, noise: Tensor, t: Tensor | float | None = None) -> Tensor:
        """(2) v = ε − x_0 (the same for every t on a straight path)."""
        return noise - x0

    def pred_to_x0(self, v: Tensor, x_t: Tensor, t: Tensor | float) -> Tensor:
        """x_0 = x_t − t v (from (1) and (2))."""
        return x_t - self._bt(t, x_t) * v

    def pred_to_eps(self, v: Tensor, x_t: Tensor, t: Tensor | float) -> Tensor:
        """ε = x_t + (1 − t) v (from (1) and (2))."""
        return x_t + (1.0 - self._bt(t, x_t)) * v

    def sample_train_t(self, batch_size: int, generator: torch.Generator | None = None,
                       device: torch.device | str | None = None) -> Tensor:
        """(3) then (4): training times (B,) float32 in [0, 1]."""
        if self.time_sampling == "uniform":
            t = torch.rand(batch_size, generator=generator, device=device)
        else:
            n = torch.randn(batch_size, generator=generator, device=device)
            t = torch.sigmoid(self.logit_mean + self.logit_std * n)
        return shift_time(t, self.effective_shift)

    def model_timestep(self, t: Tensor) -> Tensor:
        """The denoiser's float time input t · time_scale."""
        return t.float() * self.time_scale

    # -- sampling -------------------------------------------------------------------------------
    def set_timesteps(self, num_inference_steps: int) -> None:
        """The descending times shift(linspace(1, 0, n + 1))[:-1] (float64); the last step ends at 0."""
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps!r}")
        n = int(num_inference_steps)
        grid = shift_time(torch.linspace(1.0, 0.0, n + 1, dtype=torch.float64), self.effective_shift)
        self.timesteps = grid[:-1]
        self.num_inference_steps = n
        self._next = {float(a): float(b) for a, b in zip(grid[:-1], grid[1:])}

    def next_time(self, t: Tensor | float) -> float:
        """The time after ``t`` on the current grid (0 after the last one)."""
        t = float(t)
        if t not in self._next:
            raise ValueError(f"time {t} is not in the current timesteps {self.timesteps.tolist()}")
        return self._next[t]

    def step(self, model_output: Tensor, t: Tensor | float, x_t: Tensor, eta: float = 0.0,
             generator: torch.Generator | None = None) -> Tensor:
        """(5) One Euler step x_t → x_{t'} with the velocity ``model_output``; deterministic (eta = 0)."""
        if eta != 0:
            raise ValueError(f"flow samplers are deterministic and take eta = 0, got eta = {eta!r}")
        return x_t + (self.next_time(t) - float(t)) * model_output


@register_sampler("flow_euler")
class FlowEulerScheduler(_FlowMatchScheduler):
    """Euler sampler of a flow-matching prior: one model call per step. Args: see ``_FlowMatchScheduler``."""


@register_sampler("flow_heun")
class FlowHeunScheduler(_FlowMatchScheduler):
    """Heun (2nd order) sampler of a flow-matching prior; ``step`` alone is its Euler predictor.

    Args: see ``_FlowMatchScheduler``.
    """

    def solve_step(self, denoise: Callable[[Tensor, Any], Tensor], t: Tensor | float, x: Tensor, eta: float = 0.0,
                   generator: torch.Generator | None = None) -> Tensor:
        """(6) Predictor x̃ = x + Δt v(x, t), corrector x + Δt (v(x, t) + v(x̃, t')) / 2; Euler into t' = 0."""
        v = denoise(x, t)
        x_pred = self.step(v, t, x, eta=eta)
        t_next = self.next_time(t)
        if t_next == 0.0:  # the last step: no correction at t = 0 (as Karras et al. 2022, Algorithm 1)
            return x_pred
        v_next = denoise(x_pred, t_next)
        return x + (t_next - float(t)) * 0.5 * (v + v_next)
