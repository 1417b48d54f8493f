"""The samples ``medgen sample`` draws and what for: one `Job` per condition (none, a subject, a
condition item or a mask), and the class labels of each batch."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import torch
from torch import Tensor

from ..data.latents import condition_items, condition_subjects, read_latent, subject_conditions
from ..errors import UsageError
from ..loaders.latents import Latents, open_latents
from ..loaders.prior import PriorRecord
from ..settings.sample import SampleSettings
from . import _mask_condition

log = logging.getLogger(__name__)


@dataclass
class Job:
    """Samples drawn under one condition: ids, prefix grids (1, *grid) each, the subject and, for a
    prior joined by item, the condition item (the data item whose geometry the samples take)."""

    ids: list[str]
    cond: list[Tensor] | None = None
    subject: str | None = None
    item: str | None = None


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text) or "subject"


def jobs_for(settings: SampleSettings, record: PriorRecord, device: torch.device) -> tuple[list[Job], list[Latents]]:
    """The samples to draw, and the condition artefacts read."""
    c, n = settings.condition, settings.num_samples
    trained = record.conditions
    if not trained:
        if c.subject is not None or c.all_subjects or c.paths:
            raise UsageError(f"{settings.prior} is not conditioned on other latents; drop --condition/--subject/--all.")
        return [Job([f"sample_{k:04d}" for k in range(n)])], []
    if c.subject is None and not c.all_subjects:
        raise UsageError(f"{settings.prior} is conditioned on {', '.join(t.path for t in trained)}; "
                         "pass --subject ID or --all.")
    paths = c.paths or [t.path for t in trained]
    if len(paths) != len(trained):
        raise UsageError(f"{settings.prior} was trained with {len(trained)} condition artefact(s) but "
                         f"{len(paths)} were given (--condition).")
    conds = []
    for path, t in zip(paths, trained):
        lat = open_latents(path, "condition", t.store)
        if lat.num_embeddings != t.num_embeddings or list(lat.grid_shape or []) != list(t.grid_shape or []):
            raise UsageError(f"{path} holds {lat.grid_shape} grids of {lat.num_embeddings} codes, but the prior was "
                             f"conditioned on {t.grid_shape} grids of {t.num_embeddings} codes.")
        conds.append(lat)
    if record.join == "item":
        return _item_jobs(settings, conds, device), conds
    return _subject_jobs(settings, record, conds, device), conds


def _item_jobs(settings: SampleSettings, conds: list[Latents], device: torch.device) -> list[Job]:
    """One job per condition item (of ``condition.split``, or of ``condition.subject``), for priors joined by item."""
    c, n = settings.condition, settings.num_samples
    stores = [lat.store for lat in conds]
    items = condition_items(stores, None if c.subject is not None else c.split, c.subject)
    if not items:
        where = f"of subject {c.subject!r}" if c.subject is not None else (f"of split {c.split!r}" if c.split else "")
        raise UsageError(f"no condition item {where} is in every condition artefact "
                         f"({', '.join(str(lat.path) for lat in conds)}); check --subject, condition.split and --condition.")
    jobs = []
    for item in items:
        grids = [read_latent(store, item)[None].to(device) for store in stores]
        attrs = stores[0].item_attrs(item)  # latents keep the data item's id and subject
        jobs.append(Job([f"{safe_name(item)}_s{k:02d}" for k in range(n)], grids, str(attrs.get("subject", "")), item))
    return jobs


def _subject_jobs(settings: SampleSettings, record: PriorRecord, conds: list[Latents],
                  device: torch.device) -> list[Job]:
    """One job per subject with every condition item of that subject, for priors joined by subject."""
    c, n = settings.condition, settings.num_samples
    trained = record.conditions
    stores = [lat.store for lat in conds]
    subjects = [c.subject] if c.subject is not None else condition_subjects(stores, c.split)
    if not subjects:
        raise UsageError(f"no subject has items in every condition artefact ({', '.join(str(lat.path) for lat in conds)})"
                         + (f" in split {c.split!r}." if c.split else "."))
    jobs = []
    for subject in subjects:
        ids = subject_conditions(stores, subject)
        bad = [(lat, len(i)) for lat, i, t in zip(conds, ids, trained) if len(i) != t.items_per_subject]
        if bad:
            lat, count = bad[0]
            text = (f"subject {subject!r} has {count} item(s) in {lat.path}, but the prior takes "
                    f"{trained[conds.index(lat)].items_per_subject} per subject")
            if c.subject is not None:
                raise UsageError(text + ".")
            log.warning("%s; skipped", text)
            continue
        grids = [read_latent(store, i)[None].to(device) for store, per in zip(stores, ids) for i in per]
        jobs.append(Job([f"{safe_name(subject)}_s{k:02d}" for k in range(n)], grids, subject))
    if not jobs:
        raise UsageError("no subject has the number of condition items per subject the prior was trained with.")
    return jobs


def mask_jobs(masks: _mask_condition.SampleMasks, n: int) -> list[Job]:
    """One job per mask of a mask-conditioned prior, its label fractions as the condition channels."""
    return [Job([f"{safe_name(m.item)}_s{k:02d}" for k in range(n)], [m.cond], m.subject, m.item) for m in masks.jobs]


def labels_for(settings: SampleSettings, record: PriorRecord, count: int, offset: int,
               device: torch.device) -> Tensor | None:
    """The class labels of ``count`` samples from ``offset`` on (None for a prior without labels)."""
    classes = record.classes
    label = settings.condition.label
    if not classes:
        if label is not None:
            raise UsageError(f"{settings.prior} takes no class labels; drop --label {label}.")
        return None
    if label is not None:
        if label not in classes:
            raise UsageError(f"--label {label!r} is not a class of {settings.prior}; choose one of {classes}.")
        return torch.full((count,), classes.index(label), dtype=torch.long, device=device)
    return torch.arange(offset, offset + count, device=device) % len(classes)  # cycle through the classes
