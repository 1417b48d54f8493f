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

`SAMPLERS` maps a prior kind to a function drawing a batch of codes (a new kind adds one entry).
Diffusion and flow priors run any registered sampler of their family (ddim, ddpm, dpmpp_2m; flow_euler,
flow_heun) with classifier-free guidance (``sampler.scheduler``, ``steps``,
``eta``, ``guidance_scale``; unset ones take the prior's defaults, see ``steps/_diffusion.py``).
Each batch has its own generator seeded from (seed, condition, batch), so the same seed gives the
same samples, and re-running an interrupted command resumes it with the same result.

Decoding goes through `medgen_cli.inference.AutoencoderTiler` (settings section ``tiling``): a batch
whose whole-volume decode would need more than ``tiling.max_gib`` (``mode`` auto, the default), or
every batch (``mode`` always), is decoded tile by tile with whole-volume normalisation statistics,
equal to the whole-volume decode up to float error; ``mode`` never decodes whole volumes.
"""

from __future__ import annotations

import logging
import re
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..artefacts import ArtefactWriter, InputRef, input_ref
from ..data.latents import condition_items, condition_subjects, latent_meta, read_latent, subject_conditions
from ..errors import UsageError
from ..inference import AutoencoderTiler, TilingOptions
from ..meta import ImageMeta
from ..io import fs
from ..io.store import DamagedStore, Store, store_path
from ..io.writers import write_nifti
from ..sampling import generate, maskgit_generate
from ..settings.prior import SamplerSettings, SampleSettings
from ..train.precision import select_device
from . import _diffusion, _mask_condition, _spacing_condition
from ._load import load_autoencoder
from ._priors import Latents, load_prior, open_latents, prior_lineage

log = logging.getLogger(__name__)

MAX_VOLUME_PREVIEWS = 8
MASKGIT_STEPS = 12  # decoding iterations when sampler.steps is unset

Sampler = Callable[[nn.Module, dict[str, Any], int, "list[Tensor] | None", "Tensor | None", SamplerSettings,
                    torch.Generator], dict[str, Tensor]]


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


# ---------------------------------------------------------------------------------- samplers by kind
def _prefix_condition(cond: list[Tensor] | None, labels: Tensor | None) -> dict[str, Any]:
    return {"cond_tokens": cond or None, "labels": labels}


def _sample_transformer(model, info, n, cond, labels, s: SamplerSettings, generator) -> dict[str, Tensor]:
    tokens = generate(model, model.num_tokens, batch_size=n, condition=_prefix_condition(cond, labels),
                      sampler_kwargs=s.token_kwargs(), use_cache=s.use_cache, generator=generator)
    return {"main": model.tokens_to_grid(tokens)}


def _sample_maskgit(model, info, n, cond, labels, s: SamplerSettings, generator) -> dict[str, Tensor]:
    tokens = maskgit_generate(model, num_tokens=model.num_tokens, batch_size=n, steps=s.steps or MASKGIT_STEPS,
                              noise_temperature=s.noise_temperature, condition=_prefix_condition(cond, labels),
                              sampler_kwargs=s.token_kwargs(), generator=generator)
    return {"main": model.tokens_to_grid(tokens)}


def _sample_pixelcnn(model, info, n, cond, labels, s: SamplerSettings, generator) -> dict[str, Tensor]:
    kwargs = {"labels": labels, "sampler_kwargs": s.token_kwargs(), "generator": generator}
    if isinstance(model, nn.ModuleDict):  # vqvae2: top codes first, then the bottom given them
        top = model["top"].sample((n, *info["top_grid_shape"]), **kwargs)
        return {"main": model["bottom"].sample((n, *info["grid_shape"]), condition=top, **kwargs), "top": top}
    return {"main": model.sample((n, *info["grid_shape"]), **kwargs)}


def _sample_diffusion(model, info, n, cond, labels, s: SamplerSettings, generator) -> dict[str, Tensor]:
    options = _diffusion.sampling_options(info, s, "the prior")  # checked by _strategy already
    return _diffusion.sample_latents(model, info, n, cond, labels, options, generator)


SAMPLERS: dict[str, Sampler] = {"transformer": _sample_transformer, "maskgit": _sample_maskgit,
                                "pixelcnn": _sample_pixelcnn, "diffusion": _sample_diffusion}


def _strategy(kind: str, s: SamplerSettings, prior: str, info: dict[str, Any]) -> str:
    """The strategy recorded with each sample; refuses combinations the prior cannot do."""
    if kind == "diffusion":
        return _diffusion.sampling_options(info, s, prior)["scheduler"]
    given = [k for k in ("scheduler", "eta", "guidance_scale") if k in s.diffusion_options()]
    if given:
        flag = {"scheduler": "--sampler"}.get(given[0], "--" + given[0].replace("_", "-"))
        raise UsageError(f"{flag} applies to diffusion priors, but {prior} is a {kind} prior.")
    if s.strategy == "maskgit" and kind != "maskgit":
        raise UsageError(f"--strategy maskgit needs a maskgit prior, but {prior} is a {kind} prior.")
    token = s.token_strategy()
    if kind == "maskgit":
        return "maskgit" if token == "multinomial" else f"maskgit+{token}"
    return token


def _decode(ae: AutoencoderTiler, latents: dict[str, Any], draws: dict[str, Tensor]) -> np.ndarray:
    """Sampled codes (or latents) -> (B, *spatial) images in the training data's stored values
    (decoded whole, or tile by tile when a volume would not fit ``tiling.max_gib`` or ``tiling.mode``
    is always; tiles move to the autoencoder's device one at a time, the images come back as numpy)."""
    if latents.get("is_vq") and draws["main"].dtype.is_floating_point:  # a diffusion prior's VQ latents
        x = ae.decode_latents(draws["main"].float())  # snapped to the nearest codes
    elif latents.get("is_vq"):
        x = ae.decode_indices(draws["top"], draws["main"]) if "top" in draws else ae.decode_indices(draws["main"])
    else:  # continuous latents were stored times latent_scale
        x = ae.decode_latents(draws["main"].float() / float(latents["latent_scale"]))
    if ae.last_run is not None:
        log.info("decoded tile by tile: %s, %d passes", ae.last_run.plan, ae.last_run.passes)
    return x[:, 0].astype(np.float32, copy=False)


# ------------------------------------------------------------------------------------ conditions
@dataclass
class _Job:
    """Samples drawn under one condition: ids, prefix grids (1, *grid) each, the subject and, for a
    prior joined by item, the condition item (the data item whose geometry the samples take)."""

    ids: list[str]
    cond: list[Tensor] | None = None
    subject: str | None = None
    item: str | None = None


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text) or "subject"


def _jobs(settings: SampleSettings, info: dict[str, Any], device: torch.device) -> tuple[list[_Job], list[Latents]]:
    """The samples to draw, and the condition artefacts read."""
    c, n = settings.condition, settings.num_samples
    trained = info.get("conditions") or []
    if not trained:
        if c.subject is not None or c.all_subjects or c.paths:
            raise UsageError(f"{settings.prior} is not conditioned on other latents; drop --condition/--subject/--all.")
        return [_Job([f"sample_{k:04d}" for k in range(n)])], []
    if c.subject is None and not c.all_subjects:
        raise UsageError(f"{settings.prior} is conditioned on {', '.join(t['path'] for t in trained)}; "
                         "pass --subject ID or --all.")
    paths = c.paths or [t["path"] for t in trained]
    if len(paths) != len(trained):
        raise UsageError(f"{settings.prior} was trained with {len(trained)} condition artefact(s) but "
                         f"{len(paths)} were given (--condition).")
    conds = []
    for path, t in zip(paths, trained):
        lat = open_latents(path, "condition", t["store"])
        if lat.num_embeddings != t["num_embeddings"] or list(lat.grid_shape or []) != list(t["grid_shape"]):
            raise UsageError(f"{path} holds {lat.grid_shape} grids of {lat.num_embeddings} codes, but the prior was "
                             f"conditioned on {t['grid_shape']} grids of {t['num_embeddings']} codes.")
        conds.append(lat)
    if info.get("join") == "item":
        return _item_jobs(settings, conds, device), conds
    return _subject_jobs(settings, info, conds, device), conds


def _item_jobs(settings: SampleSettings, conds: list[Latents], device: torch.device) -> list[_Job]:
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
        jobs.append(_Job([f"{_safe(item)}_s{k:02d}" for k in range(n)], grids, str(attrs.get("subject", "")), item))
    return jobs


def _subject_jobs(settings: SampleSettings, info: dict[str, Any], conds: list[Latents], device: torch.device) -> list[_Job]:
    """One job per subject with every condition item of that subject, for priors joined by subject."""
    c, n = settings.condition, settings.num_samples
    trained = info["conditions"]
    stores = [lat.store for lat in conds]
    subjects = [c.subject] if c.subject is not None else condition_subjects(stores, c.split)
    if not subjects:
        raise UsageError(f"no subject has items in every condition artefact ({', '.join(str(lat.path) for lat in conds)})"
                         + (f" in split {c.split!r}." if c.split else "."))
    jobs = []
    for subject in subjects:
        ids = subject_conditions(stores, subject)
        bad = [(lat, len(i)) for lat, i, t in zip(conds, ids, trained) if len(i) != t["items_per_subject"]]
        if bad:
            lat, count = bad[0]
            text = (f"subject {subject!r} has {count} item(s) in {lat.path}, but the prior takes "
                    f"{trained[conds.index(lat)]['items_per_subject']} per subject")
            if c.subject is not None:
                raise UsageError(text + ".")
            log.warning("%s; skipped", text)
            continue
        grids = [read_latent(store, i)[None].to(device) for store, per in zip(stores, ids) for i in per]
        jobs.append(_Job([f"{_safe(subject)}_s{k:02d}" for k in range(n)], grids, subject))
    if not jobs:
        raise UsageError("no subject has the number of condition items per subject the prior was trained with.")
    return jobs


def _mask_jobs(masks: _mask_condition.SampleMasks, n: int) -> list[_Job]:
    """One job per mask of a mask-conditioned prior, its label fractions as the condition channels."""
    return [_Job([f"{_safe(m.item)}_s{k:02d}" for k in range(n)], [m.cond], m.subject, m.item) for m in masks.jobs]


def _labels(settings: SampleSettings, info: dict[str, Any], count: int, offset: int,
            device: torch.device) -> Tensor | None:
    classes = info.get("classes") or []
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


# ------------------------------------------------------------------------------------------ output
def _reference(data: Store, shape: tuple[int, ...], subject: str | None, item: str | None = None) -> tuple[str, ImageMeta]:
    """A data item whose intensity mapping (and, for conditional samples, geometry) the samples take: the
    condition item's own (joined by item), else the subject's, else the first of the train split."""
    own = [item] if item is not None and item in data else []
    candidates = own + (data.subjects().get(subject, []) if subject is not None else []) + (data.ids("train") or data.ids())
    item_id = next((i for i in candidates if tuple(data.array(i).shape) == shape), None)
    if item_id is None:
        log.warning("no item of %s has the sampled shape %s; the samples take the geometry of %s",
                    data.path, list(shape), candidates[0])
        item_id = candidates[0]
    return item_id, data.meta(item_id)


def representative_geometry(data: Store, shape: tuple[int, ...],
                            spacing_mm: list[float] | None = None) -> tuple[np.ndarray, str]:
    """The affine of an unconditional sample, which belongs to no patient and has no real position.

    Voxel axes: the median spacing and the most frequent direction (rounded to 1e-3) of the training
    items of the sampled shape (of all training items when none has it); ``spacing_mm`` (a
    spacing-conditioned prior's, one value per sampled axis) replaces the median along those axes; origin:
    chosen so the centre of the image lies at (0, 0, 0) mm. Returns the affine and a sentence saying so,
    recorded with each sample.
    """
    train = data.ids("train") or data.ids()
    ids = [i for i in train if tuple(data.array(i).shape) == shape] or train
    metas = [data.meta(i) for i in ids]
    spacing = np.median(np.array([m.spacing for m in metas]), axis=0)
    if spacing_mm is not None:
        spacing[:len(spacing_mm)] = spacing_mm
    keys = [tuple(np.round(m.direction, 3).ravel()) for m in metas]
    common = Counter(keys).most_common(1)[0][0]  # ties: the first seen
    affine = np.eye(4)
    affine[:3, :3] = metas[keys.index(common)].direction * spacing[None, :]
    centre = np.zeros(3)
    centre[:len(shape)] = (np.asarray(shape, dtype=np.float64) - 1.0) / 2.0
    affine[:3, 3] = -affine[:3, :3] @ centre
    what = "spacing" if spacing_mm is not None else "median spacing"
    note = (f"representative geometry, not a patient position: {what} {[round(float(v), 4) for v in spacing]} mm "
            f"and the most common direction of {len(ids)} training item(s), centred on (0, 0, 0) mm")
    return affine, note


def _sample_meta(ref_id: str, ref: ImageMeta, settings: SampleSettings, strategy: str,
                 job: _Job, sample_id: str, geometry: tuple[np.ndarray, str] | None = None) -> ImageMeta:
    """A sample's metadata: the reference item's mapping; its affine, or ``geometry`` (unconditional samples)."""
    attrs = {"synthetic": True, "seed": settings.runtime.seed, "strategy": strategy, "reference_id": ref_id}
    subject = job.subject
    if subject is not None:
        attrs["condition_subject"] = subject
    if job.item is not None:
        attrs["condition_item"] = job.item
    affine = ref.affine
    if geometry is not None:
        affine = geometry[0]
        attrs.update(geometry="representative", geometry_note=geometry[1])
    return ImageMeta(affine=affine, modality=ref.modality, subject=subject if subject is not None else sample_id,
                     source=f"medgen sample {settings.prior}", intensity=ref.intensity, attrs=attrs)


def _seed(seed: int, condition: str, batch: int) -> int:
    """The generator seed of one batch: from the run's seed, the condition's name (its item or
    subject, "" when unconditional: ``--subject B`` draws what ``--all`` draws for B) and the batch."""
    return int(np.random.SeedSequence([seed, zlib.crc32(condition.encode()), batch]).generate_state(1)[0])


@dataclass
class _Plan:
    """What one ``sample`` run draws with and for: the prior, its autoencoder and data, the jobs."""

    device: torch.device
    model: nn.Module
    info: dict[str, Any]
    strategy: str
    lineage: Any
    ae: AutoencoderTiler
    data: Store
    masks: _mask_condition.SampleMasks | None
    jobs: list[_Job]
    refs: list[InputRef]
    spacing: Any

    @property
    def kind(self) -> str:
        return self.info["kind"]


def _plan(settings: SampleSettings) -> _Plan:
    """Load the prior, its autoencoder and training data and build the jobs; every refusal comes before output."""
    if settings.runtime.threads:
        torch.set_num_threads(settings.runtime.threads)
    try:
        device = select_device(settings.runtime.device)
    except ValueError as err:
        raise UsageError(str(err)) from None
    if not settings.prior:
        raise UsageError("no prior given; pass --prior DIR (a train-prior artefact) or set prior.")
    prior_ref = input_ref(settings.prior, "prior", "prior")
    model, info = load_prior(settings.prior, device)
    if info["kind"] not in SAMPLERS:
        raise UsageError(f"{settings.prior} holds a {info['kind']} prior, which this medgen cannot sample; upgrade medgen.")
    strategy = _strategy(info["kind"], settings.sampler, settings.prior, info)
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
    masks = _mask_condition.sample_masks(settings, info, device) if info.get("masks") else None
    jobs, conds = (_mask_jobs(masks, settings.num_samples), []) if masks is not None else _jobs(settings, info, device)
    _labels(settings, info, 1, 0, device)  # refuses a wrong --label before any work
    spacing = _spacing_condition.sample_spacing(settings, info, masks is not None or bool(conds))
    if info["kind"] == "diffusion" and conds:  # condition latents as the channels the prior was trained on
        codecs = _diffusion.condition_codecs(info, conds)
        for job in jobs:
            job.cond = _diffusion.prepare_conditions(info, codecs, job.cond)
    refs = [prior_ref, *[c.ref for c in conds], *([masks.ref] if masks is not None else [])]
    return _Plan(device, model, info, strategy, lineage, ae, data, masks, jobs, refs, spacing)


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
    output = _Output.create(partial, writer.stores, plan.info, plan.kind, settings)
    written = _draw(settings, plan, output, progress)
    if settings.previews:
        _previews(partial, output.samples, written)
    summary = {"prior_kind": plan.kind, "strategy": plan.strategy, "seed": settings.runtime.seed,
               "samples": len(written), "shape": list(output.samples.array(written[0]).shape),
               **_sources(settings, plan.info, plan.jobs, plan.lineage, plan.masks),
               "spacing": plan.spacing.used if plan.spacing is not None else None}
    writer.commit(summary)
    log.info("wrote %s (%d samples, %s)", out, len(written), plan.strategy)
    return SampleResult(out=out, ids=written, summary=summary)


def _draw(settings: SampleSettings, plan: _Plan, output: "_Output",
          progress: Callable[[int, int, str], None] | None) -> list[str]:
    """Every job's samples, batch by batch, skipping those a resumed run already wrote; returns their ids."""
    info, spacing, masks, device = plan.info, plan.spacing, plan.masks, plan.device
    mask_out = masks.writer(output.stores) if masks is not None else None
    shape = tuple(g * f for g, f in zip(info["grid_shape"], output.factors["main"]))
    total = sum(len(j.ids) for j in plan.jobs)
    written, offset = [], 0
    geometry = None
    if any(j.subject is None and j.item is None for j in plan.jobs):
        geometry = representative_geometry(plan.data, shape, spacing.requested if spacing is not None else None)
        log.info("unconditional samples take a %s", geometry[1])
    for job in plan.jobs:
        ref_id, ref = _reference(plan.data, shape, job.subject, job.item)
        if masks is not None:  # the geometry of the mask the samples are drawn for
            ref = masks.geometry(job.item, ref)
        unconditional = job.subject is None and job.item is None
        job_cond, spaced = (job.cond, {}) if spacing is None else spacing.for_job(job.cond, not unconditional, ref, device)
        for b, start in enumerate(range(0, len(job.ids), settings.batch_size)):
            ids = job.ids[start:start + settings.batch_size]
            labels = _labels(settings, info, len(ids), offset + start, device)
            if not all(output.done(i) for i in ids):  # O(1) each: resume costs what is left
                key = job.item or job.subject or ""
                generator = torch.Generator(device=device).manual_seed(_seed(settings.runtime.seed, key, b))
                cond = [g.expand(len(ids), *g.shape[1:]) for g in job_cond] if job_cond else None
                with torch.no_grad():
                    draws = SAMPLERS[plan.kind](plan.model, info, len(ids), cond, labels, settings.sampler, generator)
                images = _images(plan, draws, ids, ref)
                own = geometry if unconditional else None
                metas = [_sample_meta(ref_id, ref, settings, plan.strategy, job, i, own).replace(attrs=spaced)
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
        images = _decode(plan.ae, plan.info["latents"], draws)
    except ValueError as err:  # e.g. a tiling.max_gib too small for any tile
        raise UsageError(f"samples {ids[0]}.. cannot be decoded with {plan.lineage.autoencoder}: {err}") from None
    if ref.intensity.clip:
        images = np.clip(images, *sorted((ref.intensity.out_low, ref.intensity.out_high)))
    return images


def _sources(settings: SampleSettings, info: dict[str, Any], jobs: list[_Job], lineage,
             masks: _mask_condition.SampleMasks | None) -> dict[str, Any]:
    """What the samples were drawn from and how: the summary's conditions, lineage and sampler."""
    return {
        "conditional": bool(info.get("conditions") or masks or info.get("spacing")),
        "subjects": list(dict.fromkeys(j.subject for j in jobs if j.subject is not None)),
        "join": info.get("join") or ("subject" if info.get("conditions") else None),
        "condition_items": [j.item for j in jobs if j.item is not None], "autoencoder": str(lineage.autoencoder),
        "masks": str(masks.ref.path) if masks is not None else None,
        "data": str(lineage.data), "data_store": lineage.data_store,
        "sampler": (_diffusion.sampling_options(info, settings.sampler, settings.prior) if info["kind"] == "diffusion"
                    else settings.sampler.model_dump(mode="json")),
    }


@dataclass
class _Output:
    """The stores and files of the samples artefact being written."""

    partial: Path
    stores: Path | str
    samples: Store
    codes: dict[str, Store]
    factors: dict[str, list[int]]
    code_dtype: str
    nifti: bool
    description: str

    @classmethod
    def create(cls, partial: Path, stores: Path | str, info: dict[str, Any], kind: str,
               settings: SampleSettings) -> "_Output":
        """``stores``: where the stores go (``partial``, or the output's partial prefix on an object store)."""
        codes = {"main": Store.create(store_path(stores, "codes"), name="codes")}
        if "top" in info.get("levels", []):
            codes["top"] = Store.create(store_path(stores, "codes_top"), name="codes_top")
        return cls(partial, stores, Store.create(store_path(stores, "samples"), name="samples", synthetic=True), codes,
                   {name: s["factor"] for name, s in info["latents"]["stores"].items()},
                   "int16" if info["latents"].get("is_vq") and kind != "diffusion" else "float32", settings.nifti,
                   f"SYNTHETIC (medgen) {kind} prior sample, seed {settings.runtime.seed}")

    def done(self, item_id: str) -> bool:
        """Whether a resumed run can skip ``item_id``: complete in the store and, when asked for, its NIfTI staged
        (on an object store the NIfTI files are staged on this machine and the stores are remote)."""
        return self.samples.is_complete(item_id) and (
            not self.nifti or (self.partial / "nifti" / f"{item_id}.nii.gz").is_file())

    def write(self, ids: list[str], images: np.ndarray, draws: dict[str, Tensor], metas: list[ImageMeta]) -> None:
        """One batch; the NIfTI and the codes first, so a sample marked complete has all its files."""
        for k, (item_id, meta) in enumerate(zip(ids, metas)):
            if self.nifti:
                (self.partial / "nifti").mkdir(exist_ok=True)
                write_nifti(self.partial / "nifti" / f"{item_id}.nii.gz", images[k], meta, physical=True,
                            description=self.description)
            for name, store in self.codes.items():
                store.write(item_id, draws[name][k].cpu().numpy(), latent_meta(meta, self.factors[name]),
                            dtype=self.code_dtype)
            self.samples.write(item_id, images[k], meta, dtype="float32")


def _previews(partial: Path, samples: Store, ids: list[str]) -> None:
    """previews/samples.png (a grid of 2D samples, or orthogonal views of a few volumes) and per-volume views."""
    from ..viz import orthogonal_views
    from ..viz.previews import store_preview

    folder = partial / "previews"
    folder.mkdir(exist_ok=True)
    store_preview(folder / "samples.png", samples, max_items=16)
    first = samples.read(ids[0])
    if first.ndim == 3:
        for item_id in ids[:MAX_VOLUME_PREVIEWS]:
            meta = samples.meta(item_id)
            lo, hi = sorted((meta.intensity.out_low, meta.intensity.out_high)) if meta.intensity.clip else (None, None)
            orthogonal_views(folder / f"{item_id}.png", samples.read(item_id), meta, vmin=lo, vmax=hi,
                             title=f"SYNTHETIC {item_id}")
