"""Reconstruction losses (a weighted mix of L1, L2 and MS-SSIM) and image-quality metrics.

Both need the data range of the store's intensity mapping (2.0 for a window mapped onto [-1, 1]):
SSIM's constants and PSNR's peak are defined on it, and a PSNR computed on the wrong range is off
by ``20 log10(ratio)`` dB.

MS-SSIM: in 2D kornia's ``MS_SSIMLoss`` (Zhao et al. 2017: Gaussian windows of several sigmas at
full resolution) with ``alpha=1`` and no compensation, i.e. exactly ``1 - MS-SSIM``; sigmas whose
window is wider than half the image are dropped (0.5..4 at 64^2, all five from 66^2 up).

kornia has no 3D MS-SSIM, so 3D uses a documented fallback: ``1 -`` the mean of kornia's
``ssim3d`` (window 7, reflect padding) over a dyadic average-pooling pyramid of up to three
scales (Wang et al. 2003's pyramid, equal weights).
"""

from __future__ import annotations

import kornia
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..metrics import image as image_metrics

MS_SSIM_SIGMAS = (0.5, 1.0, 2.0, 4.0, 8.0)
SSIM3D_WINDOW = 7
SSIM3D_SCALES = 3


def _largest_odd(limit: int, cap: int) -> int:
    w = min(cap, limit)
    return w if w % 2 else w - 1


def ssim3d_multiscale(x: Tensor, y: Tensor, data_range: float, scales: int = SSIM3D_SCALES) -> Tensor:
    """Mean SSIM3D over a dyadic pyramid, per item: (B,)."""
    values = []
    for level in range(scales):
        if level:
            if min(x.shape[2:]) < 2 * 3:
                break
            x, y = F.avg_pool3d(x, 2), F.avg_pool3d(y, 2)
        window = _largest_odd(min(x.shape[2:]), SSIM3D_WINDOW)
        if window < 3:
            break
        values.append(kornia.metrics.ssim3d(x, y, window, max_val=data_range).flatten(1).mean(1))
    return torch.stack(values).mean(0)


class ReconstructionLoss(nn.Module):
    """``l1 * |x - y| + l2 * (x - y)^2 + ms_ssim * (1 - MS-SSIM)``, each term mean-reduced.

    Args:
        spatial_dims: 2 or 3.
        l1, l2, ms_ssim: weights (at least one positive).
        data_range: range of the stored values (the intensity mapping's output range).
    """

    def __init__(self, spatial_dims: int, l1: float = 1.0, l2: float = 0.0, ms_ssim: float = 0.0,
                 data_range: float = 2.0):
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims={spatial_dims} must be 2 or 3")
        if min(l1, l2, ms_ssim) < 0 or l1 + l2 + ms_ssim <= 0:
            raise ValueError(f"loss weights l1={l1}, l2={l2}, ms_ssim={ms_ssim} must be >= 0 with one positive")
        if not data_range > 0:
            raise ValueError(f"data_range={data_range} must be positive")
        self.spatial_dims = spatial_dims
        self.weights = {"l1": float(l1), "l2": float(l2), "ms_ssim": float(ms_ssim)}
        self.data_range = float(data_range)
        self._ms_ssim: dict[int, nn.Module] = {}

    def _ms_ssim_2d(self, min_size: int) -> nn.Module:
        if min_size not in self._ms_ssim:
            # windows wider than half the image mostly see kornia's zero padding, and cost the most
            sigmas = tuple(s for s in MS_SSIM_SIGMAS if 2 * int(2 * s) + 1 <= max(3, min_size // 2)) or (0.5,)
            self._ms_ssim[min_size] = kornia.losses.MS_SSIMLoss(
                sigmas=sigmas, data_range=self.data_range, alpha=1.0, compensation=1.0
            )
        return self._ms_ssim[min_size]

    def ms_ssim_loss(self, x: Tensor, y: Tensor) -> Tensor:
        x, y = x.float(), y.float()
        if self.spatial_dims == 2:
            module = self._ms_ssim_2d(min(x.shape[2:])).to(x.device)
            return module(x, y)
        return 1.0 - ssim3d_multiscale(x, y, self.data_range).mean()

    def forward(self, reconstruction: Tensor, target: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Return (weighted total, unweighted terms with positive weight), computed in float32 (also under autocast)."""
        with torch.autocast(device_type=reconstruction.device.type, enabled=False):
            return self._terms(reconstruction, target)

    def _terms(self, reconstruction: Tensor, target: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        terms: dict[str, Tensor] = {}
        diff = reconstruction.float() - target.float()
        if self.weights["l1"] > 0:
            terms["l1"] = diff.abs().mean()
        if self.weights["l2"] > 0:
            terms["l2"] = diff.pow(2).mean()
        if self.weights["ms_ssim"] > 0:
            terms["ms_ssim"] = self.ms_ssim_loss(reconstruction, target)
        total = sum(self.weights[k] * v for k, v in terms.items())
        return total, terms


# ------------------------------------------------------------------------------------------ metrics
@torch.no_grad()
def psnr(x: Tensor, y: Tensor, data_range: float) -> Tensor:
    """PSNR in dB per item (B,) with peak ``data_range`` (the same function ``evaluate`` uses)."""
    return image_metrics.psnr(x, y, data_range).float()


@torch.no_grad()
def ssim(x: Tensor, y: Tensor, data_range: float, window: int = 11) -> Tensor:
    """Mean SSIM per item (B,) on ``data_range``, as ``evaluate`` computes it (valid windows,
    equal to scikit-image); the Gaussian window shrinks to the largest odd size that fits."""
    window = _largest_odd(min(x.shape[2:]), window)
    return image_metrics.ssim(x, y, data_range, window_size=window).float()
