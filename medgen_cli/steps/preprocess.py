"""``medgen preprocess``: raw scans -> one artefact holding zarr stores of items.

Per input (in a worker process when ``runtime.workers > 1``) ``_preprocess_source`` reads, transforms
and writes the items: read -> reorient -> resample | fit -> crop/pad -> [derive paired images] ->
intensity mapping -> volume | slices | sequences.

Inputs (``_preprocess_inputs``): every real file is read once, medgen artefacts inside the inputs
are skipped, subjects come from the CSV, the pattern, BIDS ``sub-<label>`` or the file name. A 2D
image in volume mode is a 2D item; 2D images and 3D volumes never share a store.

Resuming: every finished input leaves a small marker in ``OUT.partial/progress/``; a re-run with
the same settings skips those inputs and rewrites any item an interrupted run left unfinished.
Sharding (``shard=(I, N)``) processes the inputs whose index is I modulo N; every shard writes
into the same ``OUT.partial/`` and the last one to finish commits the artefact.

Failures: a bad input is reported and the others go on (``strict`` stops at the first); the
artefact is committed with the good items and ``report.json`` lists every input's outcome. When
every input failed nothing is committed: ``OUT.partial/`` keeps only its manifest, settings and
``report.json`` (a re-run retries every input, ``--overwrite`` discards it) and the step fails.
Workers (``runtime.workers > 1``) die with the step: see ``_workers``. In slices mode the workers hand
their slices back and this process writes them stacked (`medgen_cli.io.stacked`), one writer per stack
group (named after the shard, so ``--shard`` runs never share one).

Masks (``masks.source``, see ``_preprocess_masks``): each input's label image is paired before anything
is written (an input without one is refused, exit 2, or skipped with ``masks.missing: skip``; files that
are masks of other inputs are not read as images) and stored, on the exact grid of every item, in the
store ``masks`` under the same item ids; the manifest's ``summary.masks`` gives the rule, the store
pairs and the labels with their voxel counts.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..artefacts import MARKER, ArtefactWriter
from ..errors import StepFailed, UsageError
from ..io import fs
from ..io.masks import MASK_STORE, is_mask_store, label_summary, mask_store_name
from ..io.readers import ReadError, Source
from ..io.store import Store, store_path
from ..preprocess import splits
from ..settings import PreprocessSettings
from ..viz.previews import store_preview
from . import _preprocess_masks as masks
from ._preprocess_inputs import InputError, Inputs, collect, item_bases, subjects_of
from ._preprocess_source import pipeline_description, process_source, safe_process, write_stacked
from ._workers import run_pool, stop_on_sigterm

log = logging.getLogger(__name__)

PROGRESS_DIR = "progress"
SHARDS_DIR = "shards"
REPORT = "report.json"

__all__ = ["InputError", "PreprocessResult", "process_source", "run"]


class Stopped(StepFailed):
    """The step was stopped by a signal; finished inputs are kept for a resume (exit code 1)."""


class MixedRanks(UsageError):
    """2D images and 3D volumes in one volume-mode run (exit code 2)."""


@dataclass
class PreprocessResult:
    out: Path
    items: dict[str, int] = field(default_factory=dict)
    failed: list[tuple[str, str]] = field(default_factory=list)
    committed: bool = True
    skipped: int = 0


# ---------------------------------------------------------------------------------------- the step
def _progress_file(partial: Path, base: str) -> Path:
    return partial / PROGRESS_DIR / f"{base}.json"


def _write_json(file: Path, data: Any) -> None:
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_name(f".{file.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, file)


def _done_records(partial: Path) -> list[dict[str, Any]]:
    return [json.loads(f.read_text()) for f in sorted((partial / PROGRESS_DIR).glob("*.json"))]


def _stamp(path: str | None) -> list | None:
    """Size and modification time of an input file (of every file directly in a DICOM series folder),
    recorded when the input is done so that a resume notices an input changed in between."""
    if not path:
        return None
    p = Path(path)
    try:
        if p.is_dir():
            return sorted([f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in p.iterdir() if f.is_file())
        st = p.stat()
    except OSError:
        return None  # gone: the read of the input reports it
    return [st.st_size, st.st_mtime_ns]


def _changed_input(partial: Path, sources: list, bases: list[str], mine: list[int], mask_of: dict) -> str | None:
    """The first input (or mask) that an interrupted run in ``partial`` finished and that has changed
    since, as "input PATH" / "mask PATH"; None when every finished input is as it was."""
    for k in mine:
        file = _progress_file(partial, bases[k])
        if not file.is_file():
            continue
        record = json.loads(file.read_text())
        mask = mask_of.get(sources[k].path + sources[k].series_uid)
        for what, path, old in (("input", sources[k].path, record.get("stamp")), ("mask", mask, record.get("mask_stamp"))):
            if path and old is not None and _stamp(path) != old:  # records without stamps predate them
                return f"{what} {path}"
    return None


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

    Raises:
        InputError: the inputs name nothing, nothing readable, or cannot be given subjects (exit 2).
        MixedRanks: 2D images and 3D volumes in volume mode (exit 2); nothing is written.
        StepFailed: every input failed (exit 1); ``OUT.partial/report.json`` says why.
    """
    index, count = shard
    if not 0 <= index < count:
        raise InputError(f"shard {index}/{count} is invalid: the index must be in 0..{count - 1}")
    if overwrite and count > 1:
        raise InputError("--overwrite cannot be combined with --shard (one shard would delete the others' work); remove the output first")
    if not settings.input.paths:
        raise InputError("no inputs given: name files, directories or glob patterns")
    writer = ArtefactWriter(out, "preprocessed", settings.model_dump(mode="json"), overwrite=overwrite, resume=True,
                            raw_inputs=settings.input.paths, shard=shard)
    writer.check_inputs()  # an output that is, lies inside or contains an input is refused before anything else
    inputs = collect(settings.input.paths, settings.input.dicom_series, out)
    mask_of = _pair_masks(inputs, settings)  # before anything is written: a missing mask is a usage error
    sources = inputs.sources
    if strict and inputs.problems:
        raise ReadError(f"{inputs.problems[0][0]}: {inputs.problems[0][1]}")
    subjects, pinned = subjects_of(sources, settings)
    assignment = splits.assign_splits(
        sorted(set(subjects.values())), tuple(settings.split.fractions), settings.split.seed, pinned=pinned
    )
    bases = item_bases(sources)

    mine = [k for k in range(len(sources)) if k % count == index]
    own_partial = writer.partial  # OUT.partial (a local staging directory when OUT is a URL)
    changed = _changed_input(own_partial, sources, bases, mine, mask_of) if (own_partial / MARKER).is_file() else None
    if changed and not overwrite:  # its items would mix two versions of the data
        raise InputError(f"{changed} changed after the interrupted run in {own_partial} processed it (its size or "
                         "modification time differ); run the same command with --overwrite to start again from the "
                         "current files")
    if changed:
        writer.resume = False  # --overwrite: discard the interrupted run and start again
    partial = writer.open()
    stopped = lambda sig: Stopped(f"preprocess was stopped by {sig}; the finished inputs are kept in {out}.partial "  # noqa: E731
                                  "and running the same command again resumes")
    with writer, stop_on_sigterm(stopped):
        todo = [k for k in mine if not _progress_file(partial, bases[k]).exists()]
        result = PreprocessResult(out=fs.location(out), skipped=len(mine) - len(todo))
        if result.skipped:
            log.info("resuming: %d of %d inputs were already done", result.skipped, len(mine))
        key = lambda k: sources[k].path + sources[k].series_uid  # noqa: E731
        jobs = [(sources[k], bases[k], subjects[key(k)], assignment[subjects[key(k)]], settings, str(writer.stores),
                 mask_of.get(key(k))) for k in todo]
        tracker = _Tracker(partial, settings, [(sources[k], subjects[key(k)], bases[k], mask_of.get(key(k))) for k in todo],
                           strict, progress, tag=f"{index}of{count}")
        try:
            if settings.runtime.workers > 1 and len(jobs) > 1:
                run_pool(safe_process, jobs, settings.runtime.workers, tracker)
            else:
                for n, job in enumerate(jobs):
                    tracker(n, safe_process(*job), n + 1)
        except MixedRanks:
            if count == 1:
                shutil.rmtree(partial, ignore_errors=True)  # this run's own partial; unusable for any fix of the command
            raise
        tracker.report_window_unused()
        result.failed = (inputs.problems if index == 0 else []) + tracker.failed  # every shard sees the same problems
        _write_json(partial / SHARDS_DIR / f"{index}-of-{count}.json", {"failed": result.failed})
        if len(list((partial / SHARDS_DIR).glob(f"*-of-{count}.json"))) < count:
            result.committed = False  # other shards still running; the last one commits
            return result
        return _commit(writer, partial, inputs, assignment, settings, count, result)


