"""Latents artefacts opened for the steps that train or sample priors, and the lineage behind them.

``open_latents`` requires a latents artefact and opens one of its stores (`Latents`);
``latents_lineage`` / ``prior_lineage`` find the autoencoder and data behind latents or a prior
(prior -> latents -> autoencoder); ``latent_codec`` turns the latents of an artefact into the
continuous tensors a diffusion prior models (VQ codes need their autoencoder's codebook).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..artefacts import ArtefactError, InputRef, find_upstream, input_ref, manifest_sha256, require
from ..data.latents import LatentCodec, unit_scale
from ..errors import StepFailed, UsageError
from ..io import fs
from ..io.store import Store, store_path
from ..models.registry import AUTOENCODERS, autoencoder_kind
from .summaries import LatentsSummary, read_summary

log = logging.getLogger(__name__)


@dataclass
class Latents:
    """A latents artefact opened for training: its summary, store(s) and grid.

    Args:
        path: the artefact directory.
        ref: its manifest reference (role ``latents`` or ``condition``).
        summary: its manifest summary (written by encode-latents) as its typed record.
        store_name: the store read (``main``, or ``top`` for vqvae2).
        store: that store.
        grid_shape: the code grid of every item.
        num_embeddings: codebook size (None for KL latents).
        items_per_subject: condition items per subject (conditions only).
    """

    path: Path
    ref: InputRef
    summary: LatentsSummary
    store_name: str
    store: Store
    grid_shape: list[int] | None
    num_embeddings: int | None
    items_per_subject: int = 1

    @property
    def is_vqvae2(self) -> bool:
        """Two code grids (top and bottom), as the autoencoder kind's registry entry declares."""
        kind = self.summary.ae_kind
        return kind in AUTOENCODERS and autoencoder_kind(kind).hierarchical


def open_latents(path: str | Path, role: str, store_name: str = "main") -> Latents:
    """Require a latents artefact and open one of its stores (a `UsageError` names what is wrong)."""
    path = fs.location(path)
    ref = input_ref(path, role, "latents")
    summary = read_summary(path, "latents")
    stores = summary.stores
    if store_name not in stores:
        raise UsageError(f"{path} has no store named {store_name!r}; it holds {sorted(stores)}.")
    try:
        store = Store.open(store_path(path, store_name))
    except StepFailed:  # damaged metadata: DamagedStore names the store and the item
        raise
    except ValueError:
        raise UsageError(f"{store_path(path, store_name)} is missing or damaged; re-run medgen encode-latents.") from None
    info = stores[store_name]
    return Latents(path, ref, summary, store_name, store, info.grid_shape, info.num_embeddings)


@dataclass
class Lineage:
    """The artefacts behind a prior.

    Args:
        latents: the latents artefact the prior was trained on.
        autoencoder: the autoencoder that made those latents.
        data: the preprocessed artefact the latents were encoded from.
        data_store: the store of ``data`` that was encoded.
    """

    latents: Path
    autoencoder: Path
    data: Path
    data_store: str


def latents_lineage(latents: Path | str) -> Lineage:
    """Autoencoder and data behind a latents artefact (warns when the autoencoder was re-made since)."""
    latents = fs.location(latents)
    manifest = require(latents, "latents")
    refs = {ref.role: ref for ref in manifest.inputs}
    if "data" not in refs or "autoencoder" not in refs:
        raise ArtefactError(f"{latents} does not name its autoencoder and data inputs; re-run medgen encode-latents.")
    ae = find_upstream(latents, "autoencoder")
    require(refs["data"].path, "preprocessed")
    if manifest_sha256(ae) != refs["autoencoder"].sha256:
        log.warning("%s was re-made after %s was encoded with it; its codes may not match the decoder", ae, latents)
    return Lineage(latents, ae, fs.location(refs["data"].path), str(manifest.settings.get("store", "main")))


def prior_lineage(prior: Path | str) -> Lineage:
    """Latents, autoencoder and data behind a prior artefact (prior -> latents -> autoencoder)."""
    manifest = require(prior, "prior")
    latents = [ref for ref in manifest.inputs if ref.role == "latents"]
    if not latents:
        raise UsageError(f"{prior} does not name the latents it was trained on; re-run medgen train-prior.")
    return latents_lineage(latents[0].path)


def latent_codec(lat: Latents, scale: float | None = None, split: str | None = None,
                 autoencoder: nn.Module | None = None) -> LatentCodec:
    """The `LatentCodec` of a latents artefact's store, for a diffusion prior.

    Args:
        lat: the opened latents.
        scale: VQ codes: the scale recorded at training; None = computed from the codes of ``split``
            (1 / std of their codebook vectors). KL latents always use their ``latent_scale``.
        split: the split whose codes give the VQ scale (None = every item).
        autoencoder: the autoencoder behind ``lat`` (VQ codes need its codebook; the caller loads it, e.g.
            through ``latents_lineage(lat.path).autoencoder``).
    """
    summary = lat.summary
    if lat.is_vqvae2:
        raise UsageError(f"{lat.path} holds vqvae2 codes (a top and a bottom grid); a diffusion prior models "
                         "KL latents or the codes of a single-level VQ autoencoder (vqvae, vqgan).")
    if not summary.is_vq:
        return LatentCodec(None, float(summary.latent_scale or 1.0))
    if autoencoder is None:  # VQ codes need their autoencoder's codebook: found through the lineage
        from .autoencoder import load_autoencoder

        autoencoder, _ = load_autoencoder(latents_lineage(lat.path).autoencoder)
    quantizer = getattr(autoencoder, "quantizer", None)
    if quantizer is None:
        raise UsageError(f"the autoencoder behind {lat.path} has no single codebook; re-encode with a vqvae or vqgan.")
    codebook = quantizer.codebook.detach().float().cpu()
    if scale is None:
        ids = lat.store.ids(split) if split else lat.store.ids()
        counts = np.zeros(codebook.shape[0], dtype=np.int64)
        for item_id in ids:
            counts += np.bincount(np.asarray(lat.store.read(item_id, dtype=None), dtype=np.int64).ravel(),
                                  minlength=codebook.shape[0])[: codebook.shape[0]]
        try:
            scale = unit_scale(codebook, torch.from_numpy(counts))
        except ValueError as err:
            raise UsageError(f"{lat.path} ({split or 'every split'}): {err}.") from None
    return LatentCodec(codebook, scale)
