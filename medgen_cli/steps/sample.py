"""``medgen sample``: draw codes (or diffusion latents) from a trained prior, decode them and write a ``samples`` artefact.

Orchestration only. The autoencoder is found through the lineage (prior -> latents -> autoencoder)
and the training data through the latents' ``data`` input. Writes::

    samples/  manifest.json  settings.yaml
              samples.zarr     decoded images in the training data's stored value range; items
                               sample_0000... (conditional: <subject>_s00... for a prior joined by
                               subject, <condition item>_s00... for one joined by item), with the
                               intensity mapping of a training item; conditional samples take its
                               geometry (the condition item's own when joined by item), unconditional
                               ones a representative geometry (`representative_geometry`: the training
                               items' spacing and direction, centred on (0, 0, 0) mm; attrs geometry,
                               geometry_note); attrs synthetic, seed, strategy, condition_subject
                               (and condition_item when joined by item); spacing-conditioned priors:
                               condition_spacing, the spacing drawn for, which the geometry carries
                               (see ``steps/_spacing_condition.py``)
              codes.zarr       the sampled code grids (int16; codes_top.zarr: vqvae2 top grids); diffusion
                               priors: float32 latents (KL: times latent_scale, as encode-latents stores
                               them; VQ: the continuous latents before they are snapped to the codebook)
              nifti/<id>.nii.gz  physical units (HU for CT), marked SYNTHETIC in the header
              previews/        samples.png (a grid for 2D, orthogonal views for 3D), <id>.png per volume
              masks.zarr       mask-conditioned priors: the label map each sample was drawn for, under the
                               sample's id (``--condition PREP``; see ``steps/_mask_condition.py``)

The prior registry (``medgen_cli.priors``) draws a batch for the prior's kind (``sample``) and names
the strategy recorded with each sample. Diffusion and flow priors run any registered sampler of their family (ddim, ddpm, dpmpp_2m; flow_euler,
flow_heun) with classifier-free guidance (``sampler.scheduler``, ``steps``,
``eta``, ``guidance_scale``; unset ones take the prior's defaults, see ``steps/_diffusion.py``).
Each batch has its own generator seeded from (seed, condition, batch), so the same seed gives the
same samples, and re-running an interrupted command resumes it with the same result.

Decoding goes through `medgen_cli.inference.AutoencoderTiler` (settings section ``tiling``): a batch
whose whole-volume decode would need more than ``tiling.max_gib`` (``mode`` auto, the default), or
every batch (``mode`` always), is decoded tile by tile with whole-volume normalisation statistics,
equal to the whole-volume decode up to float error; ``mode`` never decodes whole volumes.

Planning and drawing live here; the jobs (conditions, labels) in ``steps/_sample_jobs.py``, the
outputs (decoding, geometry, stores, previews) in ``steps/_sample_output.py``.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..artefacts import ArtefactWriter, InputRef, input_ref
from ..errors import UsageError
from ..inference import AutoencoderTiler, TilingOptions
from ..io import fs
from ..io.store import DamagedStore, Store, store_path
from ..loaders.latents import prior_lineage
from ..loaders.prior import PriorRecord, load_prior_record
from ..meta import ImageMeta
from ..priors import PriorKind, prior_kind
from ..runtime import inference_device
from ..settings.sample import SampleSettings
from . import _diffusion, _mask_condition, _spacing_condition
from ..loaders.autoencoder import load_autoencoder
from ._sample_jobs import Job, jobs_for, labels_for, mask_jobs
from ._sample_output import Output, decode, previews, reference, representative_geometry, sample_meta

log = logging.getLogger(__name__)

__all__ = ["SampleResult", "representative_geometry", "run"]


@dataclass
class SampleResult:
    """What ``run`` returns.

    Args:
        out: the artefact directory.
        ids: sample item ids, in order.
        summary: the manifest summary.
    """

    out: Path
    ids: list[str] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


def _seed(seed: int, condition: str, batch: int) -> int:
    """The generator seed of one batch: from the run's seed, the condition's name (its item or
    subject, "" when unconditional: ``--subject B`` draws what ``--all`` draws for B) and the batch."""
    return int(np.random.SeedSequence([seed, zlib.crc32(condition.encode()), batch]).generate_state(1)[0])


@dataclass
class _Plan:
    """What one ``sample`` run draws with and for: the prior, its autoencoder and data, the jobs."""

    device: torch.device
    model: nn.Module
    record: PriorRecord
    kind: PriorKind
    strategy: str
    lineage: Any
    ae: AutoencoderTiler
    data: Store
    masks: _mask_condition.SampleMasks | None
    jobs: list[Job]
    refs: list[InputRef]
    spacing: Any


def _plan(settings: SampleSettings) -> _Plan:
    """Load the prior, its autoencoder and training data and build the jobs; every refusal comes before output."""
    device = inference_device(settings.runtime.device, settings.runtime.threads)
    if not settings.prior:
        raise UsageError("no prior given; pass --prior DIR (a train-prior artefact) or set prior.")
    prior_ref = input_ref(settings.prior, "prior", "prior")
    model, record, _ = load_prior_record(settings.prior, device)
    kind = prior_kind(record.kind)  # load_prior_record refused a kind this medgen does not know
    strategy = kind.strategy(record, settings.sampler, settings.prior)
    lineage = prior_lineage(settings.prior)
    model_ae, _ = load_autoencoder(lineage.autoencoder, device)
    try:
        ae = AutoencoderTiler(model_ae, TilingOptions(**settings.tiling.options()), device)
    except ValueError as err:
        raise UsageError(str(err)) from None
    try:
        data = Store.open(store_path(lineage.data, lineage.data_store))
    except DamagedStore:
        raise
    except ValueError:
        raise UsageError(f"the training data {store_path(lineage.data, lineage.data_store)} of {settings.prior} "
                         "is missing; the samples need its geometry and intensity mapping.") from None
    masks = _mask_condition.sample_masks(settings, record, device) if record.masks else None
    jobs, conds = (mask_jobs(masks, settings.num_samples), []) if masks is not None else jobs_for(settings, record, device)
    labels_for(settings, record, 1, 0, device)  # refuses a wrong --label before any work
    spacing = _spacing_condition.sample_spacing(settings, record, masks is not None or bool(conds))
    if not kind.token and conds:  # condition latents as the channels the prior was trained on
        codecs = _diffusion.condition_codecs(record, conds)
        for job in jobs:
            job.cond = _diffusion.prepare_conditions(record, codecs, job.cond)
    refs = [prior_ref, *[c.ref for c in conds], *([masks.ref] if masks is not None else [])]
    return _Plan(device, model, record, kind, strategy, lineage, ae, data, masks, jobs, refs, spacing)


def run(settings: SampleSettings, out: Path | str, *, overwrite: bool = False,
        progress: Callable[[int, int, str], None] | None = None) -> SampleResult:
    """Draw ``settings.num_samples`` samples (per subject, or per condition item) from ``settings.prior`` into ``out``.

    Args:
        settings: resolved settings.
        out: output directory.
        overwrite: replace an existing ``out``.
        progress: ``progress(done, total, text)`` after every batch.
    """
    plan = _plan(settings)
    out = fs.location(out)  # a directory or a URL (s3://...)
    writer = ArtefactWriter(out, "samples", settings.model_dump(mode="json"), plan.refs, overwrite=overwrite,
                            resume=True)
    partial = writer.open()
    output = Output.create(partial, writer.stores, plan.record, plan.kind.token, settings)
    written = _draw(settings, plan, output, progress)
    if settings.previews:
        previews(partial, output.samples, written)
    summary = {"prior_kind": plan.record.kind, "strategy": plan.strategy, "seed": settings.runtime.seed,
               "samples": len(written), "shape": list(output.samples.array(written[0]).shape),
               **_sources(settings, plan),
               "spacing": plan.spacing.used if plan.spacing is not None else None}
    writer.commit(summary)
    log.info("wrote %s (%d samples, %s)", out, len(written), plan.strategy)
    return SampleResult(out=out, ids=written, summary=summary)


def _draw(settings: SampleSettings, plan: _Plan, output: Output,
          progress: Callable[[int, int, str], None] | None) -> list[str]:
    """Every job's samples, batch by batch, skipping those a resumed run already wrote; returns their ids."""
    record, spacing, masks, device = plan.record, plan.spacing, plan.masks, plan.device
    mask_out = masks.writer(output.stores) if masks is not None else None
    shape = tuple(g * f for g, f in zip(record.grid_shape, output.factors["main"]))
    total = sum(len(j.ids) for j in plan.jobs)
    written, offset = [], 0
    geometry = None
    if any(j.subject is None and j.item is None for j in plan.jobs):
        geometry = representative_geometry(plan.data, shape, spacing.requested if spacing is not None else None)
        log.info("unconditional samples take a %s", geometry[1])
    for job in plan.jobs:
        ref_id, ref = reference(plan.data, shape, job.subject, job.item)
        if masks is not None:  # the geometry of the mask the samples are drawn for
            ref = masks.geometry(job.item, ref)
        unconditional = job.subject is None and job.item is None
        job_cond, spaced = (job.cond, {}) if spacing is None else spacing.for_job(job.cond, not unconditional, ref, device)
        for b, start in enumerate(range(0, len(job.ids), settings.batch_size)):
            ids = job.ids[start:start + settings.batch_size]
            labels = labels_for(settings, record, len(ids), offset + start, device)
            if not all(output.done(i) for i in ids):  # O(1) each: resume costs what is left
                key = job.item or job.subject or ""
                generator = torch.Generator(device=device).manual_seed(_seed(settings.runtime.seed, key, b))
                cond = [g.expand(len(ids), *g.shape[1:]) for g in job_cond] if job_cond else None
                with torch.no_grad():
                    draws = plan.kind.sample(plan.model, record, len(ids), cond, labels, settings.sampler, generator)
                images = _images(plan, draws, ids, ref)
                own = geometry if unconditional else None
                metas = [sample_meta(ref_id, ref, settings, plan.strategy, job, i, own).replace(attrs=spaced)
                         for i in ids]
                if mask_out is not None:  # before the sample, which marks the pair complete
                    mask_out.write(job.item, ids, metas)
                output.write(ids, images, draws, metas)
            written.extend(ids)
            if progress is not None:
                progress(len(written), total, ids[-1])
        offset += len(job.ids)
    return written


