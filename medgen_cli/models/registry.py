"""The autoencoder registry: one table line per kind, and builders by name.

Each `AutoencoderKind` names its typed config class (`models.configs`), its model class (imported on
first build, so that settings validate kinds without loading torch), the config defaults of the
kind ("vqgan" is `VQVAE` with an L1 reconstruction loss, Esser et al. 2021), whether it trains
against a `PatchDiscriminator` by default, and the ``AutoencoderSettings`` fields only it reads.
An unknown kind is a ValueError listing the registry (timm's ``register_model`` / ``create_model``).

A checkpoint stores ``model.config()`` (the typed config's dump) as ``model.json``'s "config";
``build_autoencoder(**config)`` or ``autoencoder_kind(kind).config_cls.model_validate(config)``
rebuilds the architecture.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from medgen_cli.models.configs import AutoencoderConfig, KLVAEConfig, VQVAE2Config, VQVAEConfig

__all__ = ["AUTOENCODERS", "AutoencoderKind", "autoencoder_kind", "build_autoencoder", "build_discriminator",
           "config_from_dict"]


@dataclass(frozen=True)
class AutoencoderKind:
    """One registry entry.

    Args:
        config_cls: the typed config the model is built from.
        model: "module:Class" of the model, imported when first built.
        defaults: config values of this kind where the caller sets none.
        adversarial: trained against a patch discriminator unless ``adversarial.enabled`` says otherwise.
        settings_fields: ``AutoencoderSettings`` fields only this kind reads (others must keep their defaults).
    """

    config_cls: type[AutoencoderConfig]
    model: str
    defaults: Mapping[str, Any] = field(default_factory=dict)
    adversarial: bool = False
    settings_fields: frozenset[str] = frozenset()

    @property
    def is_vq(self) -> bool:
        return self.config_cls.is_vq

    @property
    def hierarchical(self) -> bool:
        return self.config_cls.hierarchical

    @property
    def scales_latents(self) -> bool:
        return self.config_cls.scales_latents

    @property
    def model_cls(self) -> type:
        module, name = self.model.split(":")
        return getattr(importlib.import_module(module), name)

    def make_config(self, kind: str, spatial_dims: int | None = None, config: AutoencoderConfig | None = None,
                    **overrides: Any) -> AutoencoderConfig:
        """The typed config of ``kind``: its defaults, then ``config``'s fields, then ``overrides``."""
        if config is not None and "kind" in config.model_fields_set and config.kind != kind:
            raise ValueError(f"config.kind={config.kind!r} does not match kind={kind!r}")
        return self.config_cls.create(spatial_dims, config, overrides, defaults={**self.defaults, "kind": kind})


AUTOENCODERS: dict[str, AutoencoderKind] = {
    "vqvae": AutoencoderKind(VQVAEConfig, "medgen_cli.models.autoencoders:VQVAE"),
    "vqvae2": AutoencoderKind(VQVAE2Config, "medgen_cli.models.vqvae2:VQVAE2",
                              settings_fields=frozenset({"top_channels", "top_downsample"})),
    "vqgan": AutoencoderKind(VQVAEConfig, "medgen_cli.models.autoencoders:VQVAE", defaults={"recon_loss": "l1"},
                             adversarial=True),
    "klvae": AutoencoderKind(KLVAEConfig, "medgen_cli.models.klvae:KLVAE",
                             settings_fields=frozenset({"latent_channels", "kl_weight", "latent_scale_items"})),
}


def autoencoder_kind(kind: str) -> AutoencoderKind:
    """The registry entry of ``kind``; an unknown kind is a ValueError listing the registry."""
    if kind not in AUTOENCODERS:
        raise ValueError(f"autoencoder kind={kind!r} must be one of {sorted(AUTOENCODERS)}")
    return AUTOENCODERS[kind]


def config_from_dict(config: Mapping[str, Any]) -> AutoencoderConfig:
    """The typed config of a ``model.json`` "config" (its "kind" picks the class)."""
    kind = config.get("kind")
    return autoencoder_kind(kind).config_cls.model_validate(dict(config))


def build_autoencoder(kind: str, spatial_dims: int | None = None, config: AutoencoderConfig | None = None,
                      **overrides: Any):
    """Autoencoder of a registered ``kind`` from a typed ``config`` and/or field ``overrides``.

    ``build_autoencoder(**model.config())`` rebuilds a model from its recorded config.
    """
    entry = autoencoder_kind(kind)
    typed = entry.make_config(kind, spatial_dims, config, **overrides)
    return entry.model_cls(typed.spatial_dims, typed)


def build_discriminator(**kwargs: Any):
    """`PatchDiscriminator(**kwargs)`; `build_discriminator(**disc.config())` rebuilds it."""
    from medgen_cli.models.discriminator import PatchDiscriminator

    params = inspect.signature(PatchDiscriminator).parameters
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        allowed = sorted(p for p in params if p != "spatial_dims")
        raise ValueError(f"unknown discriminator argument(s) {unknown}; allowed: {allowed}")
    return PatchDiscriminator(**kwargs)
