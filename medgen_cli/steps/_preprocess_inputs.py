"""The inputs of ``medgen preprocess``: what the user named -> the sources to read, each once, with subjects.

* A path that does not exist or a glob pattern that matches nothing is a usage error (exit 2): a typo
  must not quietly shrink the data set.
* medgen never ingests its own outputs: the output, its ``OUT.partial``, and every medgen artefact or
  partial (a directory holding a medgen ``manifest.json`` or the ``.medgen-partial`` mark) found below a
  named directory or below a glob's fixed part are skipped, and said so. A file or directory named
  explicitly is read even inside an artefact (``medgen preprocess samples/`` is deliberate).
* Each file is read once: sources are de-duplicated by real path, so a symlink, a file named twice or a
  ``**`` glob running around a symlink loop gives one input.
* Subjects come from the subject CSV (every input must be listed), else ``input.subject_pattern``,
  else the BIDS ``sub-<label>`` of the path, else the file name (see ``preprocess.splits``).
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..artefacts import KIND_MAKERS, MANIFEST, MARKER
from ..errors import UsageError
from ..io.readers import Source, discover
from ..preprocess import splits
from ..settings import PreprocessSettings

log = logging.getLogger(__name__)

MANY_PER_SUBJECT = 4  # warn when more than half of at least this many inputs map to one subject


class InputError(UsageError):
    """No usable inputs were given, or they cannot be told apart into subjects (exit code 2)."""


@dataclass
class Inputs:
    """The sources to read and what discovery set aside.

    Args:
        sources: one per file or DICOM series, sorted by path, each real file once.
        problems: ``(path, reason)`` for named inputs that exist but hold nothing readable.
        skipped: medgen artefact directories found inside the inputs and not read.
        duplicates: ``(path, path it repeats)`` of inputs dropped because they name a file already read.
        mask_inputs: inputs that are another input's mask (``masks.source``), read as masks only.
        no_mask: inputs left out because they have no mask (``masks.missing: skip``).
    """

    sources: list[Source] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    duplicates: list[tuple[str, str]] = field(default_factory=list)
    mask_inputs: list[str] = field(default_factory=list)
    no_mask: list[str] = field(default_factory=list)


def _names_nothing(pattern: str) -> str | None:
    if glob.has_magic(pattern):
        matches = glob.iglob(pattern, recursive=True)  # the first match is enough
        return None if next(matches, None) is not None else "no file matches this pattern"
    return None if os.path.exists(pattern) else "no such file or directory"


def _root(pattern: str) -> Path | None:
    """Where artefacts are looked for: a named directory, a glob's fixed leading part; None for a named file."""
    if not glob.has_magic(pattern):
        return Path(pattern) if os.path.isdir(pattern) else None
    parts = Path(pattern).parts
    fixed = parts[:next(i for i, p in enumerate(parts) if glob.has_magic(p))]
    return Path(*fixed) if fixed else Path(".")


class _ArtefactDirs:
    """Which directories are medgen artefacts or partials (cached: one look per directory)."""

    def __init__(self) -> None:
        self._known: dict[Path, bool] = {}

    def is_artefact(self, directory: Path) -> bool:
        if directory not in self._known:
            self._known[directory] = (directory / MARKER).is_file() or _medgen_manifest(directory / MANIFEST)
        return self._known[directory]

    def enclosing(self, path: str, root: Path | None) -> Path | None:
        """The outermost artefact strictly below ``root`` that holds ``path``, or None."""
        if root is None:
            return None
        p = Path(path)
        chain = [p, *p.parents]
        if root not in chain:
            return None  # not spelled below the root: treat as named explicitly
        found = None
        for d in chain[:chain.index(root)]:
            if self.is_artefact(d):
                found = d
        return found


def _medgen_manifest(file: Path) -> bool:
    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("kind") in KIND_MAKERS and "schema_version" in data


def _inside(real: str, owns: list[str]) -> str | None:
    for own in owns:
        if real == own or real.startswith(own.rstrip("/") + "/"):
            return own
    return None


