"""On-the-fly batch augmentation for 2D slices and 3D volumes, built on kornia.augmentation.

The geometry (flips and one random affine: rotation, zoom, translation) comes from kornia's 2D
or 3D classes; the intensity change is a tiny module here because kornia's intensity
augmentations assume RGB images in [0, 1] while medgen stores values in [-1, 1].

Axis convention: tensors are ``(B, C, *spatial)`` with the spatial axes in voxel order
``(i, j[, k])``; ``flip[a]`` is the probability of flipping spatial axis ``a``. kornia names the
last axis "horizontal" (W), the one before "vertical" (H) and the first of three "depthical" (D).

Randomness comes from torch's global generator, so ``torch.manual_seed`` makes a run repeatable.
Everything samples independently per batch element.

Masks: ``augmentation(x, mask)`` also moves a label map ``(B, 1, *spatial)`` with exactly the
geometric transforms drawn for ``x`` (the same flips, the same affine) by replaying each kornia
module with its recorded parameters and nearest-neighbour resampling, so labels are never
interpolated and voxels moved in from outside get label 0; intensity changes leave it alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import kornia.augmentation as K
import torch
from kornia.constants import Resample
from torch import nn

__all__ = ["Augmentation", "GammaJitter", "IntensityJitter", "build_augmentation"]

# kornia flip class per spatial axis, indexed [spatial_dims][axis]
_FLIPS = {
    2: (K.RandomVerticalFlip, K.RandomHorizontalFlip),
    3: (K.RandomDepthicalFlip3D, K.RandomVerticalFlip3D, K.RandomHorizontalFlip3D),
}
_KEYS = {"enabled", "flip", "rotate", "scale", "translate", "intensity_shift", "intensity_scale", "gamma", "fill"}


class IntensityJitter(nn.Module):
    """Random per-sample contrast and brightness: ``fill + (x - fill) * (1 + a) + b``.

    ``a ~ U(-scale, scale)`` and ``b ~ U(-shift, shift)``, drawn once per batch element. The
    contrast change pivots on ``fill`` (the background value) so air stays air when only the
    scale is jittered.

    Args:
        shift: maximum additive change, in stored units (>= 0).
        scale: maximum multiplicative change as a fraction (0 <= scale < 1).
        fill: the pivot of the contrast change (the stored background value).
    """

    def __init__(self, shift: float = 0.0, scale: float = 0.0, fill: float = -1.0):
        super().__init__()
        if shift < 0:
            raise ValueError(f"intensity_shift must be >= 0, got {shift}")
        if not 0 <= scale < 1:
            raise ValueError(f"intensity_scale must be in [0, 1), got {scale}")
        self.shift, self.scale, self.fill = float(shift), float(scale), float(fill)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)  # one factor per sample, broadcast over C and space
        a = (torch.rand(shape, device=x.device, dtype=x.dtype) * 2 - 1) * self.scale
        b = (torch.rand(shape, device=x.device, dtype=x.dtype) * 2 - 1) * self.shift
        return self.fill + (x - self.fill) * (1 + a) + b

    def extra_repr(self) -> str:
        return f"shift={self.shift}, scale={self.scale}, fill={self.fill}"


class GammaJitter(nn.Module):
    """Random per-sample gamma (a non-linear contrast change between tissues): on the mapping's
    unit interval ``t = (x - fill) / (top - fill)``, ``t -> t ** g`` with ``log g ~ U(-gamma, gamma)``.

    Background (``fill``) and the top of the range stay put; mid-grey tissues get brighter or darker
    relative to each other, as between two scanners or protocols. Values outside the interval keep
    their distance from it (``t`` is clamped at 0 for the power only).

    Args:
        gamma: maximum ``|log g|`` (0.3 gives ``g`` in 0.74..1.35).
        fill: the stored background value (bottom of the interval).
        top: the stored top of the interval (1.0 for a [-1, 1] mapping).
    """

    def __init__(self, gamma: float, fill: float = -1.0, top: float = 1.0):
        super().__init__()
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        if top <= fill:
            raise ValueError(f"the interval's top ({top}) must be above fill ({fill})")
        self.gamma, self.fill, self.top = float(gamma), float(fill), float(top)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        g = torch.exp((torch.rand(shape, device=x.device, dtype=x.dtype) * 2 - 1) * self.gamma)
        t = (x - self.fill) / (self.top - self.fill)
        inside = t.clamp(0, 1)
        return self.fill + (self.top - self.fill) * (inside.pow(g) + (t - inside))

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, fill={self.fill}, top={self.top}"


class _FillAround(nn.Module):
    """Run a zero-padding warp so that the area outside the image gets ``fill`` instead of 0.

    Bilinear resampling is linear with weights summing to one, so ``warp(x - fill) + fill``
    equals ``warp(x)`` inside the image and ``fill`` outside. kornia's 3D affine has no fill
    option, and this keeps 2D and 3D identical.
    """

    def __init__(self, warp: nn.Module, fill: float):
        super().__init__()
        self.warp, self.fill = warp, float(fill)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fill == 0.0:
            return self.warp(x)
        return self.warp(x - self.fill) + self.fill


class Augmentation(nn.Module):
    """A sequence of batch augmentations for ``(B, C, *spatial)`` tensors of one rank.

    Args:
        spatial_dims: 2 or 3; inputs must have ``spatial_dims + 2`` dimensions.
        transforms: the modules applied in order.
    """

    def __init__(self, spatial_dims: int, transforms: Sequence[nn.Module]):
        super().__init__()
        self.spatial_dims = spatial_dims
        self.transforms = nn.ModuleList(transforms)

    @torch.no_grad()
    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None):
        """Augment ``x`` (B, C, *spatial); with ``mask`` (B, 1, *spatial) integer labels, return
        ``(x, mask)`` with the mask moved by the same geometric transforms (nearest neighbour)."""
        if x.ndim != self.spatial_dims + 2:
            raise ValueError(
                f"augmentation for spatial_dims={self.spatial_dims} needs (B, C, *spatial) with "
                f"{self.spatial_dims + 2} dimensions, got shape {tuple(x.shape)}"
            )
        if mask is not None and (mask.shape[0] != x.shape[0] or mask.shape[2:] != x.shape[2:]):
            raise ValueError(f"the mask {tuple(mask.shape)} must match the images {tuple(x.shape)} in batch and space")
        dtype = x.dtype
        out = x.float()
        labels = None if mask is None else mask.float()
        for t in self.transforms:
            out = t(out)
            if labels is not None and _is_geometric(t):
                labels = _replay_nearest(t, labels)
        if mask is None:
            return out.to(dtype)
        return out.to(dtype), labels.round().to(mask.dtype)


def _is_geometric(t: nn.Module) -> bool:
    return isinstance(t, _FillAround) or type(t) in {cls for flips in _FLIPS.values() for cls in flips}


def _replay_nearest(t: nn.Module, labels: torch.Tensor) -> torch.Tensor:
    """``t``'s last transform again, with its recorded parameters, sampling by nearest neighbour
    (flips move voxels exactly; the affine warp pads with 0, the background label)."""
    module = t.warp if isinstance(t, _FillAround) else t
    if "resample" in module.flags:
        return module(labels, params=module._params, resample=Resample.NEAREST)
    return module(labels, params=module._params)


def _flip_probs(flip: float | Sequence[float], spatial_dims: int) -> tuple[float, ...]:
    probs = (float(flip),) if isinstance(flip, (int, float)) else tuple(float(p) for p in flip)
    if len(probs) == 1:
        probs = probs * spatial_dims
    if len(probs) != spatial_dims:
        raise ValueError(f"flip needs one probability or one per spatial axis ({spatial_dims}), got {flip!r}")
    if any(not 0.0 <= p <= 1.0 for p in probs):
        raise ValueError(f"flip probabilities must be in [0, 1], got {flip!r}")
    return probs


def _scale_range(scale: float | Sequence[float]) -> tuple[float, float]:
    rng = (float(scale), float(scale)) if isinstance(scale, (int, float)) else tuple(float(s) for s in scale)
    if len(rng) != 2 or not 0 < rng[0] <= rng[1]:
        raise ValueError(f"scale must be a range (low, high) with 0 < low <= high, got {scale!r}")
    return rng  # type: ignore[return-value]


def build_augmentation(
    spatial_dims: int, settings: Mapping[str, Any] | None = None, /, **kwargs: Any
) -> Augmentation | None:
    """Build the batch augmentation, or None when it would change nothing.

    Pass the options as a mapping (e.g. ``AugmentSettings(...).model_dump()``), as keyword
    arguments, or both (keywords win). Unknown options are errors.

    Args:
        spatial_dims: 2 (slices) or 3 (volumes).
        enabled: master switch (default False).
        flip: flip probability per spatial axis in voxel order; one value applies to all axes.
        rotate: maximum rotation in degrees (about every axis in 3D).
        scale: range ``(low, high)`` of the isotropic zoom factor.
        translate: maximum translation as a fraction of the size along every axis.
        intensity_shift: maximum additive intensity change (stored units).
        intensity_scale: maximum multiplicative intensity change (fraction).
        gamma: maximum ``|log gamma|`` of a random gamma on the [fill, 1] interval (see `GammaJitter`).
        fill: stored value given to voxels moved in from outside the image and the pivot of the
            contrast change (default -1.0, the background of a [-1, 1] mapping; pass the
            mapping's ``out_low`` otherwise).
    """
    if spatial_dims not in _FLIPS:
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
    opts = {**dict(settings or {}), **kwargs}
    unknown = sorted(set(opts) - _KEYS)
    if unknown:
        raise ValueError(f"unknown augmentation option(s) {unknown}; allowed: {sorted(_KEYS)}")
    if not opts.get("enabled", False):
        return None
    flips = _flip_probs(opts.get("flip", 0.0), spatial_dims)
    rotate = float(opts.get("rotate", 0.0))
    scale = _scale_range(opts.get("scale", (1.0, 1.0)))
    translate = float(opts.get("translate", 0.0))
    fill = float(opts.get("fill", -1.0))
    if rotate < 0 or translate < 0:
        raise ValueError(f"rotate and translate must be >= 0, got rotate={rotate}, translate={translate}")

    transforms: list[nn.Module] = [
        cls(p=p) for cls, p in zip(_FLIPS[spatial_dims], flips) if p > 0
    ]
    if rotate > 0 or translate > 0 or scale != (1.0, 1.0):
        if spatial_dims == 2:
            warp = K.RandomAffine(degrees=rotate, translate=(translate,) * 2, scale=scale, p=1.0)
        else:
            warp = K.RandomAffine3D(degrees=rotate, translate=(translate,) * 3, scale=scale, p=1.0)
        transforms.append(_FillAround(warp, fill))
    shift, iscale = float(opts.get("intensity_shift", 0.0)), float(opts.get("intensity_scale", 0.0))
    if shift > 0 or iscale > 0:
        transforms.append(IntensityJitter(shift=shift, scale=iscale, fill=fill))
    gamma = float(opts.get("gamma", 0.0))
    if gamma > 0:
        transforms.insert(len(transforms) - (shift > 0 or iscale > 0), GammaJitter(gamma, fill=fill))
    return Augmentation(spatial_dims, transforms) if transforms else None
