"""Latent diffusion and flow priors in ``train-prior`` and ``sample`` (``prior.kind = diffusion``).

Orchestration only (the data side of the kind); the pieces live elsewhere: the kind's registry entry
(``priors/diffusion.py``: the `UNetPrior` and its loss from the settings, the training scheduler, the
sampling options and `sample_latents`), the samplers, their registry and the sampling loop
(``sampling/``), the loss and the two-tier validation (``train/diffusion_task.py``), the continuous view
of stored latents (``data/latents.py``, ``loaders/latents.py``).

- Training data: KL latents as stored (already times ``latent_scale``); VQ codes as their codebook
  vectors scaled to unit std (the scale is computed from the training codes and written to
  ``model.json``). Condition latents are joined by subject, converted the same way, resized to the
  target grid by (bi/tri)linear interpolation when their grid differs (a ``downsample:2`` store
  encoded with the same autoencoder) and concatenated as channels.
- ``diffusion.objective`` picks the training scheduler: ``DDIMScheduler`` (a DDPM noise schedule) or
  ``FlowEulerScheduler`` (rectified flow, with ``grid_numel`` = the latent grid's elements for the
  resolution-aware shift). Its ``config()`` serves every sampler of its family.
- ``model.json`` gains ``latent`` (channels, is_vq, scale), ``diffusion`` (``objective``, the
  scheduler config, p_uncond, min_snr_gamma) and ``sampling`` (the defaults of ``medgen sample``);
  each condition records its channels, scale and kind; a mask-conditioned prior records ``masks`` (its
  label values, one channel each, see ``steps/_mask_condition.py``), a spacing-conditioned one ``spacing``
  (the log-spacing normalisation and range, see ``steps/_spacing_condition.py``). A prior written before flow priors existed
  has no ``objective``: it is a diffusion prior and samples exactly as before.
- Sampling (``priors/diffusion.py``): `sample_latents` builds the sampler with ``make_sampler(name,
  **config)`` (ddim, ddpm, dpmpp_2m for diffusion priors; flow_euler, flow_heun for flow priors; a
  sampler of the other family is refused), runs it with classifier-free guidance and returns latents in
  the autoencoder's units for VQ (``decode_latents`` snaps them to the codebook) and in stored units for
  KL (divided by ``latent_scale`` when decoded), as ``sample`` expects. Here: the condition latents'
  codecs and channels of a conditional prior (`condition_codecs`, `prepare_conditions`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import default_collate

from ..data.latents import ContinuousLatentsDataset, LatentCodec, condition_channels
from ..errors import UsageError
from ..io.store import Store, store_path
from ..metrics.image import resolve_data_range
from ..loaders.latents import Latents, latent_codec, latents_lineage
from ..loaders.prior import PriorRecord
from ..priors.diffusion import training_scheduler
from ..settings.prior import TrainPriorSettings
from ..train.diffusion_task import SampleCheck
from ..loaders.autoencoder import load_autoencoder
from ..sampling.catalogue import few_step_sampler
from ._mask_condition import TrainingMasks, training_masks
from ._spacing_condition import TrainingSpacing, training_spacing

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------ training
@dataclass
class DiffusionData:
    """What a diffusion run needs besides the token priors' data.

    Args:
        codec: the target latents' codec.
        condition_codecs: one per condition artefact.
        autoencoder: the autoencoder behind the target latents (loaded for VQ codebooks), or None.
        masks: the label maps of a mask-conditioned prior (``condition.masks``), or None.
        spacing: the spacings of a spacing-conditioned prior (``condition.spacing``), or None.
    """

    codec: LatentCodec
    condition_codecs: list[LatentCodec]
    autoencoder: nn.Module | None = None
    masks: TrainingMasks | None = None
    spacing: TrainingSpacing | None = None

    def wrap(self, dataset) -> ContinuousLatentsDataset:
        masks = self.masks.channels if self.masks is not None else None
        return ContinuousLatentsDataset(dataset, self.codec, self.condition_codecs, masks, self.spacing)

    @property
    def extra_channels(self) -> int:
        """Condition channels after those of the condition latents: label maps, then spacing."""
        masks = self.masks.channels.channels if self.masks is not None else 0
        return masks + (self.spacing.channels.channels if self.spacing is not None else 0)


def prepare(settings: TrainPriorSettings, lat: Latents, conds: list[Latents]) -> DiffusionData:
    """Check the latents fit a diffusion prior and build their codecs (a `UsageError` names what is wrong)."""
    grid, multiple = lat.grid_shape, settings.diffusion.grid_multiple
    if grid is None:
        raise UsageError(f"the items of {lat.path} ({lat.store_name}) have latent grids of different shapes; "
                         "a diffusion prior batches one grid, so preprocess with a fixed --shape.")
    if any(g % multiple for g in grid):
        raise UsageError(f"{lat.path} holds {grid} latent grids, but a UNet with {len(settings.diffusion.channel_mults)} "
                         f"levels needs every axis divisible by {multiple}; use fewer diffusion.channel_mults.")
    for cond in conds:
        if cond.grid_shape is None or len(cond.grid_shape) != len(grid):
            raise UsageError(f"{cond.path} holds {cond.grid_shape or 'variable'} grids, but a diffusion prior "
                             f"concatenates condition latents as channels of the {len(grid)}D grid {grid}; "
                             "condition on latents of the same rank and a fixed shape.")
    ae = _autoencoder(lat)
    split = settings.data.train_split
    codec = latent_codec(lat, split=split, autoencoder=ae)
    return DiffusionData(codec, [_codec(c, split=split) for c in conds], ae, training_masks(settings, lat),
                         training_spacing(settings, lat))


def _autoencoder(lat: Latents) -> nn.Module | None:
    """The autoencoder behind VQ codes of one level (their codebook makes them continuous), else None."""
    if lat.summary.is_vq and not lat.is_vqvae2:
        return load_autoencoder(latents_lineage(lat.path).autoencoder)[0]
    return None


def _codec(lat: Latents, scale: float | None = None, split: str | None = None) -> LatentCodec:
    return latent_codec(lat, scale=scale, split=split, autoencoder=_autoencoder(lat))


def scheduler_config(settings: TrainPriorSettings, grid_shape: list[int]) -> dict[str, Any]:
    """The stored config of the training scheduler: ``make_sampler(name, **config)`` for any sampler of its family."""
    return training_scheduler(settings.diffusion, grid_shape).config()


def sample_check(settings: TrainPriorSettings, lat: Latents, conds: list[Latents], data: DiffusionData, val,
                 device: torch.device) -> SampleCheck | None:
    """The second validation tier over the first ``diffusion.sample_items`` validation items (None when off)."""
    d = settings.diffusion
    if not d.sample_every or not len(val):
        return None
    lineage = latents_lineage(lat.path)
    ae = data.autoencoder if data.autoencoder is not None else load_autoencoder(lineage.autoencoder)[0]
    ae = ae.to(device).eval()
    try:
        images = Store.open(store_path(lineage.data, lineage.data_store))
    except ValueError:
        raise UsageError(f"the training data {store_path(lineage.data, lineage.data_store)} of {lat.path} is missing; "
                         "diffusion.sample_every compares samples with its images (set it to 0).") from None
    items = [val[i] for i in range(min(d.sample_items, len(val)))]
    targets, ranges, bounds = [], [], []
    for item in items:
        source = str(lat.store.item_attrs(item["id"]).get("source_id", item["id"]))
        image, meta = images.read_item(source)
        targets.append(torch.from_numpy(image).float()[None])
        ranges.append(resolve_data_range(meta, image))
        lo, hi = sorted((meta.intensity.out_low, meta.intensity.out_high))
        bounds.append((lo, hi) if meta.intensity.clip else (-float("inf"), float("inf")))
    lo = torch.tensor([b[0] for b in bounds]).reshape(-1, *[1] * (targets[0].ndim))
    hi = torch.tensor([b[1] for b in bounds]).reshape(-1, *[1] * (targets[0].ndim))

    @torch.no_grad()
    def decode(z: Tensor) -> Tensor:  # modelled latents -> stored image values, clipped like the samples
        x = ae.decode_latents(data.codec.to_autoencoder(z.float())).float().cpu()
        return torch.maximum(torch.minimum(x, hi), lo)

    return SampleCheck(batch=default_collate(items), targets=torch.stack(targets), data_ranges=ranges, decode=decode,
                       scheduler_config=scheduler_config(settings, lat.grid_shape), every=d.sample_every,
                       steps=d.sample_steps, guidance_scale=d.guidance_scale, paired=bool(conds) or data.masks is not None,
                       sampler=few_step_sampler(d.sampler, d.objective))  # ancestral sampling needs many steps


def model_info(settings: TrainPriorSettings, data: DiffusionData, lat: Latents, conds: list[Latents]) -> dict[str, Any]:
    """The diffusion part of ``model.json``."""
    d = settings.diffusion
    return {
        "latent": {"channels": int(lat.summary.latent_channels), "is_vq": bool(lat.summary.is_vq),
                   "scale": data.codec.scale},
        "diffusion": {"objective": d.objective, "scheduler": scheduler_config(settings, lat.grid_shape),
                      "p_uncond": d.p_uncond, "min_snr_gamma": d.min_snr_gamma},
        "sampling": {"scheduler": d.sampler, "steps": d.steps, "eta": d.eta, "guidance_scale": d.guidance_scale},
        "condition_latents": [{"channels": int(c.summary.latent_channels), "is_vq": bool(c.summary.is_vq),
                               "scale": codec.scale, "resized": list(c.grid_shape) != list(lat.grid_shape)}
                              for c, codec in zip(conds, data.condition_codecs)],
        **({"masks": data.masks.info()} if data.masks is not None else {}),
        **({"spacing": data.spacing.info()} if data.spacing is not None else {}),
    }


# ------------------------------------------------------------------------------------ sampling
def condition_codecs(record: PriorRecord, conds: list[Latents]) -> list[LatentCodec]:
    """One codec per condition item of a subject (views in order), with the scales of training."""
    codecs = [_codec(c, scale=t["scale"]) for c, t in zip(conds, record.condition_latents)]
    return [codec for codec, t in zip(codecs, record.conditions) for _ in range(t.items_per_subject)]


def prepare_conditions(record: PriorRecord, codecs: list[LatentCodec], grids: list[Tensor]) -> list[Tensor]:
    """One subject's condition grids (1, *g) each -> ``[(1, C_cond, *grid)]``, as the prior was trained."""
    return [condition_channels(grids, codecs, record.grid_shape)]