def _images(plan: _Plan, draws: dict[str, Tensor], ids: list[str], ref: ImageMeta) -> np.ndarray:
    """Decoded draws in stored units, clipped to the stored range when the training data were."""
    try:
        images = decode(plan.ae, plan.record.latents, draws)
    except ValueError as err:  # e.g. a tiling.max_gib too small for any tile
        raise UsageError(f"samples {ids[0]}.. cannot be decoded with {plan.lineage.autoencoder}: {err}") from None
    if ref.intensity.clip:
        images = np.clip(images, *sorted((ref.intensity.out_low, ref.intensity.out_high)))
    return images


def _sources(settings: SampleSettings, plan: _Plan) -> dict[str, Any]:
    """What the samples were drawn from and how: the summary's conditions, lineage and sampler."""
    record, jobs, lineage, masks = plan.record, plan.jobs, plan.lineage, plan.masks
    return {
        "conditional": bool(record.conditions or masks or record.spacing),
        "subjects": list(dict.fromkeys(j.subject for j in jobs if j.subject is not None)),
        "join": record.join or ("subject" if record.conditions else None),
        "condition_items": [j.item for j in jobs if j.item is not None], "autoencoder": str(lineage.autoencoder),
        "masks": str(masks.ref.path) if masks is not None else None,
        "data": str(lineage.data), "data_store": lineage.data_store,
        "sampler": plan.kind.sampler_summary(record, settings.sampler, settings.prior),
    }
