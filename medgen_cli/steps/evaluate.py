"""``medgen evaluate``: reconstruction, sample and conditional metrics with plots and pictures.

Orchestration only (the computations are in ``evaluate_metrics``, the pictures in
``evaluate_pictures``). Modes, chosen by the artefacts given (``EvaluateSettings.check_mode``):

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
           pictures/          strips, orthogonal views, MIPs, error maps (see evaluate_pictures)
"""

from __future__ import annotations

import csv
import json
import logging
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..artefacts import ArtefactError, ArtefactWriter, find_upstream, input_ref
from ..errors import StepFailed, UsageError
from ..inference import AutoencoderTiler, TilingOptions
from ..meta import IntensityMapping
from ..io import fs
from ..io.store import Store, store_path
from ..metrics import diversity, frechet_distance, intensity_distance, mmd_rbf, resolve_data_range
from ..settings.evaluate import EvaluateSettings
from ..train.precision import select_device
from ..viz import box_plot, histograms, reconstruction_grid
from . import evaluate_metrics as em
from . import evaluate_masks
from . import evaluate_pictures as ep
from ._load import load_autoencoder

log = logging.getLogger(__name__)

ID_COLUMNS = ("item", "subject", "split", "target")
BOX_GROUPS = {  # one box plot per unit: metrics that share an axis
    "similarity": ("ssim", "ssim_slicewise", "ms_ssim"),
    "psnr": ("psnr", "psnr_phys"),
    "error": ("mae", "rmse"),
    "error_phys": ("mae_phys", "rmse_phys"),
}
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


def stats(values) -> dict[str, Any]:
    """mean, std, median and n of per-item values (non-finite values, e.g. an exact PSNR, are counted apart)."""
    v = np.asarray(values, dtype=np.float64)
    finite = v[np.isfinite(v)]
    out: dict[str, Any] = {"mean": None, "std": None, "median": None, "n": int(v.size)}
    if finite.size:
        out.update(mean=float(finite.mean()), std=float(finite.std()), median=float(np.median(finite)))
    if finite.size < v.size:
        out["n_nonfinite"] = int(v.size - finite.size)
    return out


