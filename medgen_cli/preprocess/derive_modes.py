"""The registry of derive modes: the paired stores ``medgen preprocess`` derives from each image
(``derive.outputs``: ``drr``, ``lowdose``, ``downsample:F``).

An entry (`DeriveMode`) declares its name and the argument its spec takes (``downsample:F``: one
to three integer factors), the ``mode.kind`` values it accepts (a DRR projects whole volumes), whether
it keeps the slicing axis (so that in slices and sequence modes its volume is cut at the slice
indices of the main items and item k pairs with item k), which masks follow it (``main``: it lies on
main's grid and pairs with main's mask store; ``own``: its own mask store ``masks_<store>`` on its
grid; ``none``) and the function producing its items from the physical image (``make``). The
settings validate ``derive.outputs`` against the registry (`check_spec`) and the step dispatches
through it (`parse_spec`); an unknown output is an error listing the registry.

This module imports only numpy and the image data model, so the settings load without torch; the
image functions of `medgen_cli.preprocess.derive` are imported when an entry makes its items.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ..meta import ImageMeta, IntensityMapping

MODE_KINDS = ("volume", "slices", "sequence")
DeriveItems = list[tuple[str, np.ndarray, ImageMeta]]  # (item id, stored values, meta) per derived item


@dataclass(frozen=True)
class DeriveContext:
    """What a derive mode may use besides the physical image.

    Args:
        item_id: the main item's id (a mode with several items per image suffixes it: ``<id>_ap``).
        seed: this item's seed (noise).
        kind: ``mode.kind`` (volume, slices, sequence).
        axis: ``mode.axis``, the slicing axis.
        output_range: ``intensity.output_range``, the stored value range.
        mapping: the main items' intensity mapping; a derived image in the main's physical units is
            stored through it, so that paired items share one scale.
        options: the ``derive`` settings section (``drr_max_depth``, ``lowdose_fraction``, ...).
    """

    item_id: str
    seed: int
    kind: str
    axis: int
    output_range: tuple[float, float]
    mapping: IntensityMapping
    options: Any

    def stored(self, arr: np.ndarray, meta: ImageMeta) -> DeriveItems:
        """One item of a derived image in the main's physical units, stored through the main's mapping."""
        return [(self.item_id, self.mapping.to_stored(arr), meta.replace(intensity=self.mapping))]


@dataclass(frozen=True)
class DeriveArgument:
    """The argument of a spec ``name:ARG``.

    Args:
        letter: its name in the usage text (``F`` in ``downsample:F``).
        pattern: regular expression the argument must match.
        parse: the text -> its value (given to ``make`` and ``keeps_slicing_axis``).
    """

    letter: str
    pattern: str
    parse: Callable[[str], Any]


def _always(params: Any, axis: int) -> bool:
    return True


def _never(params: Any, axis: int) -> bool:
    return False


@dataclass(frozen=True)
class DeriveMode:
    """One derived paired store.

    Args:
        name: the spec's name, and the store's (``downsample:2`` -> store ``downsample2``).
        make: ``make(physical image, meta, argument value, DeriveContext)`` -> its items as stored values.
        summary: what it is, for listings and errors ("AP + lateral radiographs").
        argument: the argument the spec takes (None: none).
        modes: the ``mode.kind`` values it accepts.
        needs_3d: only 3D inputs (a 2D input is refused when read).
        keeps_slicing_axis: ``(argument value, mode.axis)`` -> whether the derived volume keeps the
            slicing axis, as slices and sequence modes need (they cut it like the main items).
        masks: "main" (on main's grid: main's masks pair with it), "own" (mask store on its own grid), "none".
    """

    name: str
    make: Callable[[np.ndarray, ImageMeta, Any, DeriveContext], DeriveItems]
    summary: str
    argument: DeriveArgument | None = None
    modes: tuple[str, ...] = MODE_KINDS
    needs_3d: bool = False
    keeps_slicing_axis: Callable[[Any, int], bool] = _always
    masks: Literal["main", "own", "none"] = "main"

    @property
    def usage(self) -> str:
        return f"{self.name}:{self.argument.letter}" if self.argument else self.name


DERIVE_MODES: dict[str, DeriveMode] = {}


def register_derive_mode(mode: DeriveMode) -> DeriveMode:
    """Add a derive mode (its name must be new)."""
    if mode.name in DERIVE_MODES:
        raise ValueError(f"derive mode {mode.name!r} is already registered")
    DERIVE_MODES[mode.name] = mode
    return mode


def listing() -> str:
    """The registered modes as usage texts: ``drr, lowdose, downsample:F``."""
    return ", ".join(m.usage for m in DERIVE_MODES.values())


def parse_spec(spec: str) -> tuple[DeriveMode, Any]:
    """``"downsample:2"`` -> (its mode, the argument's value); an unknown or malformed spec is a
    ``ValueError`` listing the registry."""
    name, sep, arg = str(spec).partition(":")
    mode = DERIVE_MODES.get(name)
    bad = f"unknown derived output {spec!r}; registered: {listing()}"
    if mode is None:
        raise ValueError(bad)
    if mode.argument is None:
        if sep:
            raise ValueError(f"{bad} ({name} takes no argument)")
        return mode, None
    if not re.fullmatch(mode.argument.pattern, arg):
        raise ValueError(f"{bad} ({mode.usage} needs {mode.argument.letter} matching {mode.argument.pattern})")
    return mode, mode.argument.parse(arg)


def check_spec(spec: str, kind: str, axis: int) -> None:
    """Whether ``spec`` can be derived in ``mode.kind`` ``kind`` slicing along ``axis``; a ``ValueError`` if not."""
    mode, params = parse_spec(spec)
    if kind not in mode.modes:
        raise ValueError(f"derive output {spec} ({mode.summary}) needs mode.kind {' or '.join(mode.modes)}")
    if kind != "volume" and not mode.keeps_slicing_axis(params, axis):
        raise ValueError(f"derive output {spec} in {kind} mode must keep the slicing axis (mode.axis = {axis}) "
                         "at factor 1, so that item k pairs with item k")


def store_name(spec: str) -> str:
    """The store a spec writes: ``downsample:2`` -> ``downsample2``, ``downsample:2,2,1`` -> ``downsample2x2x1``."""
    return spec.replace(":", "").replace(",", "x")


# ------------------------------------------------------------------------------ built-in modes
DRR_VIEWS = ("ap", "lateral")


def _drr(arr: np.ndarray, meta: ImageMeta, params: Any, ctx: DeriveContext) -> DeriveItems:
    """One radiograph per view: optical depth (the log radiograph) on one fixed scale for every subject."""
    from .derive import drr

    items = []
    lo, hi = ctx.output_range
    for view in DRR_VIEWS:
        a, m = drr(arr, meta, view=view, output="log")
        m = m.replace(intensity=IntensityMapping(method="window", unit="optical depth", in_low=0.0,
                                                 in_high=ctx.options.drr_max_depth, out_low=lo, out_high=hi, clip=True))
        items.append((f"{ctx.item_id}_{view}", m.intensity.to_stored(a), m))
    return items


def _lowdose(arr: np.ndarray, meta: ImageMeta, params: Any, ctx: DeriveContext) -> DeriveItems:
    from .derive import lowdose

    a, m = lowdose(arr, meta, dose_fraction=ctx.options.lowdose_fraction, sigma_full=ctx.options.lowdose_sigma,
                   seed=ctx.seed)
    return ctx.stored(a, m)


def downsample_factor(factors: tuple[int, ...], arr: np.ndarray, kind: str, axis: int) -> float | tuple[float, ...]:
    """The factor of ``downsample:F``: every axis of a volume item; in slices and sequence modes the
    in-plane axes only (the slicing axis keeps its slices, so the pieces pair one to one)."""
    if len(factors) > 1:
        return factors
    if kind == "volume" or arr.ndim != 3:
        return factors[0]
    return tuple(1 if a == axis else factors[0] for a in range(3))


def _downsample(arr: np.ndarray, meta: ImageMeta, factors: tuple[int, ...], ctx: DeriveContext) -> DeriveItems:
    from .derive import downsample

    a, m = downsample(arr, meta, downsample_factor(factors, arr, ctx.kind, ctx.axis))
    return ctx.stored(a, m)


def _keeps_axis(factors: tuple[int, ...], axis: int) -> bool:
    """One factor applies in-plane in slices/sequence modes; per-axis factors must leave the slicing axis at 1."""
    return len(factors) != 3 or factors[axis] == 1


register_derive_mode(DeriveMode("drr", _drr, "AP + lateral radiographs; projects whole CT volumes", modes=("volume",),
                                needs_3d=True, keeps_slicing_axis=_never, masks="none"))
register_derive_mode(DeriveMode("lowdose", _lowdose, "simulated low-dose CT: added noise"))
register_derive_mode(DeriveMode("downsample", _downsample, "coarser spacing, same field of view",
                                DeriveArgument("F", r"\d+(,\d+){0,2}", lambda a: tuple(int(f) for f in a.split(","))),
                                keeps_slicing_axis=_keeps_axis, masks="own"))
