"""Layers picked once by spatial rank, so blocks and models never branch on `spatial_dims`.

`conv_cls(2)` is `nn.Conv2d`, `conv_cls(3)` is `nn.Conv3d`, and so on for transposed convolutions,
pooling and normalisation. The `make_*` helpers build configured layers; `as_tuple` turns an int
or a sequence into a per-axis tuple, checking its length.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

__all__ = [
    "NORMS",
    "ACTIVATIONS",
    "check_spatial_dims",
    "as_tuple",
    "conv_cls",
    "conv_transpose_cls",
    "pool_cls",
    "make_conv",
    "make_norm",
    "make_act",
]

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_CONV_T = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
_POOL = {
    "avg": {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d},
    "max": {1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d},
}
_BATCH = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_INSTANCE = {1: nn.InstanceNorm1d, 2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}

NORMS = ("batch", "group", "instance", "none")
ACTIVATIONS = {
    "silu": lambda: nn.SiLU(),
    "relu": lambda: nn.ReLU(),
    "gelu": lambda: nn.GELU(),
    "leaky_relu": lambda: nn.LeakyReLU(0.2),
    "none": lambda: nn.Identity(),
}


def check_spatial_dims(spatial_dims: int) -> int:
    """Return `spatial_dims` if it is 1, 2 or 3, else raise ValueError."""
    if spatial_dims not in _CONV:
        raise ValueError(f"spatial_dims={spatial_dims!r} must be 1, 2 or 3")
    return spatial_dims


def as_tuple(value: int | Sequence[int], spatial_dims: int, name: str = "value") -> tuple[int, ...]:
    """An int repeated per axis, or a sequence checked to have one entry per spatial axis."""
    if isinstance(value, int):
        return (value,) * spatial_dims
    out = tuple(int(v) for v in value)
    if len(out) != spatial_dims:
        raise ValueError(f"{name}={value!r} must have {spatial_dims} entries (one per spatial axis)")
    return out


def conv_cls(spatial_dims: int) -> type[nn.Module]:
    return _CONV[check_spatial_dims(spatial_dims)]


def conv_transpose_cls(spatial_dims: int) -> type[nn.Module]:
    return _CONV_T[check_spatial_dims(spatial_dims)]


def pool_cls(spatial_dims: int, kind: str = "avg") -> type[nn.Module]:
    if kind not in _POOL:
        raise ValueError(f"pool kind={kind!r} must be one of {sorted(_POOL)}")
    return _POOL[kind][check_spatial_dims(spatial_dims)]


def make_conv(
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    kernel_size: int | Sequence[int] = 3,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] | None = None,
    bias: bool = True,
) -> nn.Module:
    """A convolution; `padding=None` means k // 2 per axis ("same" for odd kernels at stride 1)."""
    kernel = as_tuple(kernel_size, spatial_dims, "kernel_size")
    if padding is None:
        padding = tuple(k // 2 for k in kernel)
    return conv_cls(spatial_dims)(
        in_channels, out_channels, kernel, stride=as_tuple(stride, spatial_dims, "stride"),
        padding=as_tuple(padding, spatial_dims, "padding"), bias=bias,
    )


def make_norm(spatial_dims: int, kind: str, channels: int, num_groups: int = 8, eps: float = 1e-5) -> nn.Module:
    """Normalisation layer: "batch" | "group" | "instance" (affine) | "none" (identity)."""
    check_spatial_dims(spatial_dims)
    if kind == "batch":
        return _BATCH[spatial_dims](channels, eps=eps)
    if kind == "instance":
        return _INSTANCE[spatial_dims](channels, eps=eps, affine=True)
    if kind == "group":
        if num_groups <= 0 or channels % num_groups != 0:
            raise ValueError(f"channels={channels} is not divisible by num_groups={num_groups} for group norm")
        return nn.GroupNorm(num_groups, channels, eps=eps)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"norm={kind!r} must be one of {NORMS}")


def make_act(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"activation={name!r} must be one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()