class _Tracker:
    """The parent's handling of each finished input: record it, warn, stop on mixed 2D/3D or ``strict``."""

    def __init__(self, partial: Path, s: PreprocessSettings, jobs: list[tuple[Source, str, str, str | None]], strict: bool,
                 progress: Callable[[int, int, str], None] | None, tag: str = "0of1"):
        self.partial, self.s, self.jobs, self.strict, self.progress = partial, s, jobs, strict, progress
        self.tag, self.stores = tag, {}  # the stacked slices' writer name (this shard) and its open Stores
        self.failed: list[tuple[str, str]] = []
        self.window_unused: list[tuple[str, str]] = []
        self.ranks = {r["ndim"]: r["source"] for r in _done_records(partial) if "ndim" in r}  # resumed inputs

    def __call__(self, n: int, result: tuple[dict[str, Any] | None, str | None], done: int) -> None:
        source, subject, base, mask = self.jobs[n]
        outcome, error = result
        if error is not None:
            self.failed.append((source.path, error))
            if self.strict:
                raise ReadError(error)
        else:
            for w in outcome["warnings"]:
                log.warning(w)
            self._check_rank(outcome["ndim"], source.path)
            if outcome["window_unused"]:
                self.window_unused.append((source.path, outcome["window_unused"]))
            write_stacked(outcome, str(self.partial), self.tag, self.s, self.stores)  # before the input counts as done
            _write_json(_progress_file(self.partial, base), {
                "source": source.path, "series_uid": source.series_uid, "subject": subject,
                "items": outcome["items"], "ndim": outcome["ndim"], "stamp": _stamp(source.path),
                **({"mask": mask, "mask_stamp": _stamp(mask)} if mask else {})})
        if self.progress:
            self.progress(done, len(self.jobs), Path(source.path).name)

    def _check_rank(self, ndim: int, path: str) -> None:
        """In volume mode one store holds 2D images or 3D volumes, never both."""
        self.ranks.setdefault(ndim, path)
        if self.s.mode.kind == "volume" and len(self.ranks) > 1:
            flat, deep = self.ranks[min(self.ranks)], self.ranks[max(self.ranks)]
            raise MixedRanks(f"{flat} is a 2D image but {deep} is a 3D volume, and one store holds one kind: preprocess "
                             "the 2D images into another --out, or pass --mode slices to store the volumes as 2D slices; "
                             "nothing was committed.")

    def report_window_unused(self) -> None:
        if self.window_unused:
            path, modality = self.window_unused[0]
            log.warning("intensity.window %s was not applied to %d input(s) that were read as %s, not CT (e.g. %s); "
                        "pass --modality CT if they are CT", self.s.intensity.window, len(self.window_unused),
                        "/".join(sorted({m for _, m in self.window_unused})), path)


