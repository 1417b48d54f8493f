"""Settings sections shared by several steps (they mean the same thing wherever they appear)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from .base import FloatTuple, IntTuple, OptionalText, Section


class RuntimeSettings(Section):
    seed: int = Field(0, description="Random seed; the same seed gives the same result on the CPU.")
    device: Literal["auto", "cpu", "cuda", "mps"] = Field(
        "auto", description="Compute device: auto picks cuda, then mps, then cpu."
    )
    workers: int = Field(1, ge=0, description="Worker processes for IO-bound work (0 = in the main process).")
    threads: int = Field(
        0, ge=0, description="torch CPU threads (0 = torch's default: one per physical core; --threads on every step)."
    )
    adaptive_threads: bool = Field(
        False, description="Training with threads 0 on the CPU: use fewer threads while other processes keep\n"
        "cores busy, more when they stop (faster on a shared machine; a rerun is then not bit-identical).",
    )


class SplitSettings(Section):
    fractions: FloatTuple = Field(
        (0.8, 0.1, 0.1), description="Fractions of subjects in train, val and test (by subject, never by item)."
    )
    seed: int = Field(0, description="Seed of the subject shuffle; recorded in the manifest.")

    @field_validator("fractions")
    @classmethod
    def _three_fractions(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if len(v) != 3 or any(f < 0 for f in v) or abs(sum(v) - 1.0) > 1e-6:
            raise ValueError("needs three non-negative fractions (train, val, test) that sum to 1")
        return v


class StoreSettings(Section):
    chunks: IntTuple | None = Field(
        None, description="Chunk shape of each item; null picks 64^3 for volumes and whole 2D images (<=512^2) for slices."
    )
    compressor: Literal["zstd", "lz4", "none"] = Field("zstd", description="Blosc codec of the chunks.")
    level: int = Field(3, ge=0, le=9, description="Compression level.")
    dtype: Literal["float16", "float32", "int16"] = Field(
        "float16", description="Stored value type; int16 keeps raw physical values (HU) and needs intensity.normalize: none."
    )


class DataSettings(Section):
    """Which store, split and samples a training step reads."""

    path: str = Field("", description="A preprocessed (or latents) artefact directory.")
    store: str = Field("main", description="Store inside the artefact: main, or a derived one (drr, lowdose, downsample2).")
    train_split: str = Field("train", description="Split used for training.")
    val_split: OptionalText = Field("val", description="Split used for validation (empty or null: none).")
    patch_size: IntTuple | None = Field(None, description="Random patches of this size instead of whole items.")
    batch_size: int = Field(8, ge=1, description="Items per batch (per process under torchrun).")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes.")


class AugmentSettings(Section):
    """On by default: an autoencoder trained on few subjects reconstructs the next person better with a
    mild affine and contrast jitter (probed on MR slices, one training head: +0.03 held-out SSIM at
    equal steps, for 1-2 % of the step time); flips stay off (anatomy has a handedness)."""

    enabled: bool = Field(True, description="Augment training batches on the fly (kornia, 2D or 3D).")
    flip: FloatTuple = Field((0.0,), description="Flip probability per spatial axis (one value applies to every axis).")
    rotate: float = Field(10.0, ge=0, description="Maximum rotation in degrees.")
    scale: FloatTuple = Field((0.9, 1.1), description="Range of the random zoom factor.")
    translate: float = Field(0.05, ge=0, description="Maximum translation as a fraction of the size.")
    intensity_shift: float = Field(0.05, ge=0, description="Maximum additive intensity shift (stored units).")
    intensity_scale: float = Field(0.1, ge=0, description="Maximum multiplicative intensity change (fraction).")
    gamma: float = Field(
        0.0, ge=0, description="Maximum |log gamma| of a random gamma curve between background and top (0.3: 0.74..1.35)."
    )
