"""What every autoencoder shares: the `AEOutput` record, the `Autoencoder` base class (typed config,
latent shapes, last decoder layer, reconstruction loss) and the config -> pyramid spec helper.

See `medgen_cli.models` for the interface priors and samplers rely on.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from medgen_cli.models.backbone import BlockOptions, PyramidSpec, resolve_downsample
from medgen_cli.models.configs import AutoencoderConfig
from medgen_cli.nn.layers import check_spatial_dims

__all__ = ["AEOutput", "Autoencoder", "make_specs"]

RECON_LOSSES = ("l1", "mse")


@dataclass
class AEOutput:
    """Result of an autoencoder's forward pass.

    reconstruction: (B, out_channels, *spatial).
    loss_terms: already-weighted terms; the autoencoder loss is their sum (a trainer may add
        perceptual and adversarial terms).
    indices: (B, *latent_spatial) int64 codes (VQ), a (top, bottom) pair (VQ-VAE-2) or None (KL).
    perplexity: codebook perplexity (VQ; for VQ-VAE-2 a (2,) tensor [top, bottom]) or None.
    metrics: detached scalars worth logging (perplexity, usage, raw KL, ...).
    """

    reconstruction: Tensor
    loss_terms: dict[str, Tensor]
    indices: Tensor | tuple[Tensor, Tensor] | None = None
    perplexity: Tensor | None = None
    metrics: dict[str, Tensor] = field(default_factory=dict)


def make_specs(config: AutoencoderConfig, last_level: int | None = None, **pyramid: Any) -> tuple[PyramidSpec, BlockOptions]:
    """`PyramidSpec` and `BlockOptions` of a typed config; ``pyramid`` replaces its ``channels``,
    ``downsample``, ``num_res_blocks`` or ``attention_levels`` (VQ-VAE-2's top pyramid); ``last_level`` is the
    last level's default factor (the config class's ``default_last_downsample`` unless given)."""
    spatial_dims = config.spatial_dims
    check_spatial_dims(spatial_dims)
    if config.factorized_3d and spatial_dims != 3:
        raise ValueError(f"factorized_3d=True needs spatial_dims=3, got spatial_dims={spatial_dims}")
    p = {"channels": config.channels, "downsample": config.downsample, "num_res_blocks": config.num_res_blocks,
         "attention_levels": config.attention_levels, **pyramid}
    channels = tuple(int(c) for c in p["channels"])
    blocks = p["num_res_blocks"]
    spec = PyramidSpec(
        spatial_dims=spatial_dims,
        channels=channels,
        downsample=resolve_downsample(p["downsample"], spatial_dims, len(channels),
                                      config.default_last_downsample if last_level is None else last_level),
        num_res_blocks=blocks if isinstance(blocks, int) else tuple(int(b) for b in blocks),
        attention_levels=tuple(int(a) for a in p["attention_levels"]),
        mid_attention=config.mid_attention,
        upsample_mode=config.upsample_mode,
        layout=config.layout,
        mid_blocks=config.mid_blocks,
    )
    opts = BlockOptions(
        norm=config.norm, num_groups=config.num_groups, dropout=config.dropout, factorized=config.factorized_3d,
        rezero=config.rezero, num_heads=config.num_heads, res_kernels=tuple(int(k) for k in config.res_kernels),
    )
    return spec, opts



def index_levels(indices: Any) -> list[tuple[str, Tensor]]:
    """``(level, indices)`` pairs of an autoencoder output's ``indices``: none (KL), one unnamed grid, or the
    ``top`` and ``bottom`` grids of a two-level model (which returns them as a tuple)."""
    if indices is None:
        return []
    if isinstance(indices, (tuple, list)):
        return [("top", indices[0]), ("bottom", indices[1])]
    return [("", indices)]

class Autoencoder(nn.Module, ABC):
    """Base class: subclasses set `self.decoder`, call `_finish_init` and implement the latent API."""

    config_cls: type[AutoencoderConfig] = AutoencoderConfig

    def _configure(self, spatial_dims: int, config: AutoencoderConfig | None, overrides: dict[str, Any]):
        """The typed config this model is built from: ``config`` with ``overrides`` (validated)."""
        return self.config_cls.create(spatial_dims, config, overrides)

    def _finish_init(self, config: AutoencoderConfig, downsample_factor: tuple[int, ...], latent_channels: int) -> None:
        """Record the resolved config (what ``model.json`` stores) and the latent geometry."""
        if config.recon_loss not in RECON_LOSSES:
            raise ValueError(f"recon_loss={config.recon_loss!r} must be one of {RECON_LOSSES}")
        self.typed_config = config
        self._downsample_factor = tuple(downsample_factor)
        self._latent_channels = int(latent_channels)

    # -- the shared interface ------------------------------------------------------------------
    @property
    def kind(self) -> str:
        """The registry kind ("vqvae", "vqgan", "vqvae2", "klvae")."""
        return self.typed_config.kind

    @property
    def is_vq(self) -> bool:
        """True for codebook (vector-quantised) autoencoders."""
        return self.config_cls.is_vq

    @property
    def spatial_dims(self) -> int:
        return self.typed_config.spatial_dims

    @property
    def downsample_factor(self) -> tuple[int, ...]:
        """Per-axis ratio of image size to `encode_to_latents` size."""
        return self._downsample_factor

    @property
    def latent_channels(self) -> int:
        """Channels of `encode_to_latents(x)`."""
        return self._latent_channels

    def config(self) -> dict[str, Any]:
        """The typed config's JSON dump: `build_autoencoder(**model.config())` rebuilds this architecture."""
        return self.typed_config.model_dump(mode="json")

    def last_layer_weight(self) -> Tensor:
        """Weight of the decoder's final convolution (for the adaptive adversarial weight)."""
        return self.decoder.conv_out.weight

    def latent_shape(self, input_shape: Sequence[int]) -> tuple[int, ...]:
        """(latent_channels, *latent_spatial) of `encode_to_latents` for an image of spatial shape `input_shape`."""
        return (self.latent_channels, *self._scaled_shape(input_shape, self.downsample_factor))

    @abstractmethod
    def encode_to_latents(self, x: Tensor) -> Tensor:
        """(B, C, *spatial) images -> the continuous latents a diffusion prior trains on."""

    @abstractmethod
    def decode_latents(self, z: Tensor) -> Tensor:
        """Inverse of `encode_to_latents` (VQ models snap to the codebook first)."""

    # -- helpers for subclasses ----------------------------------------------------------------
    def _scaled_shape(self, input_shape: Sequence[int], factor: Sequence[int]) -> tuple[int, ...]:
        shape = tuple(int(s) for s in input_shape)
        if len(shape) != self.spatial_dims:
            raise ValueError(f"input_shape={input_shape!r} must be the {self.spatial_dims} spatial sizes")
        if any(s % f for s, f in zip(shape, factor)):
            raise ValueError(f"input_shape={input_shape!r} is not divisible by the downsampling factor {tuple(factor)}")
        return tuple(s // f for s, f in zip(shape, factor))

    def _check_input(self, x: Tensor, factor: Sequence[int] | None = None) -> None:
        if x.ndim != self.spatial_dims + 2:
            raise ValueError(f"expected (B, C, *spatial) with {self.spatial_dims} spatial axes, got {tuple(x.shape)}")
        self._scaled_shape(x.shape[2:], factor or self.downsample_factor)

    def _reconstruction_loss(self, reconstruction: Tensor, x: Tensor) -> Tensor:
        fn = F.l1_loss if self.typed_config.recon_loss == "l1" else F.mse_loss
        return fn(reconstruction.float(), x.float())
