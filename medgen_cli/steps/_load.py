"""Load trained models from artefacts for later steps (encode-latents, sample, evaluate, export).

Only ``model.json`` and ``model.safetensors`` are read: nothing from an artefact is unpickled.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..artefacts import ArtefactError, require
from ..io import fs
from ..models.registry import build_autoencoder

MODEL_FILE = "model.safetensors"
MODEL_JSON = "model.json"


def load_autoencoder(artefact: Path | str, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the autoencoder of a ``train-ae`` artefact in eval mode.

    Args:
        artefact: the autoencoder artefact directory.
        device: where to put the weights.

    Returns:
        (model, info): ``info`` is ``model.json``: kind, config, latent_scale, data_range,
        intensity, spatial_dims, input_shape, patch_size, latent_shape.
    """
    artefact = fs.location(artefact)
    require(artefact, "autoencoder")
    try:
        info = json.loads(fs.read_text(fs.join(artefact, MODEL_JSON)))
        config = dict(info["config"])
    except (OSError, ValueError, KeyError, TypeError):
        raise ArtefactError(f"{fs.join(artefact, MODEL_JSON)} is missing or damaged; re-run medgen train-ae.") from None
    try:
        model = build_autoencoder(**config)
        weights = fs.load_safetensors(fs.join(artefact, MODEL_FILE), device=str(device))
        model.load_state_dict(weights)
    except Exception as err:  # noqa: BLE001 - safetensors, torch and OS errors alike
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ArtefactError(f"{artefact} holds weights that do not fit its model.json ({first}); re-run medgen train-ae.") from None
    return model.to(device).eval(), info
