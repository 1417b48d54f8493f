"""Typed, frozen architecture configs of the autoencoders: one object, three uses.

The settings section produces it (`AutoencoderSettings.autoencoder_config`), the model takes it
(``VQVAE(spatial_dims, config)``) and ``model.json`` stores its dump (``model.config()`` ==
``model.typed_config.model_dump(mode="json")``), so ``Config.model_validate(info["config"])``
rebuilds a model from an artefact alone (diffusers' ``register_to_config``, nanoGPT's ``GPTConfig``).

The fields are exactly the keys of ``model.json``'s "config"; their defaults are the constructors'
historic defaults, so configs written before a field existed load as the model they were built as.
``None`` marks a value the model resolves (``out_channels`` = ``in_channels``, per-axis
``downsample``, the quantiser's code width and codebook size); the model records the resolved
config. Types are checked here; value rules stay in the layers that build them (their messages name
the argument). No torch here: settings validate kinds and quantisers without loading it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, model_serializer, model_validator

__all__ = ["AutoencoderConfig", "KLVAEConfig", "VQVAE2Config", "VQVAEConfig", "VQConfig"]

Factors = tuple[int | tuple[int, ...], ...]  # one entry per level: an int (every axis) or per-axis factors


class AutoencoderConfig(BaseModel):
    """Fields every autoencoder shares (see `VQVAE` for their meaning).

    Class data read by the registry and the settings: ``is_vq`` (codebook model), ``hierarchical``
    (a (top, bottom) pair of code grids), ``scales_latents``
    (continuous latents whose scale is estimated after training), ``default_last_downsample`` (the
    last level's factor when ``downsample`` is None).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    is_vq: ClassVar[bool] = True
    hierarchical: ClassVar[bool] = False  # two code grids (top, bottom) instead of one
    scales_latents: ClassVar[bool] = False
    default_last_downsample: ClassVar[int] = 2
    field_order: ClassVar[tuple[str, ...]] = ()  # key order of model.json (as written by earlier releases)

    kind: str
    spatial_dims: int | None = None
    in_channels: int = 1
    out_channels: int | None = None
    channels: tuple[int, ...] = (32, 64)
    num_res_blocks: int | tuple[int, ...] = 2
    downsample: Factors | None = None
    layout: str = "full"
    mid_blocks: int = 2
    res_kernels: tuple[int, ...] = (3, 3)
    norm: str = "group"
    num_groups: int = 8
    attention_levels: tuple[int, ...] = ()
    mid_attention: bool = False
    num_heads: int = 1
    dropout: float = 0.0
    factorized_3d: bool = False
    rezero: bool = True
    upsample_mode: str = "nearest"
    recon_loss: str = "mse"

    @model_validator(mode="after")
    def _kind_is_registered(self):
        from medgen_cli.models.registry import AUTOENCODERS  # the registry imports this module

        own = [name for name, entry in AUTOENCODERS.items() if entry.config_cls is type(self)]
        if self.kind not in own:
            raise ValueError(f"kind={self.kind!r} is not built from {type(self).__name__}; its kinds: {own}")
        return self

    @model_serializer(mode="wrap")
    def _in_order(self, handler: Any) -> dict[str, Any]:
        data = handler(self)
        return {k: data[k] for k in self.field_order if k in data}

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def create(cls, spatial_dims: int | None = None, config: AutoencoderConfig | None = None,
               overrides: Mapping[str, Any] | None = None, defaults: Mapping[str, Any] | None = None):
        """``config`` (or the defaults) with ``overrides`` applied through validation.

        ``defaults`` fill only fields ``config`` does not set; an unknown override name is a ValueError
        listing the fields; ``spatial_dims`` must agree with the config's own.
        """
        overrides = dict(overrides or {})
        unknown = sorted(set(overrides) - set(cls.model_fields))
        if unknown:
            allowed = sorted(set(cls.model_fields) - {"spatial_dims"})
            raise ValueError(f"unknown {cls.__name__} argument(s) {unknown}; allowed: {allowed}")
        if config is not None and not isinstance(config, cls):
            raise ValueError(f"config must be a {cls.__name__}, got a {type(config).__name__}")
        given = {k: getattr(config, k) for k in config.model_fields_set} if config is not None else {}
        data = {**(defaults or {}), **given, **overrides}
        if spatial_dims is not None:
            if data.get("spatial_dims") not in (None, spatial_dims):
                raise ValueError(f"config.spatial_dims={data['spatial_dims']} but spatial_dims={spatial_dims}")
            data["spatial_dims"] = spatial_dims
        return cls.model_validate(data)

    def replace(self, **updates: Any):
        """A validated copy with ``updates`` (the resolved values a model records)."""
        return type(self).model_validate({**{k: getattr(self, k) for k in self.model_fields_set}, **updates})

    # -- facts the settings check before a model is built ---------------------------------------
    def grid_factors(self) -> list[int | tuple[int, ...]]:
        """Per-level factors from the image down to the coarsest code grid (an int: every axis)."""
        levels = len(self.channels)
        return list(self.downsample or [2] * (levels - 1) + [self.default_last_downsample])

    def norm_widths(self) -> set[int]:
        """Channel counts group normalisation must divide."""
        return set(self.channels)


class VQConfig(AutoencoderConfig):
    """The quantiser fields of the VQ kinds (see `models.quantization` for the quantisers)."""

    embedding_dim: int | None = None
    num_embeddings: int | None = None
    commitment_cost: float = 0.25
    decay: float = 0.99
    ema: bool = True
    dead_code_threshold: float = 1.0
    quantizer: str = "vq"
    fsq_levels: tuple[int, ...] | None = None
    vq_gradient: str = "ste"
    entropy_weight: float = 0.1

    def code_sizes(self) -> tuple[int, int, tuple[int, ...] | None]:
        """(code width, codebook size, fsq levels) the quantiser resolves (a ValueError if they disagree)."""
        from medgen_cli.models.quantization import resolve_codebook

        return resolve_codebook(self.quantizer, self.embedding_dim, self.num_embeddings, self.fsq_levels)


_SHARED_TAIL = ("layout", "mid_blocks", "res_kernels", "norm", "num_groups", "attention_levels", "mid_attention",
                "num_heads", "dropout", "factorized_3d", "rezero", "upsample_mode", "recon_loss")
_VQ_FIELDS = ("embedding_dim", "num_embeddings", "commitment_cost", "decay", "ema", "dead_code_threshold", "quantizer",
              "fsq_levels", "vq_gradient", "entropy_weight")


class VQVAEConfig(VQConfig):
    """`VQVAE` (kinds "vqvae" and "vqgan")."""

    field_order = ("kind", "spatial_dims", "in_channels", "out_channels", "channels", "num_res_blocks", "downsample",
                   *_VQ_FIELDS, *_SHARED_TAIL)

    kind: str = "vqvae"


class VQVAE2Config(VQConfig):
    """`VQVAE2`: a bottom pyramid (the shared fields) and a top one (``top_channels``, ``top_downsample``)."""

    field_order = ("kind", "spatial_dims", "in_channels", "out_channels", "channels", "top_channels", "num_res_blocks",
                   "downsample", "top_downsample", *_VQ_FIELDS, *_SHARED_TAIL)

    hierarchical = True

    kind: str = "vqvae2"
    top_channels: tuple[int, ...] = (64,)
    num_res_blocks: int | tuple[int, ...] = 1
    top_downsample: Factors | None = None

    def grid_factors(self) -> list[int | tuple[int, ...]]:
        return [*super().grid_factors(), *(self.top_downsample or [2] * len(self.top_channels))]

    def norm_widths(self) -> set[int]:
        return super().norm_widths() | set(self.top_channels) | {self.code_sizes()[0]}


class KLVAEConfig(AutoencoderConfig):
    """`KLVAE`: continuous latents, no downsampling after the last level by default (LDM)."""

    is_vq = False
    scales_latents = True
    default_last_downsample = 1
    field_order = ("kind", "spatial_dims", "in_channels", "out_channels", "channels", "latent_channels",
                   "num_res_blocks", "downsample", "kl_weight", "logvar_min", "logvar_max", *_SHARED_TAIL)

    kind: str = "klvae"
    channels: tuple[int, ...] = (64, 128, 256)
    latent_channels: int = 4
    num_res_blocks: int | tuple[int, ...] = 1
    kl_weight: float = 1e-6
    logvar_min: float = -30.0
    logvar_max: float = 20.0
    recon_loss: str = "l1"
