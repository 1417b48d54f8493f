"""``prior.kind = diffusion``: a `UNetPrior` over continuous latents (Rombach et al. 2022), trained with
a DDPM noise schedule or rectified flow (``diffusion.objective``) and sampled by any registered
sampler of that family (``medgen_cli.sampling``) with classifier-free guidance.

The data side (codecs of the latents, label-map and spacing channels, the sampling check of
validation, the ``model.json`` additions) is orchestration and stays in ``steps/_diffusion.py``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..errors import UsageError
from ..models.priors.config import UNetPriorConfig
from ..sampling.catalogue import deterministic_names, family_clash, sampler_entry

if TYPE_CHECKING:  # the registry loads without torch (the settings read it); the work imports it on use
    import torch
    from torch import Tensor, nn

    from ..sampling.registry import Sampler
from .registry import PriorKind, register_prior


# ------------------------------------------------------------------------------------ training
def build(settings: Any, lat: Any, conds: list, num_classes: int | None, extra_channels: int = 0):
    """The `UNetPrior` and its `DiffusionLoss` (conditions must know their items per subject; label maps
    and spacing add ``extra_channels`` condition channels after those of the condition latents)."""
    from ..models.priors.unet import UNetPrior
    from ..train.diffusion_task import DiffusionLoss

    d = settings.diffusion
    cond_channels = sum(int(c.summary.latent_channels) * c.items_per_subject for c in conds) + extra_channels
    config = UNetPriorConfig(
        spatial_dims=len(lat.grid_shape), in_channels=int(lat.summary.latent_channels), base_channels=d.base_channels,
        channel_mults=list(d.channel_mults), num_res_blocks=d.num_res_blocks, attention_levels=list(d.attention_levels),
        mid_attention=d.mid_attention, num_heads=d.num_heads, dropout=d.dropout, num_groups=d.num_groups,
        cond_channels=cond_channels, num_classes=num_classes)
    unet = UNetPrior(config)
    return unet, DiffusionLoss(training_scheduler(d, lat.grid_shape), d.p_uncond, d.min_snr_gamma)


def training_scheduler(d: Any, grid_shape: list[int]) -> Sampler:
    """The scheduler the prior trains with (``d``: the diffusion settings): DDIM's (a DDPM noise schedule)
    or rectified flow's, sized by the grid."""
    from ..sampling.flow import FlowEulerScheduler
    from ..sampling.schedulers import DDIMScheduler

    if d.objective == "flow":
        return FlowEulerScheduler(**d.flow_scheduler_args(math.prod(grid_shape)))
    return DDIMScheduler(num_train_timesteps=d.num_train_timesteps, beta_schedule=d.schedule, beta_start=d.beta_start,
                         beta_end=d.beta_end, prediction_type=d.prediction)


# ------------------------------------------------------------------------------------ sampling
def sampling_options(record: Any, s: Any, prior: str) -> dict[str, Any]:
    """The prior's sampling defaults overridden by the options given; refuses what cannot apply."""
    if s.token_options():
        raise UsageError(f"{prior} is a diffusion prior; --{s.token_options()[0].replace('_', '-')} applies to token "
                         "priors only (diffusion takes --sampler, --steps, --eta, --guidance-scale).")
    given = s.diffusion_options()
    options = {**record.sampling.model_dump(mode="json"), **given}
    name, kind = options["scheduler"], record.objective
    clash = family_clash(name, kind)
    if clash:
        raise UsageError(f"--sampler {name} cannot sample {prior}: {clash}.")
    if name in deterministic_names():  # the prior's default eta is DDIM's; these solvers take 0 only
        if given.get("eta"):
            raise UsageError(f"--eta {given['eta']:g} applies to the ddim sampler only; {name} is deterministic and takes eta 0.")
        options["eta"] = 0.0
    T = record.diffusion.scheduler.get("num_train_timesteps")
    if kind == "diffusion" and options["steps"] > T:
        raise UsageError(f"--steps {options['steps']} exceeds the {T} diffusion steps {prior} was trained with.")
    if options["guidance_scale"] != 1.0:
        if not record.conditional:
            raise UsageError(f"--guidance-scale {options['guidance_scale']:g}: {prior} is unconditional; "
                             "guidance needs a prior conditioned on latents, labels, masks or spacing.")
        if not record.diffusion.p_uncond:
            raise UsageError(f"--guidance-scale {options['guidance_scale']:g}: {prior} was trained with "
                             "diffusion.p_uncond = 0, so it has no unconditional model to guide against.")
    return options


