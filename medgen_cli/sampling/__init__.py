"""Samplers: token drawing, autoregressive, MaskGIT and PixelCNN decoding loops, diffusion and flow samplers and their loop.

Importing the package registers every diffusion / flow sampler (``ddpm``, ``ddim``, ``dpmpp_2m``,
``flow_euler``, ``flow_heun``) with ``make_sampler``.
"""

from medgen_cli.sampling.autoregressive import generate
from medgen_cli.sampling.diffusion import sample_diffusion
from medgen_cli.sampling.dpm_solver import DPMSolverMultistepScheduler
from medgen_cli.sampling.flow import FlowEulerScheduler, FlowHeunScheduler, resolution_shift, shift_time
from medgen_cli.sampling.maskgit import maskgit_generate
from medgen_cli.sampling.pixelcnn import pixelcnn_generate, two_level_generate
from medgen_cli.sampling.registry import (
    Sampler,
    deterministic_names,
    family_clash,
    make_sampler,
    register_sampler,
    sampler_class,
    sampler_family,
    sampler_names,
)
from medgen_cli.sampling.schedulers import DDIMScheduler, DDPMScheduler, NoiseSchedule, make_scheduler
from medgen_cli.sampling.tokens import filter_logits, sample_tokens

__all__ = [
    "DDIMScheduler",
    "DDPMScheduler",
    "DPMSolverMultistepScheduler",
    "FlowEulerScheduler",
    "FlowHeunScheduler",
    "NoiseSchedule",
    "Sampler",
    "deterministic_names",
    "family_clash",
    "filter_logits",
    "generate",
    "make_sampler",
    "make_scheduler",
    "maskgit_generate",
    "pixelcnn_generate",
    "register_sampler",
    "resolution_shift",
    "sample_diffusion",
    "sample_tokens",
    "sampler_class",
    "sampler_family",
    "sampler_names",
    "shift_time",
    "two_level_generate",
]
