"""Label maps as the condition of a diffusion or flow prior (``condition.masks``), in ``train-prior`` and ``sample``.

Orchestration only; the channels are built by `medgen_cli.data.masks.MaskChannels`: each label value
seen in the training (and validation) masks is one channel holding, per latent voxel, the fraction
of its image voxels with that label (one-hot, averaged over the autoencoder's downsampling factor).
They are appended to the UNet's condition channels, so classifier-free guidance drops them with
``diffusion.p_uncond`` like condition latents.

- Training (`training_masks`): ``condition.masks: true`` reads the mask store paired with the data
  store the latents were encoded from (``masks`` for ``main``); a path names another preprocessed
  artefact whose mask store holds the same item ids. Every training and validation item must have
  a mask of its image's shape (the latent grid times the factor).
- ``model.json`` gains ``masks``: the label values (one channel each, in order), the factor, the
  mask store and artefact of training. A prior without it is not mask-conditioned.
- Sampling (`sample_masks`): ``--condition PREP`` (a preprocessed artefact with masks) gives one job
  per mask item (of ``condition.split`` or ``condition.subject`` when given); a mask whose shape is
  not the prior's latent grid times the factor, or that holds a label value unseen in training, is
  refused with one sentence (exit 2) before anything is drawn. The samples artefact stores each
  mask, under its sample's id, in the store ``masks`` beside ``samples`` (`MaskWriter`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..artefacts import InputRef, input_ref
from ..data.masks import MaskChannels, label_values
from ..errors import UsageError
from ..io import fs
from ..safety import normal_path
from ..io.masks import MASK_STORE, mask_store_name
from ..meta import ImageMeta
from ..io.store import DamagedStore, Store, store_path
from ..settings.prior import TrainPriorSettings
from ..settings.sample import SampleSettings
from ._preprocess_masks import LABEL_MAPPING, with_counts
from ..loaders.latents import Latents, latents_lineage
from ..loaders.prior import PriorRecord


@dataclass
class TrainingMasks:
    """The mask channels of a mask-conditioned training run.

    Args:
        channels: mask item id -> (L, *grid) label fractions.
        artefact: the preprocessed artefact holding the masks.
        store_name: its mask store.
        ref: the artefact's input reference when it is not the latents' own data (else None).
    """

    channels: MaskChannels
    artefact: Path | str
    store_name: str
    ref: InputRef | None = None

    def info(self) -> dict[str, Any]:
        """The ``masks`` entry of ``model.json``."""
        return {"labels": self.channels.values, "channels": self.channels.channels, "factor": self.channels.factor,
                "store": self.store_name, "path": normal_path(self.artefact)}


def _open_masks(artefact: Path, name: str, what: str) -> Store:
    try:
        return Store.open(store_path(artefact, name))
    except DamagedStore:
        raise
    except ValueError:
        raise UsageError(f"{artefact} has no mask store {name!r} ({what}); preprocess with --masks "
                         "(masks.source) to store a label map per item.") from None


def source_id(lat_store: Store, item_id: str) -> str:
    """The data item a latent item was encoded from (its ``source_id``; the same id in older artefacts)."""
    return str(lat_store.item_attrs(item_id).get("source_id", item_id))


def training_masks(settings: TrainPriorSettings, lat: Latents) -> TrainingMasks | None:
    """The masks of the training items, checked (None when ``condition.masks`` is off)."""
    source = settings.condition.masks
    if source is False:
        return None
    lineage = latents_lineage(lat.path)
    name = mask_store_name(lineage.data_store)
    if name is None:
        raise UsageError(f"{lat.path} encodes the {lineage.data_store} store (projections), which has no masks; "
                         "condition.masks needs latents of a store with label maps (main).")
    artefact = lineage.data if source is True else fs.location(source)
    ref = None if source is True else input_ref(artefact, "masks", "preprocessed")
    store = _open_masks(artefact, name, "condition.masks")
    d = settings.data
    ids = lat.store.ids(d.train_split) + (lat.store.ids(d.val_split) if d.val_split else [])
    sources = list(dict.fromkeys(source_id(lat.store, i) for i in ids))
    missing = [i for i in sources if not store.is_complete(i)]
    if missing:
        raise UsageError(f"{store.path} has no mask for {len(missing)} training item(s) of {lat.path}, e.g. "
                         f"{missing[0]!r}; condition.masks needs a mask for every item.")
    factor = [int(f) for f in lat.summary.stores[lat.store_name].factor]
    want = [g * f for g, f in zip(lat.grid_shape, factor)]
    bad = next((i for i in sources if list(store.array(i).shape) != want), None)
    if bad is not None:
        raise UsageError(f"the mask {bad!r} of {store.path} is {list(store.array(bad).shape)}, but the latent grid "
                         f"{lat.grid_shape} times the autoencoder's factor {factor} is {want}.")
    return TrainingMasks(MaskChannels(store, label_values(store, sources), factor), artefact, name, ref)


# ------------------------------------------------------------------------------------ sampling
@dataclass
class MaskJob:
    """One mask to draw samples for: its item id, subject and (1, L, *grid) channels."""

    item: str
    subject: str
    cond: Tensor


@dataclass
class SampleMasks:
    """The masks given to ``medgen sample`` for a mask-conditioned prior.

    Args:
        store: the mask store read.
        ref: its artefact's input reference (role ``masks``).
        jobs: one per mask item.
    """

    store: Store
    ref: InputRef
    jobs: list[MaskJob]

    def geometry(self, item: str, ref: ImageMeta) -> ImageMeta:
        """A sample's reference metadata with the geometry of the mask it was drawn for."""
        return ref.with_affine(self.store.meta(item).affine)

    def writer(self, stores: Path | str) -> "MaskWriter":
        """A writer of the sample masks into the store ``masks`` under ``stores`` (a directory or a URL prefix)."""
        return MaskWriter(self.store, Store.create(store_path(stores, MASK_STORE), name=MASK_STORE))