def make_prior_sampler(record: Any, name: str) -> Sampler:
    """The sampler ``name`` built from the prior's stored scheduler config (DPM-Solver++ with its own
    ``trailing`` spacing: the others evaluate at t = 0, where its 2M extrapolation overshoots).

    ``record``: the prior's `PriorRecord`, or its ``model.json`` as a dict.
    """
    from ..sampling.registry import make_sampler

    stored = record["diffusion"]["scheduler"] if isinstance(record, Mapping) else record.diffusion.scheduler
    config = dict(stored)
    if sampler_entry(name).own_spacing:
        config.pop("timestep_spacing", None)
    return make_sampler(name, **config)


def sample_latents(model: nn.Module, record: Any, n: int, cond: list[Tensor] | None, labels: Tensor | None,
                   options: dict[str, Any], generator: torch.Generator) -> dict[str, Tensor]:
    """Draw ``n`` latents: autoencoder units for VQ latents, stored units (times latent_scale) for KL."""
    from ..sampling.diffusion import sample_diffusion

    scheduler = make_prior_sampler(record, options["scheduler"])
    kwargs = {}
    if cond:
        kwargs["cond"] = cond[0]
    if labels is not None:
        kwargs["labels"] = labels
    device = next(model.parameters()).device
    shape = (n, record.latent.channels, *record.grid_shape)
    x = sample_diffusion(model, scheduler, shape, cond=kwargs, guidance_scale=options["guidance_scale"],
                         num_inference_steps=options["steps"], eta=options["eta"], generator=generator, device=device)
    return {"main": x / record.latent.scale if record.latent.is_vq else x}


def sample(model: nn.Module, record: Any, n: int, cond: list[Tensor] | None, labels: Tensor | None, s: Any,
           generator: torch.Generator) -> dict[str, Tensor]:
    return sample_latents(model, record, n, cond, labels, sampling_options(record, s, "the prior"), generator)


def strategy(record: Any, s: Any, prior: str) -> str:
    return sampling_options(record, s, prior)["scheduler"]


# ------------------------------------------------------------------------------------ settings
def check_settings(p: Any) -> None:
    """``prior.num_heads`` / ``prior.dropout`` belong to the diffusion section for this kind."""
    moved = [n for n in ("num_heads", "dropout") if getattr(p, n) != type(p).model_fields[n].default]
    if moved:
        raise ValueError(f"prior.{moved[0]} does not apply to prior.kind = 'diffusion'; set diffusion.{moved[0]}")


def check_train(settings: Any) -> None:
    """Guidance needs a conditional prior."""
    c = settings.condition
    if settings.diffusion.guidance_scale != 1.0 and not (c.paths or c.label or c.masks is not False or c.spacing):
        raise ValueError(f"diffusion.guidance_scale = {settings.diffusion.guidance_scale} needs a conditional prior "
                         "(condition.paths, condition.label, condition.masks or condition.spacing)")


def _network():
    from ..models.priors.unet import UNetPrior

    return UNetPrior


KIND = register_prior(PriorKind(
    name="diffusion", config=UNetPriorConfig, build=build, rebuild=lambda c: _network()(**c), sample=sample,
    strategy=strategy, sampler_summary=sampling_options, token=False, draws="latents", image_conditions=True,
    sections=("diffusion",), check_settings=check_settings, check_train=check_train))
