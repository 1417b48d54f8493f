"""Samplers: token drawing, autoregressive and MaskGIT decoding loops, diffusion schedulers and loop."""

from medgen_cli.sampling.autoregressive import generate
from medgen_cli.sampling.diffusion import sample_diffusion
from medgen_cli.sampling.maskgit import maskgit_generate
from medgen_cli.sampling.schedulers import DDIMScheduler, DDPMScheduler, NoiseSchedule, make_scheduler
from medgen_cli.sampling.tokens import filter_logits, sample_tokens

__all__ = [
    "DDIMScheduler",
    "DDPMScheduler",
    "NoiseSchedule",
    "filter_logits",
    "generate",
    "make_scheduler",
    "maskgit_generate",
    "sample_diffusion",
    "sample_tokens",
]
