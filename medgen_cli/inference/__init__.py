"""Tiled (sliding-window) inference for volumes larger than memory.

- `tiling`: `TilePlan` (tiles with halos, aligned to the model's downsampling) and
  `TileAggregator` (writes tile outputs back, cores only or raised-cosine blended).
- `norm`: `GlobalNorm`, whole-volume group/instance-norm statistics over tiles, in passes.
- `budget`: a probe of a model call's activation memory and receptive field; tile choice under a
  memory budget; the memory available.
- `runner`: `run_tiled`, the pass-and-tile loop over numpy or zarr arrays.
- `autoencoder`: `AutoencoderTiler` and `TilingOptions`, the entry points of the steps.
"""

from .autoencoder import MODES, AutoencoderTiler, TilingOptions
from .runner import TiledRun, run_tiled
from .tiling import Tile, TileAggregator, TilePlan

__all__ = ["AutoencoderTiler", "MODES", "TiledRun", "Tile", "TileAggregator", "TilePlan", "TilingOptions", "run_tiled"]
