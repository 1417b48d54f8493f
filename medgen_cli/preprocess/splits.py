"""Subject-level train/val/test splits and subject ids from file names, BIDS paths or a CSV.

Splits are by *subject*, never by image, so slices or follow-ups of one person never straddle
train and test. The assignment depends only on the set of subjects, the fractions and the seed:
unique subjects are sorted, permuted with ``numpy.random.default_rng(seed)``, and cut into
consecutive runs whose sizes come from largest-remainder rounding.

Subject ids follow the BIDS layout when a path has it (``sub-01/ses-2/anat/sub-01_ses-2_T1w.nii.gz``
-> subject ``sub-01``; the session belongs to the item, not to the subject); otherwise the file name.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path, PurePath

import numpy as np

# Longest first, so ".nii.gz" wins over ".gz".
_IMAGE_SUFFIXES = (
    ".nii.gz", ".nrrd.gz", ".mha.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".raw", ".img", ".hdr",
    ".dcm", ".dicom", ".ima", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".npy", ".npz", ".zarr",
    ".gz",
)


def _split_counts(n: int, fractions: Sequence[float]) -> list[int]:
    """Largest-remainder counts; then every non-zero fraction gets >= 1 subject, in split order,
    as long as subjects last (taken from the currently largest split)."""
    f = np.asarray(fractions, dtype=np.float64)
    raw = f / f.sum() * n
    counts = np.floor(raw).astype(int)
    rest = n - counts.sum()
    # Stable sort: ties go to the earlier split (train first).
    for idx in np.argsort(-(raw - counts), kind="stable")[:rest]:
        counts[idx] += 1
    wanted = [i for i in range(len(f)) if f[i] > 0][:n]
    for i in wanted:
        if counts[i] == 0:
            donors = [j for j in range(len(f)) if counts[j] > 1 or (counts[j] == 1 and j not in wanted)]
            donor = max(donors, key=lambda j: (counts[j], -j))
            counts[donor] -= 1
            counts[i] += 1
    return counts.tolist()


def assign_splits(
    subjects: Iterable[str],
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    names: Sequence[str] = ("train", "val", "test"),
    pinned: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Assign each subject to one split.

    Subjects in ``pinned`` keep their split; the others are split by ``fractions``.

    Deterministic for a seed and independent of the input order (duplicates are fine). Counts use
    largest-remainder rounding of ``fraction * n``; each split with a non-zero fraction gets at
    least one subject when there are at least as many subjects as such splits (with fewer
    subjects, the earlier splits, train first, are served first).

    Args:
        subjects: subject ids (one per image is fine).
        fractions: one fraction per split, each >= 0, summing to 1.
        seed: seed of the permutation.
        names: split names, as many as fractions.
        pinned: ``{subject: split}`` fixed in advance (e.g. from a subject CSV).

    Returns:
        ``{subject: split_name}`` for every unique subject.
    """
    fractions = [float(v) for v in fractions]
    names = [str(v) for v in names]
    if len(fractions) != len(names):
        raise ValueError(f"need one fraction per split name, got fractions={fractions} for names={names}")
    if len(set(names)) != len(names):
        raise ValueError(f"split names must be unique, got {names}")
    if any(not np.isfinite(v) or v < 0 for v in fractions) or not np.isclose(sum(fractions), 1.0, atol=1e-6):
        raise ValueError(f"fractions must be >= 0 and sum to 1, got {fractions}")
    pinned = {str(k): str(v) for k, v in (pinned or {}).items()}
    wrong = sorted({v for v in pinned.values() if v not in names})
    if wrong:
        raise ValueError(f"pinned splits {wrong} are not among the split names {names}")
    given = {str(s) for s in subjects}
    fixed = {s: pinned[s] for s in given if s in pinned}
    unique = sorted(given - set(fixed))
    if not unique:
        return fixed
    order = np.random.default_rng(seed).permutation(len(unique))
    counts = _split_counts(len(unique), fractions)
    out, start = dict(fixed), 0
    for name, c in zip(names, counts):
        for idx in order[start:start + c]:
            out[unique[idx]] = name
        start += c
    return out


