"""Priors over autoencoder latents: causal transformer, MaskGIT, gated PixelCNN (and the VQ-VAE-2 pair
`TwoLevelPixelCNN`) and diffusion UNet, each built from one frozen typed config (``config.py``). The
prior registry (``medgen_cli.priors``) builds, trains and samples them by kind; their sampling loops
live in ``medgen_cli.sampling``."""

import importlib

# name -> module; imported on first use (PEP 562), so the typed configs load without torch
_EXPORTS = {
    "GatedPixelCNNConfig": "config", "MaskGITPriorConfig": "config", "PriorConfig": "config",
    "TransformerPriorConfig": "config", "UNetPriorConfig": "config", "MaskGITPrior": "maskgit",
    "ORDERINGS": "ordering", "make_ordering": "ordering", "GatedPixelCNN": "pixelcnn", "TwoLevelPixelCNN": "pixelcnn",
    "TransformerPrior": "transformer", "UNetPrior": "unet", "random_null_mask": "unet", "timestep_embedding": "unet",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"medgen_cli.models.priors.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'medgen_cli.models.priors' has no attribute {name!r}")
