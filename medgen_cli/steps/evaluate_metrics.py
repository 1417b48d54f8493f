"""The computations of ``medgen evaluate``: per-item paired metrics, reconstructions, encoder
features, nearest training items and the pairing of conditional samples with their targets. The step (``steps.evaluate``) reads the
artefacts, calls these and writes the files.

Paired metrics of one item (``item_metrics``), all in float64 on the CPU:

* ``ssim``: 2D SSIM of a 2D item, 3D SSIM of a volume (only when every axis has at least 11
  voxels, the Gaussian window); ``ssim_slicewise``: mean 2D SSIM of the slices along ``axis``
  (volumes whose in-plane sizes reach 11); ``ms_ssim``: MS-SSIM with scales adapted to the size;
* ``psnr``, ``mae``, ``rmse`` of the stored values, with the true data range of the item's
  intensity mapping (``resolve_data_range``: the stored window of a clipped mapping);
* ``psnr_phys``, ``mae_phys``, ``rmse_phys``: the same in physical units (HU for CT) through the
  mapping (``physical_metrics``).

Encoder features (for the Fréchet distance and MMD of samples against real items): the trained
autoencoder's ``encode_to_latents`` (VQ: the quantised codes; KL: the posterior mean), pooled per
latent channel into its mean and standard deviation over the latent grid, so an item becomes a
``2 * latent_channels`` vector whatever its size. No downloaded network is involved; distances are
comparable only between evaluations with the same autoencoder.

Reconstructions and encoder features run through `medgen_cli.inference.AutoencoderTiler`, whole or,
for volumes too large for memory (the step's ``tiling`` settings), tile by tile with the same result
up to float error.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import UsageError
from ..inference import AutoencoderTiler, TilingOptions
from ..meta import ImageMeta
from ..io.store import Store
from ..metrics import (
    codebook_perplexity,
    codebook_usage,
    memorisation_check,
    mae,
    ms_ssim,
    physical_metrics,
    psnr,
    resolve_data_range,
    rmse,
    ssim,
    ssim_slicewise,
)
from ..train.ae_task import index_levels

SSIM_WINDOW = 11
MEMORISATION_CHUNK = 64  # training items held in memory at once by the nearest-item search
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


# ------------------------------------------------------------------------------- paired metrics
def item_metrics(pred: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor, meta: ImageMeta,
                 axis: int, item_id: str = "") -> dict[str, float]:
    """Paired metrics of one item (see the module docstring for the names).

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
    spatial = t.shape[2:]
    try:
        rng = resolve_data_range(meta, t)
        row: dict[str, float] = {}
        if min(spatial) >= SSIM_WINDOW:
            row["ssim"] = float(ssim(p, t, rng, SSIM_WINDOW)[0])
        if len(spatial) == 3 and min(n for a, n in enumerate(spatial) if a != axis) >= SSIM_WINDOW:
            row["ssim_slicewise"] = float(ssim_slicewise(p, t, rng, axis, SSIM_WINDOW)[0])
        row["ms_ssim"] = float(ms_ssim(p, t, rng)[0])
        row.update(psnr=float(psnr(p, t, rng)[0]), mae=float(mae(p, t)[0]), rmse=float(rmse(p, t)[0]))
        row.update({f"{k}_phys": float(v[0]) for k, v in physical_metrics(p, t, meta.intensity).items()})
    except ValueError as err:
        raise UsageError(f"item {item_id}: {err}") from None
    return row


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


# ------------------------------------------------------------------------------ samples
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


def nearest_training(samples: torch.Tensor, store: Store, train_ids: Sequence[str], data_range: float,
                     threshold: float, progress: Progress | None = None) -> tuple[list[str], np.ndarray, np.ndarray]:
    """For every sample the most similar training item (SSIM, ``memorisation_check``) and a flag.

    The training items are read ``MEMORISATION_CHUNK`` at a time, so memory stays bounded for any
    split size; each chunk is searched by ``memorisation_check`` and the best match kept.

    Args:
        samples: (N, 1, *spatial) stored values.
        store: the store of the training items.
        train_ids: the training items.
        data_range: ``L`` of SSIM.
        threshold: SSIM above which a sample is flagged.
        progress: ``progress(done, total, text)`` over training items.

    Returns:
        (nearest training item id per sample, its SSIM (N,), flagged (N,) bool).
    """
    n = samples.shape[0]
    best = np.full(n, -np.inf)
    nearest = [""] * n
    for start in range(0, len(train_ids), MEMORISATION_CHUNK):
        ids = list(train_ids[start:start + MEMORISATION_CHUNK])
        arrays = [store.read(i) for i in ids]
        for item_id, arr in zip(ids, arrays):
            if arr.shape != tuple(samples.shape[2:]):
                raise UsageError(f"training item {item_id} has shape {list(arr.shape)} but the samples "
                                 f"{list(samples.shape[2:])}; the memorisation check compares equal shapes")
        result = memorisation_check(samples, torch.from_numpy(np.stack(arrays))[:, None], data_range, threshold)
        for k in np.flatnonzero(result.similarity > best):
            best[k], nearest[k] = result.similarity[k], ids[int(result.nearest[k])]
        if progress:
            progress(start + len(ids), len(train_ids), "memorisation")
    return nearest, best, best > threshold


def pair_with_targets(samples: Store, sample_ids: Sequence[str], target: Store, split: str | None,
                      where: str) -> list[tuple[str, str, str]]:
    """(sample id, subject, target item id) for every conditional sample.

    A sample of a prior joined by item names its ``condition_item``: its target is the item of that
    id (derived stores share the ids of ``main``). Otherwise its target is the one item of its
    ``condition_subject``.

    Args:
        samples: the samples store; each item has a ``condition_subject`` attribute (and
            ``condition_item`` when drawn from a prior joined by item).
        sample_ids: the samples to pair.
        target: the ground-truth store.
        split: only target items of this split (None: every split).
        where: the target artefact, named in error messages.
    """
    by_subject = target.subjects(split)
    in_split = f" (split {split})" if split else ""
    items = {i for ids in by_subject.values() for i in ids}
    pairs = []
    for sample_id in sample_ids:
        attrs = samples.item_attrs(sample_id)
        subject, item = attrs.get("condition_subject"), attrs.get("condition_item")
        if not subject and not item:
            raise UsageError(f"sample {sample_id} has no condition_subject attribute: the samples are unconditional; "
                             "evaluate them with --data instead of --target")
        if item:
            if item not in items:
                raise UsageError(f"condition item {item} of sample {sample_id} has no item of the same id in {where}{in_split}; "
                                 "give the preprocessed artefact whose store was encoded as the prior's condition")
            pairs.append((sample_id, str(subject or ""), item))
            continue
        found = by_subject.get(subject, [])
        if not found:
            raise UsageError(f"subject {subject} of sample {sample_id} has no item in {where}{in_split}")
        if len(found) > 1:
            raise UsageError(f"subject {subject} has {len(found)} items in {where}{in_split}; conditional "
                             "evaluation needs one target item per subject (choose a store or split with one)")
        pairs.append((sample_id, subject, found[0]))
    return pairs
