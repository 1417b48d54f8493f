"""KL-regularised autoencoder of latent diffusion (Rombach et al. 2022, "High-resolution image
synthesis with latent diffusion models"), for any spatial rank.

The encoder outputs the mean and log-variance of a diagonal Gaussian posterior; the KL term to
N(0, I) is weighted very lightly (1e-6 relative to a per-element reconstruction loss, as in LDM) so
the latents stay detailed. The latent scaling factor used by a diffusion prior is not part of the
model: the training step estimates it from data with `encode_mean`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from medgen_cli.models.backbone import Decoder, Encoder, FactorsArg
from medgen_cli.models.base import AEOutput, Autoencoder, make_specs

__all__ = ["KLVAE"]


class KLVAE(Autoencoder):
    """Gaussian-posterior autoencoder.

    Args:
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

    kind = "klvae"
    _is_vq = False

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int = 1,
        out_channels: int | None = None,
        channels: Sequence[int] = (64, 128, 256),
        latent_channels: int = 4,
        num_res_blocks: int | Sequence[int] = 1,
        downsample: FactorsArg = None,
        kl_weight: float = 1e-6,
        logvar_min: float = -30.0,
        logvar_max: float = 20.0,
        layout: str = "full",
        mid_blocks: int = 2,
        res_kernels: Sequence[int] = (3, 3),
        norm: str = "group",
        num_groups: int = 8,
        attention_levels: Sequence[int] = (),
        mid_attention: bool = False,
        num_heads: int = 1,
        dropout: float = 0.0,
        factorized_3d: bool = False,
        rezero: bool = True,
        upsample_mode: str = "nearest",
        recon_loss: str = "l1",
    ):
        super().__init__()
        if latent_channels < 1:
            raise ValueError(f"latent_channels={latent_channels} must be >= 1")
        if kl_weight < 0:
            raise ValueError(f"kl_weight={kl_weight} must be >= 0")
        if logvar_min >= logvar_max:
            raise ValueError(f"logvar_min={logvar_min} must be below logvar_max={logvar_max}")
        out_channels = out_channels or in_channels
        spec, opts = make_specs(
            spatial_dims, channels, downsample, num_res_blocks, attention_levels, mid_attention, upsample_mode,
            norm, num_groups, dropout, factorized_3d, rezero, num_heads, last_level=1, layout=layout,
            mid_blocks=mid_blocks, res_kernels=res_kernels,
        )
        self.encoder = Encoder(spec, opts, in_channels, 2 * latent_channels)
        self.decoder = Decoder(spec, opts, latent_channels, out_channels)
        self.kl_weight = kl_weight
        self.logvar_range = (logvar_min, logvar_max)
        self._finish_init(
            dict(
                spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels,
                channels=spec.channels, latent_channels=latent_channels, num_res_blocks=num_res_blocks,
                downsample=spec.downsample, kl_weight=kl_weight, logvar_min=logvar_min, logvar_max=logvar_max,
                layout=layout, mid_blocks=mid_blocks, res_kernels=list(res_kernels), norm=norm, num_groups=num_groups, attention_levels=spec.attention_levels,
                mid_attention=mid_attention, num_heads=num_heads, dropout=dropout, factorized_3d=factorized_3d,
                rezero=rezero, upsample_mode=upsample_mode, recon_loss=recon_loss,
            ),
            downsample_factor=spec.total_factor,
            latent_channels=latent_channels,
        )

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
