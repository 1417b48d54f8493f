"""The reverse-diffusion sampling loop for any denoiser and any scheduler, with classifier-free guidance.

Guidance follows Ho & Salimans 2022: out = uncond + s · (cond − uncond), so s = 1 is the conditional
model alone and s = 0 the unconditional one. It is applied to the raw model output; every
parameterisation (ε, v, x_0) is affine in the output for a fixed (x_t, t), so this equals guiding ε.
The conditional and unconditional passes run as one batch of 2B.

Contract:

- denoiser: ``model(x, t, **cond) -> output`` with ``x`` (B, C, *spatial), ``t`` (B,) int64;
- scheduler: ``set_timesteps(n)``, ``timesteps`` (descending), ``step(output, t, x, eta=, generator=)``.
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
    callback: Callable[[int, int, Tensor], None] | None = None,
) -> Tensor:
    """Draw samples by running ``scheduler`` from pure noise down to t = 0.

    Args:
        model: the denoiser (see module docstring).
        scheduler: a ``DDPMScheduler`` / ``DDIMScheduler`` or anything with the same methods.
        shape: (B, C, *spatial) of the samples.
        cond: keyword arguments of the conditional pass (e.g. ``{"cond": image, "labels": y}``).
        uncond: keyword arguments of the unconditional pass; by default ``cond`` with
            ``null_mask`` set to all True (and ``cond`` gets all False).
        guidance_scale: s; 1 runs only the conditional pass.
        num_inference_steps: number of denoising steps.
        eta: DDIM stochasticity (ignored by DDPM).
        generator: source of randomness for the start noise and the steps.
        x_T: start noise (default: standard normal drawn from ``generator``).
        device: where to sample (default: the model's device, else the CPU).
        callback: called as ``callback(i, t, x)`` after each step ``i``.

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
    for i, t in enumerate(scheduler.timesteps.tolist()):
        if guided:
            t_in = torch.full((2 * batch,), t, dtype=torch.long, device=device)
            out_c, out_u = model(torch.cat([x, x], dim=0), t_in, **both).chunk(2, dim=0)
            out = out_u + guidance_scale * (out_c - out_u)
        else:
            out = model(x, torch.full((batch,), t, dtype=torch.long, device=device), **cond)
        x = scheduler.step(out, t, x, eta=eta, generator=generator)
        if callback is not None:
            callback(i, t, x)
    return x
