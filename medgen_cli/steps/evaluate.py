"""``medgen evaluate``: reconstruction, sample and conditional metrics with plots and pictures.

Orchestration only: the paired metrics are the registry of `medgen_cli.metrics.items` (every
registered metric appears in ``metrics.json``, the CSVs, the table and the box plots), the
computations over stores and autoencoders `medgen_cli.metrics.features` and ``.nearest``, the
aggregates and CSVs `medgen_cli.metrics.report`, the pictures `medgen_cli.viz.evaluation`. Modes, chosen by the artefacts given (``EvaluateSettings.check_mode``):

* reconstruction (``ae`` + ``data``, split ``test`` by default): per-item and aggregate paired
  metrics of the autoencoder's deterministic reconstructions, and codebook usage and perplexity
  of VQ models; volumes too large for memory are encoded and decoded tile by tile (``tiling``:
  mode auto|always|never, max_gib, tile_size, halo, norm; `medgen_cli.inference`), with the
  whole-volume result up to float error;
* samples (``samples`` + ``data``, split ``train`` by default): Fréchet distance and MMD on pooled
  encoder features of the autoencoder found through the lineage (or ``ae``), the intensity
  distance in physical units, diversity (mean pairwise MS-SSIM) of the samples and of the real
  items, and the memorisation check against every item of ``train_split``; the encoder runs
  tile by tile on volumes too large for memory (``tiling``, as above); when the samples carry the masks
  they were drawn for and the data have masks, per-label intensity statistics (``evaluate_masks``);
* conditional (``samples`` + ``target``): paired metrics of every sample against its target item:
  the item of its ``condition_item`` id (priors joined by item), else the one item of its
  ``condition_subject`` (several samples of one condition are each scored); with ``baseline_store``
  the items of that store (e.g. the low-dose input) are scored against the same targets, once each.

The ``evaluation`` artefact::

    eval/  manifest.json  settings.yaml
           metrics.json       aggregates (mean, std, median, n of every per-item metric) and set metrics
           items.csv          per-item metrics (reconstruction or conditional)
           baseline.csv       conditional with baseline_store: per target, its baseline item's metrics
           memorisation.csv   per sample: nearest training item, its SSIM, flagged
           per_label.csv      masked samples: per label, real and generated intensity statistics
           plots/             histograms and box plots of per-item metrics, intensity histograms
           pictures/          strips, orthogonal views, MIPs, error maps (see viz.evaluation)
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..artefacts import ArtefactError, ArtefactWriter, find_upstream, input_ref
from ..errors import StepFailed, UsageError
from ..inference import AutoencoderTiler, TilingOptions
from ..io import fs
from ..io.store import Store, store_path
from ..meta import IntensityMapping
from ..metrics import diversity, frechet_distance, intensity_distance, mmd_rbf, resolve_data_range
from ..metrics.features import Progress, encoder_features, read_set, reconstruct_items
from ..metrics.nearest import nearest_training, pair_with_targets
from ..metrics.items import item_metrics
from ..metrics.report import aggregate, jsonable, mapping_note, table_rows, write_csv
from ..runtime import inference_device
from ..settings.evaluate import EvaluateSettings
from ..viz import histograms, reconstruction_grid
from ..viz import evaluation as ve
from . import evaluate_masks
from ..loaders.autoencoder import load_autoencoder, load_autoencoder_record

log = logging.getLogger(__name__)

HISTOGRAM_VALUES = 200_000  # values per set drawn in the intensity histogram


@dataclass
class EvaluateResult:
    """What ``run`` returns.

    Args:
        out: the evaluation artefact.
        mode: "reconstruction" or "samples".
        metrics: the content of ``metrics.json``.
        rows: (section, metric, value) text rows for a table.
    """

    out: Path
    mode: str
    metrics: dict[str, Any]
    rows: list[tuple[str, str, str]] = field(default_factory=list)


# ------------------------------------------------------------------------------------- helpers
def _open_store(artefact: str, name: str) -> Store:
    try:
        return Store.open(store_path(artefact, name))
    except StepFailed:  # damaged metadata: DamagedStore names the store, keep it
        raise
    except ValueError:
        stores = fs.store_names(artefact)
        raise UsageError(f"{artefact} has no store named {name!r}; it has {', '.join(stores) or 'none'}") from None


def _split_ids(store: Store, artefact: str, split: str | None, limit: int | None) -> list[str]:
    ids = store.ids(split)
    if not ids:
        where = f" in split {split!r}" if split else ""
        splits = sorted({store.item_attrs(i).get("split", "") for i in store.ids()})
        raise UsageError(f"{artefact} has no items{where} (splits present: {', '.join(splits) or 'none'})")
    return ids[:limit] if limit else ids


def report_mappings(theirs: IntensityMapping, data: IntensityMapping, theirs_text: str, data_text: str) -> None:
    """Log, once and in words, how an intensity mapping differs from the data's (`metrics.report.mapping_note`)."""
    note = mapping_note(theirs, data, theirs_text, data_text)
    if note:
        log.log(*note)


