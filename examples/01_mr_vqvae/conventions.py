#!/usr/bin/env python3
"""Held-out SSIM of example 01 under three conventions, to compare with figures quoted elsewhere.

Usage: conventions.py OUT [SPLIT]  -> JSON on stdout (OUT is the example's output directory).

SSIM depends on the data range L in its constants and on the window, and papers rarely say which
they used. For the same reconstructions of the held-out slices this prints:

- ``medgen``: what `medgen evaluate` and the training log report: Gaussian window 11 (sigma 1.5),
  L = the stored range of the intensity mapping ([-1, 1] over the 0.5-99.5 percentiles of the scan);
- ``minmax_volume``: the same window, in physical units with L = the whole raw scan's max - min: what
  a script that min-max scales each volume to [0, 1] computes. Bright outliers widen L, so SSIM rises;
- ``skimage_default``: scikit-image's ``structural_similarity`` defaults (7x7 uniform window) with
  medgen's L, when scikit-image is installed (it is in the ``dev`` extra).
"""

from __future__ import annotations

import json
import sys

import numpy as np
import SimpleITK as sitk
import torch

from medgen_cli.io.store import Store, store_path
from medgen_cli.metrics.image import resolve_data_range, ssim
from medgen_cli.loaders.autoencoder import load_autoencoder


def raw_range(source: str, cache: dict[str, float]) -> float:
    """max - min of the raw scan an item came from."""
    if source not in cache:
        raw = sitk.GetArrayFromImage(sitk.ReadImage(source))
        cache[source] = float(raw.max()) - float(raw.min())
    return cache[source]


def main(out: str, split: str = "test") -> dict:
    model, _ = load_autoencoder(f"{out}/ae")
    model.eval()
    store = Store.open(store_path(f"{out}/prep"))
    try:
        from skimage.metrics import structural_similarity
    except ImportError:
        structural_similarity = None
    rows, ranges = {}, {}
    for item_id in store.ids(split):
        x, meta = store.read_item(item_id)
        target = torch.from_numpy(x.astype(np.float64))[None, None]
        with torch.no_grad():
            recon = model(target.float()).reconstruction.double()
        mapping = meta.intensity
        recon = recon.clamp(mapping.out_low, mapping.out_high)
        row = {"medgen": float(ssim(recon, target, resolve_data_range(meta, target))[0])}
        phys_t, phys_r = (torch.as_tensor(np.asarray(mapping.to_physical(v.numpy()))) for v in (target, recon))
        row["minmax_volume"] = float(ssim(phys_r, phys_t, raw_range(meta.source, ranges))[0])
        if structural_similarity is not None:
            row["skimage_default"] = float(structural_similarity(
                target[0, 0].numpy(), recon[0, 0].numpy(), data_range=resolve_data_range(meta, target)))
        rows[item_id] = row
    mean = {k: round(float(np.mean([r[k] for r in rows.values()])), 4) for k in next(iter(rows.values()))}
    return {"split": split, "items": len(rows), "mean": mean, "per_item": rows}


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:]), indent=1))
