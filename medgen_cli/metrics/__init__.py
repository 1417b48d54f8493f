"""Metrics for reconstructions and samples.

``image``: paired per-item metrics (SSIM, slice-wise SSIM, MS-SSIM, PSNR, MAE, RMSE, physical-unit
versions) and codebook statistics. ``distribution``: distances between sets (Fréchet distance,
MMD, intensity distance), diversity and the memorisation check.
"""

from .distribution import (
    MemorisationResult,
    diversity,
    frechet_distance,
    intensity_distance,
    memorisation_check,
    mmd_rbf,
    wasserstein_1d,
)
from .image import (
    MS_SSIM_WEIGHTS,
    Scale,
    codebook_perplexity,
    codebook_usage,
    mae,
    ms_ssim,
    ms_ssim_plan,
    physical_metrics,
    psnr,
    resolve_data_range,
    rmse,
    ssim,
    ssim_slicewise,
)

__all__ = [
    "MS_SSIM_WEIGHTS", "MemorisationResult", "Scale", "codebook_perplexity", "codebook_usage", "diversity",
    "frechet_distance", "intensity_distance", "mae", "memorisation_check", "mmd_rbf", "ms_ssim", "ms_ssim_plan",
    "physical_metrics", "psnr", "resolve_data_range", "rmse", "ssim", "ssim_slicewise", "wasserstein_1d",
]