def _commit(writer: ArtefactWriter, partial: Path, inputs: Inputs, assignment: dict[str, str], s: PreprocessSettings,
            count: int, result: PreprocessResult) -> PreprocessResult:
    """Commit the artefact with its report, or, when every input failed, keep only the report and fail."""
    failed: list[list[str]] = []
    for f in sorted((partial / SHARDS_DIR).glob("*.json")):
        failed.extend(json.loads(f.read_text())["failed"])
    done = _done_records(partial)
    report = {
        "done": [{k: r[k] for k in ("source", "series_uid", "subject", "items", "mask") if k in r} for r in done],
        "failed": [{"path": p, "reason": r} for p, r in failed],
        "skipped_artefacts": inputs.skipped,
        "duplicates": [{"path": p, "same_as": q} for p, q in inputs.duplicates],
    }
    if s.masks.source:
        report.update({"masks_among_inputs": inputs.mask_inputs, "skipped_no_mask": inputs.no_mask})
    if not done:
        _keep_only_report(partial, writer.stores, report)
        for path, reason in failed[:10]:
            log.warning("failed: %s", reason if path in reason else f"{path}: {reason}")
        raise StepFailed(f"all {len(failed)} input(s) failed, so {result.out} was not written; {result.out}.partial/{REPORT} "
                         "gives the reason for each: fix the inputs and run the same command again (--overwrite starts afresh).")
    _write_json(partial / REPORT, report)
    summary = _summary(partial, writer.stores, done, assignment, s, count, failed, inputs)
    result.items = {name: st["items"] for name, st in summary["stores"].items()}
    result.failed = [tuple(f) for f in failed]
    writer.commit(summary)
    return result


