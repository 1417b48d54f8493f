"""Reconstruction previews: input | reconstruction | |difference| for a few validation items.

2D items are shown whole; 3D items as their three orthogonal centre slices (one row per view).
The grey scale spans the data range of the store, so previews of different runs compare.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch import Tensor


def centre_views(volume: np.ndarray) -> list[np.ndarray]:
    """The three orthogonal centre slices of a (X, Y, Z) volume; a 2D image is returned as is."""
    if volume.ndim == 2:
        return [volume]
    return [np.take(volume, volume.shape[axis] // 2, axis=axis) for axis in range(3)]


def save_reconstructions(inputs: Tensor, reconstructions: Tensor, path: Path | str,
                         value_range: tuple[float, float] | None = None, title: str = "") -> Path:
    """Write a PNG grid: one row per item (and per view in 3D), columns input, reconstruction, |diff|.

    Args:
        inputs, reconstructions: (B, C, *spatial) tensors; the first channel is shown.
        path: PNG file.
        value_range: (low, high) of the grey scale (default: the inputs' range).
        title: figure title.
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    x = inputs.detach().float().cpu().numpy()[:, 0]
    y = reconstructions.detach().float().cpu().numpy()[:, 0]
    lo, hi = value_range if value_range is not None else (float(x.min()), float(x.max()))
    rows = [(a, b) for xi, yi in zip(x, y) for a, b in zip(centre_views(xi), centre_views(yi))]
    fig, axes = plt.subplots(len(rows), 3, figsize=(6.0, 2.0 * len(rows)), squeeze=False)
    for r, (a, b) in enumerate(rows):
        # voxel order (i, j): show i down the rows after a transpose so the image is upright
        for c, (img, cmap, vr) in enumerate(((a, "gray", (lo, hi)), (b, "gray", (lo, hi)),
                                             (np.abs(a - b), "magma", (0, hi - lo)))):
            ax = axes[r, c]
            ax.imshow(img.T, cmap=cmap, vmin=vr[0], vmax=vr[1], origin="lower", interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(("input", "reconstruction", "|difference|")[c], fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
