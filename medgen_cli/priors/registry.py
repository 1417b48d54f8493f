"""One registry of prior kinds (timm's ``register_model`` / ``create_model``): a kind is one entry.

A `PriorKind` declares everything the settings and the steps ask of a kind of prior, so the steps
look a kind up here and never branch on its name:

- ``config``: its typed, frozen network config (``models/priors/config.py``), the ``model.json`` ``config``;
- ``build(settings, lat, conds, num_classes, extra_channels)``: the network and its training loss
  from the train-prior settings and the opened latents (``loss(prior, batch, generator) -> terms``);
- ``rebuild(config)``: the network from ``model.json``'s ``config`` alone;
- ``sample(model, record, n, cond, labels, sampler, generator)``: a batch of draws ``{"main", ("top")}``;
- ``strategy(record, sampler, prior)``: the strategy recorded with each sample (refuses options the
  kind cannot take); ``sampler_summary(record, sampler, prior)``: the sampler recorded in the summary;
- flags for settings validation and the steps: ``token`` (models VQ codes; conditions are a token
  prefix; else continuous latents with codecs, the diffusion task and its sampling check),
  ``condition_paths`` (takes condition.paths), ``image_conditions`` (condition.masks /
  condition.spacing as input channels), ``settings_fields`` (the ``prior.*`` fields it reads),
  ``sections`` (settings sections only it reads, e.g. ``diffusion``), ``check_settings(prior)`` and
  ``check_train(settings)`` (kind-specific rules, raising ValueError).

``register_prior(kind)`` adds an entry (one line in the kind's module); ``prior_kind(name)`` looks
one up (an unknown name is a ValueError listing the registered ones); ``prior_names()`` lists them.
This package sits between models/sampling/train and the steps: it never imports steps or files.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the registry loads without torch: the settings read it
    from torch import nn

Builder = Callable[..., "tuple[nn.Module, Callable[..., Any]]"]


def _no_check(_: Any) -> None:
    return None


@dataclass(frozen=True)
class PriorKind:
    """One kind of prior (see the module docstring for what each field means)."""

    name: str
    config: type
    build: Builder
    rebuild: Callable[[dict[str, Any]], nn.Module]
    sample: Callable[..., dict[str, Any]]
    strategy: Callable[..., str]
    sampler_summary: Callable[..., dict[str, Any]]
    token: bool = True
    draws: str = "codes"  # what it draws: codes (token priors) or latents
    condition_paths: bool = True
    image_conditions: bool = False
    settings_fields: frozenset[str] = field(default_factory=frozenset)
    sections: tuple[str, ...] = ()
    check_settings: Callable[[Any], None] = _no_check
    check_train: Callable[[Any], None] = _no_check


_REGISTRY: dict[str, PriorKind] = {}


def register_prior(kind: PriorKind) -> PriorKind:
    """Add ``kind`` (one name per kind; registering the same entry again is a no-op)."""
    if kind.name in _REGISTRY and _REGISTRY[kind.name] is not kind:
        raise ValueError(f"prior kind {kind.name!r} is already registered")
    _REGISTRY[kind.name] = kind
    return kind


def unregister_prior(name: str) -> None:
    """Remove a kind (tests that register a toy kind clean up with it)."""
    _REGISTRY.pop(name, None)


def prior_names() -> tuple[str, ...]:
    """The registered kinds, in registration order."""
    return tuple(_REGISTRY)


def prior_kinds() -> tuple[PriorKind, ...]:
    """The registered entries, in registration order."""
    return tuple(_REGISTRY.values())


def prior_kind(name: str) -> PriorKind:
    """The entry of ``name``; an unknown name is a ValueError listing the registered kinds."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown prior kind {name!r}; registered kinds: {', '.join(prior_names())}")
    return _REGISTRY[name]


def names_where(flag: str) -> list[str]:
    """The registered kinds whose entry has ``flag`` set (e.g. ``condition_paths``), in registration order."""
    return [k.name for k in _REGISTRY.values() if getattr(k, flag)]
