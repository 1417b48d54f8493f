"""The tiled-inference loop: run any model call tile by tile, in passes, with whole-volume
normalisation statistics (`inference.norm.GlobalNorm`), writing outputs through
`inference.tiling.TileAggregator`.

A call has inputs and outputs at several resolutions, each given as voxels per grid unit
(``scale``): an encoder maps an image (scale = the unit, e.g. 4) to latents (scale 1), VQ-VAE-2's
decoder reads top codes (scale 1) and bottom codes (scale 2) and writes an image (scale 4). Inputs
and outputs are arrays of shape (*lead, *spatial) with the batch first: numpy arrays, zarr arrays,
tensors (inputs) or anything else sliced by a tuple of slices, so the whole volume never has to be one tensor and
an output can stream straight into a zarr array.

Passes (see `inference.norm`): by default progressive, one per norm call of the forward, each
stopping the forward right after settling that call's whole-volume statistics, then one full
pass that writes the outputs: the whole-volume result up to float error when the halo covers the
receptive field. ``passes=n`` runs n iterated passes instead (1 = per-tile statistics), cheaper
and approximate. A model without group or instance norm, or a plan of one tile, needs one pass.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .norm import GlobalNorm, Stats, StopForward, norm_layers, stats_change
from .tiling import Tile, TileAggregator, TilePlan

log = logging.getLogger(__name__)

__all__ = ["TiledRun", "run_tiled", "read_tile", "is_integer", "to_numpy"]

MAX_NORM_CALLS = 1000


@dataclass
class TiledRun:
    """What a tiled call did: its plan, the passes run and how far the statistics moved in each."""

    plan: str
    tiles: int
    passes: int = 0
    changes: list[float] = field(default_factory=list)
    pass_seconds: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"plan": self.plan, "tiles": self.tiles, "passes": self.passes,
                "stat_changes": [float(f"{c:.3g}") for c in self.changes], "seconds": round(self.seconds, 2),
                "pass_seconds": [round(t, 2) for t in self.pass_seconds]}

    @property
    def work_factor(self) -> float:
        """Time of all passes over the time of the last (full, writing) one."""
        return sum(self.pass_seconds) / self.pass_seconds[-1] if self.pass_seconds else 1.0


def is_integer(array: Any) -> bool:
    """Whether a numpy / zarr array or tensor holds integers (codes) rather than images or latents."""
    if isinstance(array, Tensor):
        return not array.is_floating_point()
    return bool(np.issubdtype(np.dtype(array.dtype), np.integer))


def read_tile(array: Any, region: tuple[slice, ...], device: torch.device) -> Tensor:
    """A region of a numpy / zarr array or tensor as a tensor on ``device``: floats as float32,
    integers as int64 (codes)."""
    if isinstance(array, Tensor):
        values = array[(Ellipsis, *region)]
        return values.to(device=device, dtype=torch.float32 if values.is_floating_point() else torch.int64)
    values = np.asarray(array[(Ellipsis, *region)])
    if np.issubdtype(values.dtype, np.integer):
        return torch.from_numpy(values.astype(np.int64, copy=False)).to(device)
    return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)).to(device)


def to_numpy(t: Tensor) -> np.ndarray:
    """A result as numpy: bf16 and other floats numpy lacks become float32, integers stay."""
    t = t.detach()
    if t.is_floating_point() and t.dtype not in (torch.float16, torch.float32, torch.float64):
        t = t.float()
    return t.cpu().numpy()


def _as_list(outputs: Tensor | Sequence[Tensor]) -> list[Tensor]:
    return [outputs] if isinstance(outputs, Tensor) else list(outputs)


class _Outputs:
    """Output arrays (given, or allocated from the first tile) and their aggregators."""

    def __init__(self, plan: TilePlan, scales: Sequence[Sequence[int]], out: Sequence[Any] | None, blend: Sequence[int]):
        self.plan, self.scales, self.blend = plan, [tuple(s) for s in scales], tuple(blend)
        self.arrays = list(out) if out is not None else None
        self.aggregators: list[TileAggregator] | None = None
        self.written = False

    def start_pass(self) -> None:
        self.written = False

    def add(self, tile: Tile, values: list[np.ndarray]) -> None:
        if not self.written and self.arrays is not None and any(self.blend):
            for a in self.arrays:  # blended tiles are added up: start from zero in every writing pass
                a[...] = 0
        self.written = True
        if len(values) != len(self.scales):
            raise ValueError(f"the tiled call returned {len(values)} outputs, expected {len(self.scales)}")
        if self.arrays is None:
            sd = len(self.plan.grid_shape)
            self.arrays = [np.zeros((*v.shape[:-sd], *(g * s for g, s in zip(self.plan.grid_shape, sc))), v.dtype)
                           for v, sc in zip(values, self.scales)]
        if self.aggregators is None:
            self.aggregators = [TileAggregator(a, self.plan, sc, self.blend if np.issubdtype(v.dtype, np.floating) else 0)
                                for a, sc, v in zip(self.arrays, self.scales, values)]
        for agg, v in zip(self.aggregators, values):
            agg.add(tile, v)


def run_tiled(
    fn: Callable[..., Tensor | Sequence[Tensor]],
    model: nn.Module,
    inputs: Sequence[Any],
    in_scales: Sequence[Sequence[int]],
    out_scales: Sequence[Sequence[int]],
    plan: TilePlan,
    *,
    device: torch.device | str = "cpu",
    out: Sequence[Any] | None = None,
    blend: int | Sequence[int] = 0,
    passes: int | None = None,
    pass_halos: Sequence[Sequence[int]] = (),
) -> tuple[list[Any], TiledRun]:
    """Run ``fn`` (a call of ``model``) over the tiles of ``plan``.

    Args:
        fn: tensors in (one per input, (B, *lead, *tile)) -> a tensor or tuple of tensors out.
        model: the module whose norm layers get whole-volume statistics.
        inputs: arrays (B, *lead, *spatial), spatial = plan grid x its scale.
        in_scales, out_scales: voxels per grid unit and axis, per input and per output.
        plan: the tiles.
        device: where ``fn`` runs; tiles are moved there and results back to numpy.
        out: output arrays to fill (e.g. zarr; zero-filled when blending); None = new numpy arrays.
        blend: raised-cosine blending half-width in grid units (float outputs; 0 = cores only).
        passes: None = progressive passes, one per norm call plus the writing pass (whole-volume
            statistics, exact); n = n iterated passes (1 = per-tile statistics; approximate).
        pass_halos: progressive passes: the k-th pass (settling the k-th norm call) needs only the
            receptive field of that call's input (`inference.budget.Probe.norm_halos`), so its tiles
            keep the plan's cores with that smaller halo (never more than the plan's).

    Returns:
        (output arrays, report).
    """
    if passes is not None and passes < 1:
        raise ValueError(f"passes={passes!r} must be >= 1 (or None: progressive, exact)")
    device = torch.device(device)
    sd = len(plan.grid_shape)
    blend = (blend,) * sd if isinstance(blend, int) else tuple(blend)
    report = TiledRun(plan=plan.describe(), tiles=len(plan))
    outputs = _Outputs(plan, out_scales, out, blend)
    t0 = time.perf_counter()
    if len(plan) == 1 or not norm_layers(model):
        _one_pass(fn, inputs, in_scales, plan, device, outputs, None)
        report.passes = 1
        report.pass_seconds.append(time.perf_counter() - t0)
    else:
        with GlobalNorm(model) as norm:
            if passes is None:
                _progressive(fn, inputs, in_scales, plan, device, outputs, norm, report, pass_halos)
            else:
                _iterated(fn, inputs, in_scales, plan, device, outputs, norm, report, passes)
    report.seconds = time.perf_counter() - t0
    return outputs.arrays, report


def _progressive(fn, inputs, in_scales, plan: TilePlan, device, outputs: _Outputs, norm: GlobalNorm, report: TiledRun,
                 pass_halos: Sequence[Sequence[int]]) -> None:
    """Pass k settles the k-th norm call; the pass whose forwards run to the end writes the outputs."""
    settled: Stats = {}
    for k in range(MAX_NORM_CALLS + 1):
        norm.begin_pass(settled, stop_at=k)
        t0 = time.perf_counter()
        tiles = plan
        if k < len(pass_halos):  # only this call's receptive field is needed: same cores, less halo
            tiles = TilePlan(plan.grid_shape, plan.core, [min(a, b) for a, b in zip(pass_halos[k], plan.halo)])
        finished = _one_pass(fn, inputs, in_scales, tiles, device, outputs, norm)
        report.passes += 1
        report.pass_seconds.append(time.perf_counter() - t0)
        log.debug("tiled pass %d: %s in %.1f s", k + 1, "written" if finished else f"settled norm call {k}",
                  report.pass_seconds[-1])
        if finished:
            return
        settled.update(norm.end_pass())
    raise ValueError(f"the model makes more than {MAX_NORM_CALLS} norm calls per forward; tile it with a fixed "
                     "number of iterated passes instead")


def _iterated(fn, inputs, in_scales, plan, device, outputs: _Outputs, norm: GlobalNorm, report: TiledRun,
              passes: int) -> None:
    """``passes`` full passes, each with the previous pass's statistics (the first with per-tile ones)."""
    stats: Stats | None = None
    for k in range(1, passes + 1):
        norm.begin_pass(stats, remeasure=True)
        t0 = time.perf_counter()
        _one_pass(fn, inputs, in_scales, plan, device, outputs if k == passes else None, norm)
        report.pass_seconds.append(time.perf_counter() - t0)
        new = norm.end_pass()
        if stats is not None:
            report.changes.append(stats_change(stats, new))
            log.info("tiled pass %d/%d: statistics moved %.3g std", k, passes, report.changes[-1])
        stats = new
        report.passes += 1


@torch.no_grad()
def _one_pass(fn, inputs, in_scales, plan: TilePlan, device, outputs: _Outputs | None, norm: GlobalNorm | None) -> bool:
    """Run every tile; False when the forwards were stopped by a progressive pass (nothing written)."""
    if outputs is not None:
        outputs.start_pass()
    ones = (1,) * len(plan.grid_shape)
    for tile in plan:
        tensors = [read_tile(a, tile.region(s), device) for a, s in zip(inputs, in_scales)]
        if norm is not None:
            core = tile.core_in_tile(ones)
            norm.set_tile(tile.shape, [c.start for c in core], [c.stop for c in core])
        try:
            result = _as_list(fn(*tensors))
        except StopForward:
            continue
        if outputs is not None:
            outputs.add(tile, [to_numpy(r) for r in result])
    return outputs is None or outputs.written
