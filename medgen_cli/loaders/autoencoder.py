"""The autoencoder artefact's ``model.json`` as a typed record, and the loader that rebuilds the model
from the artefact alone (encode-latents, sample, evaluate, export).

Only ``model.json`` and ``model.safetensors`` are read: nothing from an artefact is unpickled. The
record's fields are the keys ``train-ae`` writes; what older artefacts lack has a default, and keys
this version does not know are kept, so a record dumps back to the JSON it was read from.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from . import MODEL_FILE, MODEL_JSON
from ..artefacts import ArtefactError, require
from ..io import fs
from ..models.configs import AutoencoderConfig
from ..models.registry import autoencoder_kind, config_from_dict

__all__ = ["MODEL_FILE", "MODEL_JSON", "AutoencoderRecord", "load_autoencoder", "load_autoencoder_record"]


class AutoencoderRecord(BaseModel):
    """``model.json`` of an autoencoder artefact.

    Args:
        kind: registry kind ("vqvae", "vqvae2", "vqgan", "klvae"); the config's own when absent.
        config: the typed config's JSON dump (`typed_config()` rebuilds it).
        latent_scale: KL-VAE scaling factor (1 / std of the latent means), None for VQ models.
        data_range: range of the stored values the model was trained on (SSIM/PSNR).
        intensity: the training store's intensity mapping (stored values <-> physical units).
        spatial_dims: 2 or 3.
        input_shape: spatial shape of the training images (or patches).
        patch_size: training patch size, None for whole items.
        latent_shape: (latent_channels, *latent_spatial) of ``input_shape``.
        weights: "model" or "ema".
        step: the training step the weights come from.
        training_precision: arithmetic of training ("fp32", "bf16", ...); the weights are float32.
    """

    model_config = ConfigDict(frozen=True, extra="allow")

    kind: str = ""
    config: dict[str, Any]
    latent_scale: float | None = None
    data_range: float | None = None
    intensity: dict[str, Any] | None = None
    spatial_dims: int | None = None
    input_shape: list[int] | None = None
    patch_size: list[int] | None = None
    latent_shape: list[int] | None = None
    weights: str = "model"
    step: int | None = None
    training_precision: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _kind_from_config(cls, data: Any) -> Any:
        if isinstance(data, dict) and not data.get("kind") and isinstance(data.get("config"), dict):
            data = {**data, "kind": data["config"].get("kind", "")}
        return data

    def typed_config(self) -> AutoencoderConfig:
        """The architecture as its typed config (class chosen by the registry kind)."""
        return config_from_dict(self.config)


def _read(artefact: Any) -> tuple[dict[str, Any], AutoencoderRecord]:
    """(``model.json`` as read, its typed record) of a checked autoencoder artefact."""
    require(artefact, "autoencoder")
    path = fs.join(artefact, MODEL_JSON)
    try:
        info = json.loads(fs.read_text(path))
        return info, AutoencoderRecord.model_validate(info)
    except (OSError, ValueError, ValidationError):
        raise ArtefactError(f"{path} is missing or damaged; re-run medgen train-ae.") from None


def _load(artefact: Path | str, device: Any) -> tuple[Any, dict[str, Any], AutoencoderRecord]:
    artefact = fs.location(artefact)
    info, record = _read(artefact)
    try:
        typed = record.typed_config()
        model = autoencoder_kind(typed.kind).model_cls(typed.spatial_dims, typed)
        weights = fs.load_safetensors(fs.join(artefact, MODEL_FILE), device=str(device))
        model.load_state_dict(weights)
    except Exception as err:  # noqa: BLE001 - safetensors, torch, config and OS errors alike
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ArtefactError(f"{artefact} holds weights that do not fit its model.json ({first}); re-run medgen train-ae.") from None
    return model.to(device).eval(), info, record


def load_autoencoder_record(artefact: Path | str, device: Any = "cpu") -> tuple[Any, AutoencoderRecord]:
    """Rebuild the autoencoder of a ``train-ae`` artefact in eval mode: (model, typed ``model.json`` record)."""
    model, _, record = _load(artefact, device)
    return model, record


def load_autoencoder(artefact: Path | str, device: Any = "cpu") -> tuple[Any, dict[str, Any]]:
    """Rebuild the autoencoder of a ``train-ae`` artefact in eval mode.

    Args:
        artefact: the autoencoder artefact directory.
        device: where to put the weights.

    Returns:
        (model, info): ``info`` is ``model.json`` as read (kind, config, latent_scale, data_range,
        intensity, spatial_dims, input_shape, patch_size, latent_shape, ...);
        `load_autoencoder_record` gives it as an `AutoencoderRecord`.
    """
    model, info, _ = _load(artefact, device)
    return model, info
