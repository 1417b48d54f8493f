"""The catalogue of diffusion and flow samplers: one line per sampler, torch-free.

Each line names the module defining the sampler class, its ``family`` (what its prior was trained on:
``diffusion`` or ``flow``), whether its steps take a DDIM-style ``eta``, whether it is useful with ~10 steps
(the validation sampling check swaps ancestral DDPM for one that is) and whether it keeps its own timestep
spacing rather than the prior's stored one (DPM-Solver++). The settings validate sampler names
and families against it without importing torch; ``register_sampler`` (``sampling/registry.py``) refuses a class
whose family or eta disagrees with its line, and ``sampler_class`` imports the module on first use. A new sampler
is its module plus one line here plus its test.
"""

from __future__ import annotations

from typing import NamedTuple

FAMILIES = ("diffusion", "flow")


class SamplerEntry(NamedTuple):
    module: str
    family: str
    takes_eta: bool
    few_steps: bool = True  # useful with ~10 steps (ancestral DDPM needs hundreds)
    own_spacing: bool = False  # keeps its own timestep spacing instead of the prior's stored one


SAMPLERS: dict[str, SamplerEntry] = {
    "ddpm": SamplerEntry("medgen_cli.sampling.schedulers", "diffusion", True, few_steps=False),
    "ddim": SamplerEntry("medgen_cli.sampling.schedulers", "diffusion", True),
    "dpmpp_2m": SamplerEntry("medgen_cli.sampling.dpm_solver", "diffusion", False, own_spacing=True),
    "flow_euler": SamplerEntry("medgen_cli.sampling.flow", "flow", False),
    "flow_heun": SamplerEntry("medgen_cli.sampling.flow", "flow", False),
}


def sampler_names(family: str | None = None) -> tuple[str, ...]:
    """The catalogued names (sorted), optionally only those of one ``family``."""
    if family is not None and family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    return tuple(sorted(n for n, e in SAMPLERS.items() if family is None or e.family == family))


def sampler_entry(name: str) -> SamplerEntry:
    """The line of ``name``; an unknown name is a ValueError listing the catalogue."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; registered samplers: {', '.join(sampler_names())}")
    return SAMPLERS[name]


def sampler_family(name: str) -> str:
    """``diffusion`` or ``flow``: the kind of prior the sampler ``name`` can run."""
    return sampler_entry(name).family


def few_step_sampler(name: str, family: str) -> str:
    """``name`` when it works with few steps, else the first catalogued sampler of ``family`` that does."""
    if sampler_entry(name).few_steps:
        return name
    return next(n for n, e in SAMPLERS.items() if e.family == family and e.few_steps and n != name)


def deterministic_names() -> tuple[str, ...]:
    """The samplers that take no eta (eta 0 only), sorted."""
    return tuple(n for n in sampler_names() if not SAMPLERS[n].takes_eta)


def family_clash(name: str, family: str) -> str | None:
    """None when sampler ``name`` runs a prior trained with ``family``, else the clause saying what would."""
    own = sampler_family(name)
    if own == family:
        return None
    *rest, last = sampler_names(family)
    return f"{name} is a {own} sampler, and a {family} prior takes {', '.join(rest)} or {last}"
