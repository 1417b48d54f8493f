"""A picture of a store: a few items, radiologically oriented, on the store's shared grey scale.

2D items are laid out in a grid; volumes get one row each with their axial, coronal and sagittal
centre views. Items are chosen evenly over the sorted ids so a preview is deterministic.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .images import _views, save_grid


def store_preview(path: Path | str, store, max_items: int = 8, columns: int = 4) -> Path | None:
    """Write a PNG preview of ``store`` (a ``medgen_cli.io.store.Store``); None when it is empty."""
    ids = store.ids()
    if not ids:
        return None
    picks = [ids[int(round(k))] for k in np.linspace(0, len(ids) - 1, min(max_items, len(ids)))]
    picks = list(dict.fromkeys(picks))
    items = [(i, *store.read_item(i)) for i in picks]
    mapping = items[0][2].intensity
    lo, hi = (mapping.out_low, mapping.out_high) if mapping.clip else (None, None)
    if items[0][1].ndim == 2:
        views = [(i, _views(a, m)[0]) for i, a, m in items]
        rows, aspects, edges, titles = [], [], [], []
        for start in range(0, len(views), columns):
            chunk = views[start:start + columns]
            rows.append([v.image for _, v in chunk])
            aspects.append([v.aspect for _, v in chunk] + [1.0] * (columns - len(chunk)))
            edges.append([v.edges for _, v in chunk] + [None] * (columns - len(chunk)))
        labels = [" / ".join(i for i, _ in views[s:s + columns]) for s in range(0, len(views), columns)]
        return save_grid(path, rows, None, lo, hi, aspects=aspects, edges=edges, row_labels=None,
                         title=f"{store.attrs.get('name', '')}: {', '.join(labels)}"[:120])
    rows, aspects, edges, labels = [], [], [], []
    for item_id, arr, meta in items[:4]:
        vs = _views(arr, meta)
        rows.append([v.image for v in vs])
        aspects.append([v.aspect for v in vs])
        edges.append([v.edges for v in vs])
        labels.append(item_id)
    titles = [v.plane for v in _views(items[0][1], items[0][2])]
    return save_grid(path, rows, titles, lo, hi, aspects=aspects, edges=edges, row_labels=labels,
                     title=str(store.attrs.get("name", "")))


def latent_preview(path: Path | str, images, levels: dict, num_embeddings: int | None = None,
                   max_items: int = 4) -> Path | None:
    """Items next to their latent grids: what the autoencoder made of each image.

    One row per item (chosen evenly over the ids): the image's axial centre view, then each latent
    level's (VQ: the code indices in a qualitative colour map, since neighbouring indices mean
    nothing alike; KL: each latent channel in grey, centred on 0). None when there are no items.

    Args:
        path: PNG file to write.
        images: the encoded `Store` (preprocessed images).
        levels: ``{name: latents Store}`` in display order (e.g. ``{"top": ..., "latents": ...}``).
        num_embeddings: codebook size of VQ latents (their colour scale); None for continuous ones.
        max_items: rows at most.
    """
    first = next(iter(levels.values()))
    ids = first.ids()
    if not ids:
        return None
    picks = list(dict.fromkeys(ids[int(round(k))] for k in np.linspace(0, len(ids) - 1, min(max_items, len(ids)))))
    rows, aspects, titles, scales = [], [], ["image"], {}
    for item_id in picks:
        view = _views(*images.read_item(item_id))[0]
        row, aspect = [view.image], [view.aspect]
        for name, store in levels.items():
            grid, meta = store.read_item(item_id)
            channels = [grid] if num_embeddings is not None else list(grid)
            for c, values in enumerate(channels):
                latent = _views(values, meta)[0]
                row.append(latent.image)
                aspect.append(latent.aspect)
                if item_id == picks[0]:
                    titles.append((name if name == "codes" else f"{name} codes") if num_embeddings is not None
                                  else f"{name} ch{c}")
        rows.append(row)
        aspects.append(aspect)
    for c in range(1, len(titles)):
        if num_embeddings is not None:
            scales[c] = ("tab20", 0.0, float(num_embeddings - 1))
        else:
            bound = max(float(np.abs(r[c]).max()) for r in rows) or 1.0
            scales[c] = ("gray", -bound, bound)
    mapping = images.meta(picks[0]).intensity
    lo, hi = (mapping.out_low, mapping.out_high) if mapping.clip else (None, None)
    return save_grid(path, rows, titles, lo, hi, aspects=aspects, row_labels=picks, column_scales=scales,
                     title="images and their latents")
