"""KL-regularised autoencoder of latent diffusion (Rombach et al. 2022, "High-resolution image
synthesis with latent diffusion models"), for any spatial rank.

The encoder outputs the mean and log-variance of a diagonal Gaussian posterior; the KL term to
N(0, I) is weighted very lightly (1e-6 relative to a per-element reconstruction loss, as in LDM) so
the latents stay detailed. The latent scaling factor used by a diffusion prior is not part of the
model: the training step estimates it from data with `encode_mean`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from medgen_cli.models.backbone import Decoder, Encoder
from medgen_cli.models.base import AEOutput, Autoencoder, make_specs
from medgen_cli.models.configs import KLVAEConfig

__all__ = ["KLVAE"]


class KLVAE(Autoencoder):
    """Gaussian-posterior autoencoder, built from a `KLVAEConfig` (``KLVAE(spatial_dims, config,
    **overrides)`` as `VQVAE`). The config's fields:

        spatial_dims: 2 or 3.
        in_channels, out_channels: image channels (out default = in).
        channels: channels per level.
        latent_channels: channels of the latent z.
        num_res_blocks: residual blocks per level (an int, or one per level; 0 allowed).
        downsample: per-level factors; default 2 per axis at every level except the last (LDM's
            convention, so (64, 128, 256) gives a factor of 4).
        kl_weight: weight of the KL term. The KL is summed over latent elements and divided by the
            number of input elements per item, matching LDM's relative weighting against the
            mean-reduced reconstruction loss.
        logvar_min, logvar_max: clamp of the log-variance.
        recon_loss: "l1" | "mse".
        layout, mid_blocks, res_kernels: as `VQVAE` ("full" and 2 rebuild models saved before they existed).
        Remaining kwargs: as `VQVAE`.
    """

    config_cls = KLVAEConfig

    def __init__(self, spatial_dims: int, config: KLVAEConfig | None = None, **overrides: Any):
        super().__init__()
        cfg = self._configure(spatial_dims, config, overrides)
        if cfg.latent_channels < 1:
            raise ValueError(f"latent_channels={cfg.latent_channels} must be >= 1")
        if cfg.kl_weight < 0:
            raise ValueError(f"kl_weight={cfg.kl_weight} must be >= 0")
        if cfg.logvar_min >= cfg.logvar_max:
            raise ValueError(f"logvar_min={cfg.logvar_min} must be below logvar_max={cfg.logvar_max}")
        out_channels = cfg.out_channels or cfg.in_channels
        spec, opts = make_specs(cfg)
        self.encoder = Encoder(spec, opts, cfg.in_channels, 2 * cfg.latent_channels)
        self.decoder = Decoder(spec, opts, cfg.latent_channels, out_channels)
        self.kl_weight = cfg.kl_weight
        self.logvar_range = (cfg.logvar_min, cfg.logvar_max)
        resolved = cfg.replace(out_channels=out_channels, channels=spec.channels, downsample=spec.downsample,
                               attention_levels=spec.attention_levels)
        self._finish_init(resolved, downsample_factor=spec.total_factor, latent_channels=cfg.latent_channels)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(B, C, *spatial) -> (mean, logvar), each (B, latent_channels, *latent_spatial)."""
        self._check_input(x)
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar.clamp(*self.logvar_range)

    def encode_mean(self, x: Tensor) -> Tensor:
        """Posterior mean: the deterministic latent (and what the scaling factor is estimated on)."""
        return self.encode(x)[0]

    @staticmethod
    def sample(mean: Tensor, logvar: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Reparameterised draw z = mean + exp(logvar / 2) * eps."""
        eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return mean + torch.exp(0.5 * logvar) * eps

    def decode(self, z: Tensor) -> Tensor:
        return self.decoder(z)

    def forward(self, x: Tensor, sample_posterior: bool = True) -> AEOutput:
        mean, logvar = self.encode(x)
        z = self.sample(mean, logvar) if sample_posterior else mean
        reconstruction = self.decode(z)
        mean32, logvar32 = mean.float(), logvar.float()
        kl = 0.5 * (mean32.pow(2) + logvar32.exp() - 1.0 - logvar32).flatten(1).sum(1).mean()
        per_input = kl / x[0].numel()
        return AEOutput(
            reconstruction=reconstruction,
            loss_terms={
                "reconstruction": self._reconstruction_loss(reconstruction, x),
                "kl": self.kl_weight * per_input,
            },
            metrics={"kl": kl.detach(), "posterior_std": torch.exp(0.5 * logvar32).mean().detach()},
        )

    def encode_to_latents(self, x: Tensor) -> Tensor:
        return self.encode_mean(x)

    def decode_latents(self, z: Tensor) -> Tensor:
        return self.decode(z)
