"""Build autoencoders and discriminators by name from plain JSON-able kwargs.

A checkpoint stores `model.config()` as `model.json`; `build_autoencoder(**config)` rebuilds the
architecture. "vqgan" is the VQ autoencoder (`VQVAE`) meant to be trained with a
`PatchDiscriminator` (built separately by `build_discriminator`); it defaults to an L1
reconstruction loss as in Esser et al. 2021.
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from medgen_cli.models.autoencoders import KLVAE, VQVAE, VQVAE2
from medgen_cli.models.base import Autoencoder
from medgen_cli.models.discriminator import PatchDiscriminator

__all__ = ["AUTOENCODERS", "build_autoencoder", "build_discriminator"]

AUTOENCODERS: dict[str, type[Autoencoder]] = {"vqvae": VQVAE, "vqvae2": VQVAE2, "vqgan": VQVAE, "klvae": KLVAE}
_KIND_DEFAULTS: dict[str, dict[str, Any]] = {"vqgan": {"recon_loss": "l1"}}


def _check_kwargs(cls: type, kwargs: dict[str, Any], what: str) -> None:
    params = inspect.signature(cls).parameters
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        allowed = sorted(p for p in params if p != "spatial_dims")
        raise ValueError(f"unknown {what} argument(s) {unknown}; allowed: {allowed}")


def build_autoencoder(kind: str, spatial_dims: int, **kwargs: Any) -> Autoencoder:
    """Autoencoder of `kind` in {"vqvae", "vqvae2", "vqgan", "klvae"}; kwargs go to its constructor."""
    if kind not in AUTOENCODERS:
        raise ValueError(f"autoencoder kind={kind!r} must be one of {sorted(AUTOENCODERS)}")
    cls = AUTOENCODERS[kind]
    _check_kwargs(cls, kwargs, kind)
    model = cls(spatial_dims, **{**_KIND_DEFAULTS.get(kind, {}), **kwargs})
    model.kind = kind
    return model


def build_discriminator(**kwargs: Any) -> nn.Module:
    """`PatchDiscriminator(**kwargs)`; `build_discriminator(**disc.config())` rebuilds it."""
    _check_kwargs(PatchDiscriminator, kwargs, "discriminator")
    return PatchDiscriminator(**kwargs)