def aggregate(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per-metric ``stats`` over the rows (a metric missing from some rows is aggregated over the others)."""
    names = list(dict.fromkeys(k for r in rows for k in r if k not in ID_COLUMNS))
    return {k: stats([r[k] for r in rows if k in r]) for k in names}


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, (np.integer, np.bool_)):
        return value.item()
    return value


def write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    names = list(dict.fromkeys(k for r in rows for k in r))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=names)
        writer.writeheader()
        writer.writerows(rows)
    return path


def metric_plots(directory: Path, rows: list[dict[str, Any]], unit: str) -> list[Path]:
    """A histogram per metric and a box plot per unit of the per-item values."""
    columns = {k: np.asarray([r[k] for r in rows if k in r], np.float64) for k in aggregate(rows)}
    columns = {k: v for k, v in columns.items() if np.isfinite(v).any()}
    paths = [histograms(directory / f"hist_{k}.png", {k: v}, xlabel=k, bins=min(32, max(4, v.size)),
                        title=f"{k} per item") for k, v in columns.items()]
    labels = {"similarity": "SSIM", "psnr": "dB", "error": "stored units", "error_phys": unit}
    for group, names in BOX_GROUPS.items():
        present = {k: columns[k] for k in names if k in columns}
        if present:
            paths.append(box_plot(directory / f"box_{group}.png", present, ylabel=labels[group], title=f"{group} per item"))
    return paths


PER_ITEM_METHODS = ("percentile", "zscore", "minmax")  # mappings fitted to each image's own values


def report_mappings(theirs: IntensityMapping, data: IntensityMapping, theirs_text: str, data_text: str) -> None:
    """Say, once and in words, how an intensity mapping differs from the data's.

    A mapping fitted per image (MR percentiles, z-scores, min-max) differs between subjects only in
    its physical end points: that is expected and logged as information. Any other difference (a
    different window, unit, stored range or transform) is a warning, since the metrics use the data's.
    """
    if theirs == data:
        return
    same_scale = all(getattr(theirs, f) == getattr(data, f) for f in ("method", "unit", "out_low", "out_high", "clip", "transform"))
    if same_scale and data.method in PER_ITEM_METHODS:
        log.info("intensities are mapped per image (%s to [%g, %g]), so their physical end points differ between "
                 "subjects as expected; each item's metrics use its own mapping.", data.method, data.out_low, data.out_high)
        return
    log.warning("%s intensities mapped as %s, but %s %s; the metrics use the data's mapping, so physical-unit "
                "errors may not be comparable.", theirs_text, theirs.describe(), data_text, data.describe())


def _table(section: str, agg: dict[str, dict[str, Any]], unit: str) -> list[tuple[str, str, str]]:
    rows = []
    for name, s in agg.items():
        label = f"{name} ({unit})" if name in ("mae_phys", "rmse_phys") else f"{name} (dB)" if "psnr" in name else name
        value = "n/a" if s["mean"] is None else f"{s['mean']:.4g} ± {s['std']:.2g} (median {s['median']:.4g}, n={s['n']})"
        rows.append((section, label, value))
    return rows


# ----------------------------------------------------------------------------------------- run
def run(settings: EvaluateSettings, out: Path | str, *, overwrite: bool = False,
        progress: em.Progress | None = None) -> EvaluateResult:
    """Evaluate and write the ``evaluation`` artefact ``out``.

    Args:
        settings: resolved settings (the artefacts given choose the mode).
        out: output directory.
        overwrite: replace an existing ``out``.
        progress: ``progress(done, total, text)`` while items are processed.
    """
    try:
        mode = settings.check_mode()
        device = select_device(settings.runtime.device)
    except ValueError as err:
        raise UsageError(str(err)) from None
    if settings.runtime.threads:
        torch.set_num_threads(settings.runtime.threads)
    torch.manual_seed(settings.runtime.seed)
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
    metrics = _jsonable(result.metrics)
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
    model, info = load_autoencoder(ae, device)
    tiler = _tiler(settings, model, device)
    mapping = store.meta(ids[0]).intensity
    if info.get("intensity"):
        report_mappings(IntensityMapping.from_dict(info["intensity"]), mapping, f"the autoencoder {ae} was trained on",
                        f"{settings.data} holds")
    shown = ep.pick(ids, settings.max_pictures)
    rows, codebook, kept = em.reconstruct_items(tiler, store, ids, device, settings.batch_size, settings.axis,
                                                set(shown), progress)
    agg = aggregate(rows)
    write_csv(partial / "items.csv", rows)
    metric_plots(partial / "plots", rows, mapping.unit)
    result.metrics.update(split=split, items=len(rows), unit=mapping.unit,
                          data_range=mapping.data_range, reconstruction=agg)
    result.rows += _table("reconstruction", agg, mapping.unit)
    if codebook:
        result.metrics["codebook"] = codebook
        result.rows += [("codebook", k, f"{v:.4g}") for k, v in codebook.items()]
    if kept:
        pairs = [kept[i] for i in shown]
        limits = ep.grey_limits(mapping, [a for a, _, _ in pairs] + [r for _, r, _ in pairs])
        err = ep.error_limit([(a, r) for a, r, _ in pairs])
        pictures = partial / "pictures"
        reconstruction_grid(pictures / "reconstructions.png", [a for a, _, _ in pairs], [r for _, r, _ in pairs],
                            [m for _, _, m in pairs], *limits, error_vmax=err, labels=shown)
        for item_id, (a, r, m) in zip(shown, pairs):
            ep.pair_pictures(pictures, item_id, a, r, m, ("input", "reconstruction"), limits, err)


# ------------------------------------------------------------------------------------- samples
def _distribution(settings, ae, s_store, s_ids, partial, device, result, progress) -> None:
    split = settings.split or "train"
    d_store = _open_store(settings.data, settings.store)
    r_ids = _split_ids(d_store, settings.data, split, settings.max_items)
    samples, s_metas = em.read_set(s_store, s_ids, "sample")
    reals, r_metas = em.read_set(d_store, r_ids, "real")
    if samples.shape[2:] != reals.shape[2:]:
        raise UsageError(f"the samples have shape {list(samples.shape[2:])} but the items of {settings.data} "
                         f"(split {split}) {list(reals.shape[2:])}; evaluate samples against the data they model")
    if len(s_ids) < 2 or len(r_ids) < 2:
        raise UsageError(f"distribution metrics need at least 2 samples and 2 real items, got {len(s_ids)} and {len(r_ids)}")
    mapping = r_metas[0].intensity
    report_mappings(s_metas[0].intensity, mapping, "the samples are in", f"{settings.data} holds")
    model, _ = load_autoencoder(ae, device)
    tiler = _tiler(settings, model, device)
    f_s = em.encoder_features(tiler, samples, device, settings.batch_size)
    f_r = em.encoder_features(tiler, reals, device, settings.batch_size)
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

    # memorisation: every sample against every training item
    t_ids = _split_ids(d_store, settings.data, settings.train_split, None)
    threshold = settings.memorisation_threshold
    nearest, sims, flags = em.nearest_training(samples, d_store, t_ids, data_range, threshold, progress)
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

    # pictures: the samples on the data's grey scale, and each flagged sample beside its nearest item
    pictures = partial / "pictures"
    arrays = {i: samples[k, 0].numpy() for k, i in enumerate(s_ids)}
    metas = dict(zip(s_ids, s_metas))
    limits = ep.grey_limits(mapping, [samples.numpy(), reals.numpy()])
    shown = ep.pick(s_ids, settings.max_pictures)
    if shown:
        ep.set_grid(pictures / "samples.png", [arrays[i] for i in shown], [metas[i] for i in shown], shown, limits,
                    title="samples")
    for i in shown:
        ep.item_pictures(pictures, i, arrays[i], metas[i], "sample", limits)
        if arrays[i].ndim == 3:
            ep.mip_pictures(pictures / f"{i}_mip.png", [arrays[i]], metas[i], ["sample"], limits, i)
    for r in records:
        if r["flagged"]:
            near, meta = d_store.read(r["nearest_train"]), d_store.meta(r["nearest_train"])
            ep.pair_grid(pictures / "memorisation" / f"{r['sample']}.png", [arrays[r["sample"]]], [near], [meta],
                         [r["sample"]], ("sample", "nearest training item", "difference"), limits,
                         ep.error_limit([(arrays[r["sample"]], near)]),
                         title=f"{r['sample']} ~ {r['nearest_train']} (subject {r['nearest_subject']}): SSIM {r['ssim']:.3f}")


def _conditional(settings, s_store, s_ids, partial, result) -> None:
    t_store = _open_store(settings.target, settings.target_store)
    pairs = em.pair_with_targets(s_store, s_ids, t_store, settings.split, settings.target)
    shown = set(ep.pick(s_ids, settings.max_pictures))
    rows, kept = [], []
    for sample_id, subject, target_id in pairs:
        pred = s_store.read(sample_id)
        ref, meta = t_store.read_item(target_id)
        rows.append({"item": sample_id, "subject": subject, "target": target_id,
                     **em.item_metrics(pred, ref, meta, settings.axis, sample_id)})
        if sample_id in shown:
            kept.append((sample_id, ref, pred, meta))
    unit = t_store.meta(pairs[0][2]).intensity.unit
    agg = aggregate(rows)
    write_csv(partial / "items.csv", rows)
    metric_plots(partial / "plots", rows, unit)
    result.metrics["conditional"] = {"pairs": len(rows), "subjects": len({r["subject"] for r in rows}),
                                     "targets": len({r["target"] for r in rows}), "split": settings.split,
                                     "unit": unit, "metrics": agg}
    result.rows += _table("conditional", agg, unit)
    if settings.baseline_store:
        _baseline(settings, t_store, [t for _, _, t in pairs], partial, result, unit)
    if kept:
        limits = ep.grey_limits(kept[0][3].intensity, [a for _, r, p, _ in kept for a in (r, p)])
        err = ep.error_limit([(r, p) for _, r, p, _ in kept])
        pictures = partial / "pictures"
        ep.pair_grid(pictures / "conditional.png", [r for _, r, _, _ in kept], [p for _, _, p, _ in kept],
                     [m for *_, m in kept], [i for i, *_ in kept], ("target", "sample", "error"), limits, err)
        for sample_id, ref, pred, meta in kept:
            ep.pair_pictures(pictures, sample_id, ref, pred, meta, ("target", "sample"), limits, err)


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
                     **em.item_metrics(b_store.read(target_id), ref, meta, settings.axis, target_id)})
    agg = aggregate(rows)
    write_csv(partial / "baseline.csv", rows)
    result.metrics["baseline"] = {"store": settings.baseline_store, "targets": len(rows), "unit": unit, "metrics": agg}
    result.rows += _table(f"baseline ({settings.baseline_store})", agg, unit)
