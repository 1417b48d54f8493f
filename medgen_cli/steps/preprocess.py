"""``medgen preprocess``: raw scans -> one artefact holding zarr stores of items.

Per input (in a worker process when ``runtime.workers > 1``)::

    read (physical units) -> reorient -> resample | fit -> crop/pad -> [derive paired images]
      -> intensity mapping -> volume | slices | sequences -> write items (complete flag last)

Derived stores hold the same item ids as ``main``: in volume mode the derived volume (DRRs: one item
per view, ``<id>_ap``, ``<id>_lateral``); in slices and sequence modes the derived volume (lowdose,
downsample in-plane) cut at the same slice indices as the main items, so item k of ``lowdose``
pairs with item k of ``main``.

Resuming: every finished input leaves a small marker in ``OUT.partial/progress/``; a re-run with
the same settings skips those inputs and rewrites any item an interrupted run left unfinished.
Sharding (``shard=(I, N)``) processes the inputs whose index is I modulo N; every shard writes
into the same ``OUT.partial/`` and the last one to finish commits the artefact.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..artefacts import ArtefactWriter
from ..errors import UsageError
from ..io.meta import ImageMeta, IntensityMapping
from ..io.readers import ReadError, Source, discover, read_source
from ..io.store import Store, store_path
from ..preprocess import derive, intensity, slicing, spatial, splits
from ..settings import PreprocessSettings
from ..viz.previews import store_preview

log = logging.getLogger(__name__)

PROGRESS_DIR = "progress"
SHARDS_DIR = "shards"


class InputError(UsageError):
    """No usable inputs were given (a usage error, exit code 2)."""


@dataclass
class PreprocessResult:
    out: Path
    items: dict[str, int] = field(default_factory=dict)
    failed: list[tuple[str, str]] = field(default_factory=list)
    committed: bool = True
    skipped: int = 0


# ------------------------------------------------------------------------------- per-input pipeline
def _item_base(source: Source, duplicates: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", source.name) or "item"
    if source.series_uid:
        base = f"{base}_{source.series_uid.split('.')[-1][-8:]}"
    if base in duplicates:
        base = f"{base}_{hashlib.sha1(source.path.encode()).hexdigest()[:6]}"
    return base


def _item_seed(seed: int, item_id: str) -> int:
    return (seed * 1_000_003 + zlib.crc32(item_id.encode())) % (2**32)


def _normalise(arr: np.ndarray, meta: ImageMeta, s: PreprocessSettings) -> tuple[np.ndarray, ImageMeta]:
    cfg = s.intensity
    method = cfg.normalize
    if method == "auto":
        method = {"CT": "window", "XR": "minmax"}.get(meta.modality, "percentile")
    out_range = tuple(cfg.output_range)
    if method == "window":
        centre, width = intensity.parse_window(cfg.window or "0,2000")  # default: -1000..1000 HU
        return intensity.window(arr, meta, centre, width, out_range=out_range, transform=cfg.transform)
    if method == "percentile":
        low, high = cfg.percentiles
        return intensity.percentile_normalize(arr, meta, low, high, out_range=out_range, transform=cfg.transform)
    if method == "zscore":
        return intensity.zscore(arr, meta)
    if method == "minmax":
        return intensity.minmax(arr, meta, out_range=out_range)
    unit = "HU" if meta.modality == "CT" else "a.u."
    return arr, meta.replace(intensity=IntensityMapping(method="identity", unit=unit))


def _geometry(arr: np.ndarray, meta: ImageMeta, s: PreprocessSettings) -> tuple[np.ndarray, ImageMeta]:
    g = s.geometry
    arr, meta = spatial.reorient(arr, meta, g.orientation)
    background = float(arr.min())
    inplane = s.mode.kind != "volume" and arr.ndim == 3  # fit/shape take the in-plane size
    if g.spacing is not None:
        spacing = tuple(g.spacing) * (arr.ndim if len(g.spacing) == 1 else 1)
        arr, meta = spatial.resample(arr, meta, spacing[: arr.ndim], order=g.interpolation,
                                     antialias=g.antialias, backend=g.backend, fill=background)
    if g.fit is not None and inplane:
        # fit the in-plane axes; the slicing axis keeps its spacing and size
        axes = [a for a in range(3) if a != s.mode.axis]
        extent = [arr.shape[a] * meta.spacing[a] for a in axes]
        iso = max(e / n for e, n in zip(extent, g.fit))
        spacing = [None, None, None]
        for a in axes:
            spacing[a] = iso
        arr, meta = spatial.resample(arr, meta, tuple(spacing), order=g.interpolation, antialias=g.antialias,
                                     backend=g.backend, fill=background)
        arr, meta = spatial.crop_or_pad(arr, meta, _full_size(g.fit, arr, s.mode.axis, True), mode="center",
                                        background=background)
    elif g.fit is not None:
        if len(g.fit) != arr.ndim:
            raise ValueError(f"geometry.fit {tuple(g.fit)} has {len(g.fit)} values but the image has {arr.ndim} axes")
        arr, meta = spatial.fit(arr, meta, tuple(g.fit), order=g.interpolation, antialias=g.antialias,
                                backend=g.backend, background=background)
    if g.shape is not None:
        shape = _full_size(g.shape, arr, s.mode.axis, inplane)
        arr, meta = spatial.crop_or_pad(arr, meta, shape, mode=g.crop, background=background)
    return arr, meta


def _full_size(size: tuple[int, ...], arr: np.ndarray, axis: int, inplane: bool) -> tuple[int, ...]:
    """The target size for every axis: in slices/sequence modes the slicing axis keeps its size."""
    size = tuple(size)
    if inplane:
        if len(size) != 2:
            raise ValueError(f"in slices and sequence modes the size is in-plane (2 values), got {size}")
        full = list(size)
        full.insert(axis, arr.shape[axis])
        return tuple(full)
    if len(size) != arr.ndim:
        raise ValueError(f"size {size} has {len(size)} values but the image has {arr.ndim} axes")
    return size


def _downsample_factor(spec: str, arr: np.ndarray, s: PreprocessSettings) -> float | tuple[float, ...]:
    """The factor of ``downsample:F``: every axis of a volume item; in slices and sequence modes the
    in-plane axes only (the slicing axis keeps its slices, so the pieces pair one to one)."""
    factor = tuple(int(f) for f in spec.split(":")[1].split(","))
    if len(factor) > 1:
        return factor
    if s.mode.kind == "volume" or arr.ndim != 3:
        return factor[0]
    return tuple(1 if a == s.mode.axis else factor[0] for a in range(3))


def _derived(arr_phys: np.ndarray, meta: ImageMeta, s: PreprocessSettings, item_id: str):
    """Paired images computed from the physical volume: {store: [(id, array, meta)]}."""
    out: dict[str, list[tuple[str, np.ndarray, ImageMeta]]] = {}
    for spec in s.derive.outputs:
        name = s.derive.store_name(spec)
        if spec == "drr":
            views = []
            for view in ("ap", "lateral"):
                # optical depth (the log radiograph) on one fixed scale for every subject
                a, m = derive.drr(arr_phys, meta, view=view, output="log")
                lo, hi = s.intensity.output_range
                m = m.replace(intensity=IntensityMapping(method="window", unit="optical depth", in_low=0.0,
                                                         in_high=s.derive.drr_max_depth, out_low=lo, out_high=hi, clip=True))
                views.append((f"{item_id}_{view}", m.intensity.to_stored(a), m))
            out[name] = views
        elif spec == "lowdose":
            a, m = derive.lowdose(arr_phys, meta, dose_fraction=s.derive.lowdose_fraction,
                                  sigma_full=s.derive.lowdose_sigma, seed=_item_seed(s.runtime.seed, item_id))
            out[name] = [(item_id, a, m)]
        else:
            a, m = derive.downsample(arr_phys, meta, _downsample_factor(spec, arr_phys, s))
            out[name] = [(item_id, a, m)]
    return out


def _pieces(arr: np.ndarray, meta: ImageMeta, s: PreprocessSettings, item_base: str):
    """The main items of one (normalised) image: the volume, its slices or its sequences."""
    if s.mode.kind == "volume" or arr.ndim == 2:
        return [(item_base, arr, meta)]
    if s.mode.kind == "slices":
        pieces = slicing.extract_slices(arr, meta, axis=s.mode.axis, which=s.mode.slices,
                                        min_foreground=s.mode.min_foreground, background=float(s.intensity.output_range[0]))
        return [(f"{item_base}_s{m.attrs['slice_index']:04d}", a, m) for a, m in pieces]
    pieces = slicing.extract_sequences(arr, meta, axis=s.mode.axis, length=s.mode.length, stride=s.mode.stride)
    return [(f"{item_base}_t{m.attrs['slice_start']:04d}", a, m) for a, m in pieces]


def _pieces_like(arr: np.ndarray, meta: ImageMeta, s: PreprocessSettings, items: list) -> list:
    """A derived volume cut at the slice indices of the main ``items``, under the same ids."""
    if s.mode.kind == "volume" or arr.ndim == 2:
        return [(items[0][0], arr, meta)]
    if s.mode.kind == "slices":
        pieces = slicing.extract_slices(arr, meta, axis=s.mode.axis, min_foreground=0.0,
                                        which=[m.attrs["slice_index"] for _, _, m in items])
    else:
        pieces = slicing.extract_sequences(arr, meta, axis=s.mode.axis, length=s.mode.length, min_foreground=0.0,
                                           starts=[m.attrs["slice_start"] for _, _, m in items])
    return [(item_id, a, m) for (item_id, _, _), (a, m) in zip(items, pieces)]


def process_source(source: Source, item_base: str, subject: str, split: str, s: PreprocessSettings,
                   artefact: str) -> dict[str, Any]:
    """Read, transform and write every item one input yields. Runs in worker processes."""
    arr, meta = read_source(source, s.input.modality)
    meta = meta.replace(subject=subject)
    if arr.ndim == 4:
        raise ReadError(f"{source.path}: a 4D image (shape {arr.shape}) cannot be one item; split its 4th axis into 3D files first")
    if arr.ndim == 2 and s.mode.kind != "slices":
        raise ReadError(f"{source.path}: is a 2D image (shape {arr.shape}); use --mode slices for 2D inputs")
    warnings = []
    if meta.modality == "CT":
        ok, reason = intensity.looks_like_hu(arr)
        if not ok:
            warnings.append(f"{source.path}: declared CT but does not look like HU ({reason})")
    arr, meta = _geometry(arr, meta, s)
    derived = _derived(arr, meta, s, item_base)
    arr, meta = _normalise(arr, meta, s)
    for name, items in derived.items():  # derived CT images share the main mapping (same window)
        if name != "drr":
            derived[name] = [(i, meta.intensity.to_stored(a), m.replace(intensity=meta.intensity)) for i, a, m in items]

    items = _pieces(arr, meta, s, item_base)
    if not items:
        raise ReadError(f"{source.path}: no item left (every slice was below mode.min_foreground, or the volume is shorter than mode.length)")
    if s.mode.kind != "volume":  # one derived volume (lowdose, downsample) -> the main items' pieces
        derived = {name: _pieces_like(d[0][1], d[0][2], s, items) for name, d in derived.items()}

    written: dict[str, list[str]] = {}
    kw = dict(dtype=s.store.dtype, chunks=s.store.chunks, codec=s.store.compressor, level=s.store.level)
    for store_name, store_items in [("main", items), *derived.items()]:
        store = Store.create(store_path(artefact, store_name), name=store_name)
        for item_id, a, m in store_items:
            store.write(item_id, a, m, split=split, **kw)
            written.setdefault(store_name, []).append(item_id)
    return {"items": written, "warnings": warnings}


# ---------------------------------------------------------------------------------------- the step
def _subjects(sources: list[Source], s: PreprocessSettings) -> tuple[dict[str, str], dict[str, str]]:
    """``({source key: subject}, {subject: pinned split})`` from the subject CSV or the file names."""
    table = splits.load_subject_csv(s.input.subject_csv) if s.input.subject_csv else splits.SubjectTable()
    mapping, out = table.subjects, {}
    for src in sources:
        subject = mapping.get(src.path) or mapping.get(Path(src.path).name) or mapping.get(src.name)
        out[src.path + src.series_uid] = subject or splits.subject_from_path(src.path, s.input.subject_pattern)
    return out, table.splits


def _progress_file(partial: Path, base: str) -> Path:
    return partial / PROGRESS_DIR / f"{base}.json"


def _write_json(file: Path, data: Any) -> None:
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_name(f".{file.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, file)


def run(settings: PreprocessSettings, out: Path | str, *, overwrite: bool = False, shard: tuple[int, int] = (0, 1),
        strict: bool = False, progress: Callable[[int, int, str], None] | None = None) -> PreprocessResult:
    """Preprocess ``settings.input.paths`` into the artefact ``out``.

    Args:
        settings: resolved preprocess settings.
        out: output artefact directory.
        overwrite: replace an existing artefact.
        shard: (index, count): process only inputs whose position modulo count equals index.
        strict: stop at the first bad input instead of reporting it and going on.
        progress: called as ``progress(done, total, description)`` after every input.
    """
    index, count = shard
    if not 0 <= index < count:
        raise InputError(f"shard {index}/{count} is invalid: the index must be in 0..{count - 1}")
    if overwrite and count > 1:
        raise InputError("--overwrite cannot be combined with --shard (one shard would delete the others' work); remove the output first")
    if not settings.input.paths:
        raise InputError("no inputs given: name files, directories or glob patterns")
    sources, problems = discover(settings.input.paths, settings.input.dicom_series)
    if not sources:
        raise InputError("no readable inputs: " + "; ".join(f"{p} ({r})" for p, r in problems))
    failed: list[tuple[str, str]] = list(problems)
    if strict and failed:
        raise ReadError(f"{failed[0][0]}: {failed[0][1]}")

    subjects, pinned = _subjects(sources, settings)
    assignment = splits.assign_splits(
        sorted(set(subjects.values())), tuple(settings.split.fractions), settings.split.seed, pinned=pinned
    )
    names = [_item_base(src, set()) for src in sources]
    duplicates = {n for n in names if names.count(n) > 1}
    bases = [_item_base(src, duplicates) for src in sources]

    writer = ArtefactWriter(out, "preprocessed", settings.model_dump(mode="json"), overwrite=overwrite, resume=True)
    partial = writer.open()
    mine = [k for k in range(len(sources)) if k % count == index]
    todo = [k for k in mine if not _progress_file(partial, bases[k]).exists()]
    result = PreprocessResult(out=Path(out), skipped=len(mine) - len(todo))
    if result.skipped:
        log.info("resuming: %d of %d inputs were already done", result.skipped, len(mine))

    def finished(k: int, outcome: dict[str, Any] | None, error: str | None, done: int) -> None:
        if error is not None:
            failed.append((sources[k].path, error))
            if strict:
                raise ReadError(error)
        else:
            for w in outcome["warnings"]:
                log.warning(w)
            _write_json(_progress_file(partial, bases[k]), {
                "source": sources[k].path, "series_uid": sources[k].series_uid,
                "subject": subjects[sources[k].path + sources[k].series_uid], "items": outcome["items"]})
        if progress:
            progress(done, len(todo), Path(sources[k].path).name)

    args = [(sources[k], bases[k], subjects[sources[k].path + sources[k].series_uid],
             assignment[subjects[sources[k].path + sources[k].series_uid]], settings, str(partial)) for k in todo]
    workers = settings.runtime.workers
    if workers > 1 and len(todo) > 1:
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
            futures = {pool.submit(_safe_process, *a): k for k, a in zip(todo, args)}
            for done, fut in enumerate(_as_completed(futures), 1):
                outcome, error = fut.result()
                finished(futures[fut], outcome, error, done)
    else:
        for done, (k, a) in enumerate(zip(todo, args), 1):
            outcome, error = _safe_process(*a)
            finished(k, outcome, error, done)

    result.failed = failed
    _write_json(partial / SHARDS_DIR / f"{index}-of-{count}.json", {"failed": failed})
    if len(list((partial / SHARDS_DIR).glob(f"*-of-{count}.json"))) < count:
        result.committed = False  # other shards still running; the last one commits
        return result
    summary = _summary(partial, sources, subjects, assignment, settings, count)
    result.items = {name: st["items"] for name, st in summary["stores"].items()}
    result.failed = summary["failed"]
    writer.commit(summary)
    return result


def _as_completed(futures):
    from concurrent.futures import as_completed

    return as_completed(futures)


def _safe_process(*args) -> tuple[dict[str, Any] | None, str | None]:
    """Run one input; a bad input becomes a one-line reason instead of an exception."""
    try:
        return process_source(*args), None
    except ReadError as err:
        return None, str(err)
    except (ValueError, RuntimeError, OSError, MemoryError) as err:
        return None, f"{args[0].path}: {type(err).__name__}: {err}"


def _summary(partial: Path, sources, subjects, assignment, s: PreprocessSettings, count: int) -> dict[str, Any]:
    failed: list[list[str]] = []
    for f in sorted((partial / SHARDS_DIR).glob("*.json")):
        failed.extend(json.loads(f.read_text())["failed"])
    stores = {}
    for zdir in sorted(partial.glob("*.zarr")):
        store = Store.open(zdir)
        stores[zdir.stem] = store.summary()
        try:
            store_preview(partial / "previews" / f"{zdir.stem}.png", store)
        except (ValueError, RuntimeError) as err:  # a picture must never fail the step
            log.warning("could not draw a preview of %s: %s", zdir.stem, err)
    used = {json.loads(f.read_text())["subject"] for f in (partial / PROGRESS_DIR).glob("*.json")}
    return {
        "stores": stores,
        "splits": {subj: assignment[subj] for subj in sorted(used)},
        "split_seed": s.split.seed,
        "inputs": len(sources),
        "failed": [list(f) for f in failed],
        "shards": count,
        "pipeline": _pipeline(s),
    }


def _pipeline(s: PreprocessSettings) -> list[dict[str, Any]]:
    """The functions applied, with their parameters, for the manifest."""
    g, i = s.geometry, s.intensity
    steps: list[dict[str, Any]] = [{"fn": "read", "modality": s.input.modality},
                                   {"fn": "spatial.reorient", "target": g.orientation}]
    if g.spacing:
        steps.append({"fn": "spatial.resample", "spacing": list(g.spacing), "order": g.interpolation,
                      "antialias": g.antialias, "backend": g.backend})
    if g.fit:
        steps.append({"fn": "spatial.fit", "size": list(g.fit), "order": g.interpolation})
    if g.shape:
        steps.append({"fn": "spatial.crop_or_pad", "shape": list(g.shape), "mode": g.crop})
    for d in s.derive.outputs:
        steps.append({"fn": f"derive.{d.split(':')[0]}", "spec": d})
    steps.append({"fn": f"intensity.{i.normalize}", "window": i.window, "percentiles": list(i.percentiles),
                  "output_range": list(i.output_range), "transform": i.transform})
    if s.mode.kind != "volume":
        steps.append({"fn": f"slicing.{s.mode.kind}", **s.mode.model_dump()})
    return steps