def _keep_only_report(partial: Path, stores: Path | str, report: dict[str, Any]) -> None:
    """Remove the payload medgen wrote into ``partial`` (stores, previews, progress) and its stores (in
    ``partial``, or the output's partial prefix on an object store); write the report."""
    for entry in partial.iterdir():
        if entry.name.endswith(".zarr") or entry.name in (PROGRESS_DIR, SHARDS_DIR, "previews"):
            shutil.rmtree(entry, ignore_errors=True)
    if fs.is_url(stores):
        for name in fs.listdir(stores):
            if name.endswith(".zarr"):
                fs.remove_tree(fs.join(stores, name))
    _write_json(partial / REPORT, report)


def _summary(partial: Path, where: Path | str, done: list[dict[str, Any]], assignment: dict[str, str],
             s: PreprocessSettings, count: int, failed: list[list[str]], inputs: Inputs) -> dict[str, Any]:
    """``where``: the directory (or URL prefix) the stores were written in."""
    stores, labels = {}, {}
    for name in [n[:-len(".zarr")] for n in fs.listdir(where) if n.endswith(".zarr")]:
        store = Store.open(store_path(where, name))
        stores[name] = store.summary()
        if is_mask_store(name):
            labels[name] = label_summary(store)
        try:
            store_preview(partial / "previews" / f"{name}.png", store)
        except (ValueError, RuntimeError) as err:  # a picture must never fail the step
            log.warning("could not draw a preview of %s: %s", name, err)
    used = {r["subject"] for r in done}
    return {
        "stores": stores,
        "splits": {subj: assignment[subj] for subj in sorted(used)},
        "split_seed": s.split.seed,
        "inputs": len(inputs.sources),
        "failed": [list(f) for f in failed],
        "shards": count,
        "pipeline": pipeline_description(s),
        **({"masks": _mask_summary(stores, labels, s, inputs)} if s.masks.source else {}),
    }


def _pair_masks(inputs: Inputs, s: PreprocessSettings) -> dict[str, str]:
    """``{source key: mask path}`` by ``masks.source``; drops the inputs that are masks (and, with
    ``masks.missing: skip``, those without one) from ``inputs.sources``.

    Raises:
        MaskError: an input has no mask (``masks.missing: error``), no input has one, or the rule is unusable.
    """
    if not s.masks.source:
        return {}
    pairs = masks.pair(inputs.sources, s)
    masks.refuse_missing(pairs, s)
    inputs.mask_inputs = pairs.mask_inputs
    inputs.no_mask = [path for path, _ in pairs.missing]
    if pairs.mask_inputs:
        log.info("%d input(s) are the masks of other inputs and are read as masks only (e.g. %s)",
                 len(pairs.mask_inputs), pairs.mask_inputs[0])
    if inputs.no_mask:
        log.warning("%d input(s) have no mask and are left out (masks.missing=skip), e.g. %s; report.json lists them",
                    len(inputs.no_mask), inputs.no_mask[0])
    dropped = set(inputs.mask_inputs) | set(inputs.no_mask)
    kept = [src for src in inputs.sources if src.path not in dropped]
    if not kept:
        raise masks.MaskError(f"none of the {len(inputs.sources)} input(s) has a mask by masks.source {s.masks.source} "
                              f"(e.g. {inputs.no_mask[0] if inputs.no_mask else inputs.sources[0].path}); fix --masks.")
    inputs.sources = kept
    return pairs.masks


def _mask_summary(stores: dict[str, Any], labels: dict[str, dict[str, Any]], s: PreprocessSettings,
                  inputs: Inputs) -> dict[str, Any]:
    """What the manifest says about the masks: the rule, which mask store pairs with which image store,
    the labels with their voxel counts (over every item of each mask store), and the inputs left out."""
    pairs = {name: mask_store_name(name) for name in stores if not is_mask_store(name)}
    return {
        "source": s.masks.source,
        "pairs": {image: m for image, m in pairs.items() if m in stores},
        "stores": labels,
        "labels": labels.get(MASK_STORE, {}).get("labels", {}),
        "masks_among_inputs": len(inputs.mask_inputs),
        "skipped_no_mask": len(inputs.no_mask),
    }
