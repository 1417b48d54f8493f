"""Paired image metrics: SSIM (2D, 3D, slice-wise), MS-SSIM, PSNR, MAE, RMSE; codebook statistics.

Every metric takes ``pred`` and ``target`` of shape ``(B, C, *spatial)`` (torch tensors or numpy
arrays; 2 or 3 spatial axes), computes in float64 and returns one value per item: a ``(B,)``
float64 tensor. Channels are averaged within an item.

The data range is always explicit (``data_range``, the ``L`` of SSIM's ``c1 = (0.01 L)^2`` and
``c2 = (0.03 L)^2`` and PSNR's peak): guessing it from the data makes numbers of different runs
incomparable. :func:`resolve_data_range` gives the range of a stored intensity mapping (or of the
reference when the mapping is unclipped). :func:`physical_metrics` computes PSNR/MAE/RMSE in
physical units (HU for CT) through the mapping.

SSIM follows Wang et al. 2004 with the scikit-image / MATLAB conventions: an 11-tap Gaussian
window with sigma 1.5 (truncated at 3.5 sigma), population covariances, and the mean over the
"valid" region only (no padded borders). 2D SSIM uses ``kornia.metrics.ssim``; 3D SSIM and MS-SSIM
use a separable float64 filter here, because ``kornia.metrics.ssim3d`` convolves a dense 11^3
kernel (about 40 times the work of a separable one; minutes for a float64 CT volume) and
exposes no contrast-structure term, which MS-SSIM needs.

MS-SSIM (Wang, Simoncelli & Bovik 2003) with scales adapted to small images and thin volumes; the
rule (see :func:`ms_ssim_plan`):

1. Each axis gets the window ``w_a = min(window_size, n_a)`` rounded down to an odd number, so an
   8-slice volume uses a 7-tap Gaussian (sigma 1.5) along its slices instead of failing.
2. Axis ``a`` is halved (2-voxel average, odd sizes floored) between consecutive scales only while
   its halved size stays ``>= w_a``; it then keeps its size (per-axis downsampling).
3. The number of scales is ``M = min(max_scales, 1 + max_a h_a)`` with ``h_a`` the number of
   halvings axis ``a`` allows: a 64^2 image gets 3 scales (64, 32, 16), a 256^2 image all 5.
4. The standard weights (0.0448, 0.2856, 0.3001, 0.2363, 0.1333) of the finest ``M`` scales are
   renormalised to sum to 1. Contrast-structure terms of scales ``0..M-2`` and the full SSIM of
   scale ``M-1`` are clamped at 0 (as pytorch-msssim does) so fractional powers stay real.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import kornia
import numpy as np
import torch

from ..meta import ImageMeta, IntensityMapping

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
SIGMA = 1.5
K1, K2 = 0.01, 0.03


# --------------------------------------------------------------------------- input handling
def _as_tensor(x) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
    return t.detach().to(device="cpu", dtype=torch.float64)


def _pair(pred, target, spatial_dims: Sequence[int] = (2, 3)) -> tuple[torch.Tensor, torch.Tensor]:
    p, t = _as_tensor(pred), _as_tensor(target)
    if p.shape != t.shape:
        raise ValueError(f"pred and target must have the same shape, got {tuple(p.shape)} and {tuple(t.shape)}")
    if p.ndim - 2 not in spatial_dims:
        raise ValueError(f"expected (B, C, *spatial) with {' or '.join(map(str, spatial_dims))} spatial axes, "
                         f"got shape {tuple(p.shape)}")
    return p, t


def _check_range(data_range) -> float:
    if data_range is None or isinstance(data_range, bool):
        raise ValueError(f"data_range must be a positive number (use resolve_data_range), got {data_range!r}")
    value = float(data_range)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"data_range must be a positive finite number, got {data_range!r}")
    return value


def _check_window(window_size: int) -> int:
    if not isinstance(window_size, int) or window_size < 1 or window_size % 2 == 0:
        raise ValueError(f"window_size must be a positive odd integer, got {window_size!r}")
    return window_size


def resolve_data_range(meta_or_mapping: ImageMeta | IntensityMapping, reference) -> float:
    """The data range for SSIM/PSNR of stored values.

    Args:
        meta_or_mapping: an ``ImageMeta`` or its ``IntensityMapping``.
        reference: the reference (target) values; used only when the mapping is unclipped.

    Returns:
        ``|out_high - out_low|`` for a clipped mapping (a CT window), else ``max - min`` of
        ``reference``.
    """
    mapping = meta_or_mapping.intensity if isinstance(meta_or_mapping, ImageMeta) else meta_or_mapping
    if not isinstance(mapping, IntensityMapping):
        raise ValueError(f"expected an ImageMeta or IntensityMapping, got {type(meta_or_mapping).__name__}")
    if mapping.data_range is not None:
        return float(mapping.data_range)
    ref = _as_tensor(reference)
    value = float(ref.max() - ref.min()) if ref.numel() else 0.0
    if not value > 0:
        raise ValueError(f"the reference is constant (max - min = {value}); its data range is undefined")
    return value


# --------------------------------------------------------------------------- separable SSIM core
def _gaussian_taps(size: int) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * SIGMA**2))
    return g / g.sum()


def _blur_valid(x: torch.Tensor, windows: Sequence[int]) -> torch.Tensor:
    """Separable Gaussian filter over the spatial axes of (..., *spatial), keeping the valid part."""
    offset = x.ndim - len(windows)
    for axis, w in enumerate(windows):
        if w == 1:
            continue
        dim, n = offset + axis, x.shape[offset + axis] - w + 1
        taps = _gaussian_taps(w).tolist()
        # shift-and-add: far faster on CPU than conv1d/conv3d with a 1D kernel in float64
        out = x.narrow(dim, 0, n) * taps[0]
        for i in range(1, w):
            out.add_(x.narrow(dim, i, n), alpha=taps[i])
        x = out
    return x


def _ssim_cs(x: torch.Tensor, y: torch.Tensor, data_range: float,
             windows: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean SSIM and mean contrast-structure of (C, *spatial) images, per channel: two (C,) tensors."""
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    mx, my = _blur_valid(x, windows), _blur_valid(y, windows)
    vx = _blur_valid(x * x, windows) - mx * mx
    vy = _blur_valid(y * y, windows) - my * my
    cxy = _blur_valid(x * y, windows) - mx * my
    cs = (2 * cxy + c2) / (vx + vy + c2)
    lum = (2 * mx * my + c1) / (mx * mx + my * my + c1)
    return (lum * cs).flatten(1).mean(1), cs.flatten(1).mean(1)


