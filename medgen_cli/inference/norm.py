"""Whole-volume statistics for group and instance normalisation during tiled inference.

A `GroupNorm` layer normalises by the mean and variance of each (sample, group) over the whole
input it sees. Run on a tile, it sees the tile only, so tiled and whole-volume results differ by
far more than float error. `GlobalNorm` fixes this without touching the model classes: inside its
``with`` block every ``nn.GroupNorm`` (and instance norm without running statistics, a group norm
with one channel per group) of the model has its ``forward`` swapped for one that

1. accumulates the mean and variance of its input over the current tile's *core* (the part of
   the tile no other tile owns), at the layer's own resolution: the core in grid units times the
   layer's voxels per unit. The cores partition the volume at every resolution, so the sums over
   all tiles are whole-volume sums (combined in float64 with Chan et al.'s pairwise update);
2. normalises with whole-volume statistics given by the driver or, where it has none yet, with
   the tile's own statistics (the plain layer).

Two ways to run the passes (`inference.runner`):

- progressive (exact): pass k normalises the first k - 1 norm calls of the forward with their
  settled whole-volume statistics and stops the forward (`StopForward`) right after measuring the
  k-th; a norm call's input depends only on the calls before it, so its statistics are then
  exactly the whole-volume ones (when the halo covers the receptive field). After one pass per
  norm call, a last full pass writes the outputs. Early passes stop early and need only the
  receptive field of the layer they settle as halo, so for medgen's default autoencoders (9 norm
  layers each way) all passes together cost 4-6 times the convolutions of the writing pass,
  whatever the data;
- iterated (approximate): every pass runs the whole forward with the previous pass's statistics
  (the first with per-tile statistics) and measures all of them again. This converges to the same
  fixed point only after about as many passes as there are norm layers, and not monotonically:
  on a 48^3 CT-like phantom with air around the body (benchmarks/bench_tiled.py) the decoded
  image was off by 0.64 after 1 pass, 0.91 after 2 and 0.99 after 4 (stored units in [-1, 1]),
  because tiles of air normalise their noise to unit variance and that error travels layer by
  layer. So one pass (plain per-tile statistics, the cheapest) is the only useful iterated choice.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn.modules.instancenorm import _InstanceNorm

__all__ = ["GlobalNorm", "StopForward", "Stats", "stats_change", "norm_layers"]

# (count, mean, M2) per (sample, group), float64, shapes (B, G); M2 = sum of squared deviations
Stats = dict[tuple[int, int], tuple[Tensor, Tensor, Tensor]]


def norm_layers(model: nn.Module) -> list[tuple[str, nn.Module, int]]:
    """(name, module, groups) of every layer whose output depends on statistics of its whole input."""
    out = []
    for name, m in model.named_modules():
        if isinstance(m, nn.GroupNorm):
            out.append((name, m, m.num_groups))
        elif isinstance(m, _InstanceNorm) and not m.track_running_stats:
            out.append((name, m, m.num_features))
    return out


def _combine(a: tuple[Tensor, Tensor, Tensor] | None, b: tuple[Tensor, Tensor, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    if a is None:
        return b
    (na, ma, m2a), (nb, mb, m2b) = a, b
    n = na + nb
    delta = mb - ma
    return n, ma + delta * (nb / n), m2a + m2b + delta.square() * (na * nb / n)


def stats_change(old: Stats, new: Stats) -> float:
    """Largest change of a mean or standard deviation between two passes, in units of the new std."""
    worst = 0.0
    for key, (_, mean, m2) in new.items():
        if key not in old:
            return math.inf
        n = old[key][0]
        std_new, std_old = (m2 / n).sqrt(), (old[key][2] / n).sqrt()
        scale = std_new.clamp_min(1e-12)
        worst = max(worst, float(((mean - old[key][1]).abs() / scale).max()),
                    float(((std_new - std_old).abs() / scale).max()))
    return worst


class StopForward(Exception):
    """Raised inside a forward pass once the layer a progressive pass measures has been measured."""


class GlobalNorm:
    """Context manager swapping the model's norm layers for whole-volume-statistics versions.

    Args:
        model: any module; its group and instance norm layers are patched per instance
            (``module.forward``) and restored on exit, the classes are untouched.

    Use: ``with GlobalNorm(model) as gn:``, then per pass ``gn.begin_pass(use, stop_at)``, per tile
    ``gn.set_tile(units, core_start, core_stop)`` before calling the model, and ``gn.end_pass()``
    for the statistics accumulated over the tiles' cores. ``use`` maps norm calls to the statistics
    they normalise with (a call without an entry uses its tile's own statistics); calls with an
    entry are measured again only with ``remeasure``. ``stop_at`` = k makes the k-th norm call of the forward (0-based,
    in execution order) raise `StopForward` right after being measured: a progressive pass.
    """

    def __init__(self, model: nn.Module):
        self.layers = norm_layers(model)
        self._use: Stats = {}
        self._acc: Stats = {}
        self._stop_at: int | None = None
        self._remeasure = False
        self._calls: dict[int, int] = {}
        self._seen = 0
        self._units: tuple[int, ...] = ()
        self._core: tuple[tuple[int, int], ...] = ()
        self._saved: list[tuple[nn.Module, object]] = []

    def __enter__(self) -> GlobalNorm:
        for index, (_, module, groups) in enumerate(self.layers):
            self._saved.append((module, module.__dict__.get("forward")))
            module.forward = self._make_forward(index, module, groups, module.forward)
        return self

    def __exit__(self, *exc) -> None:
        for module, previous in self._saved:
            del module.forward
            if previous is not None:
                module.forward = previous
        self._saved.clear()

    def begin_pass(self, use: Stats | None, stop_at: int | None = None, remeasure: bool = False) -> None:
        self._use, self._acc, self._stop_at, self._remeasure = dict(use or {}), {}, stop_at, remeasure

    def end_pass(self) -> Stats:
        return self._acc

    def set_tile(self, units: Sequence[int], core_start: Sequence[int], core_stop: Sequence[int]) -> None:
        """The tile about to run: its size in grid units and its core relative to its start."""
        self._units = tuple(units)
        self._core = tuple(zip(core_start, core_stop))
        self._calls, self._seen = {}, 0

    def _core_view(self, name: str, x: Tensor) -> Tensor:
        slices = []
        for size, units, (a, b) in zip(x.shape[2:], self._units, self._core):
            if size % units:
                raise ValueError(f"norm layer {name!r} sees spatial shape {tuple(x.shape[2:])}, not a whole number of "
                                 f"voxels per grid unit for a tile of {self._units} units; the tile plan's unit must "
                                 "be the model's coarsest downsampling factor")
            u = size // units
            slices.append(slice(a * u, b * u))
        return x[(slice(None), slice(None), *slices)]

    def _accumulate(self, key: tuple[int, int], name: str, x: Tensor, groups: int) -> None:
        core = self._core_view(name, x)
        per_group = x.shape[1] // groups
        dims = tuple(range(1, core.ndim))
        means, variances = [], []
        for g in range(groups):  # one group at a time: the temporaries stay a fraction of the activation
            var, mean = torch.var_mean(core[:, g * per_group:(g + 1) * per_group].float(), dim=dims, correction=0)
            means.append(mean)
            variances.append(var)
        count = float(core[0, :per_group].numel())
        mean = torch.stack(means, 1).cpu().double()  # the sums live on the CPU in float64 (MPS has no float64)
        m2 = torch.stack(variances, 1).cpu().double() * count
        self._acc[key] = _combine(self._acc.get(key), (torch.full_like(mean, count), mean, m2))

    def _make_forward(self, index: int, module: nn.Module, groups: int, plain):
        name = self.layers[index][0]

        def forward(x: Tensor) -> Tensor:
            call = self._calls.get(index, 0)
            self._calls[index] = call + 1
            key, order = (index, call), self._seen
            self._seen += 1
            stats = self._use.get(key)
            if self._units and (stats is None or self._remeasure):
                self._accumulate(key, name, x, groups)
            if order == self._stop_at:
                raise StopForward
            if stats is None:
                return plain(x)
            return _normalise(x, stats, groups, module.eps, module.weight, module.bias)

        return forward


def _normalise(x: Tensor, stats: tuple[Tensor, Tensor, Tensor], groups: int, eps: float,
               weight: Tensor | None, bias: Tensor | None) -> Tensor:
    """(x - mean) / sqrt(var + eps) * weight + bias with given per-(sample, group) statistics, as one
    multiply-add with per-channel scale and shift (computed in float64)."""
    count, mean, m2 = stats
    b, c = x.shape[:2]
    if mean.shape != (b, groups):
        raise ValueError(f"statistics for {tuple(mean.shape)} (sample, group) do not fit an input of {b} samples")
    per_group = c // groups
    scale = (m2 / count + eps).rsqrt().repeat_interleave(per_group, dim=1)  # (B, C)
    shift = -mean.repeat_interleave(per_group, dim=1) * scale
    if weight is not None:
        w = weight.detach().cpu().double()
        scale, shift = scale * w, shift * w + (bias.detach().cpu().double() if bias is not None else 0.0)
    view = (b, c) + (1,) * (x.ndim - 2)
    scale, shift = (t.to(device=x.device, dtype=x.dtype).view(view) for t in (scale, shift))
    return torch.addcmul(shift, x, scale)
