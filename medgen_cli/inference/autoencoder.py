"""Tiled encode and decode for medgen's autoencoders: the entry points the steps call.

`AutoencoderTiler` wraps a trained autoencoder (any of `models.AUTOENCODERS`, 2D or 3D) and runs
its latent API (`encode_to_indices`, `encode_to_latents`, `decode_indices`, `decode_latents`)
whole when the estimated activation memory fits the budget, else tile by tile
(`inference.runner.run_tiled`). Inputs are numpy or zarr arrays or tensors with the batch first;
results are numpy arrays, or fill given arrays (``out=``, e.g. zarr), so a decoded 512^3 volume can
stream to a store.

The grid unit is the coarsest downsampling factor of the model (VQ-VAE-2: the top codes' factor),
so every tile edge falls on a code boundary. The halo defaults to the receptive field measured by
`inference.budget.probe`, with which tiles' cores equal the whole-volume result up to float error
once the normalisation statistics settle (`inference.norm`); a smaller halo trades exactness for
speed and blends neighbouring tiles with raised-cosine weights. Models with global self-attention
(``mid_attention``, ``attention_levels``) cannot be tiled exactly: the tiler warns.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .budget import Probe, available_bytes, choose_core, probe
from .runner import TiledRun, is_integer, read_tile, run_tiled, to_numpy
from .tiling import TilePlan, as_units

log = logging.getLogger(__name__)

__all__ = ["TilingOptions", "AutoencoderTiler", "MODES"]

MODES = ("auto", "always", "never")
AUTO_FRACTION = 0.5  # the automatic budget: this share of the memory free when the step starts


@dataclass(frozen=True)
class TilingOptions:
    """How a volume is cut (the ``tiling`` settings section, unpacked).

    Args:
        mode: "auto" tiles when whole-volume inference would exceed ``max_gib``; "always" tiles
            whatever the memory; "never" does not.
        max_gib: activation memory budget in GiB; None = half of the memory free (GPU memory on CUDA).
        tile_size: largest tile core in image voxels (one int or one per axis); None = the tiles
            that fit the budget with the least overlap (`inference.budget.choose_core`).
        halo: context per side in image voxels; None = the receptive field (exact). Smaller halos
            blend tiles with raised-cosine weights over the halo.
        norm_passes: None = exact whole-volume normalisation statistics (progressive passes, one
            per norm layer, costing about half a full pass each, plus the writing pass); n = n
            iterated passes, approximate: 1 = per-tile statistics, the fast choice (more passes
            were measured to be worse before they get better; see `inference.norm`).
    """

    mode: str = "auto"
    max_gib: float | None = None
    tile_size: int | tuple[int, ...] | None = None
    halo: int | tuple[int, ...] | None = None
    norm_passes: int | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"tiling mode={self.mode!r} must be one of {MODES}")
        if self.max_gib is not None and not self.max_gib > 0:
            raise ValueError(f"tiling max_gib={self.max_gib!r} must be a positive number of GiB (or None: automatic)")
        if self.norm_passes is not None and self.norm_passes < 1:
            raise ValueError(f"tiling norm_passes={self.norm_passes!r} must be >= 1 (or None: exact statistics)")


class AutoencoderTiler:
    """Whole or tiled encode / decode of one autoencoder.

    Args:
        model: the autoencoder (eval mode is set here).
        options: tiling options.
        device: where the model runs (default: where its parameters are).

    After each call, ``last_plan`` is the plan used and ``last_run`` describes what happened (None
    when the call ran whole).
    """

    def __init__(self, model: nn.Module, options: TilingOptions | None = None, device: torch.device | str | None = None):
        self.model = model.eval()
        self.options = options or TilingOptions()
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.sd = int(model.spatial_dims)
        factor = tuple(model.downsample_factor)
        self.unit = tuple(getattr(model, "total_top_factor", factor))  # coarsest grid: top codes for VQ-VAE-2
        self.image_scale = self.unit
        self.latent_scale = tuple(u // f for u, f in zip(self.unit, factor))
        self.top_scale = (1,) * self.sd
        for name in ("tile_size", "halo"):  # per-axis sizes must fit the model's rank before any work
            value = getattr(self.options, name)
            if value is not None:
                sizes = (value,) if isinstance(value, int) else tuple(value)
                if len(sizes) not in (1, self.sd):
                    raise ValueError(f"tiling.{name} = {list(sizes)} has {len(sizes)} values but the autoencoder is "
                                     f"{self.sd}D; give one value or {self.sd}")
        # half-precision weights take half-precision tiles (inputs are read as float32)
        self.dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
        self.budget = (self.options.max_gib * 2**30 if self.options.max_gib is not None
                       else AUTO_FRACTION * available_bytes(self.device))
        self.last_run: TiledRun | None = None
        self.last_plan: TilePlan | None = None
        self._probes: dict[str, Probe] = {}
        self._warned = False

    # -- the latent API --------------------------------------------------------------------------
    def encode_indices(self, x: Any, out: Sequence[Any] | None = None) -> list[Any]:
        """(B, C, *spatial) images -> [codes (B, *grid)], VQ-VAE-2: [top, bottom]."""
        outs = [self.top_scale, self.latent_scale] if self._two_level else [self.latent_scale]
        return self._run("encode_indices", self.model.encode_to_indices, [x], [self.image_scale], outs, out)

    def encode_latents(self, x: Any, out: Any = None) -> Any:
        """(B, C, *spatial) images -> (B, latent_channels, *grid) continuous latents."""
        return self._run("encode_latents", self.model.encode_to_latents, [x], [self.image_scale], [self.latent_scale],
                         None if out is None else [out])[0]

    def decode_indices(self, *codes: Any, out: Any = None) -> Any:
        """codes (B, *grid) (VQ-VAE-2: top, bottom) -> (B, out_channels, *spatial) images."""
        scales = [self.top_scale, self.latent_scale] if self._two_level else [self.latent_scale]
        if len(codes) != len(scales):
            raise ValueError(f"decode_indices takes {len(scales)} code grid(s) for a {self.model.kind} model, got {len(codes)}")
        return self._run("decode_indices", self.model.decode_indices, list(codes), scales, [self.image_scale],
                         None if out is None else [out])[0]

    def decode_latents(self, z: Any, out: Any = None) -> Any:
        """(B, latent_channels, *grid) -> (B, out_channels, *spatial) images."""
        return self._run("decode_latents", self.model.decode_latents, [z], [self.latent_scale], [self.image_scale],
                         None if out is None else [out])[0]

    def reconstruct(self, x: Any, out: Any = None) -> Any:
        """decode_latents(encode_latents(x)), each stage tiled on its own."""
        return self.decode_latents(self.encode_latents(x), out=out)

    # -- planning --------------------------------------------------------------------------------
    def probe_cost(self, name: str) -> Probe:
        """The measured cost of a call made before (name: encode_indices, encode_latents, ...)."""
        if name not in self._probes:
            raise ValueError(f"no {name!r} call has been planned yet; measured: {sorted(self._probes)}")
        return self._probes[name]

    def expected_work(self, name: str, plan: TilePlan) -> float:
        """Convolution FLOPs of running ``plan`` (progressive passes and the writing pass) over those of
        one whole-volume pass: the cost of tiling, overlap and exact statistics together."""
        cost = self.probe_cost(name)
        whole = cost.flops_per_unit * math.prod(plan.grid_shape)
        if len(plan) == 1 or not whole:
            return 1.0
        total = cost.flops_per_unit * sum(math.prod(t.shape) for t in plan)
        if self.options.norm_passes is None:
            for halo, flops in zip(cost.norm_halos, cost.norm_flops):
                part = TilePlan(plan.grid_shape, plan.core, [min(a, b) for a, b in zip(halo, plan.halo)])
                total += flops * sum(math.prod(t.shape) for t in part)
        else:
            total *= self.options.norm_passes
        return total / whole

    @property
    def _two_level(self) -> bool:
        return self.unit != tuple(self.model.downsample_factor)

    def _probe(self, name: str, fn: Callable, inputs: Sequence[Any], scales: Sequence[Sequence[int]]) -> Probe:
        if name not in self._probes:
            units = (2,) * self.sd
            tensors = [_probe_input(a, s, units, self.device) for a, s in zip(inputs, scales)]
            self._probes[name] = probe(fn, self.model, tensors, units)
            p = self._probes[name]
            log.debug("%s: %.0f bytes per grid unit, receptive halo %s units", name, p.bytes_per_unit, p.halo)
        return self._probes[name]

    def plan(self, name: str, fn: Callable, inputs: Sequence[Any], scales: Sequence[Sequence[int]]) -> TilePlan:
        """The tile plan of a call (one tile = whole-volume inference)."""
        first, scale = inputs[0], scales[0]
        spatial = tuple(first.shape[-self.sd:])
        if any(n % s for n, s in zip(spatial, scale)):
            what = "the autoencoder's downsampling factor" if name.startswith("encode") else "the top codes' factor"
            raise ValueError(f"spatial shape {list(spatial)} is not divisible by {what} {list(scale)}")
        grid = tuple(n // s for n, s in zip(spatial, scale))
        for other, s in zip(inputs[1:], scales[1:]):  # VQ-VAE-2: the bottom grid is the top grid x top factor
            if tuple(other.shape[-self.sd:]) != tuple(g * f for g, f in zip(grid, s)):
                raise ValueError(f"code grids {list(spatial)} and {list(other.shape[-self.sd:])} do not fit together: "
                                 f"the second must be the first times {list(s)}")
        batch = int(first.shape[0])
        opts = self.options
        if opts.mode == "never":
            return TilePlan(grid, grid, 0)
        cost = self._probe(name, fn, inputs, scales)
        per_unit = cost.bytes_per_unit * batch
        if opts.mode == "auto" and per_unit * math.prod(grid) <= self.budget:
            return TilePlan(grid, grid, 0)
        halo = cost.halo if opts.halo is None else tuple(
            -(-h // u) for h, u in zip(as_units(opts.halo, self.sd, "halo"), self.unit))
        if opts.tile_size is not None:
            core = tuple(max(1, t // u) for t, u in zip(as_units(opts.tile_size, self.sd, "tile_size"), self.unit))
        else:
            core = choose_core(grid, self.unit, halo, per_unit, self.budget)
        if cost.attention and not self._warned:
            self._warned = True
            log.warning("the autoencoder has global self-attention (%s): tiled %s cannot equal whole-volume inference; "
                        "expect differences near tile borders", ", ".join(cost.attention), name)
        return TilePlan(grid, core, halo)

    def _run(self, name: str, fn: Callable, inputs: list[Any], scales: list[tuple[int, ...]],
             out_scales: list[tuple[int, ...]], out: Sequence[Any] | None) -> list[Any]:
        if self.dtype != torch.float32:
            fn = _casting(fn, self.dtype)
        plan = self.last_plan = self.plan(name, fn, inputs, scales)
        if len(plan) == 1 and out is None:
            self.last_run = None
            with torch.no_grad():
                result = fn(*[read_tile(a, (), self.device) for a in inputs])
            result = [result] if isinstance(result, torch.Tensor) else list(result)
            return [to_numpy(r) for r in result]
        measured = self._probes.get(name)
        exact = measured is not None and all(h >= m for h, m in zip(plan.halo, measured.halo))
        blend = (0,) * self.sd if exact else plan.max_blend()
        arrays, report = run_tiled(fn, self.model, inputs, scales, out_scales, plan, device=self.device, out=out,
                                   blend=blend, passes=self.options.norm_passes,
                                   pass_halos=measured.norm_halos if measured is not None else ())
        self.last_run = report
        log.info("tiled %s: %s, %d passes, %.1f s", name, report.plan, report.passes, report.seconds)
        return arrays


def _casting(fn: Callable, dtype: torch.dtype) -> Callable:
    """``fn`` with its floating-point inputs cast to ``dtype`` (the model's weights), codes untouched."""
    def call(*tensors: torch.Tensor) -> Any:
        return fn(*[t.to(dtype) if t.is_floating_point() else t for t in tensors])
    return call


def _probe_input(array: Any, scale: Sequence[int], units: Sequence[int], device: torch.device) -> torch.Tensor:
    """A tiny input like ``array`` (one item, same channels and dtype) of ``units`` grid units: zeros
    (valid codes and images alike)."""
    sd = len(units)
    shape = (1, *array.shape[1:-sd], *(u * s for u, s in zip(units, scale)))
    dtype = torch.int64 if is_integer(array) else torch.float32
    return torch.zeros(shape, dtype=dtype, device=device)
