"""DPM-Solver++ (2M): a multistep second-order solver of the diffusion ODE (Lu et al. 2022, "DPM-Solver++").

Registered as ``dpmpp_2m``; it runs the eps / v / x0 priors of ``DDPMScheduler`` / ``DDIMScheduler`` from
the same config and the same timesteps (``set_timesteps`` of the shared base, ``trailing`` by default).

With α_t = √ᾱ_t, σ_t = √(1 − ᾱ_t) and the log-SNR λ_t = log(α_t / σ_t), the exact solution of the
probability-flow ODE written for the data prediction x̂_0 is (Lu et al. 2022b, Sec. 4)

    (1) x_s = (σ_s / σ_t) x_t + σ_s ∫_{λ_t}^{λ_s} e^λ x̂_0(x_λ, λ) dλ .

Holding x̂_0 constant gives the first-order step (2) x_s = (σ_s/σ_t) x_t − α_s (e^{−h} − 1) x̂_0(x_t, t),
h = λ_s − λ_t, which is DDIM with η = 0. DPM-Solver++(2M) (Algorithm 2) replaces x̂_0 in (2) by
(3) D = (1 + 1/(2r)) x̂_0(t) − 1/(2r) x̂_0(t_prev), r = (λ_t − λ_{t_prev}) / h: a linear
extrapolation in λ through the previous step's x̂_0 (its first step is first order).

The last step goes to ᾱ = 1 (σ = 0, λ = ∞), as DDIM's does. There the λ-extrapolation diverges
(r → 0), and the exact solution is x_0 = x̂_0 at σ = 0. ``final_step_first_order = True`` (the default,
as in the reference implementations) returns the last x̂_0; ``False`` extrapolates the last two x̂_0
linearly in 1/SNR = σ²/α² to 0 (for Gaussian data x̂_0 is a smooth function of 1/SNR along an ODE
path). With exact denoisers that option cut the final error by 1.4-13× on Gaussian data at 5-20
steps, but was up to 30 % worse on a two-mode mixture at 8-10 steps: try it per model.

Use ``trailing`` timesteps (the default). ``linspace`` / ``leading`` evaluate at t = 0, where the last
λ-step is many times the one before it (r ≪ 1) and the 2M extrapolation overshoots: with exact
denoisers it was then worse than DDIM at 8-20 steps.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from medgen_cli.sampling.registry import register_sampler
from medgen_cli.sampling.schedulers import _DiffusionScheduler

SOLVER_ORDERS = (1, 2)


@register_sampler("dpmpp_2m")
class DPMSolverMultistepScheduler(_DiffusionScheduler):
    """DPM-Solver++ (2M) with data prediction, over the discrete ``NoiseSchedule``; deterministic.

    Args:
        solver_order: 2 (DPM-Solver++(2M); the first step is first order) or 1 (DDIM, η = 0).
        final_step_first_order: the last step (to σ = 0) returns the last x̂_0 (see the module docstring).
        Other arguments: see ``DDIMScheduler`` (the prior's stored scheduler config fits as it is).
    """

    takes_eta = False  # deterministic: eta 0 only

    def __init__(self, *args: Any, solver_order: int = 2, final_step_first_order: bool = True, **kwargs: Any) -> None:
        if solver_order not in SOLVER_ORDERS:
            raise ValueError(f"solver_order must be one of {SOLVER_ORDERS}, got {solver_order!r}")
        self.solver_order = int(solver_order)
        self.final_step_first_order = bool(final_step_first_order)
        self._history: list[tuple[int, Tensor]] = []  # (t, x̂_0) of the previous step
        super().__init__(*args, **kwargs)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "solver_order": self.solver_order,
                "final_step_first_order": self.final_step_first_order}

    def set_timesteps(self, num_inference_steps: int) -> None:
        super().set_timesteps(num_inference_steps)
        self._history = []

    def _lambda(self, abar: Tensor) -> Tensor:
        """λ = log(α/σ) = ½ (log ᾱ − log(1 − ᾱ)), float64."""
        return 0.5 * (torch.log(abar) - torch.log1p(-abar))

    def _last_x0(self, t: int) -> tuple[int, Tensor] | None:
        """The previous step's (t, x̂_0) if this step follows it; restarts at the first timestep."""
        if t == int(self.timesteps[0]):
            self._history = []
            return None
        if not self._history:
            raise ValueError(f"DPM-Solver++ step at t = {t} without the steps before it; "
                             f"call set_timesteps and step through {self.timesteps.tolist()} in order")
        last_t, last_x0 = self._history[-1]
        if self.previous_timestep(last_t) != t:
            raise ValueError(f"DPM-Solver++ expected the step after t = {last_t}, got t = {t}")
        return last_t, last_x0

    def step(
        self,
        model_output: Tensor,
        t: Tensor | int,
        x_t: Tensor,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """One DPM-Solver++ update x_t → x_prev; ``eta`` must be 0 (the solver is deterministic)."""
        if eta != 0:
            raise ValueError(f"dpmpp_2m is deterministic and takes eta = 0, got eta = {eta!r}")
        t = int(t)
        prev = self.previous_timestep(t)
        last = self._last_x0(t)
        x0, _ = self._x0_and_eps(model_output, t, x_t)  # data prediction x̂_0 (clipped if asked)
        self._history = [(t, x0)]
        second = self.solver_order == 2 and last is not None
        if prev < 0:  # the final step to σ = 0: x_0 = x̂_0 at σ = 0
            if second and not self.final_step_first_order:
                return self._extrapolate_to_clean(x0, t, *last)
            return x0
        abar_t, abar_p = self._abar(t, x_t), self._abar(prev, x_t)
        lam_t, lam_p = self._lambda(abar_t), self._lambda(abar_p)
        h = lam_p - lam_t  # step size in log-SNR (> 0: towards the data)
        data = x0
        if second:
            last_t, last_x0 = last
            r = (lam_t - self._lambda(self._abar(last_t, x_t))) / h  # r_i = h_{i−1} / h_i
            # (3) D_i = (1 + 1/(2 r_i)) x̂_0(t_{i−1}) − 1/(2 r_i) x̂_0(t_{i−2})
            data = self._c(1 + 0.5 / r, x_t) * x0 - self._c(0.5 / r, x_t) * last_x0
        # (2) with D_i for x̂_0: x_{t_i} = (σ_{t_i}/σ_{t_{i−1}}) x_{t_{i−1}} − α_{t_i} (e^{−h_i} − 1) D_i
        ratio = ((1.0 - abar_p) / (1.0 - abar_t)).sqrt()
        return self._c(ratio, x_t) * x_t - self._c(abar_p.sqrt() * torch.expm1(-h), x_t) * data

    def _extrapolate_to_clean(self, x0: Tensor, t: int, last_t: int, last_x0: Tensor) -> Tensor:
        """x̂_0 at 1/SNR = 0 from the values at t and last_t, linear in 1/SNR = (1 − ᾱ)/ᾱ."""
        u_t = (1.0 - self._abar(t, x0)) / self._abar(t, x0)
        u_last = (1.0 - self._abar(last_t, x0)) / self._abar(last_t, x0)
        w = u_t / (u_last - u_t)  # x̂_0(0) = x̂_0(u_t) + (x̂_0(u_t) − x̂_0(u_last)) · u_t / (u_last − u_t)
        return self._c(1 + w, x0) * x0 - self._c(w, x0) * last_x0
