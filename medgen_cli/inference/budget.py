"""What a tiled function costs: a probe run on a tiny input measures, with forward hooks, the
activation memory, the convolution FLOPs and the receptive field (in grid units) of any model call,
and whether the call contains global self-attention (which tiling cannot reproduce exactly).
`choose_core` then picks the tiles that fit a memory budget at the least overlap, and `available_bytes` gives
the automatic budget from the memory the machine (or container, or GPU) has free.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.modules.conv import _ConvNd, _ConvTransposeNd

from medgen_cli.nn.attention import SpatialSelfAttention

from .norm import norm_layers
from .tiling import axis_segments

log = logging.getLogger(__name__)

__all__ = ["Probe", "probe", "choose_core", "available_bytes", "PEAK_FACTOR"]

MAX_TILES_PER_AXIS = 256

# Peak resident memory of a forward pass over the largest (input + output) of one layer: ru_maxrss
# growth of one forward of medgen's default 3D autoencoders on the CPU was 3.0x (encoders) and
# 1.5x (VQ decoder) that sum: the block input kept for the residual sum, oneDNN's reordered copies
# and the allocator's slack. 3.2 keeps the estimate above what was measured.
PEAK_FACTOR = 3.2
_ATTENTION = (SpatialSelfAttention, nn.MultiheadAttention)


@dataclass(frozen=True)
class Probe:
    """Cost of one tiled function, per grid unit.

    Args:
        bytes_per_unit: peak activation bytes per grid unit of tile volume (PEAK_FACTOR included).
        halo: receptive-field radius per axis in grid units, rounded up (an upper bound: the sum
            over every convolution of its reach beyond its output's own cell).
        attention: names of global self-attention modules on the call's path (tiling is inexact).
        norm_halos: per norm call, in execution order, the receptive field of its input (grid units
            per axis, rounded up): the halo a progressive pass that settles that call needs.
        flops_per_unit: convolution FLOPs of the call per grid unit (multiply-adds count 2).
        norm_flops: per norm call, the convolution FLOPs per unit run before it: the work of the
            progressive pass that stops there.
    """

    bytes_per_unit: float
    halo: tuple[int, ...]
    attention: tuple[str, ...] = ()
    norm_halos: tuple[tuple[int, ...], ...] = ()
    flops_per_unit: float = 0.0
    norm_flops: tuple[float, ...] = ()

    def tile_bytes(self, units: Sequence[int]) -> float:
        return self.bytes_per_unit * math.prod(units)


def _reach(module: _ConvNd, axis: int) -> int:
    """How far (input voxels) one output voxel's inputs reach beyond the input cell it sits on."""
    k, s = module.kernel_size[axis], module.stride[axis]
    d = module.dilation[axis]
    span = d * (k - 1)
    p = module.padding[axis] if isinstance(module.padding, tuple) else span // 2  # "same" pads span // 2 first
    if isinstance(module, _ConvTransposeNd):  # output o reads inputs ceil((o + p - span) / s) .. floor((o + p) / s)
        lo = max(o // s - -((-(o + p - span)) // s) for o in range(s))
        hi = max((o + p) // s - o // s for o in range(s))
        return max(lo, hi, 0)
    return max(p, span - p - (s - 1), 0)  # output o reads o*s - p .. o*s - p + span; its cell is o*s .. o*s + s - 1


def _conv_flops(module: _ConvNd, x: Tensor, y: Tensor) -> float:
    """2 x multiply-adds of one convolution call (a transposed one spreads each input voxel)."""
    per_output = 2.0 * math.prod(module.kernel_size) * module.in_channels / module.groups
    if isinstance(module, _ConvTransposeNd):
        return 2.0 * math.prod(module.kernel_size) * module.out_channels / module.groups * x.numel()
    return per_output * y.numel()


def probe(fn: Callable[..., object], model: nn.Module, inputs: Sequence[Tensor], units: Sequence[int]) -> Probe:
    """Run ``fn(*inputs)`` once (inputs of ``units`` grid units per axis) and measure its cost."""
    sd = len(units)
    reach = [0.0] * sd
    peak, flops = [0], [0.0]
    attention: list[str] = []
    norm_halos: list[tuple[int, ...]] = []
    norm_flops: list[float] = []
    names = {m: n for n, m in model.named_modules()}
    norms = {m for _, m, _ in norm_layers(model)}

    def hook(module: nn.Module, args: tuple, output: object) -> None:
        x = next((a for a in args if isinstance(a, Tensor)), None)
        outs = output if isinstance(output, (tuple, list)) else (output,)
        size = sum(t.numel() * t.element_size() for t in (x, *outs) if isinstance(t, Tensor))
        peak[0] = max(peak[0], size)
        if module in norms:  # its input has seen every convolution run so far (an upper bound)
            norm_halos.append(_round_up(reach))
            norm_flops.append(flops[0])
        if isinstance(module, _ATTENTION):
            attention.append(names.get(module, type(module).__name__))
        if isinstance(module, _ConvNd) and x is not None:
            flops[0] += _conv_flops(module, x, outs[0])
            for i in range(sd):
                reach[i] += _reach(module, i) / (x.shape[2 + i] / units[i])

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, _ATTENTION) or not any(True for _ in m.children())]
    try:
        with torch.no_grad():
            fn(*inputs)
    finally:
        for h in handles:
            h.remove()
    volume = math.prod(units)
    io = sum(t.numel() * t.element_size() for t in inputs)
    return Probe(bytes_per_unit=(PEAK_FACTOR * peak[0] + io) / volume, halo=_round_up(reach),
                 attention=tuple(dict.fromkeys(attention)), norm_halos=tuple(norm_halos),
                 flops_per_unit=flops[0] / volume, norm_flops=tuple(f / volume for f in norm_flops))


def _round_up(reach: Sequence[float]) -> tuple[int, ...]:
    return tuple(math.ceil(r - 1e-9) for r in reach)


def _axis_options(length: int, halo: int) -> list[tuple[int, int, int]]:
    """Per distinct tile count along one axis: (core, largest tile extent, units computed in all)."""
    out, seen = [], set()
    for n in range(1, min(length, MAX_TILES_PER_AXIS) + 1):
        core = -(-length // n)
        if core in seen:
            continue
        seen.add(core)
        spans = [min(length, b + halo) - max(0, a - halo) for a, b in axis_segments(length, core)]
        out.append((core, max(spans), sum(spans)))
    return out


def choose_core(grid: Sequence[int], unit: Sequence[int], halo: Sequence[int], bytes_per_unit: float,
                budget: float) -> tuple[int, ...]:
    """Tile cores (grid units per axis) that compute the fewest units in all (cores + halos, the
    cost of tiling) with every tile within ``budget`` bytes; fewer tiles break ties. The whole grid
    when it fits; ValueError when not even the smallest tile does. Searches every per-axis tile
    count (up to MAX_TILES_PER_AXIS), so tiles need not be cubes: 4 x 4 x 3 beats 4 x 4 x 4."""
    options = [_axis_options(int(g), int(h)) for g, h in zip(grid, halo)]
    sd = len(options)

    def axis(i: int, field: int) -> np.ndarray:
        return np.array([o[field] for o in options[i]], np.float64).reshape([-1 if j == i else 1 for j in range(sd)])

    memory = bytes_per_unit * math.prod(axis(i, 1) for i in range(sd))
    work = math.prod(axis(i, 2) for i in range(sd))
    tiles = math.prod(np.ceil(np.asarray(grid[i], np.float64) / axis(i, 0)) for i in range(sd))
    feasible = memory <= budget
    if not feasible.any():
        need = float(memory.min()) / 2**30
        raise ValueError(f"a memory budget of {budget / 2**30:.3g} GiB is too small for even the smallest tile "
                         f"({[u * (1 + 2 * h) for u, h in zip(unit, halo)]} voxels, {need:.3g} GiB); raise "
                         "tiling.max_gib or lower tiling.halo")
    score = np.where(feasible, work + 1e-9 * tiles * work.max(), np.inf)
    best = np.unravel_index(int(np.argmin(score)), score.shape)
    return tuple(options[i][k][0] for i, k in enumerate(best))


def _cgroup_free() -> float | None:
    """Bytes the cgroup (v2) may still allocate, if a limit is set."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = Path("/sys/fs/cgroup/memory.current").read_text().strip()
    except OSError:
        return None
    return None if limit == "max" else max(0.0, float(limit) - float(used))


def available_bytes(device: torch.device | str = "cpu") -> float:
    """Memory free for new allocations: the GPU's free memory for CUDA devices, else the smaller of
    /proc/meminfo's MemAvailable (or os.sysconf's available pages) and the cgroup's headroom."""
    device = torch.device(device)
    if device.type == "cuda":
        return float(torch.cuda.mem_get_info(device)[0])
    free = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                free = float(line.split()[1]) * 1024
                break
    except OSError:
        pass
    if free is None:
        try:
            free = float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            free = 4.0 * 2**30
            log.warning("could not read the free memory; assuming %.0f GiB", free / 2**30)
    cgroup = _cgroup_free()
    return min(free, cgroup) if cgroup is not None else free
