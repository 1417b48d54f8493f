"""Vector-quantised autoencoders.

`VQVAE` follows van den Oord et al. 2017 ("Neural discrete representation learning") with an
EMA codebook; trained with a `PatchDiscriminator` (see `models.discriminator`) the same class is
the VQGAN autoencoder of Esser et al. 2021 ("Taming transformers"). The hierarchical VQ-VAE-2
(Razavi et al. 2019) lives in `models.vqvae2` and the KL autoencoder of Rombach et al. 2022 in
`models.klvae`; both are re-exported here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor

from medgen_cli.models.backbone import Decoder, Encoder
from medgen_cli.models.base import AEOutput, Autoencoder, make_specs
from medgen_cli.models.configs import VQVAEConfig
from medgen_cli.models.klvae import KLVAE
from medgen_cli.models.quantization import build_quantizer
from medgen_cli.models.quantizers import QuantizerOutput
from medgen_cli.models.vqvae2 import VQVAE2

__all__ = ["AEOutput", "VQVAE", "VQVAE2", "KLVAE"]


class VQVAE(Autoencoder):
    """VQ-VAE / VQGAN autoencoder for 2D or 3D images, built from a `VQVAEConfig`.

    ``VQVAE(spatial_dims, config)`` is the canonical call; keyword ``overrides`` build or replace
    fields of the config through its validation (an unknown name is a ValueError listing the
    fields), so ``VQVAE(2, channels=(8, 16))`` works too. The config's fields:

        spatial_dims: 2 or 3 (first argument everywhere).
        in_channels: image channels.
        out_channels: reconstructed channels (default `in_channels`).
        channels: encoder channels per level.
        num_res_blocks: residual blocks per level (an int, or one per level; 0 allowed).
        downsample: per-level factors, each an int or per-axis tuple, applied at the end of the
            level; default 2 on every axis at every level. E.g. ((2, 2, 1), (2, 2, 2)) in 3D.
        embedding_dim: code width (latent channels); default 8 (vq), len(fsq_levels) (fsq), 8 (lfq).
        num_embeddings: codebook size; default 256 (vq), prod(fsq_levels) (fsq), 2^embedding_dim (lfq).
        commitment_cost, decay, ema, dead_code_threshold: see `VectorQuantizer` (commitment_cost also LFQ's).
        quantizer: "vq" (learnt codebook), "fsq" (finite scalar) or "lfq" (lookup-free); see
            `models.quantization`.
        fsq_levels: levels per latent channel of FSQ (default 8, 5, 5, 5).
        vq_gradient: "ste" (straight-through) or "rotation" (rotation trick), vq only.
        entropy_weight: weight of LFQ's entropy penalty.
        layout: "full" (first level at full resolution; the default of models built before the
            "strided" layout existed) or "strided" (downsample before each level); see `models.backbone`.
        mid_blocks: residual blocks in the middle block (0 drops them).
        res_kernels: kernel sizes of the two convolutions of every residual block: (3, 3), or (3, 1)
            (the original VQ-VAE's unit, 10/18 of the arithmetic).
        norm: "group" | "batch" | "instance" | "none".
        num_groups: groups for group norm.
        attention_levels: levels with self-attention; mid_attention: attention in the middle block.
        num_heads: attention heads.
        dropout: dropout in residual blocks.
        factorized_3d: factorised (2+1)D convolutions (3D only).
        rezero: ReZero-gated residual blocks.
        upsample_mode: "nearest" | "transpose".
        recon_loss: "mse" | "l1".
    """

    config_cls = VQVAEConfig

    def __init__(self, spatial_dims: int, config: VQVAEConfig | None = None, **overrides: Any):
        super().__init__()
        cfg = self._configure(spatial_dims, config, overrides)
        spec, opts = make_specs(cfg)
        embedding_dim, num_embeddings, fsq_levels = cfg.code_sizes()
        out_channels = cfg.out_channels or cfg.in_channels
        self.encoder = Encoder(spec, opts, cfg.in_channels, embedding_dim)
        self.quantizer = build_quantizer(cfg.quantizer, embedding_dim, num_embeddings, cfg)
        self.decoder = Decoder(spec, opts, embedding_dim, out_channels)
        resolved = cfg.replace(out_channels=out_channels, channels=spec.channels, downsample=spec.downsample,
                               embedding_dim=embedding_dim, num_embeddings=num_embeddings, fsq_levels=fsq_levels,
                               attention_levels=spec.attention_levels)
        self._finish_init(resolved, downsample_factor=spec.total_factor, latent_channels=embedding_dim)

    @property
    def num_embeddings(self) -> int:
        return self.quantizer.num_embeddings

    def encode(self, x: Tensor) -> Tensor:
        """(B, C, *spatial) -> continuous encoder output z_e (B, embedding_dim, *latent_spatial)."""
        self._check_input(x)
        return self.encoder(x)

    def quantize(self, z_e: Tensor) -> QuantizerOutput:
        """Quantise z_e (updates a VQ codebook in training mode)."""
        return self.quantizer(z_e)

    def decode(self, z_q: Tensor) -> Tensor:
        """(B, embedding_dim, *latent_spatial) -> (B, out_channels, *spatial)."""
        return self.decoder(z_q)

    def forward(self, x: Tensor) -> AEOutput:
        q = self.quantize(self.encode(x))
        reconstruction = self.decode(q.quantized)
        loss_terms = {"reconstruction": self._reconstruction_loss(reconstruction, x), **q.loss_terms}
        return AEOutput(
            reconstruction=reconstruction,
            loss_terms=loss_terms,
            indices=q.indices,
            perplexity=q.perplexity,
            metrics={"perplexity": q.perplexity.detach(), "usage": q.usage.detach()},
        )

    def index_shape(self, input_shape: Sequence[int]) -> tuple[int, ...]:
        """Spatial shape of the code-index grid for an image of spatial shape `input_shape`."""
        return self._scaled_shape(input_shape, self.downsample_factor)

    def encode_to_indices(self, x: Tensor) -> Tensor:
        """(B, C, *spatial) -> (B, *latent_spatial) int64 codes (no codebook update)."""
        return self.quantizer.quantize(self.encode(x))[1]

    def decode_indices(self, indices: Tensor) -> Tensor:
        return self.decode(self.quantizer.indices_to_latents(indices))

    def encode_to_latents(self, x: Tensor) -> Tensor:
        """Quantised latents (B, embedding_dim, *latent_spatial), float32."""
        return self.quantizer.quantize(self.encode(x))[0]

    def decode_latents(self, z: Tensor) -> Tensor:
        """Snap z to the nearest codes (as LDM does for VQ latents), then decode."""
        return self.decode(self.quantizer.snap(z))
