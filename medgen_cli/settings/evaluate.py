"""Settings of ``medgen evaluate`` and ``medgen export``.

``evaluate`` has three modes, chosen by which artefacts are given:

* reconstruction: ``ae`` + ``data`` (autoencoder reconstructions of one split);
* samples: ``samples`` + ``data`` (distribution distances, diversity, memorisation);
* conditional: ``samples`` + ``target`` (paired metrics against the ground truth: the target item a
  sample's condition item names, else its subject's one item), optionally beside a baseline store of
  the target artefact scored the same way (``baseline_store``, e.g. the low-dose input itself); it
  can be combined with ``data`` to get both sample evaluations in one run.

Both steps share ``tiling`` (`settings.prior.TilingSettings`, as encode-latents and sample): when the
autoencoder runs on volumes too large for memory (evaluate's reconstructions and encoder features,
export's ``decode``), they go tile by tile.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from .base import Section
from .common import RuntimeSettings
from .prior import TilingSettings

# memorisation_check's default (a test keeps them equal); not imported, so settings load without torch
DEFAULT_MEMORISATION_THRESHOLD = 0.8

IMAGE_FORMATS = ("nifti", "nrrd", "mha", "dicom", "png")
MODEL_FORMATS = ("torchscript", "onnx", "safetensors")


class EvaluateSettings(Section):
    ae: str = Field("", description="Autoencoder artefact: reconstruction mode (with data); for samples it overrides the one found through the lineage.")
    data: str = Field("", description="Preprocessed artefact with the real items.")
    store: str = Field("main", description="Store of the data artefact: main or a derived one.")
    split: str | None = Field(
        None, description="Split of the real items: null = test for reconstruction, train for samples, every split for conditional targets."
    )
    samples: str = Field("", description="Samples artefact (made by medgen sample): samples or conditional mode.")
    target: str = Field("", description="Preprocessed artefact with the ground truth of conditional samples: a sample of an\n"
                        "item-joined prior is paired with the item of its condition item's id, else with its subject's item.")
    target_store: str = Field("main", description="Store of the target artefact.")
    baseline_store: str = Field(
        "", description="Conditional mode: a store of the target artefact (e.g. lowdose, the model's input) whose\n"
        "items are scored against the same targets, as a baseline the samples should beat; empty = none."
    )
    train_split: str = Field("train", description="Split the memorisation check searches for the nearest training item.")
    axis: int = Field(2, ge=0, le=2, description="Spatial axis of slice-wise SSIM for volumes (2 = axial for RAS).")
    max_items: int | None = Field(None, ge=1, description="Evaluate at most this many items of each set (null = all).")
    max_pictures: int = Field(8, ge=0, description="Items pictured (strips, orthogonal views, MIPs, error maps).")
    memorisation_threshold: float = Field(
        DEFAULT_MEMORISATION_THRESHOLD, ge=-1, le=1, description="SSIM to the nearest training item above which a sample is flagged as a possible copy."
    )
    max_pairs: int = Field(2000, ge=1, description="Diversity: at most this many random pairs of items.")
    batch_size: int = Field(4, ge=1, description="Items per forward pass of the autoencoder.")
    tiling: TilingSettings = Field(
        default_factory=TilingSettings, description="Reconstructions and encoder features: tiled encoding and decoding of\n"
        "volumes too large for memory (mode auto|always|never)."
    )
    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings, description="Seed, device and threads.")

    def check_mode(self) -> Literal["reconstruction", "samples"]:
        """The mode the given artefacts select; a ``ValueError`` naming what is missing otherwise.

        Not a validator: ``medgen config show evaluate`` must print the defaults, which name no artefact.
        """
        if self.ae and not self.samples and not self.data:
            raise ValueError("reconstruction needs the real items: give --data PREP with --ae AE")
        if self.baseline_store and not self.target:
            raise ValueError(f"baseline_store = {self.baseline_store!r} is scored against the targets: give --target PREP too")
        if self.target and not self.samples:
            raise ValueError(f"--target {self.target} is the ground truth of conditional samples: give --samples too")
        if self.samples and not (self.data or self.target):
            raise ValueError("samples need --data PREP (distribution metrics) or --target PREP (conditional metrics)")
        if not self.samples and not self.ae:
            raise ValueError("nothing to evaluate: give --ae AE --data PREP (reconstruction) or --samples S with --data or --target")
        return "samples" if self.samples else "reconstruction"


class ExportSettings(Section):
    source: str = Field("", description="The artefact to export: preprocessed, samples, latents (with decode) or autoencoder (model formats).")
    format: Literal["nifti", "nrrd", "mha", "dicom", "png", "torchscript", "onnx", "safetensors"] = Field(
        "nifti", description="Image formats: nifti, nrrd, mha, dicom, png; model formats: torchscript, onnx, safetensors."
    )
    store: str | None = Field(None, description="Store to export: null = main (preprocessed, latents) or samples (samples).")
    split: str | None = Field(None, description="Export only this split (null = every item).")
    items: list[str] = Field(default_factory=list, description="Export only these item ids.")
    decode: bool = Field(False, description="Latents: decode them to images through their autoencoder first.")
    batch_size: int = Field(4, ge=1, description="Latents decoded per forward pass.")
    tolerance: float = Field(1e-4, gt=0, description="Model formats: largest absolute difference to PyTorch accepted by the check.")
    tiling: TilingSettings = Field(
        default_factory=TilingSettings, description="decode: tiled decoding of volumes too large for memory (mode auto|always|never)."
    )
    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings, description="Seed, device and threads.")

    @field_validator("items", mode="before")
    @classmethod
    def _split_items(cls, v):
        if isinstance(v, str):
            return [s.strip() for s in v.split(",") if s.strip()]
        return v

    @property
    def is_model_format(self) -> bool:
        return self.format in MODEL_FORMATS
