"""Hierarchical VQ-VAE-2 (Razavi et al. 2019, "Generating diverse high-fidelity images with
VQ-VAE-2"), two levels, for any spatial rank.

Bottom features h_b come from the bottom encoder; the top encoder downsamples h_b further and its
output is quantised (top codes). The quantised top is decoded back to the bottom resolution and
concatenated with h_b, so the bottom codes are quantised conditioned on the top. The image
decoder sees the upsampled top codes concatenated with the bottom codes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from medgen_cli.models.backbone import Decoder, Encoder
from medgen_cli.models.base import AEOutput, Autoencoder, make_specs
from medgen_cli.models.configs import VQVAE2Config
from medgen_cli.models.quantization import build_quantizer
from medgen_cli.models.quantizers import QuantizerOutput
from medgen_cli.nn.blocks import Upsample
from medgen_cli.nn.layers import make_conv, pool_cls

__all__ = ["VQVAE2"]


class VQVAE2(Autoencoder):
    """Two-level VQ-VAE-2, built from a `VQVAE2Config` (``VQVAE2(spatial_dims, config, **overrides)``
    as `VQVAE`). The config's fields:

        spatial_dims: 2 or 3.
        in_channels, out_channels: image channels (out default = in).
        channels: bottom encoder channels per level (its last entry is the bottom feature width).
        top_channels: top encoder channels per level.
        num_res_blocks: residual blocks per level (an int, or one per bottom level, 0 allowed; the top
            pyramid then uses the largest).
        downsample: bottom per-level factors (default 2 per axis per level).
        top_downsample: top per-level factors, relative to the bottom grid (default 2 per level).
        embedding_dim: code width of both codebooks.
        num_embeddings: size of each codebook.
        quantizer, fsq_levels, vq_gradient, entropy_weight: the quantiser of both levels (as `VQVAE`).
        layout, mid_blocks, res_kernels: as `VQVAE`, for both pyramids.
        Remaining kwargs: as `VQVAE`.

    `encode_to_latents` returns (B, 2 * embedding_dim, *bottom_grid): the top codes repeated to
    the bottom grid (nearest) stacked on the bottom codes; `decode_latents` averages the top half
    back over each top cell, snaps both halves to their codebooks and decodes.
    """

    config_cls = VQVAE2Config

    def __init__(self, spatial_dims: int, config: VQVAE2Config | None = None, **overrides: Any):
        super().__init__()
        cfg = self._configure(spatial_dims, config, overrides)
        bottom, opts = make_specs(cfg)
        # attention_levels and a per-level num_res_blocks index the bottom pyramid; the top pyramid is
        # small: attention in its middle only, and the bottom's largest block count at every level
        blocks = cfg.num_res_blocks
        top, _ = make_specs(cfg, channels=cfg.top_channels, downsample=cfg.top_downsample, attention_levels=(),
                            num_res_blocks=blocks if isinstance(blocks, int) else max(blocks))
        width = bottom.channels[-1]
        embedding_dim, num_embeddings, fsq_levels = cfg.code_sizes()
        out_channels = cfg.out_channels or cfg.in_channels

        self.enc_bottom = Encoder(bottom, opts, cfg.in_channels, width)
        self.enc_top = Encoder(top, opts, width, embedding_dim)
        self.quant_top = build_quantizer(cfg.quantizer, embedding_dim, num_embeddings, cfg)
        self.dec_top = Decoder(top, opts, embedding_dim, width)
        self.pre_bottom = make_conv(spatial_dims, 2 * width, embedding_dim, 1)
        self.quant_bottom = build_quantizer(cfg.quantizer, embedding_dim, num_embeddings, cfg)
        self.up_top = Upsample(spatial_dims, embedding_dim, embedding_dim, top.total_factor, cfg.upsample_mode)
        self.decoder = Decoder(bottom, opts, 2 * embedding_dim, out_channels)
        self.top_factor = top.total_factor
        self.pool_top = pool_cls(spatial_dims, "avg")(self.top_factor, self.top_factor)
        resolved = cfg.replace(out_channels=out_channels, channels=bottom.channels, top_channels=top.channels,
                               downsample=bottom.downsample, top_downsample=top.downsample,
                               embedding_dim=embedding_dim, num_embeddings=num_embeddings, fsq_levels=fsq_levels,
                               attention_levels=bottom.attention_levels)
        self._finish_init(resolved, downsample_factor=bottom.total_factor, latent_channels=2 * embedding_dim)

    @property
    def total_top_factor(self) -> tuple[int, ...]:
        """Per-axis ratio of image size to the top code grid."""
        return tuple(b * t for b, t in zip(self.downsample_factor, self.top_factor))

    def _hierarchy(self, x: Tensor, lookup: bool) -> tuple[QuantizerOutput | tuple, QuantizerOutput | tuple]:
        """Encode and quantise both levels; `lookup` = plain nearest-code lookup without updates."""
        self._check_input(x, self.total_top_factor)
        h_bottom = self.enc_bottom(x)
        z_top = self.enc_top(h_bottom)
        top = self.quant_top.quantize(z_top) if lookup else self.quant_top(z_top)
        q_top = top[0] if lookup else top.quantized
        z_bottom = self.pre_bottom(torch.cat([h_bottom, self.dec_top(q_top)], dim=1))
        bottom = self.quant_bottom.quantize(z_bottom) if lookup else self.quant_bottom(z_bottom)
        return top, bottom

    def encode(self, x: Tensor) -> tuple[QuantizerOutput, QuantizerOutput]:
        """Encode and quantise: (top, bottom) quantiser outputs (EMA updates in training mode)."""
        return self._hierarchy(x, lookup=False)

    def decode(self, q_top: Tensor, q_bottom: Tensor) -> Tensor:
        """Quantised top (B, D, *top_grid) and bottom (B, D, *bottom_grid) -> image."""
        return self.decoder(torch.cat([self.up_top(q_top), q_bottom], dim=1))

    def forward(self, x: Tensor) -> AEOutput:
        top, bottom = self.encode(x)
        reconstruction = self.decode(top.quantized, bottom.quantized)
        loss_terms = {"reconstruction": self._reconstruction_loss(reconstruction, x)}
        for name, out in (("top", top), ("bottom", bottom)):
            loss_terms.update({f"{k}_{name}": v for k, v in out.loss_terms.items()})
        return AEOutput(
            reconstruction=reconstruction,
            loss_terms=loss_terms,
            indices=(top.indices, bottom.indices),
            perplexity=torch.stack([top.perplexity, bottom.perplexity]),
            metrics={
                "perplexity_top": top.perplexity.detach(),
                "perplexity_bottom": bottom.perplexity.detach(),
                "usage_top": top.usage.detach(),
                "usage_bottom": bottom.usage.detach(),
            },
        )

    def index_shape(self, input_shape: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(top grid, bottom grid) spatial shapes for an image of spatial shape `input_shape`."""
        return (
            self._scaled_shape(input_shape, self.total_top_factor),
            self._scaled_shape(input_shape, self.downsample_factor),
        )

    def encode_to_indices(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(B, C, *spatial) -> (top (B, *top_grid), bottom (B, *bottom_grid)) int64 codes."""
        (_, top), (_, bottom) = self._hierarchy(x, lookup=True)
        return top, bottom

    def decode_indices(self, top: Tensor, bottom: Tensor) -> Tensor:
        return self.decode(self.quant_top.indices_to_latents(top), self.quant_bottom.indices_to_latents(bottom))

    def encode_to_latents(self, x: Tensor) -> Tensor:
        (q_top, _), (q_bottom, _) = self._hierarchy(x, lookup=True)
        return torch.cat([F.interpolate(q_top, scale_factor=self.top_factor, mode="nearest"), q_bottom], dim=1)

    def decode_latents(self, z: Tensor) -> Tensor:
        z_top, z_bottom = z.float().chunk(2, dim=1)
        q_top = self.quant_top.snap(self.pool_top(z_top))
        return self.decode(q_top, self.quant_bottom.snap(z_bottom))
