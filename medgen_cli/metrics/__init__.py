"""Metrics for reconstructions and samples.

``image``: paired per-item metrics (SSIM, slice-wise SSIM, MS-SSIM, PSNR, MAE, RMSE, physical-unit
versions) and codebook statistics. ``distribution``: distances between sets (Fréchet distance,
MMD, intensity distance), diversity and the memorisation check. ``registry`` + ``items``: the
registry of paired per-item metrics and ``item_metrics``, which computes every registered one.
``report``: aggregates, CSVs and table rows of per-item metrics. ``labels``: per-label intensity
statistics under masks.

Not imported here, since they import the inference and training layers (which import this
package): ``features`` (batches of store items, reconstructions, encoder features) and ``nearest``
(nearest training items, conditional pairs).
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
from .items import item_metrics
from .registry import ItemMetric, MetricGroup, PairContext, get_metric, register_metric

__all__ = [
    "ItemMetric", "MS_SSIM_WEIGHTS", "MemorisationResult", "MetricGroup", "PairContext", "Scale", "codebook_perplexity",
    "codebook_usage", "diversity", "frechet_distance", "get_metric", "intensity_distance", "item_metrics", "mae",
    "memorisation_check", "mmd_rbf", "ms_ssim", "ms_ssim_plan", "physical_metrics", "psnr", "register_metric",
    "resolve_data_range", "rmse", "ssim", "ssim_slicewise", "wasserstein_1d",
]
