"""Settings of ``medgen encode-latents`` and ``medgen train-prior`` (and, re-exported, of ``medgen sample``).

``train-prior`` shares ``data``, ``optim``, ``train`` and ``runtime`` with ``train-ae``; its own
sections are ``prior`` (the architecture, chosen by ``prior.kind``), ``condition`` (latents
artefacts joined by item id or by subject, class labels, label maps of diffusion priors) and
``diffusion`` (``settings/diffusion.py``: the UNet, the objective -- a DDPM noise schedule or
rectified flow --, loss, classifier-free guidance and sampling defaults of ``prior.kind = diffusion``).

Prior kinds are those of the prior registry (``medgen_cli.priors``): an unknown kind is an error
listing them, and the kind-specific rules (which ``prior.*`` fields a kind reads, which conditions it
takes, its own checks) are read from its entry. ``sample``'s settings live in ``settings/sample.py``,
``tiling`` in ``settings/tiling.py``; both are re-exported here.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, field_validator, model_validator

from .base import IntTuple, Section
from .common import DataSettings, RuntimeSettings
from .diffusion import DIFFUSION_ONLY, DiffusionSettings  # noqa: F401  (the first re-exported)
from .sample import SampleSettings  # noqa: F401  (re-exported)
from .tiling import TilingSettings  # noqa: F401  (re-exported)
from .train import OptimSettings, TrainSettings


# The prior registry imports torch and the networks; the settings read it only while validating, so loading the
# settings (the CLI's --help, `medgen config show`) stays free of torch.
def prior_names() -> tuple[str, ...]:
    from ..priors import prior_names as names

    return names()


def prior_kind(name: str):
    from ..priors import prior_kind as kind

    return kind(name)


def prior_kinds():
    from ..priors import prior_kinds as kinds

    return kinds()


def names_where(flag: str):
    from ..priors import names_where as where

    return where(flag)


# ---------------------------------------------------------------------------------- encode-latents
class EncodeSettings(Section):
    """Settings of ``medgen encode-latents``."""

    ae: str = Field("", description="The autoencoder artefact (made by medgen train-ae).")
    data: str = Field("", description="The preprocessed artefact whose items are encoded (all splits).")
    store: str = Field("main", description="Store inside the data artefact: main, or a derived one (drr, lowdose, ...).")
    batch_size: int = Field(8, ge=1, description="Items encoded per forward pass (items of one shape are batched together).")
    dtype: Literal["float32", "float16"] = Field(
        "float32", description="Stored type of KL latents (VQ codes are always int16 indices)."
    )
    tiling: TilingSettings = Field(default_factory=TilingSettings, description="Tiled encoding of volumes too large for memory.")
    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings, description="Device and threads.")


# ------------------------------------------------------------------------------------- train-prior
class PriorModelSettings(Section):
    kind: str = Field(
        "transformer",
        description="Prior (a registered kind, medgen_cli.priors): transformer (causal, any grid), maskgit (masked\n"
        "tokens, any grid), pixelcnn (gated PixelCNN, 2D grids; for vqvae2 latents a top and a bottom prior), or\n"
        "diffusion (a UNet denoiser over KL latents or the continuous latents of a VQ autoencoder;\n"
        "its settings are the diffusion section).",
    )
    dim: int = Field(256, ge=8, description="transformer, maskgit: token width.")
    depth: int = Field(8, ge=1, description="transformer, maskgit: transformer blocks.")
    num_heads: int = Field(8, ge=1, description="Attention heads (transformer, maskgit; pixelcnn attention layers).")
    mlp_ratio: float = Field(4.0, gt=0, description="transformer, maskgit: MLP width relative to dim.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout (transformer, maskgit, pixelcnn; diffusion: diffusion.dropout).")
    ordering: Literal["raster", "snake", "zigzag", "hilbert", "random"] = Field(
        "raster", description="transformer: order in which grid cells are generated (raster, snake, zigzag, hilbert, random)."
    )
    ordering_seed: int = Field(0, ge=0, description="transformer: seed of the random ordering.")
    hidden_channels: int = Field(64, ge=1, description="pixelcnn: width of the vertical and horizontal stacks.")
    num_layers: int = Field(8, ge=1, description="pixelcnn: gated layers.")
    kernel_size: int = Field(3, ge=3, description="pixelcnn: odd kernel size of the gated convolutions.")
    attention_layers: IntTuple | None = Field(
        None, description="pixelcnn: gated layers followed by causal self-attention;\n"
        "null = every 4th layer of the vqvae2 top prior (the bottom and single-level priors: none)."
    )

    @field_validator("kind")
    @classmethod
    def _registered(cls, v: str) -> str:
        if v not in prior_names():
            raise ValueError(f"{v!r} is not a prior kind; registered kinds: {', '.join(prior_names())}")
        return v

    @model_validator(mode="after")
    def _consistent(self):
        kind = prior_kind(self.kind)
        kind.check_settings(self)
        # a field of another kind left at a non-default value is almost certainly a mistake
        foreign = set().union(*(k.settings_fields for k in prior_kinds() if k is not kind)) - kind.settings_fields
        changed = sorted(n for n in foreign if getattr(self, n) != type(self).model_fields[n].default)
        if changed:
            raise ValueError(f"prior.{changed[0]} does not apply to prior.kind = {self.kind!r}; remove it or change the kind")
        return self


class ConditionSettings(Section):
    paths: list[str] = Field(
        default_factory=list,
        description="Latents artefacts joined to the training items (see join); their codes form the prefix\n"
        "(transformer, maskgit), their latents extra channels (diffusion).",
    )
    store: str = Field("main", description="Store inside each condition artefact (main, or top for vqvae2 latents).")
    join: Literal["auto", "item", "subject"] = Field(
        "auto",
        description="How a training item finds its condition items: item (the item of the same id, e.g. the\n"
        "lowdose copy of sequence k for sequence k; derived stores of one preprocess artefact share ids),\n"
        "subject (every item of its subject, ordered by view then id: X-ray views of a CT), or auto\n"
        "(item when every training item id is in every condition store, else subject). The join used is\n"
        "recorded in the prior, and medgen sample draws per condition item or per subject accordingly.",
    )
    label: str | None = Field(
        None, description="Item attribute whose values are class labels (e.g. modality); null = no labels."
    )
    masks: bool | str = Field(
        False, description="diffusion: condition on label maps (preprocess --masks). true = the masks of the preprocessed\n"
        "artefact the latents were encoded from; a path = a preprocessed artefact with a masks store holding\n"
        "the training items' ids. Each label value seen in training becomes one channel: the fraction of a\n"
        "latent voxel's image voxels with that label (one-hot, averaged per latent voxel), concatenated to\n"
        "the UNet input and dropped with diffusion.p_uncond like the other conditions."
    )
    spacing: bool = Field(
        False, description="diffusion: condition on each item's voxel spacing (mm): log(spacing) per axis, normalised by the\n"
        "training items' mean and std (recorded in model.json), as constant UNet input channels dropped with\n"
        "diffusion.p_uncond like the other conditions. medgen sample then takes condition.spacing (default: the\n"
        "training median) or the spacing of its condition items."
    )

    @field_validator("masks")
    @classmethod
    def _masks(cls, v: bool | str) -> bool | str:
        if isinstance(v, str) and not v.strip():
            raise ValueError("needs true, false or the path of a preprocessed artefact with masks")
        return v


class TrainPriorSettings(Section):
    """Settings of ``medgen train-prior``."""

    data: DataSettings = Field(default_factory=DataSettings, description="Training data: a latents artefact.")
    prior: PriorModelSettings = Field(default_factory=PriorModelSettings, description="Prior architecture.")
    condition: ConditionSettings = Field(default_factory=ConditionSettings, description="Conditioning on latents (by item or subject) and labels.")
    diffusion: DiffusionSettings = Field(
        default_factory=DiffusionSettings, description="prior.kind diffusion: UNet, noise schedule, loss, guidance, sampling."
    )
    optim: OptimSettings = Field(default_factory=OptimSettings, description="Optimizer and learning-rate schedule.")
    train: TrainSettings = Field(default_factory=TrainSettings, description="Length, validation, checkpoints, EMA, precision.")
    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings, description="Seed, device and threads.")

    @model_validator(mode="after")
    def _consistent(self):
        if self.data.patch_size is not None:
            raise ValueError(f"data.patch_size = {list(self.data.patch_size)} does not apply to priors "
                             "(they model whole code grids); remove it")
        if self.optim.warmup_steps >= self.train.steps and self.optim.warmup_steps > 0:
            raise ValueError(f"optim.warmup_steps = {self.optim.warmup_steps} must be below train.steps = {self.train.steps}")
        if self.train.max_minutes is not None and not math.isfinite(self.train.max_minutes):
            raise ValueError(f"train.max_minutes = {self.train.max_minutes} must be a finite number of minutes")
        _check_kind(self)
        return self


def _check_kind(s: TrainPriorSettings) -> None:
    """The rules of the prior registry: which kinds take condition.masks, condition.spacing, condition.paths
    and the diffusion section, then the kind's own rules."""
    kind = prior_kind(s.prior.kind)
    image = " or ".join(repr(n) for n in names_where("image_conditions"))
    if s.condition.masks is not False:
        if not kind.image_conditions:
            raise ValueError(f"condition.masks needs prior.kind = {image} (label maps become UNet input "
                             f"channels), not {s.prior.kind!r}")
        if s.condition.paths:
            raise ValueError("condition.masks and condition.paths exclude each other (a prior conditioned on "
                             "masks and on other latents is not supported yet); give one of them")
    if s.condition.spacing and not kind.image_conditions:
        raise ValueError(f"condition.spacing needs prior.kind = {image} (the spacing becomes UNet input "
                         f"channels), not {s.prior.kind!r}")
    if s.condition.paths and not kind.condition_paths:
        raise ValueError(f"condition.paths needs prior.kind {' or '.join(names_where('condition_paths'))} "
                         f"({s.prior.kind} takes labels only)")
    for section in sorted({n for k in prior_kinds() for n in k.sections} - set(kind.sections)):
        values, fields = getattr(s, section), type(getattr(s, section)).model_fields
        changed = [n for n, f in fields.items() if getattr(values, n) != f.default]
        if changed:
            owners = " or ".join(repr(k.name) for k in prior_kinds() if section in k.sections)
            raise ValueError(f"{section}.{changed[0]} applies to prior.kind = {owners} only, not "
                             f"{s.prior.kind!r}; remove it or change the kind")
    kind.check_train(s)
