"""Priors by kind for the steps that train, sample or evaluate them, and the lineage behind a prior.

``build_prior(kind, config)`` rebuilds a prior from ``model.json`` alone: ``PRIOR_MODELS`` maps a
kind to a builder (a VQ-VAE-2 PixelCNN prior is a ``ModuleDict`` of its ``top`` and ``bottom``
PixelCNNs, its config ``{"top": {...}, "bottom": {...}}``). ``load_prior`` reads a prior artefact;
``open_latents`` opens a store of a latents artefact (training data or condition);
``prior_lineage`` finds the latents, autoencoder and data store behind a prior; ``latent_codec``
turns the latents of an artefact into the continuous tensors a diffusion prior models (the codebook
of a VQ autoencoder is found through the lineage).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..artefacts import ArtefactError, InputRef, find_upstream, input_ref, manifest_sha256, require
from ..data.latents import LatentCodec, unit_scale
from ..errors import StepFailed, UsageError
from ..io import fs
from ..io.store import Store, store_path
from ..models.priors import GatedPixelCNN, MaskGITPrior, TransformerPrior, UNetPrior
from ._load import load_autoencoder
from ._training import MODEL_FILE, MODEL_JSON

log = logging.getLogger(__name__)


def _pixelcnn(**config: Any) -> nn.Module:
    if set(config) == {"top", "bottom"}:
        return nn.ModuleDict({"top": GatedPixelCNN(**config["top"]), "bottom": GatedPixelCNN(**config["bottom"])})
    return GatedPixelCNN(**config)


PRIOR_MODELS: dict[str, Callable[..., nn.Module]] = {
    "transformer": TransformerPrior,
    "maskgit": MaskGITPrior,
    "pixelcnn": _pixelcnn,
    "diffusion": UNetPrior,
}


def build_prior(kind: str, config: dict[str, Any]) -> nn.Module:
    """The prior of ``kind`` with constructor keyword arguments ``config`` (as in ``model.json``)."""
    if kind not in PRIOR_MODELS:
        raise ValueError(f"prior kind {kind!r} must be one of {sorted(PRIOR_MODELS)}")
    return PRIOR_MODELS[kind](**config)


def prior_config(prior: nn.Module) -> dict[str, Any]:
    """``config()`` of a prior (of each level for a ``ModuleDict``)."""
    if isinstance(prior, nn.ModuleDict):
        return {name: m.config() for name, m in prior.items()}
    return prior.config()


def load_prior(artefact: Path | str, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the prior of a ``train-prior`` artefact in eval mode.

    Returns:
        (model, info): ``info`` is ``model.json`` (kind, config, latents, conditions, classes, ...).
    """
    artefact = fs.location(artefact)
    require(artefact, "prior")
    try:
        info = json.loads(fs.read_text(fs.join(artefact, MODEL_JSON)))
        kind, config = info["kind"], dict(info["config"])
    except (OSError, ValueError, KeyError, TypeError):
        raise ArtefactError(f"{fs.join(artefact, MODEL_JSON)} is missing or damaged; re-run medgen train-prior.") from None
    try:
        model = build_prior(kind, config)
        model.load_state_dict(fs.load_safetensors(fs.join(artefact, MODEL_FILE), device=str(device)))
    except Exception as err:  # noqa: BLE001 - safetensors, torch and OS errors alike
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ArtefactError(f"{artefact} holds weights that do not fit its model.json ({first}); "
                            "re-run medgen train-prior.") from None
    return model.to(device).eval(), info


@dataclass
class Latents:
    """A latents artefact opened for training: its summary, store(s) and grid.

    Args:
        path: the artefact directory.
        ref: its manifest reference (role ``latents`` or ``condition``).
        summary: its manifest summary (written by encode-latents).
        store_name: the store read (``main``, or ``top`` for vqvae2).
        store: that store.
        grid_shape: the code grid of every item.
        num_embeddings: codebook size (None for KL latents).
        items_per_subject: condition items per subject (conditions only).
    """

    path: Path
    ref: InputRef
    summary: dict[str, Any]
    store_name: str
    store: Store
    grid_shape: list[int] | None
    num_embeddings: int | None
    items_per_subject: int = 1

    @property
    def is_vqvae2(self) -> bool:
        return self.summary.get("ae_kind") == "vqvae2"


def open_latents(path: str | Path, role: str, store_name: str = "main") -> Latents:
    """Require a latents artefact and open one of its stores (a `UsageError` names what is wrong)."""
    path = fs.location(path)
    ref = input_ref(path, role, "latents")
    summary = require(path, "latents").summary
    stores = summary.get("stores", {})
    if store_name not in stores:
        raise UsageError(f"{path} has no store named {store_name!r}; it holds {sorted(stores)}.")
    try:
        store = Store.open(store_path(path, store_name))
    except StepFailed:  # damaged metadata: DamagedStore names the store and the item
        raise
    except ValueError:
        raise UsageError(f"{store_path(path, store_name)} is missing or damaged; re-run medgen encode-latents.") from None
    info = stores[store_name]
    return Latents(path, ref, summary, store_name, store, info.get("grid_shape"), info.get("num_embeddings"))


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
        autoencoder: the autoencoder behind ``lat`` when already loaded (else found through the lineage).
    """
    summary = lat.summary
    if lat.is_vqvae2:
        raise UsageError(f"{lat.path} holds vqvae2 codes (a top and a bottom grid); a diffusion prior models "
                         "KL latents or the codes of a single-level VQ autoencoder (vqvae, vqgan).")
    if not summary.get("is_vq"):
        return LatentCodec(None, float(summary.get("latent_scale") or 1.0))
    if autoencoder is None:
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
