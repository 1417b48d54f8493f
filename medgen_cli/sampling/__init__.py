"""Samplers: token drawing, autoregressive, MaskGIT and PixelCNN decoding loops, diffusion and flow samplers and their loop.

The diffusion / flow samplers (``ddpm``, ``ddim``, ``dpmpp_2m``, ``flow_euler``, ``flow_heun``) are listed in
``sampling/catalogue.py`` and registered with ``make_sampler`` when their module is first imported; names are
imported on first use, so the catalogue (and the settings that read it) load without torch.
"""

import importlib

# name -> module; imported on first use (PEP 562), so the torch-free catalogue loads without torch
_EXPORTS = {
    "generate": "autoregressive", "sample_diffusion": "diffusion", "DPMSolverMultistepScheduler": "dpm_solver",
    "FlowEulerScheduler": "flow", "FlowHeunScheduler": "flow", "resolution_shift": "flow", "shift_time": "flow",
    "maskgit_generate": "maskgit", "pixelcnn_generate": "pixelcnn", "two_level_generate": "pixelcnn",
    "Sampler": "registry", "make_sampler": "registry", "register_sampler": "registry", "sampler_class": "registry",
    "deterministic_names": "catalogue", "family_clash": "catalogue", "sampler_family": "catalogue",
    "sampler_names": "catalogue", "DDIMScheduler": "schedulers", "DDPMScheduler": "schedulers",
    "NoiseSchedule": "schedulers", "make_scheduler": "schedulers", "filter_logits": "tokens", "sample_tokens": "tokens",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"medgen_cli.sampling.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'medgen_cli.sampling' has no attribute {name!r}")
