"""Encoder and decoder pyramids shared by the VQ-VAE, VQ-VAE-2, VQGAN and KL autoencoders.

Two layouts (`PyramidSpec.layout`), the decoder mirroring the encoder in both:

- ``"full"``: the convolutional autoencoders of Esser et al. 2021 (VQGAN) and Rombach et al. 2022
  (LDM): a full-resolution stem convolution, one level per entry of `channels` (residual blocks,
  optional self-attention, then downsampling by that level's per-axis factor), a middle block
  and a norm-act-conv head. The first level runs at the input resolution, where a residual block
  costs 4x (2D) or 8x (3D) what it costs one level down.
- ``"strided"``: downsample *before* each level, as MONAI's VQ-VAE (after Tudosiu et al. 2022)
  does: the stem is a strided convolution by the first level's factor, every later level starts
  with its strided convolution (which also changes the width), and the decoder ends with its
  upsampling by the first factor folded into the output convolution (sub-pixel). Same latent grid and
  channel list, roughly a quarter (2D) to an eighth (3D) of the arithmetic of "full".

Residual blocks are ReZero-gated by default (Bachlechner et al. 2020), which makes the deep stack
start close to the identity. `mid_blocks` sets the residual blocks of the middle (0 drops it).

The architecture is described by two small frozen dataclasses, `PyramidSpec` (shape of the
pyramid) and `BlockOptions` (how each block is built), which `models.base.make_specs` derives from
a model's typed config.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor, nn

from medgen_cli.nn.attention import SpatialSelfAttention
from medgen_cli.nn.blocks import Downsample, ResBlock, ResBlockOptions, Upsample, check_factor, depth_to_space, icnr_
from medgen_cli.nn.layers import check_spatial_dims, conv_transpose_cls, make_act, make_conv, make_norm

__all__ = ["BlockOptions", "PyramidSpec", "Encoder", "Decoder", "resolve_downsample", "prod_factors", "LAYOUTS"]

FactorsArg = Sequence[int | Sequence[int]] | None
LAYOUTS = ("full", "strided")


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
        res_kernels: kernel sizes of the two convolutions of a residual block ((3, 3) or (3, 1)).
    """

    norm: str = "group"
    num_groups: int = 8
    dropout: float = 0.0
    factorized: bool = False
    rezero: bool = True
    num_heads: int = 1
    act: str = "silu"
    res_kernels: tuple[int, int] = (3, 3)


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
        upsample_mode: "nearest" | "transpose" | "shuffle" (decoder; see `nn.blocks.Upsample`).
        layout: "full" (resample after each level, first level at full resolution) or "strided"
            (resample before each level: no block runs at the input resolution).
        mid_blocks: residual blocks of the middle block (0: none; mid_attention then stands alone).
    """

    spatial_dims: int
    channels: tuple[int, ...]
    downsample: tuple[tuple[int, ...], ...]
    num_res_blocks: int | tuple[int, ...] = 2
    attention_levels: tuple[int, ...] = ()
    mid_attention: bool = False
    upsample_mode: str = "nearest"
    layout: str = "full"
    mid_blocks: int = 2

    def __post_init__(self) -> None:
        check_spatial_dims(self.spatial_dims)
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout={self.layout!r} must be one of {LAYOUTS}")
        if not isinstance(self.mid_blocks, int) or self.mid_blocks < 0:
            raise ValueError(f"mid_blocks={self.mid_blocks!r} must be an integer >= 0")
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
    options = ResBlockOptions(norm=opts.norm, num_groups=opts.num_groups, dropout=opts.dropout,
                              factorized=opts.factorized, rezero=opts.rezero, act=opts.act, kernels=opts.res_kernels)
    return ResBlock(spec.spatial_dims, cin, cout, options=options)


def _attention(spec: PyramidSpec, opts: BlockOptions, channels: int) -> SpatialSelfAttention:
    return SpatialSelfAttention(spec.spatial_dims, channels, opts.num_heads, opts.norm, opts.num_groups)


def _middle(spec: PyramidSpec, opts: BlockOptions, channels: int) -> list[nn.Module]:
    """``mid_blocks`` residual blocks, self-attention after the first (alone when there are none)."""
    mid: list[nn.Module] = [_resblock(spec, opts, channels, channels) for _ in range(spec.mid_blocks)]
    if spec.mid_attention:
        mid.insert(min(1, len(mid)), _attention(spec, opts, channels))
    return mid


def _level_blocks(spec: PyramidSpec, opts: BlockOptions, level: int, cin: int) -> tuple[list[nn.Module], int]:
    """The residual blocks (and attention) of one level, from ``cin`` channels; (layers, channels out)."""
    layers: list[nn.Module] = []
    ch = spec.channels[level]
    for _ in range(spec.blocks_per_level[level]):
        layers.append(_resblock(spec, opts, cin, ch))
        cin = ch
        if level in spec.attention_levels:
            layers.append(_attention(spec, opts, ch))
    return layers, cin


def _resamples(factor: Sequence[int]) -> bool:
    return any(f > 1 for f in factor)


def _head(spec: PyramidSpec, opts: BlockOptions, cin: int, cout: int) -> tuple[nn.Module, nn.Module, nn.Module]:
    return make_norm(spec.spatial_dims, opts.norm, cin, opts.num_groups), make_act(opts.act), make_conv(
        spec.spatial_dims, cin, cout, 3
    )


class Encoder(nn.Module):
    """(B, in_channels, *spatial) -> (B, out_channels, *spatial / total_factor).

    Args:
        spec: pyramid shape (and layout).
        opts: block options.
        in_channels: image channels.
        out_channels: output (latent) channels.
    """

    def __init__(self, spec: PyramidSpec, opts: BlockOptions, in_channels: int, out_channels: int):
        super().__init__()
        sd, ch0 = spec.spatial_dims, spec.channels[0]
        strided = spec.layout == "strided"
        if strided and _resamples(spec.downsample[0]):
            self.stem = Downsample(sd, in_channels, ch0, spec.downsample[0], "conv", factorized=opts.factorized)
        else:
            self.stem = make_conv(sd, in_channels, ch0, 3)
        layers: list[nn.Module] = []
        prev = ch0
        for level, factor in enumerate(spec.downsample):
            if strided and level > 0 and _resamples(factor):  # resample first; the strided conv sets the width
                layers.append(Downsample(sd, prev, spec.channels[level], factor, "conv", factorized=opts.factorized))
                prev = spec.channels[level]
            blocks, prev = _level_blocks(spec, opts, level, prev)
            layers += blocks
            if not strided and _resamples(factor):
                layers.append(Downsample(sd, prev, prev, factor, "conv", factorized=opts.factorized))
        layers += _middle(spec, opts, prev)
        self.body = nn.Sequential(*layers)
        self.norm_out, self.act_out, self.conv_out = _head(spec, opts, prev, out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv_out(self.act_out(self.norm_out(self.body(self.stem(x)))))


class Decoder(nn.Module):
    """(B, in_channels, *latent_spatial) -> (B, out_channels, *latent_spatial * total_factor).

    Mirrors `Encoder`: middle block, then per level (deepest first) "full": upsampling by that
    level's factor followed by its residual blocks; "strided": the level's blocks followed by
    upsampling by its factor to the next level's width, the first level's factor applied by
    `conv_out` itself: a sub-pixel convolution (`nn.blocks.depth_to_space`; a transposed one with
    upsample_mode "transpose"). `conv_out` is the last layer (adaptive GAN weight).
    """

    def __init__(self, spec: PyramidSpec, opts: BlockOptions, in_channels: int, out_channels: int):
        super().__init__()
        sd = spec.spatial_dims
        strided = spec.layout == "strided"
        prev = spec.channels[-1]
        self.stem = make_conv(sd, in_channels, prev, 3)
        layers: list[nn.Module] = _middle(spec, opts, prev)
        for level in reversed(range(len(spec.channels))):
            factor = spec.downsample[level]
            if not strided and _resamples(factor):
                layers.append(Upsample(sd, prev, prev, factor, spec.upsample_mode, factorized=opts.factorized))
            blocks, prev = _level_blocks(spec, opts, level, prev)
            layers += blocks
            if strided and level > 0 and _resamples(factor):
                cout = spec.channels[level - 1]
                layers.append(Upsample(sd, prev, cout, factor, spec.upsample_mode, factorized=opts.factorized))
                prev = cout
        self.body = nn.Sequential(*layers)
        self.norm_out, self.act_out, self.conv_out = _head(spec, opts, prev, out_channels)
        self.factor_out = tuple(spec.downsample[0]) if strided and _resamples(spec.downsample[0]) else None
        # the last upsampling is a sub-pixel convolution unless transposed convs were asked for: with a
        # 3x3 kernel and factor 2 it can express nearest + 3x3 conv exactly, and a conv to 1-8
        # channels on the full grid was the slowest layer of the whole decoder (12x, 3D, measured)
        self.out_mode = None if self.factor_out is None else "transpose" if spec.upsample_mode == "transpose" else "shuffle"
        if self.out_mode == "transpose":  # kernel = stride: tiles without overlap
            self.conv_out = conv_transpose_cls(sd)(prev, out_channels, self.factor_out, self.factor_out)
        elif self.out_mode == "shuffle":  # sub-pixel convolution on the last level's grid
            n = math.prod(self.factor_out)
            self.conv_out = make_conv(sd, prev, out_channels * n, 3)
            icnr_(self.conv_out, n)

    def forward(self, z: Tensor) -> Tensor:
        h = self.conv_out(self.act_out(self.norm_out(self.body(self.stem(z)))))
        return depth_to_space(h, self.factor_out) if self.out_mode == "shuffle" else h
