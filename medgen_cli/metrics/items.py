"""Paired metrics of one item (``item_metrics``) over the metric registry, and the built-in entries.

Every metric sees one `PairContext` (`medgen_cli.metrics.registry`): the prediction and target as
(1, 1, *spatial) float64 tensors on the CPU, the item's data range (``resolve_data_range``: the stored window of a clipped mapping), its
intensity mapping and the slice-wise axis. The built-in metrics, in the order of every output:

* ``ssim``: 2D SSIM of a 2D item, 3D SSIM of a volume (only when every axis has at least 11
  voxels, the Gaussian window); ``ssim_slicewise``: mean 2D SSIM of the slices along ``axis``
  (volumes whose in-plane sizes reach 11); ``ms_ssim``: MS-SSIM with scales adapted to the size;
* ``psnr``, ``mae``, ``rmse`` of the stored values, with the item's data range;
* ``psnr_phys``, ``mae_phys``, ``rmse_phys``: the same in physical units (HU for CT) through the
  mapping (``physical_metrics``, computed once per item for the three).

Adding a metric: a function ``(pair: PairContext) -> float | None`` and one ``register_metric`` line
(see docs/ARCHITECTURE.md, "how to add a metric").
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import UsageError
from ..meta import ImageMeta
from .image import mae, ms_ssim, psnr, resolve_data_range, rmse, ssim, ssim_slicewise
from .registry import (PHYSICAL_UNIT, ItemMetric, MetricGroup, PairContext, register_group, register_metric,
                       registered_metrics)

SSIM_WINDOW = 11


# ----------------------------------------------------------------------------- built-in metrics
def _ssim(pair: PairContext) -> float | None:
    if min(pair.spatial) < SSIM_WINDOW:
        return None
    return float(ssim(pair.pred, pair.target, pair.data_range, SSIM_WINDOW)[0])


def _ssim_slicewise(pair: PairContext) -> float | None:
    inplane = [n for a, n in enumerate(pair.spatial) if a != pair.axis]
    if len(pair.spatial) != 3 or min(inplane) < SSIM_WINDOW:
        return None
    return float(ssim_slicewise(pair.pred, pair.target, pair.data_range, pair.axis, SSIM_WINDOW)[0])


def _ms_ssim(pair: PairContext) -> float:
    return float(ms_ssim(pair.pred, pair.target, pair.data_range)[0])


def _psnr(pair: PairContext) -> float:
    return float(psnr(pair.pred, pair.target, pair.data_range)[0])


def _mae(pair: PairContext) -> float:
    return float(mae(pair.pred, pair.target)[0])


def _rmse(pair: PairContext) -> float:
    return float(rmse(pair.pred, pair.target)[0])


for _group in (MetricGroup("similarity", "SSIM"), MetricGroup("psnr", "dB", "dB"),
               MetricGroup("error", "stored units"), MetricGroup("error_phys", PHYSICAL_UNIT, PHYSICAL_UNIT)):
    register_group(_group)

register_metric(ItemMetric("ssim", "similarity", True, _ssim, "SSIM (2D, or 3D for volumes), window 11"))
register_metric(ItemMetric("ssim_slicewise", "similarity", True, _ssim_slicewise, "mean 2D SSIM of the slices along axis"))
register_metric(ItemMetric("ms_ssim", "similarity", True, _ms_ssim, "MS-SSIM, scales adapted to the size"))
register_metric(ItemMetric("psnr", "psnr", True, _psnr, "PSNR of the stored values, dB"))
register_metric(ItemMetric("mae", "error", False, _mae, "mean absolute error, stored units"))
register_metric(ItemMetric("rmse", "error", False, _rmse, "root mean squared error, stored units"))
register_metric(ItemMetric("psnr_phys", "psnr", True, lambda pair: pair.physical["psnr"], "PSNR in physical units, dB"))
register_metric(ItemMetric("mae_phys", "error_phys", False, lambda pair: pair.physical["mae"], "MAE in physical units"))
register_metric(ItemMetric("rmse_phys", "error_phys", False, lambda pair: pair.physical["rmse"], "RMSE in physical units"))


# ------------------------------------------------------------------------------------ item_metrics
def item_metrics(pred: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor, meta: ImageMeta,
                 axis: int, item_id: str = "") -> dict[str, float]:
    """Every registered metric that applies to one item, in registration order.

    Args:
        pred, target: stored values, (*spatial) with 2 or 3 spatial axes.
        meta: the target's metadata (its intensity mapping gives the data range and units).
        axis: spatial axis of slice-wise SSIM (volumes).
        item_id: named in error messages.
    """
    p = torch.as_tensor(pred, dtype=torch.float64)[None, None]
    t = torch.as_tensor(target, dtype=torch.float64)[None, None]
    if p.shape != t.shape:
        raise UsageError(f"item {item_id}: shapes differ, {tuple(p.shape[2:])} against the target's {tuple(t.shape[2:])}")
    try:
        pair = PairContext(p, t, resolve_data_range(meta, t), meta.intensity, axis)
        row: dict[str, float] = {}
        for metric in registered_metrics():
            value = metric.compute(pair)
            if value is not None:
                row[metric.name] = float(value)
    except ValueError as err:
        raise UsageError(f"item {item_id}: {err}") from None
    return row
