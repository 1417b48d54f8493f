"""The evaluation report: aggregates of per-item metrics, their CSV and table rows, JSON-safe values,
and the sentence that says how two intensity mappings differ.

* `stats` / `aggregate`: mean, std, median and n of every per-item metric (non-finite values, e.g.
  the PSNR of an exact reconstruction, are counted apart);
* `write_csv`: rows of dicts as a CSV whose columns follow the rows' key order;
* `table_rows`: (section, label, value) rows of the printed table, each metric labelled with the
  unit of its registry group (``psnr (dB)``, ``mae_phys (HU)``);
* `mapping_note`: (log level, sentence) when the intensity mapping of one side differs from the data's.
"""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from ..meta import IntensityMapping
from .registry import group_of

ID_COLUMNS = ("item", "subject", "split", "target")
PER_ITEM_METHODS = ("percentile", "zscore", "minmax")  # mappings fitted to each image's own values


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


def jsonable(value: Any) -> Any:
    """``value`` with numpy scalars as Python numbers and non-finite floats as None (valid JSON)."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, (np.integer, np.bool_)):
        return value.item()
    return value


def write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    """The rows as a CSV; the columns are every key in the order first seen."""
    names = list(dict.fromkeys(k for r in rows for k in r))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=names)
        writer.writeheader()
        writer.writerows(rows)
    return path


def metric_label(name: str, unit: str) -> str:
    """The table label of a metric: its name with the unit of its group (a name outside the registry: as is)."""
    group = group_of(name)
    return group.table_label(name, unit) if group else name


def table_rows(section: str, agg: dict[str, dict[str, Any]], unit: str) -> list[tuple[str, str, str]]:
    """(section, label, "mean ± std (median, n)") per aggregated metric."""
    rows = []
    for name, s in agg.items():
        value = "n/a" if s["mean"] is None else f"{s['mean']:.4g} ± {s['std']:.2g} (median {s['median']:.4g}, n={s['n']})"
        rows.append((section, metric_label(name, unit), value))
    return rows


def mapping_note(theirs: IntensityMapping, data: IntensityMapping, theirs_text: str,
                 data_text: str) -> tuple[int, str] | None:
    """(log level, sentence) saying how an intensity mapping differs from the data's; None when equal.

    A mapping fitted per image (MR percentiles, z-scores, min-max) differs between subjects only in
    its physical end points: that is expected, an ``INFO``. Any other difference (a different window,
    unit, stored range or transform) is a ``WARNING``, since the metrics use the data's.
    """
    if theirs == data:
        return None
    same_scale = all(getattr(theirs, f) == getattr(data, f) for f in ("method", "unit", "out_low", "out_high", "clip", "transform"))
    if same_scale and data.method in PER_ITEM_METHODS:
        return logging.INFO, (f"intensities are mapped per image ({data.method} to [{data.out_low:g}, {data.out_high:g}]), "
                              "so their physical end points differ between subjects as expected; each item's metrics use "
                              "its own mapping.")
    return logging.WARNING, (f"{theirs_text} intensities mapped as {theirs.describe()}, but {data_text} {data.describe()}; "
                             "the metrics use the data's mapping, so physical-unit errors may not be comparable.")
