#!/usr/bin/env python3
"""The baseline of the CT super-resolution example: trilinear upsampling of the downsample:2 store.

Usage: trilinear.py PREP [SPLIT]  -> JSON on stdout: per-item and mean metrics of the upsampled
low-resolution volume against the original, computed exactly as ``medgen evaluate`` computes its
paired metrics (`item_metrics`: SSIM, slice-wise SSIM, MS-SSIM, PSNR with the true data range of
the CT window, MAE/RMSE also in HU). Upsampling is in stored values with align_corners=False: the
derived store covers the same field of view, so voxel centres line up.
"""

from __future__ import annotations

import json
import sys

import torch
import torch.nn.functional as F

from medgen_cli.io.store import Store, store_path
from medgen_cli.metrics.items import item_metrics


def main(prep: str, split: str | None = None, low_store: str = "downsample2", axis: int = 2) -> dict:
    full, low = Store.open(store_path(prep, "main")), Store.open(store_path(prep, low_store))
    rows = {}
    for item_id in full.ids(split):
        target, meta = full.read_item(item_id)
        small = torch.from_numpy(low.read(item_id)).float()[None, None]
        up = F.interpolate(small, size=target.shape, mode="trilinear", align_corners=False)[0, 0]
        rows[item_id] = item_metrics(up.numpy(), target, meta, axis, item_id)
    mean = {k: sum(r[k] for r in rows.values()) / len(rows) for k in next(iter(rows.values()))}
    return {"method": "trilinear", "split": split, "items": rows, "mean": mean}


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:3]), indent=2))
