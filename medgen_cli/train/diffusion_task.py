"""The latent diffusion and flow training task for the generic `Trainer` (Ho et al. 2020; Rombach et
al. 2022; rectified flow: Liu et al. 2022, Esser et al. 2024).

`DiffusionLoss` is the loss function of a `PriorObjective` wrapping a `UNetPrior`, for any registered
sampler's training scheduler (``sampling/registry.py``): draw times with its ``sample_train_t``
(diffusion: an integer step uniform over 0..T-1; flow: t in [0, 1], uniform or logit-normal, shifted)
and standard-normal noise, form x_t with ``add_noise``, and regress ``target_for`` (eps, v or x0; the
flow velocity) with a per-sample MSE; the UNet sees the times as ``model_timestep(t)``. Diffusion
losses are optionally weighted by min-SNR-gamma (Hang et al. 2023). In training mode each item's
condition (condition channels and label) is dropped with probability ``p_uncond`` (classifier-free
guidance, Ho & Salimans 2022); in eval mode it is always kept, so validation scores the conditional model.

`DiffusionTask` validates in two tiers:

1. every validation: the denoising loss over the validation items, with t, noise and dropping
   drawn from a generator seeded afresh (the same draws at every validation, so scores compare);
2. when a `SampleCheck` is due: full sampling (any registered sampler, built by ``make_sampler``)
   of a few validation items (their conditions and labels), decoded to images and scored with
   SSIM/PSNR against their real images with the true data range of each item's intensity mapping
   (`medgen_cli.metrics.image`). It runs at the first validation at or after each multiple of
   ``every`` and at the last one.

Neither tier touches the training random streams, so resuming stays exact. Batches are dicts of
`medgen_cli.data.latents.ContinuousLatentsDataset`: ``x0`` (B, C, *grid), optional ``cond``
(B, C_cond, *grid) and ``label`` (B,).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..metrics.image import psnr, ssim, ssim_slicewise
from ..models.priors.unet import random_null_mask
from ..sampling.diffusion import sample_diffusion
from ..sampling.registry import make_sampler
from .prior_task import PriorTask, to_device


def denoiser_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    """The conditioning keyword arguments of a `UNetPrior` in a batch (``cond``, ``labels``)."""
    out = {}
    if batch.get("cond") is not None:
        out["cond"] = batch["cond"]
    if batch.get("label") is not None:
        out["labels"] = batch["label"]
    return out



def _item_ssim(pred: torch.Tensor, target: torch.Tensor, data_range: float, window: int = 11) -> torch.Tensor:
    """SSIM of whole items; a volume thinner than the window on one axis (a 2D+T sequence of 8
    frames) is scored slice by slice across that axis, as `medgen evaluate` reports it."""
    shape = target.shape[2:]
    if len(shape) == 3 and min(shape) < window <= sorted(shape)[1]:
        return ssim_slicewise(pred, target, data_range, axis=int(torch.tensor(shape).argmin()), window_size=window)
    return ssim(pred, target, data_range, window)


class DiffusionLoss:
    """``loss_fn(prior, batch, generator)`` of a diffusion or flow prior (see the module docstring).

    Args:
        scheduler: a registered sampler of the prior's family; owns the training times, the forward
            process and the target (``sample_train_t``, ``add_noise``, ``target_for``,
            ``model_timestep``; ``snr_weights`` for min-SNR).
        p_uncond: probability of dropping an item's condition in training.
        min_snr_gamma: gamma of min-SNR weighting (None = unweighted MSE); diffusion schedulers only.
    """

    def __init__(self, scheduler: Any, p_uncond: float = 0.0, min_snr_gamma: float | None = None):
        if not 0.0 <= p_uncond < 1.0:
            raise ValueError(f"p_uncond must be in [0, 1), got {p_uncond!r}")
        if min_snr_gamma is not None and getattr(scheduler, "family", "diffusion") != "diffusion":
            raise ValueError(f"min_snr_gamma = {min_snr_gamma!r} weights diffusion losses by their SNR; "
                             f"a {scheduler.family} scheduler has none")
        self.scheduler = scheduler
        self.p_uncond = float(p_uncond)
        self.min_snr_gamma = min_snr_gamma

    def __call__(self, prior: nn.Module, batch: dict[str, Any], generator: torch.Generator | None = None
                 ) -> dict[str, Tensor]:
        x0 = batch["x0"].float()
        b, device = x0.shape[0], x0.device
        t = self.scheduler.sample_train_t(b, generator=generator, device=device)  # (B,) steps or times
        noise = torch.randn(x0.shape, device=device, generator=generator)
        x_t = self.scheduler.add_noise(x0, noise, t)
        target = self.scheduler.target_for(x0, noise, t)
        cond = denoiser_inputs(batch)
        null_mask = None
        if cond and prior.training and self.p_uncond > 0:
            null_mask = random_null_mask(b, self.p_uncond, device=device, generator=generator)
        pred = prior(x_t, self.scheduler.model_timestep(t), null_mask=null_mask, **cond)
        mse = (pred.float() - target).pow(2).flatten(1).mean(1)  # (B,)
        out = {"mse": mse.mean().detach()}
        if self.min_snr_gamma is not None:
            mse = mse * self.scheduler.snr_weights(t, self.min_snr_gamma).to(device)
        out["loss"] = mse.mean()
        return out


@dataclass
class SampleCheck:
    """The second validation tier: sample a few validation items, decode them, compare with their images.

    Args:
        batch: the collated validation items (``x0``, and ``cond`` / ``label`` when conditional).
        targets: (B, 1, *spatial) their real images in stored values.
        data_ranges: the true data range of each item (``resolve_data_range`` of its mapping).
        decode: modelled latents (B, C, *grid) -> images (B, 1, *spatial) in stored values.
        scheduler_config: the prior's stored scheduler configuration (of its family, see ``make_sampler``).
        sampler: the registered sampler that draws the samples (ddim, dpmpp_2m, flow_euler, ...).
        every: run at the first validation at or after each multiple of this many steps.
        steps: sampler steps.
        guidance_scale: classifier-free guidance scale.
        paired: the items' conditions determine their images (SSIM/PSNR are meaningful); an
            unconditional prior logs the statistics of its samples only.
    """

    batch: dict[str, Any]
    targets: Tensor
    data_ranges: Sequence[float]
    decode: Callable[[Tensor], Tensor]
    scheduler_config: dict[str, Any]
    every: int
    steps: int
    guidance_scale: float = 1.0
    sampler: str = "ddim"
    paired: bool = True

    def due(self, step: int, val_every: int, last: bool) -> bool:
        """True at the first validation at or after a multiple of ``every``, and at the last one."""
        if last or not val_every:
            return True
        return (step // self.every) > ((step - val_every) // self.every)

    @torch.no_grad()
    def __call__(self, prior: nn.Module, device: torch.device, seed: int) -> dict[str, float]:
        batch = to_device(self.batch, device)
        x0 = batch["x0"].float()
        generator = torch.Generator(device=device).manual_seed(seed)
        sched = make_sampler(self.sampler, **self.scheduler_config)
        z = sample_diffusion(prior, sched, tuple(x0.shape), cond=denoiser_inputs(batch), guidance_scale=self.guidance_scale,
                             num_inference_steps=self.steps, eta=0.0, generator=generator, device=device)
        metrics = {"sample_latent_std": float(z.float().std()), "sample_latent_mse": float((z.float() - x0).pow(2).mean())}
        if self.paired:
            images = self.decode(z).float().cpu()
            recon = self.decode(x0).float().cpu()  # the autoencoder's own reconstruction: the ceiling
            for name, pred in (("sample", images), ("ae", recon)):
                s = [float(_item_ssim(pred[i:i + 1], self.targets[i:i + 1], r)) for i, r in enumerate(self.data_ranges)]
                p = [float(psnr(pred[i:i + 1], self.targets[i:i + 1], r)) for i, r in enumerate(self.data_ranges)]
                metrics[f"{name}_ssim"] = sum(s) / len(s)
                metrics[f"{name}_psnr"] = sum(p) / len(p)
        return metrics


class DiffusionTask(PriorTask):
    """Training and two-tier validation of a diffusion prior.

    Args:
        objective, loader_fn, device, val_batches, val_seed: as for `PriorTask`.
        sample_check: the second validation tier (None = off).
        val_every: the trainer's ``train.val_every`` (when validations happen).
        total_steps: ``train.steps`` (the last validation always samples).
    """

    def __init__(self, objective: nn.Module, loader_fn: Callable[[int, int], Iterable[dict]], device: torch.device, *,
                 val_batches: Callable[[], Iterable[dict]] | None = None, val_seed: int = 0,
                 sample_check: SampleCheck | None = None, val_every: int = 0, total_steps: int = 0):
        super().__init__(objective, loader_fn, device, val_batches=val_batches, val_seed=val_seed)
        self.sample_check = sample_check
        self.val_every = val_every
        self.total_steps = total_steps

    @torch.no_grad()
    def validation(self, model: nn.Module, step: int) -> dict[str, float]:
        metrics: dict[str, float] = {}
        if self.val_batches is not None:
            generator = torch.Generator(device=self.device).manual_seed(self.val_seed)
            sums: dict[str, float] = {}
            n = 0
            for batch in self.val_batches():
                batch = to_device(batch, self.device)
                size = int(batch["x0"].shape[0])
                for key, value in model(batch, generator=generator).items():
                    sums[key] = sums.get(key, 0.0) + float(value) * size
                n += size
            metrics = {k: v / n for k, v in sums.items()} if n else {}
        check = self.sample_check
        # a validation between multiples of val_every is the trainer's last one (end or time budget)
        last = step >= self.total_steps or bool(self.val_every and step % self.val_every)
        if check is not None and check.due(step, self.val_every, last):
            metrics.update(check(model.prior, self.device, self.val_seed))
        return metrics