def _require_window(shape: Sequence[int], window_size: int, what: str) -> None:
    if min(shape) < window_size:
        raise ValueError(f"{what} needs every spatial size >= window_size {window_size}, got {tuple(shape)}; "
                         "use ms_ssim (adapts its window to thin axes) or ssim_slicewise")


# --------------------------------------------------------------------------- SSIM
def ssim(pred, target, data_range: float, window_size: int = 11) -> torch.Tensor:
    """Per-item SSIM of 2D ``(B, C, H, W)`` or 3D ``(B, C, D, H, W)`` images.

    Args:
        pred, target: images of the same shape.
        data_range: ``L`` of the SSIM constants (see :func:`resolve_data_range`).
        window_size: Gaussian taps per axis (odd; sigma is 1.5 whatever the size).

    Returns:
        (B,) float64 tensor, the mean SSIM over the valid region and the channels.
    """
    p, t = _pair(pred, target)
    rng, win = _check_range(data_range), _check_window(window_size)
    _require_window(p.shape[2:], win, "SSIM")
    if p.ndim == 4:
        m = kornia.metrics.ssim(p, t, win, max_val=rng, eps=0.0, padding="valid")
        return m.flatten(1).mean(1)
    windows = (win,) * (p.ndim - 2)
    return torch.stack([_ssim_cs(a, b, rng, windows)[0].mean() for a, b in zip(p, t)])


def ssim_slicewise(pred, target, data_range: float, axis: int, window_size: int = 11) -> torch.Tensor:
    """Per-item mean of 2D SSIM over the slices of 3D images along a spatial axis.

    Args:
        pred, target: (B, C, X, Y, Z) volumes.
        data_range: ``L`` of the SSIM constants.
        axis: spatial axis the slices are taken along (0, 1 or 2; -1 for the last).
        window_size: Gaussian taps per in-plane axis.

    Returns:
        (B,) float64 tensor.
    """
    p, t = _pair(pred, target, spatial_dims=(3,))
    if not isinstance(axis, int) or not -3 <= axis <= 2:
        raise ValueError(f"axis must be a spatial axis in 0..2 (or -3..-1), got {axis!r}")
    dim = 2 + axis % 3
    b, n = p.shape[0], p.shape[dim]

    def slices(v: torch.Tensor) -> torch.Tensor:  # (B, C, X, Y, Z) -> (B * n, C, h, w)
        v = v.movedim(dim, 1)
        return v.reshape(b * n, *v.shape[2:])

    return ssim(slices(p), slices(t), data_range, window_size).view(b, n).mean(1)


