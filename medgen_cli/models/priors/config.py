"""Typed, frozen configs of the prior networks (nanoGPT's ``GPTConfig`` beside ``GPT(config)``).

One config object has three uses: the registry builds it from the settings, the network's
constructor takes it, and ``model.json`` stores ``config.model_dump()`` (``model.config()``) --
the same keys, in the same order and with the same values as before configs were typed, so old
and new artefacts are interchangeable. ``Config.of(args, overrides)`` keeps the keyword (and
leading positional) calls of the constructors working: ``TransformerPrior(8, (4, 4), dim=32)``
builds a ``TransformerPriorConfig`` first.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, field_validator, model_validator


class PriorConfig(BaseModel):
    """Base of the prior configs: frozen, unknown keys refused (a ValueError naming them)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    positional: ClassVar[tuple[str, ...]] = ()  # the fields a constructor used to take by position

    @classmethod
    def of(cls, args: Sequence[Any], overrides: dict[str, Any]):
        """The config of a constructor call: ``(config,)``, ``(leading fields..., config)`` or keyword
        (and leading positional) fields; ``overrides`` replace fields of a given config."""
        args = list(args)
        base: dict[str, Any] = {}
        if args and isinstance(args[-1], cls):
            base = args.pop().model_dump()
        if len(args) > len(cls.positional):
            raise TypeError(f"{cls.__name__} takes at most {len(cls.positional)} positional fields "
                            f"({', '.join(cls.positional)}), got {len(args)}")
        given = dict(zip(cls.positional, args))
        twice = sorted(set(given) & set(overrides))
        if twice:
            raise TypeError(f"{cls.__name__} got {twice} both by position and by keyword")
        return cls(**{**base, **given, **overrides})

    def config(self) -> dict[str, Any]:
        """JSON-able dict of the fields (``model.json``'s ``config``)."""
        return self.model_dump(mode="json")


class CondSource(BaseModel):
    """One conditioning token grid of a token prior's prefix."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    num_embeddings: int
    grid_shape: list[int]


class TransformerPriorConfig(PriorConfig):
    """`TransformerPrior`: field order = the keys of ``model.json`` written so far."""

    positional: ClassVar[tuple[str, ...]] = ("num_embeddings", "grid_shape", "dim", "depth", "num_heads", "mlp_ratio",
                                             "dropout", "ordering", "ordering_seed", "cond_sources", "num_classes")

    num_embeddings: int
    grid_shape: list[int]
    dim: int = 256
    depth: int = 8
    num_heads: int = 8
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    ordering: str = "raster"
    ordering_seed: int = 0
    num_classes: int | None = None
    cond_sources: list[CondSource] = []


class MaskGITPriorConfig(PriorConfig):
    """`MaskGITPrior`: field order = the keys of ``model.json`` written so far."""

    positional: ClassVar[tuple[str, ...]] = ("num_embeddings", "grid_shape", "dim", "depth", "num_heads", "mlp_ratio",
                                             "dropout", "cond_sources", "num_classes")

    num_embeddings: int
    grid_shape: list[int]
    dim: int = 256
    depth: int = 8
    num_heads: int = 8
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    cond_sources: list[CondSource] = []
    num_classes: int | None = None


class GatedPixelCNNConfig(PriorConfig):
    """`GatedPixelCNN` (one level; a VQ-VAE-2 pair stores one per level under ``top`` and ``bottom``)."""

    positional: ClassVar[tuple[str, ...]] = ("num_embeddings", "hidden_channels", "num_layers", "kernel_size", "dropout",
                                             "cond_num_embeddings", "num_classes", "attention_layers", "num_heads")

    num_embeddings: int
    hidden_channels: int = 64
    num_layers: int = 8
    kernel_size: int = 3
    dropout: float = 0.0
    cond_num_embeddings: int | None = None
    num_classes: int | None = None
    attention_layers: list[int] = []
    num_heads: int = 4

    @field_validator("attention_layers")
    @classmethod
    def _sorted(cls, v: list[int]) -> list[int]:
        return sorted(v)


class UNetPriorConfig(PriorConfig):
    """`UNetPrior`; ``out_channels`` None becomes ``in_channels``."""

    positional: ClassVar[tuple[str, ...]] = ("spatial_dims", "in_channels", "out_channels", "base_channels",
                                             "channel_mults", "num_res_blocks", "attention_levels", "mid_attention",
                                             "num_heads", "dropout", "num_groups", "cond_channels", "num_classes")

    spatial_dims: int
    in_channels: int
    out_channels: int | None = None
    base_channels: int = 64
    channel_mults: list[int] = [1, 2, 4]
    num_res_blocks: int = 2
    attention_levels: list[int] = []
    mid_attention: bool = True
    num_heads: int = 4
    dropout: float = 0.0
    num_groups: int = 8
    cond_channels: int = 0
    num_classes: int | None = None

    @field_validator("attention_levels")
    @classmethod
    def _sorted(cls, v: list[int]) -> list[int]:
        return sorted(v)

    @model_validator(mode="after")
    def _out_channels(self):
        if not self.out_channels:
            object.__setattr__(self, "out_channels", self.in_channels)  # frozen: set once while validating
        return self
