"""Encoder and decoder pyramids shared by the VQ-VAE, VQ-VAE-2, VQGAN and KL autoencoders.

The layout follows the convolutional autoencoders of Esser et al. 2021 (VQGAN) and Rombach et al.
2022 (LDM): a stem convolution, one level per entry of `channels` (residual blocks, optional
self-attention, then downsampling by that level's per-axis factor), a middle block, and a
norm-act-conv head. The decoder mirrors it. Residual blocks are ReZero-gated by default
(Bachlechner et al. 2020), which makes the deep stack start close to the identity.

The architecture is described by two small frozen dataclasses, `PyramidSpec` (shape of the
pyramid) and `BlockOptions` (how each block is built), so model constructors stay plain kwargs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor, nn

from medgen_cli.nn.attention import SpatialSelfAttention
from medgen_cli.nn.blocks import Downsample, ResBlock, Upsample, check_factor
from medgen_cli.nn.layers import check_spatial_dims, make_act, make_conv, make_norm

__all__ = ["BlockOptions", "PyramidSpec", "Encoder", "Decoder", "resolve_downsample", "prod_factors"]

FactorsArg = Sequence[int | Sequence[int]] | None


def resolve_downsample(
    downsample: FactorsArg, spatial_dims: int, num_levels: int, last_level: int = 2
) -> tuple[tuple[int, ...], ...]:
    """Per-level, per-axis downsampling factors.

    `None` means 2 on every axis at every level, except `last_level` for the last one (KL-VAE in
    LDM does not downsample after its last level). Each entry may be an int or a per-axis tuple,
    e.g. `((2, 2, 1), (2, 2, 2))` halves z only once.
    """
    if downsample is None:
        downsample = [2] * (num_levels - 1) + [last_level]
    factors = tuple(check_factor(f, spatial_dims) for f in downsample)
    if len(factors) != num_levels:
        raise ValueError(f"downsample={downsample!r} needs one factor per level ({num_levels} levels)")
    return factors


def prod_factors(factors: Sequence[Sequence[int]], spatial_dims: int) -> tuple[int, ...]:
    """Total per-axis factor of a stack of per-axis factors."""
    total = [1] * spatial_dims
    for level in factors:
        total = [t * f for t, f in zip(total, level)]
    return tuple(total)


@dataclass(frozen=True)
class BlockOptions:
    """How residual and attention blocks are built.

    Args:
        norm: "group" | "batch" | "instance" | "none".
        num_groups: groups for group norm (every channel count must be divisible by it).
        dropout: dropout inside residual blocks.
        factorized: factorised (2+1)D convolutions in residual blocks and resamplers.
        rezero: ReZero gate on residual branches.
        num_heads: heads of the self-attention blocks.
        act: activation name.
    """

    norm: str = "group"
    num_groups: int = 8
    dropout: float = 0.0
    factorized: bool = False
    rezero: bool = True
    num_heads: int = 1
    act: str = "silu"


@dataclass(frozen=True)
class PyramidSpec:
    """Shape of an encoder/decoder pyramid.

    Args:
        spatial_dims: number of spatial axes.
        channels: channels per level.
        downsample: per-level per-axis factors (see `resolve_downsample`).
        num_res_blocks: residual blocks per level: one int for every level, or one per level (0 allowed), e.g.
            (0, 2) puts no blocks at full resolution, the cheap layout of MONAI's VQ-VAE.
        attention_levels: levels (indices into `channels`) with self-attention after each block.
        mid_attention: self-attention in the middle block.
        upsample_mode: "nearest" | "transpose" (decoder).
    """

    spatial_dims: int
    channels: tuple[int, ...]
    downsample: tuple[tuple[int, ...], ...]
    num_res_blocks: int | tuple[int, ...] = 2
    attention_levels: tuple[int, ...] = ()
    mid_attention: bool = False
    upsample_mode: str = "nearest"

    def __post_init__(self) -> None:
        check_spatial_dims(self.spatial_dims)
        if not self.channels or any(c < 1 for c in self.channels):
            raise ValueError(f"channels={self.channels!r} must be a non-empty list of positive ints")
        if len(self.downsample) != len(self.channels):
            raise ValueError(f"downsample={self.downsample!r} needs one factor per level of channels={self.channels!r}")
        blocks = self.blocks_per_level
        if len(blocks) != len(self.channels) or any(b < 0 for b in blocks) or sum(blocks) < 1:
            raise ValueError(
                f"num_res_blocks={self.num_res_blocks!r} must be one int >= 1 or one int >= 0 per level of "
                f"channels={self.channels!r} (not all 0)"
            )
        bad = [lvl for lvl in self.attention_levels if not 0 <= lvl < len(self.channels)]
        if bad:
            raise ValueError(f"attention_levels={self.attention_levels!r} must index levels 0..{len(self.channels) - 1}")

    @property
    def blocks_per_level(self) -> tuple[int, ...]:
        """Residual blocks of each level."""
        if isinstance(self.num_res_blocks, int):
            return (self.num_res_blocks,) * len(self.channels)
        return tuple(int(b) for b in self.num_res_blocks)

    @property
    def total_factor(self) -> tuple[int, ...]:
        return prod_factors(self.downsample, self.spatial_dims)


def _resblock(spec: PyramidSpec, opts: BlockOptions, cin: int, cout: int) -> ResBlock:
    return ResBlock(
        spec.spatial_dims, cin, cout, norm=opts.norm, num_groups=opts.num_groups, dropout=opts.dropout,
        factorized=opts.factorized, rezero=opts.rezero, act=opts.act,
    )


def _attention(spec: PyramidSpec, opts: BlockOptions, channels: int) -> SpatialSelfAttention:
    return SpatialSelfAttention(spec.spatial_dims, channels, opts.num_heads, opts.norm, opts.num_groups)


def _middle(spec: PyramidSpec, opts: BlockOptions, channels: int) -> list[nn.Module]:
    mid: list[nn.Module] = [_resblock(spec, opts, channels, channels)]
    if spec.mid_attention:
        mid.append(_attention(spec, opts, channels))
    mid.append(_resblock(spec, opts, channels, channels))
    return mid


def _head(spec: PyramidSpec, opts: BlockOptions, cin: int, cout: int) -> tuple[nn.Module, nn.Module, nn.Module]:
    return make_norm(spec.spatial_dims, opts.norm, cin, opts.num_groups), make_act(opts.act), make_conv(
        spec.spatial_dims, cin, cout, 3
    )


class Encoder(nn.Module):
    """(B, in_channels, *spatial) -> (B, out_channels, *spatial / total_factor).

    Args:
        spec: pyramid shape.
        opts: block options.
        in_channels: image channels.
        out_channels: output (latent) channels.
    """

    def __init__(self, spec: PyramidSpec, opts: BlockOptions, in_channels: int, out_channels: int):
        super().__init__()
        sd = spec.spatial_dims
        self.stem = make_conv(sd, in_channels, spec.channels[0], 3)
        layers: list[nn.Module] = []
        prev = spec.channels[0]
        for level, (ch, factor, blocks) in enumerate(zip(spec.channels, spec.downsample, spec.blocks_per_level)):
            for _ in range(blocks):
                layers.append(_resblock(spec, opts, prev, ch))
                prev = ch
                if level in spec.attention_levels:
                    layers.append(_attention(spec, opts, ch))
            if any(f > 1 for f in factor):
                layers.append(Downsample(sd, ch, ch, factor, "conv", factorized=opts.factorized))
        layers += _middle(spec, opts, prev)
        self.body = nn.Sequential(*layers)
        self.norm_out, self.act_out, self.conv_out = _head(spec, opts, prev, out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv_out(self.act_out(self.norm_out(self.body(self.stem(x)))))


class Decoder(nn.Module):
    """(B, in_channels, *latent_spatial) -> (B, out_channels, *latent_spatial * total_factor).

    Mirrors `Encoder`: middle block, then per level (deepest first) upsampling by that level's
    factor followed by its residual blocks. `conv_out` is the last layer (adaptive GAN weight).
    """

    def __init__(self, spec: PyramidSpec, opts: BlockOptions, in_channels: int, out_channels: int):
        super().__init__()
        sd = spec.spatial_dims
        prev = spec.channels[-1]
        self.stem = make_conv(sd, in_channels, prev, 3)
        layers: list[nn.Module] = _middle(spec, opts, prev)
        for level in reversed(range(len(spec.channels))):
            ch, factor = spec.channels[level], spec.downsample[level]
            if any(f > 1 for f in factor):
                layers.append(Upsample(sd, prev, prev, factor, spec.upsample_mode, factorized=opts.factorized))
            for _ in range(spec.blocks_per_level[level]):
                layers.append(_resblock(spec, opts, prev, ch))
                prev = ch
                if level in spec.attention_levels:
                    layers.append(_attention(spec, opts, ch))
        self.body = nn.Sequential(*layers)
        self.norm_out, self.act_out, self.conv_out = _head(spec, opts, prev, out_channels)

    def forward(self, z: Tensor) -> Tensor:
        return self.conv_out(self.act_out(self.norm_out(self.body(self.stem(z)))))
