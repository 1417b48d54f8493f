"""Convolutional building blocks for autoencoders and UNets, for any spatial rank.

- `ConvLayer`: a convolution, optionally factorised "(2+1)D" (Tran et al. 2018): an in-plane
  k x ... x k x 1 convolution followed by a 1 x ... x 1 x k convolution along the last axis.
- `ResBlock`: pre-norm residual block (He et al. 2016 "identity mappings") with an optional
  embedding input (`forward(x, emb)`, e.g. a diffusion timestep) and an optional ReZero gate
  (Bachlechner et al. 2020): the residual branch is scaled by a learnable scalar initialised at 0,
  so the block starts as the identity.
- `Downsample` / `Upsample`: resampling by a per-axis integer factor, e.g. (2, 2, 1) to keep the
  z resolution of an anisotropic volume. `Upsample(mode="shuffle")` is the sub-pixel convolution
  of Shi et al. 2016 (ESPCN) for any rank: a convolution at the low resolution to out * prod(factor)
  channels, then `depth_to_space`; initialised as in Aitken et al. 2017 (ICNR) so that it starts
  as nearest-neighbour upsampling of one convolution, without checkerboard artefacts. It does the
  arithmetic of nearest + convolution, but as one wide convolution on the small grid, which CPUs
  and GPUs run several times faster than a narrow one on the large grid.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medgen_cli.nn.layers import as_tuple, conv_transpose_cls, make_act, make_conv, make_norm, pool_cls

__all__ = ["ConvLayer", "ResBlock", "ResBlockOptions", "Downsample", "Upsample", "check_factor", "depth_to_space", "icnr_"]

UPSAMPLE_MODES = ("nearest", "transpose", "shuffle")


def check_factor(factor: int | Sequence[int], spatial_dims: int) -> tuple[int, ...]:
    """Per-axis resampling factor as a tuple of positive ints."""
    out = as_tuple(factor, spatial_dims, "factor")
    if any(f < 1 for f in out):
        raise ValueError(f"factor={factor!r} must be positive integers")
    return out


def depth_to_space(x: Tensor, factor: Sequence[int]) -> Tensor:
    """(B, C * prod(factor), *S) -> (B, C, *(S * factor)); channel c * prod(factor) + j fills sub-position j
    (row-major over the factor's axes), as `torch.nn.functional.pixel_shuffle` in 2D."""
    b, c, *spatial = x.shape
    sd, n = len(spatial), math.prod(factor)
    if len(factor) != sd or c % n:
        raise ValueError(f"depth_to_space: {c} channels and factor {tuple(factor)} do not fit a {sd}D input")
    x = x.reshape(b, c // n, *factor, *spatial)
    order = [0, 1] + [axis for i in range(sd) for axis in (2 + sd + i, 2 + i)]  # (B, C, S1, f1, S2, f2, ...)
    return x.permute(order).reshape(b, c // n, *(s * f for s, f in zip(spatial, factor)))


@torch.no_grad()
def icnr_(conv: nn.Module, n: int) -> None:
    """ICNR: the ``n`` sub-position filters of every output channel start equal (nearest upsampling)."""
    weight = conv.weight
    base = weight[:: n].clone()  # (out / n, in, *k): a default-initialised convolution
    weight.copy_(base.repeat_interleave(n, dim=0))
    if conv.bias is not None:
        conv.bias.copy_(conv.bias[:: n].repeat_interleave(n))


class ConvLayer(nn.Module):
    """Convolution with "same" padding for odd kernels, optionally factorised.

    Args:
        spatial_dims: number of spatial axes.
        in_channels, out_channels: channel counts.
        kernel_size: odd kernel size, one int or one per axis.
        stride: int or per-axis stride.
        factorized: split into an in-plane conv (kernel 1 on the last axis, intended for z of a
            3D volume) followed by a conv along the last axis only. Needs spatial_dims >= 2.
        bias: convolution bias.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int] = 3,
        stride: int | Sequence[int] = 1,
        factorized: bool = False,
        bias: bool = True,
    ):
        super().__init__()
        kernel = as_tuple(kernel_size, spatial_dims, "kernel_size")
        strides = as_tuple(stride, spatial_dims, "stride")
        if factorized and spatial_dims < 2:
            raise ValueError(f"factorized convolution needs spatial_dims >= 2, got {spatial_dims}")
        if not factorized:
            self.conv = make_conv(spatial_dims, in_channels, out_channels, kernel, strides, bias=bias)
            return
        plane_kernel, axial_kernel = kernel[:-1] + (1,), (1,) * (spatial_dims - 1) + kernel[-1:]
        plane_stride, axial_stride = strides[:-1] + (1,), (1,) * (spatial_dims - 1) + strides[-1:]
        self.conv = nn.Sequential(
            make_conv(spatial_dims, in_channels, out_channels, plane_kernel, plane_stride, bias=bias),
            make_conv(spatial_dims, out_channels, out_channels, axial_kernel, axial_stride, bias=bias),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


@dataclass(frozen=True)
class ResBlockOptions:
    """How a `ResBlock` is built.

    Args:
        norm: "group" | "batch" | "instance" | "none".
        num_groups: groups for group norm.
        dropout: dropout before the second convolution.
        factorized: use factorised (2+1)D convolutions.
        rezero: scale the residual branch by a learnable scalar initialised at 0.
        scale_shift: FiLM-style embedding (h * (1 + scale) + shift) instead of addition.
        act: activation name.
        kernels: kernel sizes of the two convolutions: (3, 3), or (3, 1) for the cheaper unit of the
            original VQ-VAE (van den Oord et al. 2017), 10/18 of the arithmetic.
    """

    norm: str = "group"
    num_groups: int = 8
    dropout: float = 0.0
    factorized: bool = False
    rezero: bool = False
    scale_shift: bool = False
    act: str = "silu"
    kernels: tuple[int, ...] = (3, 3)


class ResBlock(nn.Module):
    """Pre-norm residual block: x + gate * conv(drop(act(norm(conv(act(norm(x))) + emb)))).

    Args:
        spatial_dims: number of spatial axes.
        in_channels: input channels.
        out_channels: output channels (default `in_channels`; a 1x1 conv adapts the skip path).
        emb_channels: width of an optional embedding vector (B, emb_channels) added to (or, with
            `scale_shift`, modulating) the hidden features; None = no embedding input.
        options: `ResBlockOptions` (norm, groups, dropout, factorised convs, ReZero, FiLM, activation,
            kernels); keyword ``overrides`` replace single options, e.g. ``ResBlock(2, 8, num_groups=4)``.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int | None = None,
                 emb_channels: int | None = None, options: ResBlockOptions | None = None, **overrides: Any):
        super().__init__()
        opts = replace(options or ResBlockOptions(), **overrides)
        kernels = tuple(int(k) for k in opts.kernels)
        if len(kernels) != 2 or any(k < 1 or k % 2 == 0 for k in kernels):
            raise ValueError(f"kernels={list(kernels)} must be two odd kernel sizes, e.g. [3, 3] or [3, 1]")
        factorized, norm, groups = opts.factorized, opts.norm, opts.num_groups
        out_channels = out_channels or in_channels
        self.spatial_dims = spatial_dims
        self.scale_shift = opts.scale_shift
        self.norm1 = make_norm(spatial_dims, norm, in_channels, groups)
        self.act = make_act(opts.act)
        self.conv1 = ConvLayer(spatial_dims, in_channels, out_channels, kernels[0], factorized=factorized and kernels[0] > 1)
        self.emb_proj = None
        if emb_channels is not None:
            self.emb_proj = nn.Linear(emb_channels, out_channels * (2 if opts.scale_shift else 1))
        self.norm2 = make_norm(spatial_dims, norm, out_channels, groups)
        self.drop = nn.Dropout(opts.dropout)
        self.conv2 = ConvLayer(spatial_dims, out_channels, out_channels, kernels[1], factorized=factorized and kernels[1] > 1)
        self.skip = (
            nn.Identity() if in_channels == out_channels else make_conv(spatial_dims, in_channels, out_channels, 1)
        )
        self.gate = nn.Parameter(torch.zeros(())) if opts.rezero else None

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        h = self.conv1(self.act(self.norm1(x)))
        if self.emb_proj is None:
            h = self.norm2(h)
        else:
            if emb is None:
                raise ValueError("this ResBlock was built with emb_channels and needs emb")
            e = self.emb_proj(self.act(emb)).reshape(emb.shape[0], -1, *(1,) * self.spatial_dims)
            if self.scale_shift:
                scale, shift = e.chunk(2, dim=1)
                h = self.norm2(h) * (1 + scale) + shift
            else:
                h = self.norm2(h + e)
        h = self.conv2(self.drop(self.act(h)))
        if self.gate is not None:
            h = self.gate * h
        return self.skip(x) + h


class Downsample(nn.Module):
    """Downsample by a per-axis integer factor (an all-ones factor only maps channels).

    Args:
        spatial_dims: number of spatial axes.
        in_channels, out_channels: channels (out default = in).
        factor: int or per-axis factor, e.g. (2, 2, 1).
        mode: "conv" (strided conv, kernel 2f-1, output ceil(n / f)) or "avgpool" (average pool, then
            a 3x3 conv if channels change).
        factorized: factorised (2+1)D strided convolution (mode "conv").
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int | None = None,
        factor: int | Sequence[int] = 2,
        mode: str = "conv",
        factorized: bool = False,
    ):
        super().__init__()
        out_channels = out_channels or in_channels
        self.factor = check_factor(factor, spatial_dims)
        if mode == "conv":
            kernel = tuple(max(3, 2 * f - 1) for f in self.factor)
            self.op = ConvLayer(spatial_dims, in_channels, out_channels, kernel, self.factor, factorized)
        elif mode == "avgpool":
            pool = pool_cls(spatial_dims, "avg")(self.factor, self.factor)
            proj = nn.Identity() if in_channels == out_channels else make_conv(spatial_dims, in_channels, out_channels)
            self.op = nn.Sequential(pool, proj)
        else:
            raise ValueError(f"downsample mode={mode!r} must be 'conv' or 'avgpool'")

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Upsample by a per-axis integer factor.

    Args:
        spatial_dims: number of spatial axes.
        in_channels, out_channels: channels (out default = in).
        factor: int or per-axis factor.
        mode: "nearest" (nearest-neighbour then a 3x3 conv), "transpose" (transposed conv with
            kernel = stride = factor, which tiles without overlap) or "shuffle" (3x3 conv to
            out * prod(factor) channels at the low resolution, then `depth_to_space`).
        factorized: factorised (2+1)D conv after nearest upsampling.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int | None = None,
        factor: int | Sequence[int] = 2,
        mode: str = "nearest",
        factorized: bool = False,
    ):
        super().__init__()
        out_channels = out_channels or in_channels
        self.factor = check_factor(factor, spatial_dims)
        self.mode = mode
        if mode == "nearest":
            self.conv = ConvLayer(spatial_dims, in_channels, out_channels, 3, factorized=factorized)
        elif mode == "transpose":
            self.conv = conv_transpose_cls(spatial_dims)(in_channels, out_channels, self.factor, self.factor)
        elif mode == "shuffle":
            n = math.prod(self.factor)
            self.conv = ConvLayer(spatial_dims, in_channels, out_channels * n, 3, factorized=factorized)
            icnr_(self.conv.conv if not factorized else self.conv.conv[-1], n)
        else:
            raise ValueError(f"upsample mode={mode!r} must be one of {UPSAMPLE_MODES}")

    def forward(self, x: Tensor) -> Tensor:
        if self.mode == "nearest" and any(f > 1 for f in self.factor):
            x = F.interpolate(x, scale_factor=self.factor, mode="nearest")
        if self.mode == "shuffle":
            return depth_to_space(self.conv(x), self.factor)
        return self.conv(x)
