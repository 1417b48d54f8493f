"""Evaluation computations over stores and autoencoders: batches of items, deterministic
reconstructions with their per-item metrics (`item_metrics`) and codebook statistics, and pooled
encoder features.

Encoder features (for the Fréchet distance and MMD of samples against real items): the trained
autoencoder's ``encode_to_latents`` (VQ: the quantised codes; KL: the posterior mean), pooled per
latent channel into its mean and standard deviation over the latent grid, so an item becomes a
``2 * latent_channels`` vector whatever its size. No downloaded network is involved; distances are
comparable only between evaluations with the same autoencoder.

Reconstructions and encoder features run through `medgen_cli.inference.AutoencoderTiler`, whole or,
for volumes too large for memory (the step's ``tiling`` settings), tile by tile with the same result
up to float error. Not imported by ``medgen_cli.metrics`` itself (it imports the inference and
training layers, which import ``medgen_cli.metrics``): import ``medgen_cli.metrics.features``.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import UsageError
from ..inference import AutoencoderTiler, TilingOptions
from ..io.store import Store
from ..meta import ImageMeta
from ..models.base import index_levels
from .image import codebook_perplexity, codebook_usage
from .items import item_metrics

Progress = Callable[[int, int, str], None]


# ------------------------------------------------------------------------------------ reading
def batches(store: Store, ids: Sequence[str], batch_size: int) -> Iterator[tuple[list[str], np.ndarray, list[ImageMeta]]]:
    """Consecutive items of equal shape, at most ``batch_size`` at a time: (ids, (B, *spatial), metas)."""
    chunk: list[str] = []
    arrays: list[np.ndarray] = []
    for item_id in ids:
        arr = store.read(item_id)
        if chunk and (arr.shape != arrays[0].shape or len(chunk) == batch_size):
            yield chunk, np.stack(arrays), [store.meta(i) for i in chunk]
            chunk, arrays = [], []
        chunk.append(item_id)
        arrays.append(arr)
    if chunk:
        yield chunk, np.stack(arrays), [store.meta(i) for i in chunk]


def read_set(store: Store, ids: Sequence[str], what: str) -> tuple[torch.Tensor, list[ImageMeta]]:
    """Items of one shape as a (N, 1, *spatial) float32 tensor with their metadata."""
    arrays = [store.read(i) for i in ids]
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise UsageError(f"the {what} items in {store.path} have different shapes {sorted(shapes)}; "
                         "distribution metrics need one shape")
    return torch.from_numpy(np.stack(arrays))[:, None], [store.meta(i) for i in ids]


def codebook_stats(levels: dict[str, list[torch.Tensor]], num_embeddings: int) -> dict[str, float]:
    """Usage and perplexity of the codes of all items, per level ("" for one level, top/bottom)."""
    out: dict[str, float] = {"num_embeddings": num_embeddings}
    for level, chunks in levels.items():
        codes = torch.cat([c.reshape(-1) for c in chunks])
        suffix = f"_{level}" if level else ""
        out[f"codebook_usage{suffix}"] = codebook_usage(codes, num_embeddings)
        out[f"codebook_perplexity{suffix}"] = codebook_perplexity(codes, num_embeddings)
    return out


def _tiler(ae: AutoencoderTiler | nn.Module, device: torch.device) -> AutoencoderTiler:
    """A plain autoencoder gets the default tiler (whole volumes unless one would exceed half the free memory)."""
    return ae if isinstance(ae, AutoencoderTiler) else AutoencoderTiler(ae, TilingOptions(), device)


def _model_input(model: nn.Module, x: torch.Tensor, ids: Sequence[str]) -> torch.Tensor:
    """Check the rank of a (B, *spatial) batch and add the channel axis; the tiler moves it to the
    device (a tile at a time when tiled)."""
    if x.ndim - 1 != model.spatial_dims:
        raise UsageError(f"item {ids[0]} has {x.ndim - 1} spatial axes but the autoencoder is {model.spatial_dims}D")
    return x[:, None]


def _reconstruct(ae: AutoencoderTiler, x: torch.Tensor) -> tuple[np.ndarray, Any]:
    """Deterministic reconstruction, whole or tile by tile: VQ models decode their codes (returned as
    the indices: a tensor, VQ-VAE-2 a (top, bottom) pair), KL models their posterior mean."""
    if ae.model.is_vq:
        codes = ae.encode_indices(x)
        indices = [torch.from_numpy(c) for c in codes]
        return ae.decode_indices(*codes), indices[0] if len(indices) == 1 else tuple(indices)
    return ae.reconstruct(x), None


def reconstruct_items(ae: AutoencoderTiler | nn.Module, store: Store, ids: Sequence[str], device: torch.device,
                      batch_size: int, axis: int, keep: set[str], progress: Progress | None = None):
    """Deterministic reconstructions (VQ codes, KL posterior mean) of ``ids`` and their metrics.

    Args:
        ae: the autoencoder (eval mode) behind its tiler (``tiling``: volumes too large for memory
            are encoded and decoded tile by tile, ``medgen_cli.inference``), or a plain autoencoder
            on ``device`` (default tiling options).
        store: the store holding ``ids``.
        ids: items to evaluate.
        device: compute device.
        batch_size: items per forward pass.
        axis: slice-wise SSIM axis.
        keep: items whose (input, reconstruction, meta) are returned for the pictures.
        progress: ``progress(done, total, text)``.

    Returns:
        (rows: one dict per item with "item", "subject", "split" and the metrics,
        codebook: ``codebook_stats`` for VQ models else {}, kept: id -> (input, reconstruction, meta)).
    """
    ae = _tiler(ae, device)
    rows, kept = [], {}
    levels: dict[str, list[torch.Tensor]] = {}
    done = 0
    for chunk, arrays, metas in batches(store, ids, batch_size):
        x = _model_input(ae.model, torch.from_numpy(arrays), chunk)
        try:
            recon, indices = _reconstruct(ae, x)
        except ValueError as err:  # shape not divisible by the downsampling factor, a budget too small, ...
            raise UsageError(f"the autoencoder cannot reconstruct item {chunk[0]} of shape {list(arrays.shape[1:])}: {err}") from None
        recon = recon[:, 0].astype(np.float32, copy=False)
        for level, idx in index_levels(indices):
            levels.setdefault(level, []).append(idx)
        for item_id, a, r, meta in zip(chunk, arrays, recon, metas):
            attrs = store.item_attrs(item_id)
            rows.append({"item": item_id, "subject": meta.subject, "split": attrs.get("split", ""),
                         **item_metrics(r, a, meta, axis, item_id)})
            if item_id in keep:
                kept[item_id] = (a, r, meta)
        done += len(chunk)
        if progress:
            progress(done, len(ids), chunk[-1])
    codebook = codebook_stats(levels, int(ae.model.config()["num_embeddings"])) if levels else {}
    return rows, codebook, kept


# ------------------------------------------------------------------------------ encoder features
def encoder_features(ae: AutoencoderTiler | nn.Module, images: torch.Tensor, device: torch.device,
                     batch_size: int) -> torch.Tensor:
    """Mean and standard deviation per latent channel of ``encode_to_latents``: (N, 2 * latent_channels).

    Args:
        ae: the autoencoder (eval mode) behind its tiler (whole or tile by tile), or a plain
            autoencoder on ``device`` (default tiling options).
        images: (N, 1, *spatial) stored values.
        device: compute device.
        batch_size: items per forward pass.
    """
    ae = _tiler(ae, device)
    feats = []
    for start in range(0, images.shape[0], batch_size):
        x = images[start:start + batch_size]
        try:
            z = torch.from_numpy(ae.encode_latents(x)).double().flatten(2)  # (B, C, L)
        except ValueError as err:
            raise UsageError(f"the autoencoder cannot encode items of shape {list(x.shape[2:])}: {err}") from None
        feats.append(torch.cat([z.mean(2), z.std(2, unbiased=False)], dim=1))
    return torch.cat(feats)
