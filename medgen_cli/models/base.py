"""What every autoencoder shares: the `AEOutput` record, the `Autoencoder` base class (config,
latent shapes, last decoder layer, reconstruction loss) and the flat-kwargs -> spec helper.

See `medgen_cli.models` for the interface priors and samplers rely on.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from medgen_cli.models.backbone import BlockOptions, FactorsArg, PyramidSpec, resolve_downsample
from medgen_cli.nn.layers import check_spatial_dims

__all__ = ["AEOutput", "Autoencoder", "make_specs", "to_jsonable"]

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


def to_jsonable(value: Any) -> Any:
    """Tuples -> lists, recursively, so a config survives a JSON round trip unchanged."""
    if isinstance(value, (tuple, list)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: to_jsonable(v) for k, v in value.items()}
    return value


def make_specs(
    spatial_dims: int,
    channels: Sequence[int],
    downsample: FactorsArg,
    num_res_blocks: int | Sequence[int],
    attention_levels: Sequence[int],
    mid_attention: bool,
    upsample_mode: str,
    norm: str,
    num_groups: int,
    dropout: float,
    factorized_3d: bool,
    rezero: bool,
    num_heads: int,
    last_level: int = 2,
    layout: str = "full",
    mid_blocks: int = 2,
    res_kernels: Sequence[int] = (3, 3),
) -> tuple[PyramidSpec, BlockOptions]:
    """Group a model's flat architecture kwargs into `PyramidSpec` and `BlockOptions`."""
    check_spatial_dims(spatial_dims)
    if factorized_3d and spatial_dims != 3:
        raise ValueError(f"factorized_3d=True needs spatial_dims=3, got spatial_dims={spatial_dims}")
    channels = tuple(int(c) for c in channels)
    spec = PyramidSpec(
        spatial_dims=spatial_dims,
        channels=channels,
        downsample=resolve_downsample(downsample, spatial_dims, len(channels), last_level),
        num_res_blocks=num_res_blocks if isinstance(num_res_blocks, int) else tuple(int(b) for b in num_res_blocks),
        attention_levels=tuple(int(a) for a in attention_levels),
        mid_attention=mid_attention,
        upsample_mode=upsample_mode,
        layout=layout,
        mid_blocks=mid_blocks,
    )
    opts = BlockOptions(
        norm=norm, num_groups=num_groups, dropout=dropout, factorized=factorized_3d, rezero=rezero,
        num_heads=num_heads, res_kernels=tuple(int(k) for k in res_kernels),
    )
    return spec, opts


class Autoencoder(nn.Module, ABC):
    """Base class: subclasses set `self.decoder`, call `_finish_init` and implement the latent API."""

    kind: str = ""
    _is_vq: bool = False

    def _finish_init(self, config: dict[str, Any], downsample_factor: tuple[int, ...], latent_channels: int) -> None:
        recon = config.get("recon_loss")
        if recon not in RECON_LOSSES:
            raise ValueError(f"recon_loss={recon!r} must be one of {RECON_LOSSES}")
        self._config = to_jsonable(config)
        self._downsample_factor = tuple(downsample_factor)
        self._latent_channels = int(latent_channels)

    # -- the shared interface ------------------------------------------------------------------
    @property
    def is_vq(self) -> bool:
        """True for codebook (vector-quantised) autoencoders."""
        return self._is_vq

    @property
    def spatial_dims(self) -> int:
        return self._config["spatial_dims"]

    @property
    def downsample_factor(self) -> tuple[int, ...]:
        """Per-axis ratio of image size to `encode_to_latents` size."""
        return self._downsample_factor

    @property
    def latent_channels(self) -> int:
        """Channels of `encode_to_latents(x)`."""
        return self._latent_channels

    def config(self) -> dict[str, Any]:
        """JSON-able kwargs such that `build_autoencoder(**model.config())` rebuilds this architecture."""
        return {"kind": self.kind, **to_jsonable(self._config)}

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
        fn = F.l1_loss if self._config["recon_loss"] == "l1" else F.mse_loss
        return fn(reconstruction.float(), x.float())