# --------------------------------------------------------------------------- MS-SSIM
@dataclass(frozen=True)
class Scale:
    """One scale of an MS-SSIM plan: the spatial shape and the Gaussian taps per axis."""

    shape: tuple[int, ...]
    windows: tuple[int, ...]
    halve: tuple[bool, ...]  # axes averaged by 2 before the next scale


def ms_ssim_plan(spatial_shape: Sequence[int], window_size: int = 11, max_scales: int = 5) -> list[Scale]:
    """The scales MS-SSIM uses for images of ``spatial_shape`` (the rule is in the module docstring).

    Args:
        spatial_shape: sizes of the spatial axes.
        window_size: Gaussian taps per axis at full size (odd).
        max_scales: upper bound on the number of scales (1..5 for the standard weights).
    """
    win = _check_window(window_size)
    if not isinstance(max_scales, int) or max_scales < 1:
        raise ValueError(f"max_scales must be a positive integer, got {max_scales!r}")
    shape = tuple(int(n) for n in spatial_shape)
    if not shape or min(shape) < 1:
        raise ValueError(f"spatial shape must have positive sizes, got {tuple(spatial_shape)}")
    windows = tuple(min(win, n if n % 2 else n - 1) for n in shape)
    halvings = []
    for n, w in zip(shape, windows):
        h = 0
        while n // 2 >= w:
            n, h = n // 2, h + 1
        halvings.append(h)
    count = min(max_scales, 1 + max(halvings))
    plan = []
    for s in range(count):
        size = tuple(n >> min(s, h) for n, h in zip(shape, halvings))
        plan.append(Scale(size, windows, tuple(s < h for h in halvings)))
    return plan


def _halve(x: torch.Tensor, halve: Sequence[bool]) -> torch.Tensor:
    offset = x.ndim - len(halve)
    for axis, flag in enumerate(halve):
        if flag:
            dim = offset + axis
            n = x.shape[dim] // 2
            x = x.narrow(dim, 0, 2 * n).unflatten(dim, (n, 2)).mean(dim + 1)
    return x


def ms_ssim(pred, target, data_range: float, window_size: int = 11, max_scales: int = 5,
            weights: Sequence[float] = MS_SSIM_WEIGHTS) -> torch.Tensor:
    """Per-item multi-scale SSIM of 2D or 3D images, with scales adapted to the image size.

    Args:
        pred, target: (B, C, *spatial) images of the same shape.
        data_range: ``L`` of the SSIM constants.
        window_size: Gaussian taps per axis at full size (odd).
        max_scales: at most this many scales (fewer when the images are small).
        weights: per-scale exponents, finest first; the first ``M`` are renormalised.

    Returns:
        (B,) float64 tensor in [0, 1] (1 for identical images).
    """
    p, t = _pair(pred, target)
    rng = _check_range(data_range)
    w = [float(v) for v in weights]
    if not w or any(not math.isfinite(v) or v < 0 for v in w) or sum(w) <= 0:
        raise ValueError(f"weights must be non-negative with a positive sum, got {tuple(weights)}")
    plan = ms_ssim_plan(p.shape[2:], window_size, min(max_scales, len(w)))
    w = torch.tensor(w[: len(plan)], dtype=torch.float64)
    w = w / w.sum()
    out = []
    for x, y in zip(p, t):  # one item at a time bounds the memory for volumes
        terms = []
        for s, scale in enumerate(plan):
            full, cs = _ssim_cs(x, y, rng, scale.windows)
            terms.append((full if s == len(plan) - 1 else cs).clamp_min(0))
            x, y = _halve(x, scale.halve), _halve(y, scale.halve)
        per_channel = torch.prod(torch.stack(terms) ** w[:, None], dim=0)
        out.append(per_channel.mean())
    return torch.stack(out)