def strip_image_suffix(name: str) -> str:
    """A file name without its image extension: ``ct.nii.gz`` -> ``ct``, ``b.v2.mha`` -> ``b.v2``."""
    lower = name.lower()
    for suffix in _IMAGE_SUFFIXES:
        if lower.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


# A BIDS entity: "sub-<label>" / "ses-<label>", the label alphanumeric (BIDS specification, "entities").
_ENTITY = {key: re.compile(rf"(?:^|_){key}-([A-Za-z0-9]+)(?=_|\.|$)") for key in ("sub", "ses")}
_ENTITY_DIR = {key: re.compile(rf"^{key}-([A-Za-z0-9]+)$") for key in ("sub", "ses")}
# The data-type folders of BIDS (sub-<label>/[ses-<label>/]<datatype>/<file>).
_BIDS_DATATYPES = {"anat", "func", "dwi", "fmap", "perf", "pet", "micr", "nirs", "motion", "eeg", "meg", "ieeg", "beh", "mrs"}


def _bids_dirs(p: PurePath) -> dict[str, str]:
    """Entities from the folders above ``p``: only through ``ses-*`` and data-type folders up to ``sub-*``, so a
    ``sub-`` folder higher up (a home directory called sub-admin above data/scans/) is not taken."""
    found: dict[str, str] = {}
    for parent in p.parents:
        ses, sub = _ENTITY_DIR["ses"].match(parent.name), _ENTITY_DIR["sub"].match(parent.name)
        if ses:
            found.setdefault("ses", f"ses-{ses.group(1)}")
        elif sub:
            found["sub"] = f"sub-{sub.group(1)}"
            break
        elif parent.name.lower() not in _BIDS_DATATYPES:
            break
    return found


def bids_entities(path: str | PurePath) -> dict[str, str]:
    """The BIDS ``sub`` and ``ses`` entities of an image path, e.g. ``{"sub": "sub-01", "ses": "ses-2"}``.

    The file name's entities win (``sub-01_ses-2_T1w.nii.gz``); otherwise the folders above it, read
    upwards through ``ses-<label>`` and data-type folders (anat, func, dwi, ...) to ``sub-<label>``
    (``sub-01/ses-2/anat/T1w.nii.gz``). Absent entities are left out: a non-BIDS path gives ``{}``.

    Args:
        path: the image file or directory (DICOM series).
    """
    p = PurePath(path)
    dirs = _bids_dirs(p)
    out: dict[str, str] = {}
    for key in ("sub", "ses"):
        m = _ENTITY[key].search(p.name)
        if m:
            out[key] = f"{key}-{m.group(1)}"
        elif key in dirs:
            out[key] = dirs[key]
    return out


def subject_from_path(path: str | PurePath, pattern: str | None = None) -> str:
    """Subject id of an image path.

    Without ``pattern``: the BIDS subject ``sub-<label>`` when the path has one (see
    :func:`bids_entities`: ``/data/sub-07/ses-1/anat/sub-07_ses-1_T1w.nii.gz`` -> ``sub-07``), else the
    file (or DICOM directory) name without its image extension (``/data/PAT7_ct.nrrd`` -> ``PAT7_ct``).
    With ``pattern``: a regular expression searched in the whole path (POSIX separators); the subject
    is its group named ``subject``, else its first group, else the whole match
    (``r"(sub-\\d+)"`` on ``/data/sub-07/ses-1/ct.nii.gz`` -> ``sub-07``).

    Args:
        path: the image file or directory.
        pattern: optional regular expression.
    """
    p = PurePath(path)
    if pattern is None:
        bids = bids_entities(p)
        if "sub" in bids:
            return bids["sub"]
        return strip_image_suffix(p.name)
    try:
        rx = re.compile(pattern)
    except re.error as e:
        raise ValueError(f"subject pattern {pattern!r} is not a valid regular expression: {e}") from None
    m = rx.search(p.as_posix())
    if m is None:
        raise ValueError(f"subject pattern {pattern!r} does not match path {p.as_posix()!r}")
    if "subject" in rx.groupindex:
        value = m.group("subject")
    elif rx.groups:
        value = m.group(1)
    else:
        value = m.group(0)
    if not value:
        raise ValueError(f"subject pattern {pattern!r} matched an empty subject in {p.as_posix()!r}")
    return value


