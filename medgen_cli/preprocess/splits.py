"""Subject-level train/val/test splits and subject ids from file names or a CSV.

Splits are by *subject*, never by image, so slices or follow-ups of one person never straddle
train and test. The assignment depends only on the set of subjects, the fractions and the seed:
unique subjects are sorted, permuted with ``numpy.random.default_rng(seed)``, and cut into
consecutive runs whose sizes come from largest-remainder rounding.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
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


def subject_from_path(path: str | PurePath, pattern: str | None = None) -> str:
    """Subject id of an image path.

    Without ``pattern``: the file (or DICOM directory) name without its image extension
    (``/data/sub-01.nii.gz`` -> ``sub-01``). With ``pattern``: a regular expression searched in
    the whole path (POSIX separators); the subject is its group named ``subject``, else its first
    group, else the whole match (``r"(sub-\\d+)"`` on ``/data/sub-07/ses-1/ct.nii.gz`` -> ``sub-07``).

    Args:
        path: the image file or directory.
        pattern: optional regular expression.
    """
    p = PurePath(path)
    if pattern is None:
        name = p.name
        lower = name.lower()
        for suffix in _IMAGE_SUFFIXES:
            if lower.endswith(suffix) and len(name) > len(suffix):
                return name[: -len(suffix)]
        return name
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


def load_subject_csv(path: str | Path, split_names: Sequence[str] = ("train", "val", "test")) -> SubjectTable:
    """Read a ``path,subject[,split]`` CSV (header required; extra columns ignored).

    A non-empty ``split`` pins that subject to the split (e.g. an official test set); subjects
    without one are split by the fractions as usual.

    Args:
        path: the CSV file.
        split_names: the allowed split values.

    Returns:
        `SubjectTable` with ``{path_or_name: subject}`` (the ``path`` column as written in the file)
        and ``{subject: split}`` for the pinned subjects.
    """
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        header = [h.strip() for h in (reader.fieldnames or [])]
        if "path" not in header or "subject" not in header:
            raise ValueError(f"{path}: the CSV needs 'path' and 'subject' columns, found {header}")
        reader.fieldnames = header
        table = SubjectTable()
        for line, row in enumerate(reader, start=2):
            key, subject = (row.get("path") or "").strip(), (row.get("subject") or "").strip()
            split = (row.get("split") or "").strip()
            if not key or not subject:
                raise ValueError(f"{path}:{line}: empty path or subject in {row}")
            if key in table.subjects and table.subjects[key] != subject:
                raise ValueError(f"{path}:{line}: {key!r} is listed with two subjects, {table.subjects[key]!r} and {subject!r}")
            table.subjects[key] = subject
            if not split:
                continue
            if split not in split_names:
                raise ValueError(f"{path}:{line}: split {split!r} is not one of {', '.join(split_names)}")
            if table.splits.get(subject, split) != split:
                raise ValueError(f"{path}:{line}: subject {subject!r} is pinned to two splits, {table.splits[subject]!r} and {split!r}")
            table.splits[subject] = split
    return table
