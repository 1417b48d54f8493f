"""The sampling loop for any denoiser and any registered sampler, with classifier-free guidance.

Guidance follows Ho & Salimans 2022: out = uncond + s · (cond − uncond), so s = 1 is the conditional
model alone and s = 0 the unconditional one. It is applied to the raw model output, in one place
(``denoise`` below) for every sampler: each parameterisation (ε, v, x_0, flow velocity) is affine in
the output for a fixed (x_t, t), so this equals guiding ε. The conditional and unconditional passes
run as one batch of 2B.

Contract (see ``sampling/registry.py``):

- denoiser: ``model(x, t, **cond) -> output`` with ``x`` (B, C, *spatial) and ``t`` (B,): int64 diffusion
  steps, or float times for flow priors (whatever the sampler's ``model_timestep`` gives);
- sampler: ``set_timesteps(n)``, ``timesteps`` (descending), ``model_timestep(t)`` and
  ``solve_step(denoise, t, x, eta=, generator=)``, which calls ``denoise(x, t)`` once (``step``) or
  more often (Heun).
- guidance without an explicit ``uncond`` needs a denoiser that accepts ``null_mask`` (B,) bool,
  True where the null (unconditional) condition is used (``UNetPrior`` does).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn


def _batch_two(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """Concatenate two keyword-argument dicts along the batch dimension (non-tensors must agree)."""
    if set(a) != set(b):
        raise ValueError(f"cond and uncond need the same keys, got {sorted(a)} and {sorted(b)}")
    out = {}
    for key in a:
        va, vb = a[key], b[key]
        if isinstance(va, Tensor):
            out[key] = torch.cat([va, vb], dim=0)
        elif va is None and vb is None:
            out[key] = None
        elif va == vb:
            out[key] = va
        else:
            raise ValueError(f"cannot batch non-tensor condition {key!r}: {va!r} vs {vb!r}")
    return out


@torch.no_grad()
def sample_diffusion(
    model: nn.Module | Callable[..., Tensor],
    scheduler: Any,
    shape: Sequence[int],
    *,
    cond: Mapping[str, Any] | None = None,
    uncond: Mapping[str, Any] | None = None,
    guidance_scale: float = 1.0,
    num_inference_steps: int = 50,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    x_T: Tensor | None = None,
    device: torch.device | str | None = None,
    callback: Callable[[int, Any, Tensor], None] | None = None,
) -> Tensor:
    """Draw samples by running ``scheduler`` from pure noise down to t = 0.

    Args:
        model: the denoiser (see module docstring).
        scheduler: a registered sampler (``make_sampler``) or anything with the same methods.
        shape: (B, C, *spatial) of the samples.
        cond: keyword arguments of the conditional pass (e.g. ``{"cond": image, "labels": y}``).
        uncond: keyword arguments of the unconditional pass; by default ``cond`` with
            ``null_mask`` set to all True (and ``cond`` gets all False).
        guidance_scale: s; 1 runs only the conditional pass.
        num_inference_steps: number of steps (Heun calls the model up to twice per step).
        eta: DDIM stochasticity (ignored by DDPM; the ODE samplers take only 0).
        generator: source of randomness for the start noise and the steps.
        x_T: start noise (default: standard normal drawn from ``generator``).
        device: where to sample (default: the model's device, else the CPU).
        callback: called as ``callback(i, t, x)`` after each step ``i`` (t in the sampler's units).

    Returns:
        (B, C, *spatial) samples x_0.
    """
    if guidance_scale < 0:
        raise ValueError(f"guidance_scale must be >= 0, got {guidance_scale!r}")
    if device is None:
        params = list(model.parameters()) if hasattr(model, "parameters") else []
        device = params[0].device if params else torch.device("cpu")
    shape = tuple(int(s) for s in shape)
    batch = shape[0]
    if x_T is None:
        x = torch.randn(shape, generator=generator, device=device)
    else:
        if tuple(x_T.shape) != shape:
            raise ValueError(f"x_T has shape {tuple(x_T.shape)}, expected {shape}")
        x = x_T.to(device)
    cond = dict(cond or {})
    guided = guidance_scale != 1.0
    if guided:
        if uncond is None:
            uncond = {**cond, "null_mask": torch.ones(batch, dtype=torch.bool, device=device)}
            cond["null_mask"] = torch.zeros(batch, dtype=torch.bool, device=device)
        both = _batch_two(cond, uncond)
    scheduler.set_timesteps(num_inference_steps)
    t_dtype = scheduler.timesteps.dtype

    def denoise(x_in: Tensor, t: Any) -> Tensor:
        """The (guided) model output at sampler time ``t``: the one place guidance is applied."""
        n = 2 * batch if guided else batch
        t_in = scheduler.model_timestep(torch.full((n,), t, dtype=t_dtype)).to(device)
        if not guided:
            return model(x_in, t_in, **cond)
        out_c, out_u = model(torch.cat([x_in, x_in], dim=0), t_in, **both).chunk(2, dim=0)
        return out_u + guidance_scale * (out_c - out_u)

    for i, t in enumerate(scheduler.timesteps.tolist()):
        x = scheduler.solve_step(denoise, t, x, eta=eta, generator=generator)
        if callback is not None:
            callback(i, t, x)
    return x
