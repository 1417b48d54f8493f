"""The autoencoder training task (VQ-VAE, VQ-VAE-2, VQGAN, KL-VAE) for the generic `Trainer`.

Loss per step: the reconstruction mix of `ReconstructionLoss` (L1/L2/MS-SSIM on the store's data
range; it replaces the model's own "reconstruction" term) plus the model's other loss terms
(commitment, codebook or KL), plus, from ``start_step`` on, the adversarial generator loss of a
patch discriminator weighted adaptively as in VQGAN (Esser et al. 2021, eq. 7), and the
discriminator's own loss on real and (detached) reconstructed images. The generator pass runs the
discriminator with frozen parameters, and real and fake images share one discriminator forward,
so one backward pass trains both networks (also under DDP).

Validation scores SSIM and PSNR on the store's data range, L1/MSE, and for VQ models codebook
usage and perplexity over all validation codes; reconstructions are deterministic (posterior mean
for KL) and a PNG preview is written. `latent_scale` gives the KL-VAE scaling factor from data.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from ..models.base import index_levels
from ..models.discriminator import (
    adaptive_weight,
    hinge_d_loss,
    hinge_g_loss,
    nonsaturating_d_loss,
    nonsaturating_g_loss,
)
from .distributed import unwrap
from .losses import ReconstructionLoss, psnr, ssim

log = logging.getLogger(__name__)

ADVERSARIAL_LOSSES = {"hinge": (hinge_g_loss, hinge_d_loss), "nonsaturating": (nonsaturating_g_loss, nonsaturating_d_loss)}


def reconstruct(model: nn.Module, x: Tensor) -> Any:
    """Deterministic forward pass: VQ models in eval mode, KL models from the posterior mean."""
    return model(x) if model.is_vq else model(x, sample_posterior=False)


@dataclass(frozen=True)
class AETaskConfig:
    """What the autoencoder task does beyond its modules and data.

    Args:
        data_range: range of stored values, for SSIM and PSNR.
        value_range: (low, high) grey scale of the previews (None: from the data).
        adversarial_loss: "hinge" | "nonsaturating".
        adversarial_weight: weight of the generator loss.
        adversarial_start: first step using the discriminator.
        adaptive: VQGAN's adaptive weight on the generator loss.
        image_dir: where reconstruction PNGs go (None: none).
        save_images: items per preview.
        meta_of: item id -> ImageMeta, to orient the pictures radiologically.
        memory_format: memory format of training batches (torch.channels_last(_3d) to match a model
            converted to it), or None.
    """

    data_range: float = 2.0
    value_range: tuple[float, float] | None = None
    adversarial_loss: str = "hinge"
    adversarial_weight: float = 0.5
    adversarial_start: int = 0
    adaptive: bool = True
    image_dir: Path | None = None
    save_images: int = 4
    meta_of: Callable[[str], Any] | None = None
    memory_format: torch.memory_format | None = None

    def __post_init__(self) -> None:
        if self.adversarial_loss not in ADVERSARIAL_LOSSES:
            raise ValueError(f"adversarial_loss={self.adversarial_loss!r} must be one of {sorted(ADVERSARIAL_LOSSES)}")


class AutoencoderTask:
    """Training and validation of one autoencoder.

    Args:
        model: the autoencoder (DDP-wrapped when distributed).
        loader_fn: ``loader_fn(epoch, start_batch)`` -> this rank's training batches (dicts with
            ``"image"``: (B, 1, *spatial)).
        recon_loss: the reconstruction loss mix.
        device: compute device.
        val_batches: ``val_batches()`` -> validation batches (None: no validation).
        discriminator: patch discriminator (DDP-wrapped when distributed) or None.
        augmentation: batch augmentation applied on the device (in float32, outside autocast), or None.
        config: data range, adversarial weighting, previews and memory format (`AETaskConfig`).
    """

    best_metric = "ssim"
    best_mode = "max"

    def __init__(self, model: nn.Module, loader_fn: Callable[[int, int], Iterable[dict]], recon_loss: ReconstructionLoss,
                 device: torch.device, *, val_batches: Callable[[], Iterable[dict]] | None = None,
                 discriminator: nn.Module | None = None, augmentation: nn.Module | None = None,
                 config: AETaskConfig | None = None):
        config = config or AETaskConfig()
        self.modules: dict[str, nn.Module] = {"model": model}
        if discriminator is not None:
            self.modules["discriminator"] = discriminator
        self.loader_fn = loader_fn
        self.recon_loss = recon_loss
        self.device = device
        self.val_batches = val_batches
        self.augmentation = augmentation
        self.config = config
        self.data_range = float(config.data_range)
        self.value_range = config.value_range
        self.g_loss_fn, self.d_loss_fn = ADVERSARIAL_LOSSES[config.adversarial_loss]
        self.adversarial_weight = config.adversarial_weight
        self.adversarial_start = config.adversarial_start
        self.adaptive = config.adaptive
        self.image_dir = Path(config.image_dir) if config.image_dir is not None else None
        self.save_images = config.save_images
        self.meta_of = config.meta_of  # item id -> ImageMeta, to orient the pictures radiologically
        self.memory_format = config.memory_format

    # ------------------------------------------------------------------------------------ train
    def train_batches(self, epoch: int, start_batch: int) -> Iterable[dict]:
        return self.loader_fn(epoch, start_batch)

    def training_step(self, batch: dict, step: int) -> dict[str, Tensor]:
        x = batch["image"].to(self.device, non_blocking=True)
        if self.augmentation is not None:
            with torch.autocast(device_type=x.device.type, enabled=False):  # geometry in float32
                x = self.augmentation(x.float())
        if self.memory_format is not None:
            x = x.contiguous(memory_format=self.memory_format)
        out = self.modules["model"](x)
        recon = out.reconstruction
        rec_total, rec_terms = self.recon_loss(recon, x)
        model_terms = {k: v for k, v in out.loss_terms.items() if k != "reconstruction"}
        loss = rec_total + sum(model_terms.values(), torch.zeros((), device=x.device))
        logs: dict[str, Tensor] = {"rec": rec_total.detach(), **{k: v.detach() for k, v in rec_terms.items()},
                                   **{f"loss_{k}": v.detach() for k, v in model_terms.items()},
                                   **{k: v.detach().float() for k, v in out.metrics.items() if v.numel() == 1}}
        disc = self.modules.get("discriminator")
        if disc is not None and step >= self.adversarial_start:
            raw = unwrap(disc)
            raw.requires_grad_(False)  # generator pass: gradients reach the autoencoder only
            try:
                g_loss = self.g_loss_fn(raw(recon).float())
            finally:
                raw.requires_grad_(True)
            weight = torch.tensor(self.adversarial_weight, device=x.device)
            if self.adaptive:
                last = unwrap(self.modules["model"]).last_layer_weight()
                weight = weight * adaptive_weight(rec_total, g_loss, last)
            real_logits, fake_logits = disc(torch.cat([x.detach(), recon.detach()])).chunk(2)
            d_loss = self.d_loss_fn(real_logits.float(), fake_logits.float())
            loss = loss + weight * g_loss + d_loss
            logs.update(g_loss=g_loss.detach(), d_loss=d_loss.detach(), adv_weight=weight.detach())
        return {"loss": loss, **logs}

    # ------------------------------------------------------------------------------- validation
    @torch.no_grad()
    def validation(self, model: nn.Module, step: int) -> dict[str, float]:
        if self.val_batches is None:
            return {}
        sums = {"ssim": 0.0, "psnr": 0.0, "l1": 0.0, "mse": 0.0}
        n = 0
        counts: dict[str, Tensor] = {}
        shown: list[tuple[Tensor, Tensor, str]] = []
        num_codes = model.config().get("num_embeddings") if model.is_vq else None
        for batch in self.val_batches():
            x = batch["image"].to(self.device)
            out = reconstruct(model, x)
            recon = out.reconstruction.float()
            sums["ssim"] += float(ssim(recon, x, self.data_range).sum())
            sums["psnr"] += float(psnr(recon, x, self.data_range).sum())
            sums["l1"] += float((recon - x).abs().flatten(1).mean(1).sum())
            sums["mse"] += float((recon - x).pow(2).flatten(1).mean(1).sum())
            n += x.shape[0]
            for level, idx in index_levels(out.indices):
                c = torch.bincount(idx.flatten().cpu(), minlength=num_codes).double()
                counts[level] = counts[level] + c if level in counts else c
            if len(shown) < self.save_images:
                k = self.save_images - len(shown)
                ids = batch.get("id", [""] * x.shape[0])
                shown.extend(zip(x[:k].cpu(), recon[:k].cpu(), ids[:k]))
        if n == 0:
            return {}
        metrics = {k: v / n for k, v in sums.items()}
        for level, c in counts.items():
            suffix = f"_{level}" if level else ""
            p = c / c.sum()
            metrics[f"perplexity{suffix}"] = float(torch.exp(-(p * torch.log(p + 1e-12)).sum()))
            metrics[f"codebook_usage{suffix}"] = float((c > 0).double().mean())
        if shown and self.image_dir is not None:
            from ..viz import reconstruction_grid

            lo, hi = self.value_range if self.value_range is not None else (None, None)
            metas = [self.meta_of(i) if self.meta_of and i else None for _, _, i in shown]
            reconstruction_grid(self.image_dir / f"recon_{step:06d}.png", [x[0].numpy() for x, _, _ in shown],
                                [y[0].numpy() for _, y, _ in shown], metas=metas if all(metas) else None,
                                vmin=lo, vmax=hi, labels=[i or str(n) for n, (_, _, i) in enumerate(shown)])
        return metrics


def compile_pyramids(model: nn.Module) -> int:
    """``torch.compile`` every encoder and decoder of ``model`` in place (quantisers stay eager:
    their codebook updates branch on data); returns how many were compiled."""
    from ..models.backbone import Decoder, Encoder

    parts = [m for m in model.modules() if isinstance(m, (Encoder, Decoder))]
    for part in parts:
        part.compile()
    return len(parts)


@torch.no_grad()
def latent_scale(model: nn.Module, batches: Iterable[dict], device: torch.device) -> tuple[float, dict[str, float]]:
    """KL-VAE scaling factor 1 / std of the latent means over ``batches`` (LDM's rule), with stats.

    Returns:
        (scale, {"latent_mean", "latent_std", "latent_items"}).
    """
    was_training = model.training
    model.eval()
    total, total_sq, count, items = 0.0, 0.0, 0, 0
    try:
        for batch in batches:
            z = model.encode_to_latents(batch["image"].to(device)).double()
            total += float(z.sum())
            total_sq += float(z.pow(2).sum())
            count += z.numel()
            items += z.shape[0]
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("no training items to estimate the latent scale from")
    mean = total / count
    std = max(total_sq / count - mean * mean, 0.0) ** 0.5
    if not std > 0:
        raise ValueError("the latents of the training items are constant; the latent scale is undefined")
    return 1.0 / std, {"latent_mean": mean, "latent_std": std, "latent_items": items}
