"""One registry of diffusion and flow samplers, and the contract the sampling loop relies on.

A sampler (scheduler) owns its noise process and its reverse steps. Every registered class derives
from :class:`Sampler` and belongs to a ``family``, which fixes what the denoiser was trained on:

- ``diffusion``: discrete DDPM noise schedule, model output ε, v or x_0 (``ddpm``, ``ddim``, ``dpmpp_2m``);
- ``flow``: rectified flow on straight paths, model output the velocity (``flow_euler``, ``flow_heun``).

Each class also declares ``takes_eta``: whether its steps take a stochasticity ``eta`` (ddim, ddpm) or
are deterministic and take eta 0 only (dpmpp_2m, the flow samplers); settings derive their sampler
lists from ``sampler_names(family)`` and ``deterministic_names()``.

Samplers of one family share one config: a prior stores its training scheduler's ``config()`` once and
``make_sampler(name, **config)`` builds any sampler of that family from it (timm's
``register_model`` / ``create_model`` is the model for the registry).

The loop (``sampling/diffusion.py``) needs, from every sampler:

- ``set_timesteps(n)`` and ``timesteps`` (descending, in the sampler's own time units);
- ``model_timestep(t)``: the (B,) time input the denoiser sees for the sampler times ``t`` (B,);
- ``solve_step(denoise, t, x, eta=, generator=)``: advance x from ``t`` to the next timestep, calling
  ``denoise(x, t) -> output`` as often as the method needs (once by default, via ``step``).

Training needs ``sample_train_t(batch_size, generator=, device=)``, ``add_noise(x0, noise, t)`` and
``target_for(x0, noise, t)``; the denoiser then sees ``model_timestep(t)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor

FAMILIES = ("diffusion", "flow")

_REGISTRY: dict[str, type[Sampler]] = {}


class Sampler:
    """Base of every registered sampler: the loop's default one-evaluation step and config plumbing."""

    family: ClassVar[str] = ""
    registry_name: ClassVar[str] = ""
    takes_eta: ClassVar[bool] = False  # stochastic steps with a DDIM-style eta; else deterministic (eta 0 only)

    def config(self) -> dict[str, Any]:  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    @classmethod
    def from_config(cls, config: dict[str, Any]):
        """Rebuild from ``config()`` (JSON-able keyword arguments of the constructor)."""
        return cls(**config)

    def model_timestep(self, t: Tensor) -> Tensor:
        """The denoiser's time input for sampler times ``t``; diffusion passes its integer steps as they are."""
        return t

    def step(self, model_output: Tensor, t: Any, x: Tensor, eta: float = 0.0,
             generator: torch.Generator | None = None) -> Tensor:  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    def solve_step(
        self,
        denoise: Callable[[Tensor, Any], Tensor],
        t: Any,
        x: Tensor,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """One step of the loop: one (guided) model evaluation at (x, t), then ``step``.

        Samplers that evaluate the model more than once per step (Heun) override this; ``denoise``
        applies classifier-free guidance, so guidance stays in one place for every sampler.
        """
        return self.step(denoise(x, t), t, x, eta=eta, generator=generator)


def register_sampler(name: str) -> Callable[[type[Sampler]], type[Sampler]]:
    """Class decorator: make ``make_sampler(name, ...)`` build this class (one name per class)."""

    def wrap(cls: type[Sampler]) -> type[Sampler]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"sampler name {name!r} is already registered to {_REGISTRY[name].__name__}")
        if cls.family not in FAMILIES:
            raise ValueError(f"sampler {name!r} has family {cls.family!r}; expected one of {FAMILIES}")
        cls.registry_name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def sampler_names(family: str | None = None) -> tuple[str, ...]:
    """The registered names (sorted), optionally only those of one ``family``."""
    if family is not None and family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    return tuple(sorted(n for n, c in _REGISTRY.items() if family is None or c.family == family))


def sampler_class(name: str) -> type[Sampler]:
    """The class registered as ``name``; an unknown name is a ValueError listing the registered ones."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown sampler {name!r}; registered samplers: {', '.join(sampler_names())}")
    return _REGISTRY[name]


def sampler_family(name: str) -> str:
    """``diffusion`` or ``flow``: the kind of prior the sampler ``name`` can run."""
    return sampler_class(name).family


def deterministic_names() -> tuple[str, ...]:
    """The registered samplers that take no eta (eta 0 only), sorted."""
    return tuple(n for n in sampler_names() if not _REGISTRY[n].takes_eta)


def family_clash(name: str, family: str) -> str | None:
    """None when sampler ``name`` runs a prior trained with ``family``, else the clause saying what would."""
    own = sampler_family(name)
    if own == family:
        return None
    *rest, last = sampler_names(family)
    return f"{name} is a {own} sampler, and a {family} prior takes {', '.join(rest)} or {last}"


def make_sampler(name: str, **config: Any) -> Sampler:
    """Build the sampler ``name`` from the config of its family (e.g. a prior's stored scheduler config)."""
    cls = sampler_class(name)
    try:
        return cls(**config)
    except TypeError as err:  # a config of the other family, or a misspelt key
        raise ValueError(
            f"sampler {name!r} ({cls.family}) cannot take the config keys {sorted(config)}: {err}"
        ) from err
