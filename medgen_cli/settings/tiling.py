"""``tiling``: when and how volumes too large for memory are encoded or decoded tile by tile
(``medgen_cli.inference``); a section of ``medgen encode-latents`` and ``medgen sample``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from .base import IntTuple, Section


class TilingSettings(Section):
    """Sliding-window encode and decode of volumes larger than memory (``medgen_cli.inference``)."""

    mode: Literal["auto", "always", "never"] = Field(
        "auto", description="auto: tile a volume whose whole-volume encode or decode would need more than max_gib;\n"
        "always: tile every volume; never: whole volumes, whatever the memory."
    )
    max_gib: float | None = Field(
        None, gt=0, description="Memory for the autoencoder's activations in GiB; null = half of the memory free when the\n"
        "step starts (the GPU's free memory on CUDA)."
    )
    tile_size: IntTuple | None = Field(
        None, description="Largest tile (its core, without the halo) in image voxels, one value or one per axis; null = the\n"
        "tiles that fit max_gib with the least overlap. Rounded down to a multiple of the downsampling factor."
    )
    halo: IntTuple | None = Field(
        None, description="Context around each tile in image voxels per side; null = the autoencoder's receptive field, with\n"
        "which tiles join exactly. A smaller halo is faster and blends neighbouring tiles with cosine weights."
    )
    norm: Literal["exact", "tile"] = Field(
        "exact", description="Group-norm statistics of tiled runs: exact = the whole volume's (one short pass per norm\n"
        "layer, about 4-6x the work of one pass in all; equals whole-volume inference up to float error);\n"
        "tile = each tile's own (one pass, fast, visible seams where tiles differ, e.g. air and body)."
    )

    @field_validator("tile_size", "halo")
    @classmethod
    def _per_axis(cls, v: tuple[int, ...] | None, info) -> tuple[int, ...] | None:
        least = 1 if info.field_name == "tile_size" else 0
        if v is not None and (len(v) not in (1, 2, 3) or any(n < least for n in v)):
            raise ValueError(f"needs one integer >= {least} or one per axis (2 or 3), e.g. 128 or 128,128,64")
        return v

    def options(self) -> dict:
        """Keyword arguments of ``medgen_cli.inference.TilingOptions``."""
        values = self.model_dump(exclude={"norm"})
        return {**values, "norm_passes": None if self.norm == "exact" else 1}
