"""Settings of ``prior.kind = diffusion`` (the ``diffusion`` section of ``medgen train-prior``) and the
sampler names by family, derived from the sampler registry (``medgen_cli.sampling.sampler_names``):
each registered sampler class declares its family (diffusion or flow) and whether it takes eta.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ..sampling.catalogue import deterministic_names, family_clash, sampler_names
from .base import IntTuple, PerLevelInts, Section

# The catalogued samplers (``medgen_cli/sampling/catalogue.py``, torch-free) by the objective they run.
DIFFUSION_SAMPLERS = sampler_names("diffusion")
FLOW_SAMPLERS = sampler_names("flow")
DETERMINISTIC_SAMPLERS = deterministic_names()  # they take eta = 0 only
DEFAULT_SAMPLER = {"diffusion": "ddim", "flow": "flow_euler"}  # diffusion.sampler when not given
SamplerName = Literal[sampler_names()]  # type: ignore[valid-type]
# DiffusionSettings fields of one objective only: left at their defaults by the other
DIFFUSION_ONLY = ("schedule", "beta_start", "beta_end", "num_train_timesteps", "prediction", "min_snr_gamma")
FLOW_ONLY = ("flow_time_sampling", "flow_logit_mean", "flow_logit_std", "flow_shift", "flow_base_grid_numel",
             "flow_shift_exponent")


class DiffusionSettings(Section):
    """``prior.kind = diffusion``: a `UNetPrior` over continuous latents (Rombach et al. 2022).

    ``objective`` chooses what the UNet learns: ``diffusion`` (a DDPM noise schedule, eps / v / x0
    prediction, ``sampling/schedulers.py``) or ``flow`` (rectified flow: straight paths from the data
    to noise, velocity prediction, ``sampling/flow.py``). The ``flow_*`` fields are the constructor
    arguments of ``FlowEulerScheduler``; ``sampler`` defaults to ddim or flow_euler by the objective.
    """

    objective: Literal["diffusion", "flow"] = Field(
        "diffusion", description="What the UNet learns: diffusion (DDPM noise schedule; samplers ddim, ddpm, dpmpp_2m) or\n"
        "flow (rectified flow / flow matching, velocity on straight paths; samplers flow_euler, flow_heun)."
    )
    flow_time_sampling: Literal["uniform", "logit_normal"] = Field(
        "uniform", description="flow: training times t in [0, 1], uniform or logit-normal (SD3's; it rarely visits t near 0)."
    )
    flow_logit_mean: float = Field(0.0, description="flow: mean m of the logit-normal training times t = sigmoid(m + s n).")
    flow_logit_std: float = Field(1.0, gt=0, description="flow: std s of the logit-normal training times.")
    flow_shift: float | None = Field(
        None, gt=0, description="flow: timestep shift t' = s t / (1 + (s - 1) t) of training and sampling times (s > 1: more\n"
        "time at high noise); null = resolution-aware, s = (latent grid elements / flow_base_grid_numel) ^\n"
        "flow_shift_exponent (SD3 Sec. 5.3.2); a number = that shift at every latent size."
    )
    flow_base_grid_numel: int = Field(
        1024, ge=1, description="flow, flow_shift null: latent grid elements (channels excluded) at which the shift is 1\n"
        "(1024 = SD3's 32x32 latents of 256^2 images)."
    )
    flow_shift_exponent: float = Field(
        0.5, ge=0, description="flow, flow_shift null: exponent of the size ratio (0.5 as SD3; 1/spatial_dims as MONAI)."
    )
    schedule: Literal["linear", "scaled_linear", "cosine"] = Field(
        "scaled_linear", description="Noise schedule: linear, scaled_linear (latent diffusion's) or cosine (Nichol & Dhariwal)."
    )
    beta_start: float = Field(0.00085, gt=0, lt=1, description="First beta of the linear schedules (cosine ignores it).")
    beta_end: float = Field(0.012, gt=0, lt=1, description="Last beta of the linear schedules (cosine ignores it).")
    num_train_timesteps: int = Field(1000, ge=2, description="Diffusion steps T of training.")
    prediction: Literal["eps", "v", "x0"] = Field("eps", description="What the UNet predicts: eps (the noise), v or x0.")
    min_snr_gamma: float | None = Field(
        None, gt=0, description="Min-SNR-gamma loss weighting (Hang et al. 2023; 5 is usual); null = plain MSE."
    )
    base_channels: int = Field(64, ge=1, description="UNet: channels of the first level.")
    channel_mults: PerLevelInts = Field((1, 2, 4), description="UNet: channel multiplier per level (one 2x downsampling\n"
                                    "between levels: the latent grid must be divisible by 2^(levels-1)).")
    num_res_blocks: int = Field(2, ge=1, description="UNet: residual blocks per level.")
    attention_levels: IntTuple = Field((), description="UNet: levels (0-based) with self-attention after each block.")
    mid_attention: bool = Field(True, description="UNet: self-attention in the middle block.")
    num_heads: int = Field(4, ge=1, description="UNet: attention heads.")
    num_groups: int = Field(8, ge=1, description="UNet: group-norm groups (must divide every level's channels).")
    dropout: float = Field(0.0, ge=0, lt=1, description="UNet: dropout in the residual blocks.")
    p_uncond: float = Field(
        0.1, ge=0, lt=1, description="Classifier-free guidance: probability that a training item's condition\n"
        "(condition latents and label) is dropped; unconditional priors ignore it."
    )
    sample_every: int = Field(
        0, ge=0, description="Second validation tier: every this many steps (and at the end), sample\n"
        "sample_items validation items with diffusion.sampler (ddim when that is ddpm), decode them and log\n"
        "SSIM/PSNR against their real images (conditional priors); 0 = off. Runs at the first validation at\n"
        "or after each multiple."
    )
    sample_items: int = Field(4, ge=1, description="Validation items sampled by the second tier.")
    sample_steps: int = Field(10, ge=1, description="Sampler steps of the second validation tier.")
    sampler: SamplerName = Field(
        "ddim", description="Default sampler of medgen sample (--sampler): ddim, ddpm or dpmpp_2m (DPM-Solver++ 2M) for\n"
        "objective diffusion, flow_euler or flow_heun for objective flow; when not given, ddim or flow_euler."
    )
    steps: int = Field(50, ge=1, description="Default sampler steps of medgen sample (--steps; flow_heun calls the UNet\n"
                       "about twice per step).")
    eta: float = Field(0.0, ge=0, description="Default DDIM eta of medgen sample (0 = deterministic; --eta); dpmpp_2m and\n"
                       "the flow samplers are deterministic and take 0 only.")
    guidance_scale: float = Field(
        1.0, ge=0, description="Default classifier-free guidance scale of medgen sample (1 = the conditional model; --guidance-scale)."
    )

    @model_validator(mode="before")
    @classmethod
    def _default_sampler(cls, data):
        """A sampler not given follows the objective (flow_euler for flow), so the resolved settings name it."""
        objective = data.get("objective", "diffusion") if isinstance(data, dict) else None
        if isinstance(objective, str) and objective in DEFAULT_SAMPLER and data.get("sampler") is None:
            data = {**data, "sampler": DEFAULT_SAMPLER[objective]}
        return data

    @model_validator(mode="after")
    def _objective(self):
        """Fields and sampler of the other objective are refused, as is eta with a deterministic sampler."""
        fields = type(self).model_fields
        foreign, other = (FLOW_ONLY, "flow") if self.objective == "diffusion" else (DIFFUSION_ONLY, "diffusion")
        changed = [n for n in foreign if getattr(self, n) != fields[n].default]
        if changed:
            name = changed[0]
            raise ValueError(f"diffusion.{name} = {getattr(self, name)!r} applies to diffusion.objective = {other!r} only, "
                             f"not {self.objective!r}; remove it or set diffusion.objective={other}")
        sized = [n for n in ("flow_base_grid_numel", "flow_shift_exponent") if getattr(self, n) != fields[n].default]
        if self.flow_shift is not None and sized:
            raise ValueError(f"diffusion.{sized[0]} sizes the resolution-aware shift, but diffusion.flow_shift = "
                             f"{self.flow_shift} fixes it; remove one of them")
        clash = family_clash(self.sampler, self.objective)
        if clash:
            raise ValueError(f"diffusion.sampler = {self.sampler!r} cannot sample a prior of diffusion.objective = "
                             f"{self.objective!r}: {clash}")
        if self.sampler in DETERMINISTIC_SAMPLERS and self.eta != 0:
            raise ValueError(f"diffusion.eta = {self.eta} applies to the ddim sampler only; {self.sampler} is "
                             "deterministic and takes eta 0")
        return self

    def flow_scheduler_args(self, grid_numel: int) -> dict:
        """Keyword arguments of ``FlowEulerScheduler`` for latents of ``grid_numel`` elements (channels excluded)."""
        resolution_aware = self.flow_shift is None
        return {"time_sampling": self.flow_time_sampling, "logit_mean": self.flow_logit_mean,
                "logit_std": self.flow_logit_std, "shift": 1.0 if resolution_aware else self.flow_shift,
                "base_grid_numel": self.flow_base_grid_numel if resolution_aware else None,
                "grid_numel": int(grid_numel), "shift_exponent": self.flow_shift_exponent}

    @model_validator(mode="after")
    def _consistent(self):
        levels = len(self.channel_mults)
        if not levels or any(m < 1 for m in self.channel_mults):
            raise ValueError(f"diffusion.channel_mults = {list(self.channel_mults)} must be positive integers")
        bad = [i for i in self.attention_levels if not 0 <= i < levels]
        if bad:
            raise ValueError(f"diffusion.attention_levels = {list(self.attention_levels)} must index the "
                             f"{levels} levels of diffusion.channel_mults (0..{levels - 1})")
        for m in (1, *self.channel_mults):
            if (self.base_channels * m) % self.num_groups:
                raise ValueError(f"diffusion.base_channels x {m} = {self.base_channels * m} channels must be divisible "
                                 f"by diffusion.num_groups = {self.num_groups}")
        attended = [self.channel_mults[i] for i in self.attention_levels]
        attended += [self.channel_mults[-1]] if self.mid_attention else []
        for m in attended:
            if (self.base_channels * m) % self.num_heads:
                raise ValueError(f"diffusion.base_channels x {m} = {self.base_channels * m} channels with attention "
                                 f"must be divisible by diffusion.num_heads = {self.num_heads}")
        if self.schedule != "cosine" and self.beta_start > self.beta_end:
            raise ValueError(f"diffusion.beta_start = {self.beta_start} must not exceed diffusion.beta_end = {self.beta_end}")
        for name in ("steps", "sample_steps") if self.objective == "diffusion" else ():
            if getattr(self, name) > self.num_train_timesteps:
                raise ValueError(f"diffusion.{name} = {getattr(self, name)} must not exceed "
                                 f"diffusion.num_train_timesteps = {self.num_train_timesteps}")
        if self.guidance_scale != 1.0 and self.p_uncond == 0:
            raise ValueError(f"diffusion.guidance_scale = {self.guidance_scale} needs diffusion.p_uncond > 0 "
                             "(the prior must learn the unconditional model too)")
        return self

    @property
    def grid_multiple(self) -> int:
        """Every latent grid axis must be a multiple of this (the UNet halves it between levels)."""
        return 2 ** (len(self.channel_mults) - 1)
