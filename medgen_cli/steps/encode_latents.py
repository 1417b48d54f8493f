"""``medgen encode-latents``: encode every item of a preprocessed store with a trained autoencoder.

Orchestration only. Writes the ``latents`` artefact::

    lat/  manifest.json  settings.yaml
          main.zarr   one item per data item, same id: VQ int16 code grids (*grid) (vqvae2: the
                      bottom codes), or KL float (C, *grid) posterior means x latent_scale
          top.zarr    vqvae2 only: the top code grids

Each latent item keeps the data item's attributes (subject, split, view, ...) plus ``source_id``,
with the geometry of its grid (`medgen_cli.data.latents.latent_meta`) and an identity intensity
mapping. Items of one shape are encoded in batches; 2D latents are written stacked (`medgen_cli.io.stacked`: one
object per shard of items, complete once its shard is flushed). A batch whose whole-volume encoding would need
more memory than ``tiling.max_gib`` (``tiling.mode`` auto, the default; always: every batch) is
encoded tile by tile (`medgen_cli.inference.AutoencoderTiler`: tiles aligned to the downsampling,
whole-volume normalisation statistics), equal to whole-volume encoding up to float error (VQ codes:
up to the rare near-tie between two codes). Re-running the same command resumes an
interrupted run: items already complete in ``OUT.partial`` are skipped, found with one listing of
each output store, so a resume costs time in proportion to the items left.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..artefacts import ArtefactWriter, input_ref
from ..data.latents import latent_meta
from ..errors import UsageError
from ..inference import AutoencoderTiler, TilingOptions
from ..io import fs
from ..io.store import DamagedStore, Store, store_path
from ..runtime import inference_device
from ..settings.prior import EncodeSettings
from ..viz.previews import latent_preview
from ..loaders.autoencoder import AutoencoderRecord, load_autoencoder_record
from ..models.quantization import MAX_INT16_CODES
from ..models.registry import autoencoder_kind

log = logging.getLogger(__name__)



@dataclass
class EncodeResult:
    """What ``run`` returns.

    Args:
        out: the artefact directory.
        summary: the manifest summary.
        encoded: items encoded by this run.
        skipped: items an interrupted run had already written.
    """

    out: Path
    summary: dict[str, Any] = field(default_factory=dict)
    encoded: int = 0
    skipped: int = 0


@dataclass
class _Level:
    """One output store: its name, what it holds, and the per-axis factor from image to grid."""

    name: str
    level: str
    factor: tuple[int, ...]
    dtype: str
    store: Store | None = None


def _two_level(info: AutoencoderRecord) -> bool:
    """A hierarchical autoencoder (VQ-VAE-2): a top and a bottom code grid, as its registry entry declares."""
    return autoencoder_kind(info.kind).hierarchical


def _levels(model: torch.nn.Module, info: AutoencoderRecord, dtype: str) -> list[_Level]:
    if _two_level(info):
        return [_Level("main", "bottom", tuple(model.downsample_factor), "int16"),
                _Level("top", "top", tuple(model.total_top_factor), "int16")]
    if model.is_vq:
        return [_Level("main", "codes", tuple(model.downsample_factor), "int16")]
    return [_Level("main", "latents", tuple(model.downsample_factor), dtype)]


def _open_inputs(settings: EncodeSettings) -> tuple[Store, list]:
    if not settings.ae:
        raise UsageError("no autoencoder given; pass --ae DIR (an autoencoder artefact) or set ae.")
    if not settings.data:
        raise UsageError("no data given; pass --data DIR (a preprocessed artefact) or set data.")
    refs = [input_ref(settings.ae, "autoencoder", "autoencoder"), input_ref(settings.data, "data", "preprocessed")]
    try:
        store = Store.open(store_path(settings.data, settings.store))
    except DamagedStore:
        raise
    except ValueError:
        raise UsageError(f"{settings.data} has no store named {settings.store!r} (--store); "
                         f"see `medgen inspect {settings.data}`.") from None
    return store, refs


def _encode(tiler: AutoencoderTiler, info: AutoencoderRecord, batch: np.ndarray, scale: float) -> list[np.ndarray]:
    """(B, *spatial) stored images -> one (B, ...) array per level, in the order of `_levels` (int64
    codes, or float32 latents x ``scale``), whole or tile by tile (``tiling``)."""
    x = batch[:, None]
    if tiler.model.is_vq:
        codes = tiler.encode_indices(x)
        return [codes[1], codes[0]] if _two_level(info) else codes  # VQ-VAE-2 gives (top, bottom)
    return [tiler.encode_latents(x).astype(np.float32, copy=False) * np.float32(scale)]


def _check_item(model: torch.nn.Module, info: AutoencoderRecord, item_id: str, shape: tuple[int, ...]) -> None:
    if len(shape) != info.spatial_dims:
        raise UsageError(f"item {item_id!r} is {len(shape)}D but the autoencoder is {info.spatial_dims}D; "
                         "encode a store of the rank it was trained on.")
    try:
        model.latent_shape(shape)
        if _two_level(info):
            model.index_shape(shape)
    except ValueError:
        factor = model.total_top_factor if _two_level(info) else model.downsample_factor
        raise UsageError(f"item {item_id!r} of shape {list(shape)} is not divisible by the autoencoder's "
                         f"downsampling factor {list(factor)}; preprocess with a fitting --shape.") from None


def _batches(store: Store, ids: list[str], batch_size: int):
    """Consecutive runs of items of one shape, at most ``batch_size`` long."""
    run: list[str] = []
    shape = None
    for item_id in ids:
        s = tuple(store.array(item_id).shape)
        if run and (s != shape or len(run) == batch_size):
            yield run
            run = []
        run.append(item_id)
        shape = s
    if run:
        yield run


def run(settings: EncodeSettings, out: Path | str, *, overwrite: bool = False,
        progress: Callable[[int, int, str], None] | None = None) -> EncodeResult:
    """Encode ``settings.data``'s store with ``settings.ae`` into the ``latents`` artefact ``out``.

    Args:
        settings: resolved settings.
        out: output directory.
        overwrite: replace an existing ``out`` (and discard an interrupted ``out.partial`` with
            other settings).
        progress: ``progress(done, total, text)`` after every batch.
    """
    device = inference_device(settings.runtime.device, settings.runtime.threads)
    store, refs = _open_inputs(settings)
    ids = store.ids()
    if not ids:
        raise UsageError(f"{store.path} has no complete items to encode.")
    model, info = load_autoencoder_record(settings.ae, device)
    try:
        tiler = AutoencoderTiler(model, TilingOptions(**settings.tiling.options()), device)
    except ValueError as err:
        raise UsageError(str(err)) from None
    num_embeddings = info.config.get("num_embeddings") if model.is_vq else None
    if num_embeddings is not None and num_embeddings > MAX_INT16_CODES:
        raise UsageError(f"the autoencoder's codebook has {num_embeddings} codes, more than int16 indices hold "
                         f"({MAX_INT16_CODES}); train it with model.num_embeddings <= {MAX_INT16_CODES}.")
    scale = 1.0
    if not model.is_vq:
        if info.latent_scale is None:
            raise UsageError(f"{settings.ae} has no latent_scale in its model.json; re-run medgen train-ae.")
        scale = float(info.latent_scale)
    first_of_shape = {tuple(store.array(i).shape): i for i in reversed(ids)}
    for shape, item_id in first_of_shape.items():
        _check_item(model, info, item_id, shape)

    out = fs.location(out)  # a directory or a URL (s3://...)
    writer = ArtefactWriter(out, "latents", settings.model_dump(mode="json"), refs, overwrite=overwrite, resume=True)
    partial = writer.open()
    levels = _levels(model, info, settings.dtype)
    for lv in levels:
        lv.store = Store.create(writer.store_path(lv.name), name=lv.name, level=lv.level)
    # one listing per store, then O(1) per item: resuming costs what is left, not N^2 key listings
    finished = set.intersection(*(lv.store.complete_ids() for lv in levels))
    todo = [i for i in ids if i not in finished]
    skipped = len(ids) - len(todo)
    if skipped:
        log.info("resuming: %d of %d items already encoded", skipped, len(ids))
    done = skipped
    with _stacked_writers(levels, info.spatial_dims) as writers:
        for batch_ids in _batches(store, todo, settings.batch_size):
            done = _encode_batch(store, batch_ids, tiler, info, levels, scale, writers) + done
            if progress is not None:
                progress(done, len(ids), batch_ids[-1])
    summary = _summary(model, info, levels, num_embeddings, scale, settings, store)
    _preview(partial, store, levels, num_embeddings)
    writer.commit(summary)
    log.info("wrote %s (%d items, %s)", out, len(ids), summary["grid_shape"])
    return EncodeResult(out=out, summary=summary, encoded=len(todo), skipped=skipped)


@contextmanager
def _stacked_writers(levels: list[_Level], spatial_dims: int):
    """2D latents are written stacked (one object per shard, `medgen_cli.io.stacked`); volumes keep one array
    each ({}). The writers are flushed on the way out, also when interrupted: the items encoded so far are
    whole, so a resume starts after them (a killed run loses at most the items of its unflushed shards)."""
    writers = {lv.name: lv.store.stack_writer() for lv in levels} if spatial_dims == 2 else {}
    try:
        yield writers
    finally:
        for stacked in writers.values():
            stacked.flush()


def _encode_batch(store: Store, batch_ids: list[str], tiler: AutoencoderTiler, info: AutoencoderRecord,
                  levels: list[_Level], scale: float, writers: dict[str, Any]) -> int:
    """Encode and write one batch of items of one shape; returns its size."""
    arrays = np.stack(store.read_many(batch_ids))
    try:
        outputs = _encode(tiler, info, arrays, scale)
    except ValueError as err:  # e.g. a tiling.max_gib too small for any tile
        raise UsageError(f"item {batch_ids[0]} of {store.path} (shape {list(arrays.shape[1:])}) cannot be "
                         f"encoded: {err}") from None
    if tiler.last_run is not None:
        log.info("items %s encoded tile by tile: %s", ", ".join(batch_ids), tiler.last_run.plan)
    for k, item_id in enumerate(batch_ids):
        meta = store.meta(item_id)
        for lv, values in zip(levels, outputs):
            extra = {"latent_scale": scale} if lv.level == "latents" else {}
            lmeta = latent_meta(meta, lv.factor, source_id=item_id, level=lv.level, **extra)
            (writers[lv.name].add if writers else lv.store.write)(item_id, values[k], lmeta, dtype=lv.dtype)
    return len(batch_ids)


def _common(shapes: set[tuple[int, ...]]) -> list[int] | None:
    return list(next(iter(shapes))) if len(shapes) == 1 else None


def _preview(partial: Path, images: Store, levels: list[_Level], num_embeddings: int | None) -> None:
    """``previews/latents.png``: a few items next to their code maps or latent channels."""
    ordered = sorted(levels, key=lambda lv: lv.name != "top")  # coarse to fine
    try:
        latent_preview(partial / "previews" / "latents.png", images, {lv.level: lv.store for lv in ordered},
                       num_embeddings)
    except Exception as err:  # noqa: BLE001 - a picture is never worth failing the step for (tests draw it)
        log.warning("could not draw a preview of the latents: %s", err)


def _summary(model, info: AutoencoderRecord, levels: list[_Level], num_embeddings, scale, settings: EncodeSettings,
             data: Store) -> dict[str, Any]:
    stores: dict[str, Any] = {}
    for lv in levels:
        shapes = {tuple(lv.store.array(i).shape) for i in lv.store.ids()}
        grid = {s[1:] if lv.level == "latents" else s for s in shapes}
        stores[lv.name] = {"level": lv.level, "grid_shape": _common(grid), "factor": list(lv.factor),
                           "dtype": lv.dtype, "num_embeddings": num_embeddings, "items": len(lv.store.ids())}
    splits: dict[str, int] = {}
    for split in levels[0].store.attr_values(levels[0].store.ids(), "split", ""):
        splits[str(split)] = splits.get(str(split), 0) + 1
    image_shapes = {tuple(data.array(i).shape) for i in data.ids()}
    return {
        "ae_kind": info.kind,
        "is_vq": bool(model.is_vq),
        "num_embeddings": num_embeddings,
        "grid_shape": stores["main"]["grid_shape"],
        "latent_channels": int(model.latent_channels),
        "latent_scale": None if model.is_vq else scale,
        "spatial_dims": int(info.spatial_dims),
        "image_shape": _common(image_shapes),
        "data_store": settings.store,
        "items": len(levels[0].store.ids()),
        "splits": dict(sorted(splits.items())),
        "stores": stores,
    }