@dataclass(frozen=True)
class SubjectTable:
    """What a subject CSV says: the subject of each path, and the subjects pinned to a split."""

    subjects: dict[str, str] = field(default_factory=dict)
    splits: dict[str, str] = field(default_factory=dict)

    def subject_of(self, path: str | PurePath) -> str | None:
        """The subject the table gives ``path``: its ``path`` cell as written, the same file by its real
        path, its file name, or its file name without the image extension; None when it is not listed."""
        p = PurePath(path)
        for key in (str(path), p.as_posix(), p.name, strip_image_suffix(p.name)):
            if key in self.subjects:
                return self.subjects[key]
        return self._by_real_path.get(os.path.realpath(path))

    @cached_property
    def _by_real_path(self) -> dict[str, str]:
        """``{real path: subject}`` of the rows whose ``path`` names a directory part (computed once)."""
        return {os.path.realpath(k): v for k, v in self.subjects.items() if "/" in k or os.sep in k}


def _short(value: object, limit: int = 80) -> str:
    """``repr`` cut to ``limit`` characters: an error names a bad value without echoing a huge one."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def load_subject_csv(path: str | Path, split_names: Sequence[str] = ("train", "val", "test")) -> SubjectTable:
    """Read a ``path,subject[,split]`` CSV (UTF-8, header required; extra columns ignored).

    A non-empty ``split`` pins that subject to the split (e.g. an official test set); subjects
    without one are split by the fractions as usual.

    Args:
        path: the CSV file.
        split_names: the allowed split values.

    Returns:
        `SubjectTable` with ``{path_or_name: subject}`` (the ``path`` column as written in the file)
        and ``{subject: split}`` for the pinned subjects.

    Raises:
        ValueError: naming the file (and line) when it is missing, unreadable, not UTF-8 text or not
            such a table.
    """
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            return _read_subject_rows(csv.DictReader(fh), path, split_names)
    except FileNotFoundError:
        raise ValueError(f"subject CSV {path} does not exist") from None
    except IsADirectoryError:
        raise ValueError(f"subject CSV {path} is a directory, not a CSV file") from None
    except UnicodeDecodeError as err:
        raise ValueError(f"subject CSV {path} is not UTF-8 text (byte {err.start}); save it as UTF-8 CSV") from None
    except csv.Error as err:
        raise ValueError(f"subject CSV {path} is not a valid CSV file ({err})") from None
    except OSError as err:
        raise ValueError(f"subject CSV {path} cannot be read ({err.strerror or err})") from None


def _read_subject_rows(reader: csv.DictReader, path: str | Path, split_names: Sequence[str]) -> SubjectTable:
    header = [(h or "").strip() for h in (reader.fieldnames or [])]
    if "path" not in header or "subject" not in header:
        raise ValueError(f"{path}: the CSV needs 'path' and 'subject' columns, found {_short(header)}")
    reader.fieldnames = header
    table = SubjectTable()
    for line, row in enumerate(reader, start=2):
        key, subject = (row.get("path") or "").strip(), (row.get("subject") or "").strip()
        split = (row.get("split") or "").strip()
        if not key or not subject:
            raise ValueError(f"{path}:{line}: empty path or subject in {_short(row)}")
        if key in table.subjects and table.subjects[key] != subject:
            raise ValueError(f"{path}:{line}: {key!r} is listed with two subjects, {table.subjects[key]!r} and {subject!r}")
        table.subjects[key] = subject
        if not split:
            continue
        if split not in split_names:
            raise ValueError(f"{path}:{line}: split {_short(split)} is not one of {', '.join(split_names)}")
        if table.splits.get(subject, split) != split:
            raise ValueError(f"{path}:{line}: subject {subject!r} is pinned to two splits, {table.splits[subject]!r} and {split!r}")
        table.splits[subject] = split
    if not table.subjects:
        raise ValueError(f"{path}: the CSV has a header but no rows; add one 'path,subject' row per input")
    return table
