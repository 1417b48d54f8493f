"""Typed records of the manifests' ``summary`` (what a step recorded about its output), read through one loader.

Each record holds the keys exactly as the step writes them today, so a manifest's JSON is unchanged; a
key that older artefacts lack has a default (``masks`` and ``spacing`` of samples, ``masks`` of a
preprocessed artefact). Keys a newer medgen adds are kept (``model_extra``) rather than refused, so an
older reader still opens a newer artefact's summary. Records are frozen: they describe a finished artefact.

- `read_summary(path, kind)`: ``require`` the artefact (complete, of ``kind``) and return its typed summary;
- `summary_record(kind, summary)`: the same for a summary already in memory (a step's result);
- `SUMMARIES`: kind -> record, one line per kind (kinds without a record here, e.g. ``evaluation``
  whose summary is its open-ended metrics, read as `FreeSummary`);
- `summary_json(record)`: the record as the JSON it was made from (the keys it was given, nothing added).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, ValidationError

from ..artefacts import KIND_MAKERS, MANIFEST, ArtefactError, Kind, require

__all__ = ["SUMMARIES", "AutoencoderSummary", "ExportSummary", "FreeSummary", "LatentStoreSummary", "LatentsSummary",
           "MaskSummary", "PreprocessedSummary", "PriorSummary", "SamplesSummary", "StoreSummary", "read_summary",
           "summary_json", "summary_record"]


class _Record(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class StoreSummary(_Record):
    """One zarr store of an artefact (`medgen_cli.io.store.Store.summary`)."""

    name: str = ""
    items: int
    incomplete_items: int = 0
    subjects: int
    splits: dict[str, int]
    shapes: dict[str, int]
    dtypes: list[str]
    modalities: list[str]
    intensity: dict[str, int]
    spacing_min: Optional[list[float]] = None
    spacing_max: Optional[list[float]] = None
    bytes_raw: int
    bytes_stored: int
    compression_ratio: Optional[float] = None


class MaskSummary(_Record):
    """``summary.masks`` of a preprocessed artefact made with ``--masks``."""

    source: str
    pairs: dict[str, str] = {}
    stores: dict[str, dict[str, Any]] = {}  # mask store -> {"items", "labels", "items_per_label"}
    labels: dict[str, int] = {}
    masks_among_inputs: int = 0
    skipped_no_mask: int = 0


class PreprocessedSummary(_Record):
    """``medgen preprocess``: its stores, the subjects' splits, the inputs and the functions applied."""

    stores: dict[str, StoreSummary]
    splits: dict[str, str]  # subject -> split
    split_seed: int
    inputs: int
    failed: list[list[str]] = []  # [path, reason]
    shards: int = 1
    pipeline: list[dict[str, Any]] = []
    masks: Optional[MaskSummary] = None  # only with --masks


class LatentStoreSummary(_Record):
    """One store of a latents artefact (``main``, VQ-VAE-2's ``top``)."""

    level: str  # codes, latents, bottom or top
    grid_shape: Optional[list[int]]  # None when the items' grids differ
    factor: list[int]
    dtype: str
    num_embeddings: Optional[int] = None
    items: int


class LatentsSummary(_Record):
    """``medgen encode-latents``: what the latents are (VQ codes or scaled KL latents) and their grid."""

    ae_kind: str
    is_vq: bool
    num_embeddings: Optional[int] = None
    grid_shape: Optional[list[int]]
    latent_channels: int
    latent_scale: Optional[float] = None
    spatial_dims: int
    image_shape: Optional[list[int]] = None
    data_store: str = "main"
    items: int
    splits: dict[str, int] = {}
    stores: dict[str, LatentStoreSummary]


class AutoencoderSummary(_Record):
    """``medgen train-ae``: the run (steps, best and selected step, last validation metrics) and the KL scale."""

    kind: str
    spatial_dims: int
    steps: int
    stopped_early: bool = False
    selected_step: int
    best_step: Optional[int] = None
    best_ssim: Optional[float] = None  # None without validation
    val: dict[str, Any] = {}  # the last validation record's metrics
    minutes: Optional[float] = None  # run facts: reported, read by nothing
    device: Optional[str] = None
    precision: Optional[str] = None
    channels_last: bool = False
    compiled: bool = False
    planned_steps: Optional[int] = None  # time-bounded runs
    world_size: int = 1
    parameters: int
    latent_scale: Optional[float] = None  # KL: 1 / std of the latent means; None for VQ
    latent_mean: Optional[float] = None  # KL only, with latent_std and latent_items
    latent_std: Optional[float] = None
    latent_items: Optional[int] = None


