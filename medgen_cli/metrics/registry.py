"""The registry of paired per-item metrics: one entry per metric, in the order of every output.

An entry (`ItemMetric`) declares the metric's name, its group (the box plot it shares with the
metrics of the same unit), whether higher is better, and how it is computed on one pair
(`PairContext` -> a float, or None when it does not apply to the item, e.g. 3D SSIM of a volume
thinner than the window). `medgen_cli.metrics.items.item_metrics` loops over the registry, so a
registered metric appears in ``metrics.json``, ``items.csv``, the printed table and the box plots
with no other edit. The built-in metrics are registered in `medgen_cli.metrics.items`.

A group (`MetricGroup`) names a box plot and its axis: ``similarity`` (SSIM), ``psnr`` (dB),
``error`` (stored units), ``error_phys`` (the data's physical unit, e.g. HU). Following timm's
``register_model``: one line registers a kind, a lookup by name builds it, an unknown name lists
what exists.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property

import torch

from ..meta import IntensityMapping
from .image import physical_metrics

PHYSICAL_UNIT = None  # a group's axis label that is the data's physical unit (HU for CT)


@dataclass
class PairContext:
    """One prediction/target pair as every metric sees it.

    Args:
        pred, target: (1, 1, *spatial) float64 stored values (2 or 3 spatial axes).
        data_range: ``L`` of SSIM and PSNR (`resolve_data_range` of the target's mapping).
        mapping: the target's intensity mapping (stored -> physical units).
        axis: spatial axis of slice-wise metrics (volumes).
    """

    pred: torch.Tensor
    target: torch.Tensor
    data_range: float
    mapping: IntensityMapping
    axis: int

    @property
    def spatial(self) -> tuple[int, ...]:
        return tuple(self.target.shape[2:])

    @cached_property
    def physical(self) -> dict[str, float]:
        """PSNR, MAE and RMSE in physical units, computed once for the three ``*_phys`` metrics."""
        return {k: float(v[0]) for k, v in physical_metrics(self.pred, self.target, self.mapping).items()}


@dataclass(frozen=True)
class MetricGroup:
    """A set of metrics sharing one axis: one box plot ``box_<name>.png``.

    Args:
        name: the group's name.
        axis: y-axis label of its box plot; ``PHYSICAL_UNIT`` (None) = the data's unit.
        table_unit: unit appended to its metrics' names in the printed table: "" none, a text
            (``"dB"``), or ``PHYSICAL_UNIT`` (None) for the data's unit.
    """

    name: str
    axis: str | None
    table_unit: str | None = ""

    def axis_label(self, unit: str) -> str:
        return unit if self.axis is PHYSICAL_UNIT else self.axis

    def table_label(self, metric: str, unit: str) -> str:
        suffix = unit if self.table_unit is PHYSICAL_UNIT else self.table_unit
        return f"{metric} ({suffix})" if suffix else metric


@dataclass(frozen=True)
class ItemMetric:
    """One paired per-item metric.

    Args:
        name: the column of ``items.csv`` and the key of ``metrics.json``.
        group: the name of its `MetricGroup`.
        higher_is_better: True for similarities and PSNR, False for errors.
        compute: ``compute(pair)`` -> the value, or None when the metric does not apply to the item.
        description: one line for documentation.
    """

    name: str
    group: str
    higher_is_better: bool
    compute: Callable[[PairContext], float | None]
    description: str = ""


GROUPS: dict[str, MetricGroup] = {}
METRICS: dict[str, ItemMetric] = {}


def register_group(group: MetricGroup) -> MetricGroup:
    """Add a box-plot group (its name must be new)."""
    if group.name in GROUPS:
        raise ValueError(f"metric group {group.name!r} is already registered")
    GROUPS[group.name] = group
    return group


def register_metric(metric: ItemMetric) -> ItemMetric:
    """Add a paired metric after those registered so far (its name must be new, its group known)."""
    if metric.name in METRICS:
        raise ValueError(f"metric {metric.name!r} is already registered")
    if metric.group not in GROUPS:
        raise ValueError(f"metric {metric.name!r}: unknown group {metric.group!r}; groups: {', '.join(GROUPS)}")
    METRICS[metric.name] = metric
    return metric


def unregister_metric(name: str) -> None:
    """Remove a metric (tests that register a toy metric clean up with this)."""
    METRICS.pop(name, None)


def get_metric(name: str) -> ItemMetric:
    """The metric called ``name``; an unknown name is a ``ValueError`` listing the registry."""
    try:
        return METRICS[name]
    except KeyError:
        raise ValueError(f"unknown metric {name!r}; registered metrics: {', '.join(METRICS)}") from None


def registered_metrics() -> Iterator[ItemMetric]:
    """The registered metrics in registration order (the order of the CSV columns)."""
    return iter(list(METRICS.values()))


def group_of(name: str) -> MetricGroup | None:
    """The group of a registered metric (None for a name that is not a registered metric)."""
    metric = METRICS.get(name)
    return GROUPS[metric.group] if metric else None


def box_groups() -> dict[str, tuple[str, ...]]:
    """``{group: (metric names...)}`` in registration order: one box plot per group."""
    out: dict[str, list[str]] = {g: [] for g in GROUPS}
    for metric in METRICS.values():
        out[metric.group].append(metric.name)
    return {g: tuple(names) for g, names in out.items() if names}
