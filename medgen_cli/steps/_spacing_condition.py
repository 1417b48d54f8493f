"""Voxel spacing as a condition of a diffusion or flow prior (``condition.spacing``), in ``train-prior`` and ``sample``.

Orchestration only; the channels are built by `medgen_cli.data.spacing.SpacingChannels`: one channel per
spatial axis, ``(log(spacing_mm) - mean) / std``, constant over the latent grid. They follow the condition
latents and the mask channels in the UNet's condition channels, so classifier-free guidance drops them
with ``diffusion.p_uncond`` together with the other conditions.

- Training (`training_spacing`): each training and validation item's image spacing comes from the
  metadata of its latent item (the latent grid's spacing divided by the autoencoder's factor, see
  `medgen_cli.data.latents.latent_meta`); ``mean``/``std`` are those of the training split.
- ``model.json`` gains ``spacing``: channels, log_mean, log_std and the training spacings' median, min
  and max (mm). A prior without it is not spacing-conditioned and samples as before.
- Sampling (`sample_spacing`): a job drawn for condition items (masks, condition latents) takes the
  spacing of the item whose geometry its samples carry; an unconditional job takes
  ``condition.spacing`` (sample side) or the training median. The samples' metadata carry that spacing
  (``condition_spacing`` attribute too). A spacing beyond the trained range by more than a factor of 2
  is warned about, not refused.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..data.spacing import SpacingChannels, image_spacing
from ..errors import UsageError
from ..meta import ImageMeta
from ..settings.prior import TrainPriorSettings
from ..settings.sample import SampleSettings
from ..loaders.latents import Latents
from ..loaders.prior import PriorRecord

log = logging.getLogger(__name__)

RANGE_FACTOR = 2.0  # a requested spacing beyond the trained range by more than this is warned about


@dataclass
class TrainingSpacing:
    """The spacing channels of a spacing-conditioned training run.

    Args:
        channels: the normalisation fitted on the training split.
        spacings: latent item id -> its image spacing (mm), for training and validation items.
    """

    channels: SpacingChannels
    spacings: dict[str, list[float]]

    def __call__(self, item_id: str, grid: Sequence[int]) -> Tensor:
        """(D, *grid) channels of a latent item (what `ContinuousLatentsDataset` appends to ``cond``)."""
        return self.channels(self.spacings[item_id], grid)

    def info(self) -> dict[str, Any]:
        """The ``spacing`` entry of ``model.json``."""
        return self.channels.info()


def training_spacing(settings: TrainPriorSettings, lat: Latents) -> TrainingSpacing | None:
    """The spacings of the training items and their normalisation (None when ``condition.spacing`` is off)."""
    if not settings.condition.spacing:
        return None
    d, dims = settings.data, len(lat.grid_shape)
    factor = [int(f) for f in lat.summary.stores[lat.store_name].factor]
    train = lat.store.ids(d.train_split)
    ids = train + (lat.store.ids(d.val_split) if d.val_split else [])
    spacings = {i: image_spacing(lat.store.meta(i), dims, factor) for i in ids}
    try:
        channels = SpacingChannels.fit([spacings[i] for i in train])
    except ValueError as err:
        raise UsageError(f"condition.spacing: the items of {lat.path} ({d.train_split}): {err}.") from None
    log.info("condition.spacing: training spacings %s .. %s mm (median %s)", list(channels.low),
             list(channels.high), list(channels.median))
    return TrainingSpacing(channels, spacings)


# ------------------------------------------------------------------------------------ sampling
@dataclass
class SampleSpacing:
    """The spacing channels of ``medgen sample`` for a spacing-conditioned prior.

    Args:
        channels: the normalisation of training (from ``model.json``).
        requested: the spacing (mm) of unconditional jobs: ``condition.spacing``, else the training median.
        grid: the latent grid.
        used: the distinct spacings drawn for so far (the samples summary's ``spacing``).
    """

    channels: SpacingChannels
    requested: list[float]
    grid: list[int]
    used: list[list[float]] = field(default_factory=list)

    def job_spacing(self, conditional: bool, ref: ImageMeta) -> list[float]:
        """A job's spacing: that of ``ref`` (the geometry its samples take) when drawn for condition items."""
        spacing = image_spacing(ref, self.channels.channels) if conditional else list(self.requested)
        self.check(spacing)
        if spacing not in self.used:
            self.used.append(spacing)
        return spacing

    def for_job(self, cond: list[Tensor] | None, conditional: bool, ref: ImageMeta,
                device: torch.device) -> tuple[list[Tensor], dict[str, Any]]:
        """A job's condition grids with its spacing channels appended, and the sample attributes recording it."""
        spacing = self.job_spacing(conditional, ref)
        return self.append(cond, spacing, device), {"condition_spacing": spacing}

    def check(self, spacing: Sequence[float]) -> None:
        if self.channels.outside(spacing, RANGE_FACTOR):
            log.warning("spacing %s mm lies beyond the %s .. %s mm the prior was trained on by more than a factor "
                        "of %g; the samples may be poor", [round(v, 4) for v in spacing], list(self.channels.low),
                        list(self.channels.high), RANGE_FACTOR)

    def append(self, cond: list[Tensor] | None, spacing: Sequence[float], device: torch.device) -> list[Tensor]:
        """A job's condition grids with the spacing channels after them: ``[(1, C + D, *grid)]``."""
        channels = self.channels(spacing, self.grid)[None].to(device)
        return [torch.cat([cond[0], channels], dim=1)] if cond else [channels]


def sample_spacing(settings: SampleSettings, record: PriorRecord, conditional: bool) -> SampleSpacing | None:
    """The spacing of ``medgen sample`` (None for priors trained without it); refuses a spacing that cannot apply.

    Args:
        settings: the sample settings (``condition.spacing``).
        record: the prior's ``model.json``.
        conditional: the prior draws for condition items (masks or condition latents), which fix the spacing.
    """
    given = settings.condition.spacing
    if not record.spacing:
        if given is not None:
            raise UsageError(f"{settings.prior} was trained without condition.spacing; drop condition.spacing.")
        return None
    channels = SpacingChannels.from_info(record.spacing)
    if given is not None:
        if conditional:
            raise UsageError(f"{settings.prior} draws for condition items, whose own spacing conditions the samples; "
                             "drop condition.spacing.")
        if len(given) != channels.channels:
            raise UsageError(f"condition.spacing = {given} gives {len(given)} value(s), but {settings.prior} takes "
                             f"{channels.channels} (one per axis of its {channels.channels}D grid, in mm).")
    requested = [float(v) for v in given] if given is not None else list(channels.median)
    return SampleSpacing(channels, requested, [int(g) for g in record.grid_shape])