# ----------------------------------------------------------------------------------------- run
def run(settings: EvaluateSettings, out: Path | str, *, overwrite: bool = False,
        progress: Progress | None = None) -> EvaluateResult:
    """Evaluate and write the ``evaluation`` artefact ``out``.

    Args:
        settings: resolved settings (the artefacts given choose the mode).
        out: output directory.
        overwrite: replace an existing ``out``.
        progress: ``progress(done, total, text)`` while items are processed.
    """
    try:
        mode = settings.check_mode()
    except ValueError as err:
        raise UsageError(str(err)) from None
    device = inference_device(settings.runtime.device, settings.runtime.threads, settings.runtime.seed)
    inputs, ae = [], settings.ae
    if mode == "samples":
        inputs.append(input_ref(settings.samples, "samples", "samples"))
        if settings.data and not ae:
            try:
                ae = str(find_upstream(settings.samples, "autoencoder"))
            except ArtefactError:
                raise UsageError(f"no autoencoder in the lineage of {settings.samples}; pass --ae AE for the encoder features") from None
    if ae and (mode == "reconstruction" or settings.data):
        inputs.append(input_ref(ae, "autoencoder", "autoencoder"))
    if settings.data:
        inputs.append(input_ref(settings.data, "data", "preprocessed"))
    if settings.target:
        inputs.append(input_ref(settings.target, "target", "preprocessed"))

    writer = ArtefactWriter(out, "evaluation", settings.model_dump(mode="json"), inputs, overwrite=overwrite, resume=True)
    partial = writer.open()  # a killed run with the same settings is redone in place
    (partial / "plots").mkdir(exist_ok=True)
    (partial / "pictures").mkdir(exist_ok=True)
    result = EvaluateResult(fs.location(out), mode, {"mode": mode})
    try:
        if mode == "reconstruction":
            _reconstruction(settings, ae, partial, device, result, progress)
        else:
            s_store = _open_store(settings.samples, "samples")
            s_ids = _split_ids(s_store, settings.samples, None, settings.max_items)
            result.metrics["samples"] = len(s_ids)
            if settings.data:
                _distribution(settings, ae, s_store, s_ids, partial, device, result, progress)
                evaluate_masks.per_label(settings, s_store, s_ids, partial, result)
            if settings.target:
                _conditional(settings, s_store, s_ids, partial, result)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)  # nothing to resume; a corrected re-run starts clean
        raise
    metrics = jsonable(result.metrics)
    (partial / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    writer.commit(metrics)
    result.metrics = metrics
    log.info("wrote %s", out)
    return result


# ------------------------------------------------------------------------------ reconstruction
def _tiler(settings: EvaluateSettings, model: torch.nn.Module, device: torch.device) -> AutoencoderTiler:
    """The autoencoder behind its tiler (``tiling``: whole volumes, or tiles when too large for memory)."""
    try:
        return AutoencoderTiler(model, TilingOptions(**settings.tiling.options()), device)
    except ValueError as err:
        raise UsageError(str(err)) from None


def _reconstruction(settings, ae, partial, device, result, progress) -> None:
    split = settings.split or "test"
    store = _open_store(settings.data, settings.store)
    ids = _split_ids(store, settings.data, split, settings.max_items)
    model, info = load_autoencoder_record(ae, device)
    tiler = _tiler(settings, model, device)
    mapping = store.meta(ids[0]).intensity
    if info.intensity:
        report_mappings(IntensityMapping.from_dict(info.intensity), mapping, f"the autoencoder {ae} was trained on",
                        f"{settings.data} holds")
    shown = ve.pick(ids, settings.max_pictures)
    rows, codebook, kept = reconstruct_items(tiler, store, ids, device, settings.batch_size, settings.axis,
                                             set(shown), progress)
    agg = aggregate(rows)
    write_csv(partial / "items.csv", rows)
    ve.metric_plots(partial / "plots", rows, mapping.unit)
    result.metrics.update(split=split, items=len(rows), unit=mapping.unit,
                          data_range=mapping.data_range, reconstruction=agg)
    result.rows += table_rows("reconstruction", agg, mapping.unit)
    if codebook:
        result.metrics["codebook"] = codebook
        result.rows += [("codebook", k, f"{v:.4g}") for k, v in codebook.items()]
    if kept:
        pairs = [kept[i] for i in shown]
        limits = ve.grey_limits(mapping, [a for a, _, _ in pairs] + [r for _, r, _ in pairs])
        err = ve.error_limit([(a, r) for a, r, _ in pairs])
        pictures = partial / "pictures"
        reconstruction_grid(pictures / "reconstructions.png", [a for a, _, _ in pairs], [r for _, r, _ in pairs],
                            [m for _, _, m in pairs], *limits, error_vmax=err, labels=shown)
        for item_id, (a, r, m) in zip(shown, pairs):
            ve.pair_pictures(pictures, item_id, a, r, m, ("input", "reconstruction"), limits, err)


# ------------------------------------------------------------------------------------- samples
def _distribution(settings, ae, s_store, s_ids, partial, device, result, progress) -> None:
    split = settings.split or "train"
    d_store = _open_store(settings.data, settings.store)
    r_ids = _split_ids(d_store, settings.data, split, settings.max_items)
    samples, s_metas = read_set(s_store, s_ids, "sample")
    reals, r_metas = read_set(d_store, r_ids, "real")
    if samples.shape[2:] != reals.shape[2:]:
        raise UsageError(f"the samples have shape {list(samples.shape[2:])} but the items of {settings.data} "
                         f"(split {split}) {list(reals.shape[2:])}; evaluate samples against the data they model")
    if len(s_ids) < 2 or len(r_ids) < 2:
        raise UsageError(f"distribution metrics need at least 2 samples and 2 real items, got {len(s_ids)} and {len(r_ids)}")
    mapping = r_metas[0].intensity
    report_mappings(s_metas[0].intensity, mapping, "the samples are in", f"{settings.data} holds")
    model, _ = load_autoencoder(ae, device)
    tiler = _tiler(settings, model, device)
    f_s = encoder_features(tiler, samples, device, settings.batch_size)
    f_r = encoder_features(tiler, reals, device, settings.batch_size)
    data_range = resolve_data_range(mapping, reals)
    seed = settings.runtime.seed
    dist = {
        "split": split, "real_items": len(r_ids), "unit": mapping.unit, "features": f"encoder mean+std, {f_s.shape[1]} dims",
        "frechet_distance": frechet_distance(f_s, f_r), "mmd": mmd_rbf(f_s, f_r),
        "intensity_distance": intensity_distance(samples, reals, mapping, seed=seed),
        "diversity_samples": diversity(samples, data_range, max_pairs=settings.max_pairs, seed=seed),
        "diversity_real": diversity(reals, data_range, max_pairs=settings.max_pairs, seed=seed),
    }
    result.metrics["distribution"] = dist
    result.rows += [("distribution", f"{k} ({mapping.unit})" if k == "intensity_distance" else k, f"{dist[k]:.4g}")
                    for k in ("frechet_distance", "mmd", "intensity_distance", "diversity_samples", "diversity_real")]
    rng = np.random.default_rng(seed)
    values = {name: rng.choice(mapping.to_physical(x.numpy().ravel()), min(HISTOGRAM_VALUES, x.numel()), replace=False)
              for name, x in (("samples", samples), (f"real ({split})", reals))}
    histograms(partial / "plots" / "intensity_histogram.png", values, xlabel=mapping.unit, title="intensities")
    records = _memorisation(settings, samples, s_ids, d_store, data_range, partial, result, progress)
    _sample_pictures(settings, samples, s_ids, s_metas, reals, mapping, records, d_store, partial / "pictures")


def _memorisation(settings, samples, s_ids, d_store, data_range, partial, result, progress) -> list[dict[str, Any]]:
    """Every sample against every training item: its nearest one and whether it is flagged as a copy."""
    t_ids = _split_ids(d_store, settings.data, settings.train_split, None)
    threshold = settings.memorisation_threshold
    nearest, sims, flags = nearest_training(samples, d_store, t_ids, data_range, threshold, progress)
    records = [{"sample": s, "nearest_train": n, "nearest_subject": d_store.meta(n).subject, "ssim": float(v),
                "flagged": bool(f)} for s, n, v, f in zip(s_ids, nearest, sims, flags)]
    write_csv(partial / "memorisation.csv", records)
    histograms(partial / "plots" / "memorisation_ssim.png", {"nearest training item": sims}, xlabel="SSIM",
               bins=16, title=f"memorisation (threshold {threshold:g})")
    memo = {"train_split": settings.train_split, "train_items": len(t_ids), "threshold": threshold,
            "flagged": int(flags.sum()), "max_ssim": float(sims.max()), "mean_ssim": float(sims.mean()),
            "flagged_samples": [r["sample"] for r in records if r["flagged"]]}
    result.metrics["memorisation"] = memo
    result.rows += [("memorisation", f"flagged (SSIM > {threshold:g})", f"{memo['flagged']} of {len(s_ids)}"),
                    ("memorisation", "max SSIM to a training item", f"{memo['max_ssim']:.4g}")]
    if memo["flagged"]:
        log.warning("%d sample(s) are within SSIM %g of a training item: %s", memo["flagged"], threshold,
                    ", ".join(memo["flagged_samples"][:10]))
    return records


def _sample_pictures(settings, samples, s_ids, s_metas, reals, mapping, records, d_store, pictures: Path) -> None:
    """The samples on the data's grey scale, and each flagged sample beside its nearest training item."""
    arrays = {i: samples[k, 0].numpy() for k, i in enumerate(s_ids)}
    metas = dict(zip(s_ids, s_metas))
    limits = ve.grey_limits(mapping, [samples.numpy(), reals.numpy()])
    shown = ve.pick(s_ids, settings.max_pictures)
    if shown:
        ve.set_grid(pictures / "samples.png", [arrays[i] for i in shown], [metas[i] for i in shown], shown, limits,
                    title="samples")
    for i in shown:
        ve.item_pictures(pictures, i, arrays[i], metas[i], "sample", limits)
        if arrays[i].ndim == 3:
            ve.mip_pictures(pictures / f"{i}_mip.png", [arrays[i]], metas[i], ["sample"], limits, i)
    for r in records:
        if r["flagged"]:
            near, meta = d_store.read(r["nearest_train"]), d_store.meta(r["nearest_train"])
            ve.pair_grid(pictures / "memorisation" / f"{r['sample']}.png", [arrays[r["sample"]]], [near], [meta],
                         [r["sample"]], ("sample", "nearest training item", "difference"), limits,
                         ve.error_limit([(arrays[r["sample"]], near)]),
                         title=f"{r['sample']} ~ {r['nearest_train']} (subject {r['nearest_subject']}): SSIM {r['ssim']:.3f}")


def _conditional(settings, s_store, s_ids, partial, result) -> None:
    t_store = _open_store(settings.target, settings.target_store)
    pairs = pair_with_targets(s_store, s_ids, t_store, settings.split, settings.target)
    shown = set(ve.pick(s_ids, settings.max_pictures))
    rows, kept = [], []
    for sample_id, subject, target_id in pairs:
        pred = s_store.read(sample_id)
        ref, meta = t_store.read_item(target_id)
        rows.append({"item": sample_id, "subject": subject, "target": target_id,
                     **item_metrics(pred, ref, meta, settings.axis, sample_id)})
        if sample_id in shown:
            kept.append((sample_id, ref, pred, meta))
    unit = t_store.meta(pairs[0][2]).intensity.unit
    agg = aggregate(rows)
    write_csv(partial / "items.csv", rows)
    ve.metric_plots(partial / "plots", rows, unit)
    result.metrics["conditional"] = {"pairs": len(rows), "subjects": len({r["subject"] for r in rows}),
                                     "targets": len({r["target"] for r in rows}), "split": settings.split,
                                     "unit": unit, "metrics": agg}
    result.rows += table_rows("conditional", agg, unit)
    if settings.baseline_store:
        _baseline(settings, t_store, [t for _, _, t in pairs], partial, result, unit)
    if kept:
        limits = ve.grey_limits(kept[0][3].intensity, [a for _, r, p, _ in kept for a in (r, p)])
        err = ve.error_limit([(r, p) for _, r, p, _ in kept])
        pictures = partial / "pictures"
        ve.pair_grid(pictures / "conditional.png", [r for _, r, _, _ in kept], [p for _, _, p, _ in kept],
                     [m for *_, m in kept], [i for i, *_ in kept], ("target", "sample", "error"), limits, err)
        for sample_id, ref, pred, meta in kept:
            ve.pair_pictures(pictures, sample_id, ref, pred, meta, ("target", "sample"), limits, err)


def _baseline(settings, t_store: Store, targets: list[str], partial: Path, result: EvaluateResult, unit: str) -> None:
    """Score the baseline store's item of each target id (once per target) against the target.

    A model that improves on its input must beat this: e.g. the low-dose copy itself against the
    full-dose image, next to the model's samples given that low-dose copy.
    """
    b_store = _open_store(settings.target, settings.baseline_store)
    rows = []
    for target_id in dict.fromkeys(targets):
        if target_id not in b_store:
            raise UsageError(f"the baseline store {settings.baseline_store} of {settings.target} has no item {target_id!r}; "
                             "choose a store derived in the same preprocess run (its items share the ids of main)")
        ref, meta = t_store.read_item(target_id)
        rows.append({"item": target_id, "subject": meta.subject, "target": target_id,
                     **item_metrics(b_store.read(target_id), ref, meta, settings.axis, target_id)})
    agg = aggregate(rows)
    write_csv(partial / "baseline.csv", rows)
    result.metrics["baseline"] = {"store": settings.baseline_store, "targets": len(rows), "unit": unit, "metrics": agg}
    result.rows += table_rows(f"baseline ({settings.baseline_store})", agg, unit)
