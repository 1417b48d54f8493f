"""What ``medgen sample`` writes: decoded images (`decode`), each sample's metadata and geometry
(`reference`, `representative_geometry`, `sample_meta`), the stores and files (`Output`) and the previews."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from ..data.latents import latent_meta
from ..inference import AutoencoderTiler
from ..io.store import Store, store_path
from ..io.writers import write_nifti
from ..loaders.prior import PriorRecord
from ..meta import ImageMeta
from ..settings.sample import SampleSettings
from ._sample_jobs import Job

log = logging.getLogger(__name__)

MAX_VOLUME_PREVIEWS = 8


def reference(data: Store, shape: tuple[int, ...], subject: str | None, item: str | None = None) -> tuple[str, ImageMeta]:
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


def sample_meta(ref_id: str, ref: ImageMeta, settings: SampleSettings, strategy: str,
                 job: Job, sample_id: str, geometry: tuple[np.ndarray, str] | None = None) -> ImageMeta:
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


def decode(ae: AutoencoderTiler, latents: dict[str, Any], draws: dict[str, Tensor]) -> np.ndarray:
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


@dataclass
class Output:
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
    def create(cls, partial: Path, stores: Path | str, record: PriorRecord, token: bool,
               settings: SampleSettings) -> "Output":
        """``stores``: where the stores go (``partial``, or the output's partial prefix on an object store);
        ``token``: the prior draws VQ codes (stored as int16), else continuous latents (float32)."""
        codes = {"main": Store.create(store_path(stores, "codes"), name="codes")}
        if "top" in record.levels:
            codes["top"] = Store.create(store_path(stores, "codes_top"), name="codes_top")
        return cls(partial, stores, Store.create(store_path(stores, "samples"), name="samples", synthetic=True), codes,
                   {name: s["factor"] for name, s in record.latents["stores"].items()},
                   "int16" if record.latents.get("is_vq") and token else "float32", settings.nifti,
                   f"SYNTHETIC (medgen) {record.kind} prior sample, seed {settings.runtime.seed}")

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


def previews(partial: Path, samples: Store, ids: list[str]) -> None:
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
