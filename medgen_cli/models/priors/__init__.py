"""Priors over autoencoder latents: causal transformer, MaskGIT, gated PixelCNN and diffusion UNet."""

from medgen_cli.models.priors.maskgit import MaskGITPrior
from medgen_cli.models.priors.ordering import ORDERINGS, make_ordering
from medgen_cli.models.priors.pixelcnn import GatedPixelCNN
from medgen_cli.models.priors.transformer import TransformerPrior
from medgen_cli.models.priors.unet import UNetPrior, random_null_mask, timestep_embedding

__all__ = [
    "ORDERINGS",
    "GatedPixelCNN",
    "MaskGITPrior",
    "TransformerPrior",
    "UNetPrior",
    "make_ordering",
    "random_null_mask",
    "timestep_embedding",
]
