"""The typed record of a prior's ``model.json`` (`PriorRecord`) and the loader that rebuilds the prior
from its artefact alone (``load_prior``), through the prior registry (``medgen_cli.priors``).

``PriorRecord`` has the keys ``train-prior`` writes, with defaults for what older artefacts lack
(``join``, ``diffusion.objective``, a condition's ``items_per_subject``); ``to_json()`` gives back
exactly the keys it was made from, so a record written and read again is the same ``model.json``.
Diffusion priors add ``latent``, ``diffusion``, ``sampling`` and ``condition_latents`` (and ``masks``
or ``spacing`` when conditioned on them); token priors have none of these.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from torch import nn

from ..artefacts import ArtefactError, require
from ..io import fs
from ..priors import prior_kind

from . import MODEL_FILE, MODEL_JSON


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="allow")


class ConditionRecord(_Record):
    """A condition latents artefact the prior was trained with."""

    path: str
    store: str = "main"
    role: str = "condition"
    num_embeddings: int | None = None
    grid_shape: list[int] | None = None
    items_per_subject: int = 1


class LatentRecord(_Record):
    """The continuous latents a diffusion prior models: channels, VQ or not, the scale to unit std."""

    channels: int
    is_vq: bool
    scale: float


class DiffusionRecord(_Record):
    """The objective of a diffusion prior and its training scheduler's config (builds any sampler of its family)."""

    objective: str = "diffusion"  # priors written before flow priors existed are diffusion priors
    scheduler: dict[str, Any]
    p_uncond: float = 0.0
    min_snr_gamma: float | None = None


class SamplingRecord(_Record):
    """The defaults of ``medgen sample`` for a diffusion prior."""

    scheduler: str
    steps: int
    eta: float = 0.0
    guidance_scale: float = 1.0


class PriorRecord(_Record):
    """``model.json`` of a prior artefact (see ``steps/train_prior.py``)."""

    kind: str
    config: dict[str, Any]
    latents: dict[str, Any]
    latents_path: str | None = None
    store: str = "main"
    levels: list[str] = ["main"]
    grid_shape: list[int]
    top_grid_shape: list[int] | None = None
    num_embeddings: int | None = None
    spatial_dims: int | None = None
    conditions: list[ConditionRecord] = []
    join: str | None = None
    num_classes: int | None = None
    classes: list[str] = []
    label_attr: str | None = None
    weights: str = "model"
    step: int | None = None
    latent: LatentRecord | None = None
    diffusion: DiffusionRecord | None = None
    sampling: SamplingRecord | None = None
    condition_latents: list[dict[str, Any]] = []
    masks: dict[str, Any] | None = None
    spacing: dict[str, Any] | None = None

    @property
    def objective(self) -> str | None:
        """``diffusion`` or ``flow`` for a diffusion prior, None for a token prior."""
        return self.diffusion.objective if self.diffusion is not None else None

    @property
    def conditional(self) -> bool:
        """Conditioned on latents, labels, masks or spacing."""
        return bool(self.conditions or self.classes or self.masks or self.spacing)

    def to_json(self) -> dict[str, Any]:
        """The ``model.json`` dict: the keys the record was made from, nothing added."""
        return self.model_dump(mode="json", exclude_unset=True)


def build_prior(record: PriorRecord) -> nn.Module:
    """The prior network of ``record`` (weights initialised; ``load_prior`` loads them)."""
    return prior_kind(record.kind).rebuild(dict(record.config))


def read_record(artefact: Path | str) -> tuple[PriorRecord, dict[str, Any]]:
    """``model.json`` of a prior artefact, typed and as read (an `ArtefactError` names a damaged one)."""
    path = fs.join(artefact, MODEL_JSON)
    try:
        info = json.loads(fs.read_text(path))
        return PriorRecord.model_validate(info), info
    except (OSError, ValueError, ValidationError, TypeError):
        raise ArtefactError(f"{path} is missing or damaged; re-run medgen train-prior.") from None


def load_prior_record(artefact: Path | str, device: str | torch.device = "cpu") -> tuple[nn.Module, PriorRecord, dict]:
    """Rebuild the prior of a ``train-prior`` artefact in eval mode: (model, record, model.json as read)."""
    artefact = fs.location(artefact)
    require(artefact, "prior")
    record, info = read_record(artefact)
    try:
        prior_kind(record.kind)
    except ValueError:
        raise ArtefactError(f"{artefact} holds a {record.kind} prior, which this medgen cannot load; "
                            "upgrade medgen.") from None
    try:
        model = build_prior(record)
        model.load_state_dict(fs.load_safetensors(fs.join(artefact, MODEL_FILE), device=str(device)))
    except Exception as err:  # noqa: BLE001 - safetensors, torch and OS errors alike
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ArtefactError(f"{artefact} holds weights that do not fit its model.json ({first}); "
                            "re-run medgen train-prior.") from None
    return model.to(device).eval(), record, info


def load_prior(artefact: Path | str, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the prior of a ``train-prior`` artefact in eval mode: (model, ``model.json`` as a dict)."""
    model, _, info = load_prior_record(artefact, device)
    return model, info