# --------------------------------------------------------------------------- PSNR, MAE, RMSE
def psnr(pred, target, data_range: float) -> torch.Tensor:
    """Per-item peak signal-to-noise ratio ``10 log10(L^2 / MSE)`` in dB (inf for identical items).

    Args:
        pred, target: (B, C, *spatial) images of the same shape.
        data_range: the peak ``L``.
    """
    p, t = _pair(pred, target, spatial_dims=(1, 2, 3))
    rng = _check_range(data_range)
    return torch.stack([kornia.metrics.psnr(a, b, rng) for a, b in zip(p, t)])


def mae(pred, target) -> torch.Tensor:
    """Per-item mean absolute error, in the units of the inputs.

    Args:
        pred, target: (B, C, *spatial) images of the same shape.
    """
    p, t = _pair(pred, target, spatial_dims=(1, 2, 3))
    return (p - t).abs().flatten(1).mean(1)


def rmse(pred, target) -> torch.Tensor:
    """Per-item root mean squared error, in the units of the inputs.

    Args:
        pred, target: (B, C, *spatial) images of the same shape.
    """
    p, t = _pair(pred, target, spatial_dims=(1, 2, 3))
    return (p - t).square().flatten(1).mean(1).sqrt()


def physical_metrics(pred, target, mapping: IntensityMapping | ImageMeta) -> dict[str, torch.Tensor]:
    """PSNR, MAE and RMSE in physical units (HU for CT) of stored-value images.

    Both images are mapped through ``mapping.to_physical``; the PSNR peak is the physical range
    of a clipped mapping (``in_high - in_low``, e.g. 2000 HU for a -1000..1000 window), or the
    physical target's ``max - min`` when unclipped.

    Args:
        pred, target: (B, C, *spatial) stored values.
        mapping: the stored intensity mapping (or the ``ImageMeta`` holding it).

    Returns:
        ``{"psnr": (B,), "mae": (B,), "rmse": (B,)}``; MAE and RMSE in ``mapping.unit``.
    """
    mapping = mapping.intensity if isinstance(mapping, ImageMeta) else mapping
    if not isinstance(mapping, IntensityMapping):
        raise ValueError(f"expected an IntensityMapping or ImageMeta, got {type(mapping).__name__}")
    p, t = _pair(pred, target, spatial_dims=(1, 2, 3))
    pp, tp = mapping.to_physical(p), mapping.to_physical(t)
    peak = mapping.physical_range
    if peak is None:
        peak = float(tp.max() - tp.min())
    return {"psnr": psnr(pp, tp, peak), "mae": mae(pp, tp), "rmse": rmse(pp, tp)}


# --------------------------------------------------------------------------- codebook statistics
def _code_counts(indices, num_embeddings: int) -> torch.Tensor:
    if not isinstance(num_embeddings, int) or num_embeddings < 1:
        raise ValueError(f"num_embeddings must be a positive integer, got {num_embeddings!r}")
    idx = indices if isinstance(indices, torch.Tensor) else torch.from_numpy(np.asarray(indices))
    if idx.is_floating_point() or idx.is_complex() or idx.dtype == torch.bool:
        raise ValueError(f"codebook indices must be integers, got dtype {idx.dtype}")
    idx = idx.detach().cpu().reshape(-1).long()
    if idx.numel() == 0:
        raise ValueError("no codebook indices given")
    lo, hi = int(idx.min()), int(idx.max())
    if lo < 0 or hi >= num_embeddings:
        raise ValueError(f"codebook indices must lie in 0..{num_embeddings - 1}, got {lo}..{hi}")
    return torch.bincount(idx, minlength=num_embeddings).double()


def codebook_usage(indices, num_embeddings: int) -> float:
    """Fraction of the ``num_embeddings`` codes that occur at least once in ``indices`` (any shape)."""
    return float((_code_counts(indices, num_embeddings) > 0).double().mean())


def codebook_perplexity(indices, num_embeddings: int) -> float:
    """``exp`` of the entropy of the code histogram: the effective number of codes used.

    ``K`` equally used codes give ``K``; one code gives 1.
    """
    prob = _code_counts(indices, num_embeddings)
    prob = prob[prob > 0] / prob.sum()
    return float(torch.exp(-(prob * prob.log()).sum()))
