"""Plots of numbers as PNG files: training curves from ``metrics.jsonl``, histograms, box plots.

``metrics.jsonl`` holds one JSON record per line, ``{"step": int, "phase": "train" | "val",
<name>: float, ...}`` (written by ``medgen_cli.train.metrics_log``). Drawn with matplotlib's
object API on the Agg canvas, like :mod:`medgen_cli.viz.images`. Every plot is at least
``MIN_WIDTH`` inches at ``PLOT_DPI`` (800 px) wide with 9-11 pt text, readable without zooming.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from .images import save_figure

PLOT_DPI = 100
PANEL = (4.0, 2.8)  # inches per plot panel, at least
MIN_WIDTH = 8.0  # inches: 800 px at PLOT_DPI
MAX_PANELS = 12
TITLE, LABEL, TICK = 11, 10, 9  # font sizes (pt)


def _read_jsonl(path: Path) -> list[dict]:
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a torn last line of an interrupted run
        if isinstance(record, dict):
            records.append(record)
    return records


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def plot_size(n: int, ncols: int = 3) -> tuple[float, float]:
    """(width, height) in inches of ``n`` plot panels in rows of ``ncols``: at least ``MIN_WIDTH`` wide."""
    cols = min(ncols, n)
    rows = math.ceil(n / cols)
    width = max(MIN_WIDTH, PANEL[0] * cols)
    panel_height = min(width / cols * PANEL[1] / PANEL[0], 5.0)
    return width, panel_height * rows


def _panels(n: int, ncols: int = 3) -> tuple[Figure, list]:
    cols = min(ncols, n)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=plot_size(n, ncols), dpi=PLOT_DPI, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        ax.set_axis_off()
    return fig, axes[:n]


def plot_metrics(jsonl_path: Path | str, png_path: Path | str, keys: Sequence[str] | None = None,
                 log_scale: Sequence[str] = ()) -> Path:
    """One panel per metric against ``step``, one line per phase.

    Args:
        jsonl_path: the ``metrics.jsonl`` file.
        png_path: PNG file to write.
        keys: metrics to plot (default: every numeric field except ``step``, at most 12).
        log_scale: metrics drawn on a logarithmic y axis (positive values only).
    """
    jsonl_path = Path(jsonl_path)
    if not jsonl_path.is_file():
        raise ValueError(f"metrics file {jsonl_path} does not exist")
    records = [r for r in _read_jsonl(jsonl_path) if _number(r.get("step")) is not None]
    if not records:
        raise ValueError(f"metrics file {jsonl_path} holds no records with a step")
    found = list(dict.fromkeys(k for r in records for k, v in r.items()
                               if k not in ("step", "phase", "elapsed_s") and _number(v) is not None))
    if keys is None:
        keys = found[:MAX_PANELS]
    else:
        missing = [k for k in keys if k not in found]
        if missing:
            raise ValueError(f"metrics {missing} are not in {jsonl_path}; it has {found}")
    if not keys:
        raise ValueError(f"metrics file {jsonl_path} holds no numeric metrics")
    fig, axes = _panels(len(keys))
    phases = list(dict.fromkeys(str(r.get("phase", "")) for r in records))
    for ax, key in zip(axes, keys):
        for phase in phases:
            pts = [(r["step"], _number(r.get(key))) for r in records if str(r.get("phase", "")) == phase]
            pts = [(s, v) for s, v in pts if v is not None and (key not in log_scale or v > 0)]
            if pts:
                xs, ys = zip(*sorted(pts))
                ax.plot(xs, ys, marker="." if len(xs) < 30 else None, lw=1, label=phase or None)
        if key in log_scale:
            ax.set_yscale("log")
        ax.set_title(key, fontsize=TITLE)
        ax.set_xlabel("step", fontsize=LABEL)
        ax.tick_params(labelsize=TICK)
        if len(phases) > 1:
            ax.legend(fontsize=TICK)
    return save_figure(fig, png_path, PLOT_DPI)


def _groups(groups: Mapping[str, Sequence[float] | np.ndarray]) -> dict[str, np.ndarray]:
    if not groups:
        raise ValueError("no groups to plot")
    out = {}
    for name, values in groups.items():
        v = np.asarray(values, dtype=np.float64).ravel()
        v = v[np.isfinite(v)]
        if v.size == 0:
            raise ValueError(f"group {name!r} holds no finite values")
        out[str(name)] = v
    return out


def histograms(path: Path | str, groups: Mapping[str, Sequence[float] | np.ndarray], xlabel: str = "",
               bins: int = 64, title: str = "") -> Path:
    """Overlaid normalised histograms of several value sets on common bins (e.g. HU of real vs samples).

    Args:
        path: PNG file to write.
        groups: name -> values (any shape; non-finite values are dropped).
        xlabel: x-axis label, e.g. "HU".
        bins: number of bins spanning all groups.
        title: plot title.
    """
    data = _groups(groups)
    if not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins must be a positive integer, got {bins!r}")
    lo = min(float(v.min()) for v in data.values())
    hi = max(float(v.max()) for v in data.values())
    edges = np.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1)
    fig, (ax,) = _panels(1)
    for name, v in data.items():
        ax.hist(v, bins=edges, density=True, histtype="step", lw=1.2, label=name)
    ax.set_xlabel(xlabel, fontsize=LABEL)
    ax.tick_params(labelsize=TICK)
    ax.legend(fontsize=TICK)
    if title:
        ax.set_title(title, fontsize=TITLE)
    return save_figure(fig, path, PLOT_DPI)


def box_plot(path: Path | str, groups: Mapping[str, Sequence[float] | np.ndarray], ylabel: str = "",
             title: str = "") -> Path:
    """Box plots of per-item values, one box per group (e.g. SSIM per split or per model).

    Args:
        path: PNG file to write.
        groups: name -> per-item values.
        ylabel: y-axis label.
        title: plot title.
    """
    data = _groups(groups)
    fig, (ax,) = _panels(1)
    ax.boxplot(list(data.values()), tick_labels=list(data.keys()))
    ax.set_ylabel(ylabel, fontsize=LABEL)
    ax.tick_params(labelsize=TICK)
    if title:
        ax.set_title(title, fontsize=TITLE)
    return save_figure(fig, path, PLOT_DPI)