def collect(patterns: list[str], dicom_series: str, out: Path | str) -> Inputs:
    """Expand the named inputs into sources (see the module docstring).

    Raises:
        InputError: a path or pattern names nothing, or nothing readable is left.
    """
    missing = [(p, why) for p in patterns if (why := _names_nothing(p))]
    if missing:
        listed = "; ".join(f"{p!r} ({why})" for p, why in missing[:3]) + (" ..." if len(missing) > 3 else "")
        raise InputError(f"{len(missing)} input(s) name nothing: {listed}; fix or remove them "
                         "(quote glob patterns so that medgen expands them).")
    owns = [os.path.realpath(out), os.path.realpath(f"{out}.partial")]
    artefacts = _ArtefactDirs()
    found: list[Source] = []
    inputs = Inputs()
    skipped: set[str] = set()
    for pattern in patterns:
        sources, problems = discover([pattern], dicom_series)
        inputs.problems += problems
        root = _root(pattern)
        kept = 0
        for src in sources:
            where = _inside(os.path.realpath(src.path), owns) or artefacts.enclosing(src.path, root)
            if where is not None:
                skipped.add(str(where))
                continue
            found.append(src)
            kept += 1
        if sources and not kept:
            inputs.problems.append((pattern, "everything in it belongs to medgen artefacts, which are never read as raw images"))
    inputs.sources, inputs.duplicates = _unique(found)
    inputs.skipped = sorted(skipped)
    if inputs.skipped:
        log.info("skipped %d medgen artefact(s) inside the inputs (%s): medgen never reads its own outputs as raw images",
                 len(inputs.skipped), ", ".join(inputs.skipped[:3]) + (" ..." if len(inputs.skipped) > 3 else ""))
    if inputs.duplicates:
        path, first = inputs.duplicates[0]
        example = f"{path} is named twice" if path == first else f"{path} is the same file as {first}"
        log.info("%d input(s) repeat a file already read (e.g. %s); each file is read once", len(inputs.duplicates), example)
    if not inputs.sources:
        raise InputError("no readable inputs: " + "; ".join(f"{p} ({r})" for p, r in inputs.problems[:5]))
    return inputs


def _unique(sources: list[Source]) -> tuple[list[Source], list[tuple[str, str]]]:
    """One source per (real path, series); the spelling without symlinks (then the shortest) is kept."""
    def preference(src: Source) -> tuple:
        absolute = os.path.abspath(src.path)
        return (os.path.realpath(absolute) != absolute, len(src.path), src.path)

    by_file: dict[tuple[str, str], list[Source]] = {}
    for src in sources:
        by_file.setdefault((os.path.realpath(src.path), src.series_uid), []).append(src)
    kept, dropped = [], []
    for group in by_file.values():
        group.sort(key=preference)
        kept.append(group[0])
        dropped += [(other.path, group[0].path) for other in group[1:]]
    return sorted(kept, key=lambda s: (s.path, s.series_uid)), dropped


# ---------------------------------------------------------------------------------------- subjects
def subjects_of(sources: list[Source], s: PreprocessSettings) -> tuple[dict[str, str], dict[str, str]]:
    """``({source key: subject}, {subject: pinned split})``; the key is ``path + series_uid``.

    Raises:
        InputError: the subject CSV is unreadable or misses inputs, or the subject pattern misses one.
    """
    out: dict[str, str] = {}
    if s.input.subject_csv:
        try:
            table = splits.load_subject_csv(s.input.subject_csv)
        except ValueError as err:
            raise InputError(f"{err} (input.subject_csv).") from None
        unlisted = []
        for src in sources:
            subject = table.subject_of(src.path)
            if subject is None:
                unlisted.append(src.path)
            out[src.path + src.series_uid] = subject or ""
        if unlisted:
            raise InputError(f"{len(unlisted)} input(s) are not listed in the subject CSV {s.input.subject_csv} "
                             f"(first: {unlisted[0]}); add a 'path,subject' row for each, by path or file name.")
        return out, table.splits
    for src in sources:
        try:
            out[src.path + src.series_uid] = splits.subject_from_path(src.path, s.input.subject_pattern)
        except ValueError as err:
            raise InputError(f"{err}; change --subject-pattern (input.subject_pattern) so that it matches every "
                             "input, or give --subject-csv.") from None
    _warn_many_per_subject(out, s.input.subject_pattern)
    return out, {}


def _warn_many_per_subject(subjects: dict[str, str], pattern: str | None) -> None:
    counts = Counter(subjects.values())
    if not counts:
        return
    subject, n = counts.most_common(1)[0]
    if len(subjects) >= MANY_PER_SUBJECT and n > len(subjects) / 2:
        how = f"the subject pattern {pattern!r}" if pattern else "the file names"
        log.warning("%d of %d inputs map to one subject, %r (from %s), so they all land in one split; if they are "
                    "different people, give --subject-pattern or --subject-csv", n, len(subjects), subject, how)


# ------------------------------------------------------------------------------------------ item ids
def item_bases(sources: list[Source]) -> list[str]:
    """The item id (before slice/sequence suffixes) of each source: its file name, with the BIDS subject
    and session prefixed when the name lacks them, the series UID's tail for DICOM series, and a short
    hash of the path when two sources would still share a name."""
    names = [_item_name(src) for src in sources]
    counts = Counter(names)
    return [name if counts[name] == 1 else f"{name}_{hashlib.sha1(src.path.encode()).hexdigest()[:6]}"
            for name, src in zip(names, sources)]


def _item_name(source: Source) -> str:
    name = source.name
    entities = splits.bids_entities(source.path)
    missing = [e for key in ("sub", "ses") if (e := entities.get(key)) and not re.search(rf"(^|_){e}(_|$)", name)]
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", "_".join([*missing, name])) or "item"
    if source.series_uid:
        base = f"{base}_{source.series_uid.split('.')[-1][-8:]}"
    return base
