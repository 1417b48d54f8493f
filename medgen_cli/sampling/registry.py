"""One registry of diffusion and flow samplers, and the contract the sampling loop relies on.

A sampler (scheduler) owns its noise process and its reverse steps. Every registered class derives
from :class:`Sampler` and belongs to a ``family``, which fixes what the denoiser was trained on:

- ``diffusion``: discrete DDPM noise schedule, model output ε, v or x_0 (``ddpm``, ``ddim``, ``dpmpp_2m``);
- ``flow``: rectified flow on straight paths, model output the velocity (``flow_euler``, ``flow_heun``).

Each class also declares ``takes_eta``: whether its steps take a stochasticity ``eta`` (ddim, ddpm) or
are deterministic and take eta 0 only (dpmpp_2m, the flow samplers). Names, families and eta are also one
torch-free line each in ``sampling/catalogue.py``, which the settings read (``sampler_names(family)``,
``deterministic_names()``) and the decorator checks the class against.

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

import importlib

import torch
from torch import Tensor

from medgen_cli.sampling.catalogue import (  # noqa: F401 - the torch-free half of the registry, re-exported
    FAMILIES,
    SAMPLERS,
    deterministic_names,
    family_clash,
    sampler_entry,
    sampler_family,
    sampler_names,
)

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
    """Class decorator: make ``make_sampler(name, ...)`` build this class (one name per class); its family and
    eta must agree with its line in ``sampling/catalogue.py``."""

    def wrap(cls: type[Sampler]) -> type[Sampler]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"sampler name {name!r} is already registered to {_REGISTRY[name].__name__}")
        if cls.family not in FAMILIES:
            raise ValueError(f"sampler {name!r} has family {cls.family!r}; expected one of {FAMILIES}")
        entry = SAMPLERS.get(name)
        if entry is None or (entry.family, entry.takes_eta) != (cls.family, cls.takes_eta):
            raise ValueError(f"sampler {name!r} ({cls.family}, takes_eta={cls.takes_eta}) needs the same line in "
                             f"medgen_cli/sampling/catalogue.py (it has {entry})")
        cls.registry_name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def sampler_class(name: str) -> type[Sampler]:
    """The class registered as ``name`` (its module imported on first use); an unknown name is a ValueError
    listing the registered ones."""
    entry = sampler_entry(name)
    if name not in _REGISTRY:
        importlib.import_module(entry.module)
    return _REGISTRY[name]


def make_sampler(name: str, **config: Any) -> Sampler:
    """Build the sampler ``name`` from the config of its family (e.g. a prior's stored scheduler config)."""
    cls = sampler_class(name)
    try:
        return cls(**config)
    except TypeError as err:  # a config of the other family, or a misspelt key
        raise ValueError(
            f"sampler {name!r} ({cls.family}) cannot take the config keys {sorted(config)}: {err}"
        ) from err
