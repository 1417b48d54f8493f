"""``medgen export``: items of a store as files radiology tools open, or a trained model as
TorchScript, ONNX or safetensors with a model card.

Orchestration only: the formats are written by ``medgen_cli.export.images.export_item`` and
``medgen_cli.export.models``. Sources:

* a preprocessed artefact (store ``main`` or a derived one with ``store``), a samples artefact
  (store ``samples``; every item is marked synthetic), or a latents artefact with ``decode``: its
  codes (int16 VQ indices; VQ-VAE-2 with the ``top`` store) or scaled KL latents are decoded through
  the autoencoder found in its lineage, and each decoded image takes the geometry and intensity
  mapping of the data item it was encoded from; volumes too large for memory are decoded tile by
  tile (``tiling``: mode auto|always|never, max_gib, tile_size, halo, norm; `medgen_cli.inference`),
  equal to the whole-volume decode up to float error;
* an autoencoder artefact for the model formats.

The ``export`` artefact holds the exported files at its top level (``<id>.nii.gz``, ``<id>/`` DICOM
series, ...) plus ``index.csv`` (item, subject, split, synthetic, files), or for models the files of
``medgen_cli.export.models`` plus ``model.json`` and ``checks.json`` (the largest difference of every
exported module to PyTorch).
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..artefacts import ArtefactWriter, find_upstream, input_ref, lineage, require
from ..safety import normal_path as _normal
from ..errors import StepFailed, UsageError
from ..export import models as mx
from ..export.images import export_item
from ..inference import AutoencoderTiler, TilingOptions
from ..meta import IntensityMapping
from ..io import fs
from ..io.store import DamagedStore, Store, store_path
from ..loaders.summaries import summary_record
from ..models.registry import build_autoencoder
from ..runtime import inference_device
from ..settings.evaluate import ExportSettings
from ..loaders import MODEL_FILE, MODEL_JSON
from ..loaders.autoencoder import AutoencoderRecord, load_autoencoder, load_autoencoder_record
from ..metrics.features import batches

log = logging.getLogger(__name__)

IMAGE_SOURCES = ("preprocessed", "samples", "latents")
DEFAULT_STORE = {"preprocessed": "main", "samples": "samples", "latents": "main"}
Progress = Callable[[int, int, str], None]


@dataclass
class ExportResult:
    """What ``run`` returns.

    Args:
        out: the export artefact.
        summary: the manifest summary (format, items or modules, checks).
        files: files and directories written (top level of ``out``).
    """

    out: Path
    summary: dict[str, Any]
    files: list[str] = field(default_factory=list)


def run(settings: ExportSettings, out: Path | str, *, overwrite: bool = False,
        progress: Progress | None = None) -> ExportResult:
    """Export ``settings.source`` as ``settings.format`` into the ``export`` artefact ``out``.

    Args:
        settings: resolved settings.
        out: output directory.
        overwrite: replace an existing ``out``.
        progress: ``progress(done, total, text)`` per item or module.
    """
    if not settings.source:
        raise UsageError("nothing to export: give the source artefact (medgen export SRC --format ... --out DIR)")
    if settings.is_model_format:
        return _export_model(settings, fs.location(out), overwrite, progress)
    return _export_images(settings, fs.location(out), overwrite, progress)


def _writer(settings: ExportSettings, out: Path, inputs, overwrite: bool) -> tuple[ArtefactWriter, Path]:
    writer = ArtefactWriter(out, "export", settings.model_dump(mode="json"), inputs, overwrite=overwrite, resume=True)
    return writer, writer.open()  # a killed run with the same settings is redone in place


# -------------------------------------------------------------------------------------- images
def _select(store: Store, settings: ExportSettings, where: str) -> list[str]:
    ids = store.ids(settings.split)
    in_split = f" in split {settings.split!r}" if settings.split else ""
    if settings.items:
        present = set(ids)
        missing = [i for i in settings.items if i not in present]
        if missing:
            raise UsageError(f"{where} has no item(s) {', '.join(missing[:5])}{in_split}")
        ids = list(dict.fromkeys(settings.items))
    if not ids:
        raise UsageError(f"{where} has no items{in_split}")
    return ids


def _export_images(settings: ExportSettings, out: Path, overwrite: bool, progress: Progress | None) -> ExportResult:
    source = settings.source
    kind = require(source, IMAGE_SOURCES).kind
    if kind == "latents" and not settings.decode:
        raise UsageError(f"{source} holds latents, not images; pass --decode to decode them through their autoencoder")
    if settings.decode and kind != "latents":
        raise UsageError(f"--decode applies to latents artefacts, but {source} is a {kind} artefact")
    name = settings.store or DEFAULT_STORE[kind]
    try:
        store = Store.open(store_path(source, name))
    except DamagedStore:
        raise
    except ValueError:
        stores = fs.store_names(source)
        raise UsageError(f"{source} has no store named {name!r}; it has {', '.join(stores) or 'none'}") from None
    ids = _select(store, settings, f"{source} (store {name})")
    inputs = [input_ref(source, "source", kind)]
    if settings.decode:
        ae = find_upstream(source, "autoencoder")
        inputs.append(input_ref(ae, "autoencoder", "autoencoder"))
        device = inference_device(settings.runtime.device, settings.runtime.threads)
        items = _decoded(source, store, ids, ae, device, settings.batch_size, TilingOptions(**settings.tiling.options()))
    else:
        inference_device("cpu", settings.runtime.threads)  # torch's threads only: nothing runs on a device
        items = ((i, store.read(i), store.meta(i)) for i in ids)

    writer, partial = _writer(settings, out, inputs, overwrite)
    try:
        rows = []
        for n, (item_id, arr, meta) in enumerate(items, 1):
            synthetic = kind == "samples" or bool(meta.attrs.get("synthetic", False))
            try:
                written = export_item(arr, meta, partial, item_id, settings.format, synthetic=synthetic)
            except ValueError as err:
                raise StepFailed(f"could not export item {item_id} of {source}: {err}") from None
            tops = sorted({p.relative_to(partial).parts[0] for p in written})
            rows.append({"item": item_id, "subject": meta.subject, "split": meta.attrs.get("split", ""),
                         "synthetic": synthetic, "files": ";".join(tops)})
            if progress:
                progress(n, len(ids), item_id)
        with (partial / "index.csv").open("w", newline="") as f:
            table = csv.DictWriter(f, fieldnames=list(rows[0]))
            table.writeheader()
            table.writerows(rows)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)  # nothing worth resuming; a corrected re-run starts clean
        raise
    summary = {"format": settings.format, "source": str(source), "source_kind": kind, "store": name,
               "items": len(rows), "synthetic": sum(r["synthetic"] for r in rows), "decoded": settings.decode}
    writer.commit(summary)
    log.info("exported %d item(s) of %s as %s to %s", len(rows), source, settings.format, out)
    return ExportResult(out, summary, fs.listdir(out))


def _decoded(source: str, store: Store, ids: list[str], ae: Path, device: torch.device, batch_size: int,
             tiling: TilingOptions):
    """(id, decoded image, meta) of latents items (the ``encode-latents`` layout).

    int16 codes go through ``decode_indices`` (VQ-VAE-2: with the same item of the ``top`` store),
    float latents are divided by the KL latent scale and go through ``decode_latents``, whole or tile
    by tile (``tiling``: volumes too large for memory, ``medgen_cli.inference``). A latent item
    carries the geometry of its grid, so the decoded image takes the metadata (affine, intensity
    mapping, subject) of its source item (``source_id``) in the data artefact the latents were made from.
    """
    manifest = require(source, "latents")
    latents = summary_record("latents", manifest.summary, source)
    data_ref = next((r for r in manifest.inputs if r.role == "data"), None)
    data_store = store_path(data_ref.path, latents.data_store) if data_ref else "(none recorded)"
    try:
        data = Store.open(data_store)
    except DamagedStore:
        raise
    except ValueError:
        raise UsageError(f"the data of {source} ({data_store}) is not readable; decoded images take their "
                         "geometry and intensity mapping from its items") from None
    model, info = load_autoencoder_record(ae, device)
    try:
        tiler = AutoencoderTiler(model, tiling, device)
    except ValueError as err:
        raise UsageError(str(err)) from None
    top = None
    if "top" in latents.stores:  # two levels of codes (VQ-VAE-2): decode the bottom codes with the top ones
        try:
            top = Store.open(store_path(source, "top"))
        except DamagedStore:
            raise
        except ValueError:
            raise UsageError(f"{source} holds VQ-VAE-2 bottom codes but no top store (top.zarr)") from None
    scale = float(info.latent_scale or 1.0)
    for chunk, arrays, _ in batches(store, ids, batch_size):
        tops = None if top is None else np.stack([top.read(i) for i in chunk])
        try:
            if np.issubdtype(store.array(chunk[0]).dtype, np.integer):
                codes = arrays.astype(np.int64)  # int16 codes, read as float32 (exact below 2**24)
                images = tiler.decode_indices(*([codes] if tops is None else [tops.astype(np.int64), codes]))
            else:
                images = tiler.decode_latents(arrays.astype(np.float32) / scale)
        except (ValueError, RuntimeError, IndexError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise UsageError(f"item {chunk[0]} of {store.path} (shape {list(arrays.shape[1:])}) does not decode "
                             f"with {ae}: {first}") from None
        for item_id, image in zip(chunk, images[:, 0].astype(np.float32, copy=False)):
            source_id = store.item_attrs(item_id).get("source_id", item_id)
            if not data.is_complete(source_id):
                raise UsageError(f"latent item {item_id} comes from item {source_id}, which {data_store} does not hold")
            yield item_id, image, data.meta(source_id)


# -------------------------------------------------------------------------------------- models
def _export_model(settings: ExportSettings, out: Path, overwrite: bool, progress: Progress | None) -> ExportResult:
    source, fmt = settings.source, settings.format
    manifest = require(source, "autoencoder")
    if fmt == "onnx" and (reason := mx.onnx_missing()):
        raise UsageError(reason)
    device = inference_device("cpu", settings.runtime.threads)  # exported modules run anywhere; trace on the CPU
    model, info = load_autoencoder(source, device)  # model.json as read: the export holds a copy
    record = AutoencoderRecord.model_validate(info)
    trained = summary_record("autoencoder", manifest.summary, source) if fmt == "safetensors" else None  # the card's
    writer, partial = _writer(settings, out, [input_ref(source, "autoencoder", "autoencoder")], overwrite)
    try:
        (partial / MODEL_JSON).write_text(json.dumps(info, indent=2) + "\n")
        if fmt == "safetensors":
            checks = [_safetensors(model, record, partial, settings.runtime.seed)]
            data = _data_summary(manifest.settings)
            card = mx.model_card(record, trained, manifest.settings, data, lineage(source), _normal(source))
            (partial / "README.md").write_text(card)
        else:
            mapping = IntensityMapping.from_dict(record.intensity)
            value_range = (min(mapping.out_low, mapping.out_high), max(mapping.out_low, mapping.out_high))
            plans = mx.plan_autoencoder(model, record.input_shape, value_range, settings.runtime.seed)
            checks = []
            for n, plan in enumerate(plans, 1):
                checks.append(mx.export_checked(plan, fmt, partial, settings.tolerance).record())
                if progress:
                    progress(n, len(plans), plan.name)
        (partial / "checks.json").write_text(json.dumps({"tolerance": settings.tolerance, "modules": checks}, indent=2) + "\n")
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    summary = {"format": fmt, "source": str(source), "source_kind": "autoencoder", "model": record.kind,
               "tolerance": settings.tolerance, "modules": checks}
    writer.commit(summary)
    log.info("exported %s as %s to %s", source, fmt, out)
    return ExportResult(out, summary, fs.listdir(out))


@torch.no_grad()
def _safetensors(model, info: AutoencoderRecord, partial: Path, seed: int) -> dict[str, Any]:
    """Write the weights, rebuild the model from the written files alone and compare reconstructions."""
    path = partial / MODEL_FILE
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(path))
    rebuilt = build_autoencoder(**info.config)
    rebuilt.load_state_dict(load_file(str(path)))
    rebuilt.eval()
    x = mx.random_input(model, info.input_shape, 2, seed=seed)
    diff = float((rebuilt.decode_latents(rebuilt.encode_to_latents(x)) - model.decode_latents(model.encode_to_latents(x))).abs().max())
    if diff != 0.0:
        raise StepFailed(f"{path.name} does not rebuild the model exactly (difference {diff:.3g})")
    return {"name": "model", "file": path.name, "max_abs_diff": diff, "check_input_shapes": [list(x.shape)]}


def _data_summary(settings: dict[str, Any]) -> dict[str, Any] | None:
    """The training store's summary for the model card, when the data artefact is still there."""
    data = settings.get("data") or {}
    try:
        return Store.open(store_path(data.get("path", ""), data.get("store", "main"))).summary()
    except (ValueError, OSError):
        log.warning("the training data %s is not readable; the model card omits its description", data.get("path"))
        return None
