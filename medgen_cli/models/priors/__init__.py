"""Priors over autoencoder latents: causal transformer, MaskGIT, gated PixelCNN (and the VQ-VAE-2 pair
`TwoLevelPixelCNN`) and diffusion UNet, each built from one frozen typed config (``config.py``). The
prior registry (``medgen_cli.priors``) builds, trains and samples them by kind; their sampling loops
live in ``medgen_cli.sampling``."""

from medgen_cli.models.priors.config import (
    GatedPixelCNNConfig,
    MaskGITPriorConfig,
    PriorConfig,
    TransformerPriorConfig,
    UNetPriorConfig,
)
from medgen_cli.models.priors.maskgit import MaskGITPrior
from medgen_cli.models.priors.ordering import ORDERINGS, make_ordering
from medgen_cli.models.priors.pixelcnn import GatedPixelCNN, TwoLevelPixelCNN
from medgen_cli.models.priors.transformer import TransformerPrior
from medgen_cli.models.priors.unet import UNetPrior, random_null_mask, timestep_embedding

__all__ = [
    "ORDERINGS",
    "GatedPixelCNN",
    "GatedPixelCNNConfig",
    "MaskGITPrior",
    "MaskGITPriorConfig",
    "PriorConfig",
    "TransformerPrior",
    "TransformerPriorConfig",
    "TwoLevelPixelCNN",
    "UNetPrior",
    "UNetPriorConfig",
    "make_ordering",
    "random_null_mask",
    "timestep_embedding",
]