def sample_masks(settings: SampleSettings, record: PriorRecord, device: torch.device) -> SampleMasks:
    """The mask jobs of ``--condition PREP``; refuses a missing artefact, a wrong grid or an unseen label."""
    c, trained = settings.condition, record.masks
    if len(c.paths) != 1:
        raise UsageError(f"{settings.prior} is conditioned on label maps; pass --condition PREP, one preprocessed "
                         "artefact with a masks store (e.g. preprocess --masks), to draw images for its masks.")
    artefact = fs.location(c.paths[0])
    ref = input_ref(artefact, "masks", "preprocessed")
    store = _open_masks(artefact, trained.get("store", MASK_STORE), "--condition")
    ids = store.subjects().get(c.subject, []) if c.subject is not None else store.ids(c.split)
    if not ids:
        where = f"of subject {c.subject!r}" if c.subject is not None else f"in split {c.split!r}" if c.split else ""
        raise UsageError(f"{store.path} has no mask {where}; check --subject, condition.split and --condition.")
    channels = MaskChannels(store, trained["labels"], trained["factor"])
    want = [g * f for g, f in zip(record.grid_shape, trained["factor"])]
    jobs = []
    for item in ids:
        shape = list(store.array(item).shape)
        if shape != want:
            raise UsageError(f"the mask {item!r} of {store.path} is {shape}, but {settings.prior} draws {want} images "
                             f"(latent grid {record.grid_shape} times {trained['factor']}); preprocess the masks "
                             "with the training data's --shape/--fit.")
        unseen = sorted(set(label_values(store, [item])) - set(trained["labels"]))
        if unseen:
            raise UsageError(f"the mask {item!r} of {store.path} holds label value(s) {unseen} that {settings.prior} "
                             f"never saw in training (its labels: {trained['labels']}); relabel or drop them.")
        subject = str(store.item_attrs(item).get("subject", ""))
        try:
            jobs.append(MaskJob(item, subject, channels(item)[None].to(device)))
        except ValueError as err:  # labels the item's attributes did not list
            raise UsageError(f"the mask {item!r} of {store.path} cannot condition {settings.prior}: {err}.") from None
    return SampleMasks(store, ref, jobs)


@dataclass
class MaskWriter:
    """Writes the mask each sample was drawn for, under the sample's id, into the samples artefact."""

    source: Store
    out: Store

    def write(self, item: str, ids: list[str], metas: list[ImageMeta]) -> None:
        labels = self.source.read(item, dtype=None).astype(np.int16, copy=False)
        for sample_id, meta in zip(ids, metas):
            mask_meta = meta.replace(intensity=LABEL_MAPPING, attrs={"mask_item": item, "mask_source": self.source.path})
            self.out.write(sample_id, labels, with_counts(labels, mask_meta), dtype="int16")