class PriorSummary(_Record):
    """``medgen train-prior``: the prior's kind and grid, what it is conditioned on and the run."""

    kind: str
    grid_shape: Optional[list[int]]
    num_embeddings: Optional[int] = None  # None for continuous latents
    conditional: bool = False
    join: Optional[str] = None  # item or subject (conditional priors)
    spacing: bool = False  # absent before spacing conditioning
    masks: Optional[list[int]] = None  # the label values of the masks conditioned on (absent before masks)
    num_classes: Optional[int] = None
    steps: int
    stopped_early: bool = False
    selected_step: int
    best_step: Optional[int] = None
    best_loss: Optional[float] = None  # None without validation
    minutes: Optional[float] = None
    parameters: int
    val: dict[str, Any] = {}  # the last validation record's metrics
    device: Optional[str] = None  # run facts: reported, read by nothing
    precision: Optional[str] = None
    world_size: int = 1


class SamplesSummary(_Record):
    """``medgen sample``: the prior and sampler, the samples drawn and what they were conditioned on."""

    prior_kind: str
    strategy: str
    seed: int
    samples: int
    shape: list[int]
    conditional: bool = False
    subjects: list[str] = []
    join: Optional[str] = None
    condition_items: list[str] = []
    autoencoder: str
    masks: Optional[str] = None  # the mask artefact sampled for (absent before masks existed)
    data: str
    data_store: str = "main"
    sampler: dict[str, Any] = {}
    spacing: Optional[Any] = None  # the spacing sampled at (absent before spacing conditioning)


class ModuleCheck(_Record):
    """One exported module and its largest difference to PyTorch."""

    name: str
    file: str
    max_abs_diff: float
    check_input_shapes: list[list[int]] = []


class ExportSummary(_Record):
    """``medgen export``: images (``items``, ``synthetic``...) or a model (``modules``, ``tolerance``)."""

    format: str
    source: str
    source_kind: str
    store: Optional[str] = None  # images
    items: Optional[int] = None
    synthetic: int = 0
    decoded: bool = False
    model: Optional[str] = None  # models
    tolerance: Optional[float] = None
    modules: Optional[list[ModuleCheck]] = None

    @property
    def is_model(self) -> bool:
        """A model export (TorchScript, ONNX, safetensors) rather than images."""
        return self.modules is not None


class FreeSummary(_Record):
    """A summary without a fixed shape (``evaluation``: its metrics)."""


SUMMARIES: dict[str, type[_Record]] = {
    "preprocessed": PreprocessedSummary,
    "autoencoder": AutoencoderSummary,
    "latents": LatentsSummary,
    "prior": PriorSummary,
    "samples": SamplesSummary,
    "export": ExportSummary,
}


def summary_record(kind: str, summary: dict[str, Any], where: Path | str | None = None) -> _Record:
    """``summary`` (a manifest's, or a step's result) as the typed record of ``kind``.

    Raises:
        ArtefactError: the summary lacks a key or holds a value of the wrong type; the sentence names the
            artefact (``where``), the key and the step that re-creates it.
    """
    try:
        return SUMMARIES.get(kind, FreeSummary).model_validate(summary)
    except ValidationError as err:
        first = err.errors()[0]
        key = ".".join(str(p) for p in first["loc"]) or "summary"
        owner = f"{where}/{MANIFEST}" if where is not None else f"a {kind} manifest"
        raise ArtefactError(f"{owner} has a summary medgen cannot read ({key}: {first['msg']}); re-create the artefact "
                            f"with {KIND_MAKERS.get(kind, 'the step that made it')}.") from None


def read_summary(path: Path | str, kind: Kind) -> _Record:
    """The typed summary of the complete ``kind`` artefact at ``path`` (``require`` checks it first)."""
    return summary_record(kind, require(path, kind).summary, path)


def summary_json(record: BaseModel) -> dict[str, Any]:
    """``record`` as the JSON summary it was read from: the keys it was given (nested records too), in the order
    of its fields, then the keys it does not declare; defaults it filled in are left out."""
    return record.model_dump(mode="json", exclude_unset=True)
