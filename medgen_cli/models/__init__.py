"""Generative models: autoencoders (this package's top level) and priors (`models.priors`).

Autoencoders: `VQVAE` (van den Oord 2017; also the VQGAN autoencoder of Esser 2021), `VQVAE2`
(Razavi 2019), `KLVAE` (Rombach 2022), built by name with `build_autoencoder(kind, spatial_dims,
**kwargs)`; `PatchDiscriminator` and the adversarial losses live in `models.discriminator`. The VQ
kinds take a quantiser by name (`models.quantization`): `VectorQuantizer` (EMA codebook,
straight-through or rotation-trick gradient), `FSQ` (Mentzer 2023) or `LFQ` (MAGVIT-v2); the
encoder/decoder layout ("strided" or "full") is in `models.backbone`.

Every autoencoder shares this interface, which priors, samplers and steps rely on (no isinstance
checks needed):

- `encode_to_latents(x) -> z`: the continuous latents a diffusion prior trains on, shaped
  `latent_shape(spatial)`: quantised codes for VQ models (VQ-VAE-2: top codes repeated to the
  bottom grid, stacked on the bottom codes), the posterior mean for KL.
- `decode_latents(z) -> x`: inverse of the above (VQ models first snap z to their codebooks).
- `is_vq`: bool; VQ models also have `encode_to_indices(x)`, `decode_indices(...)` and
  `index_shape(spatial)` (VQ-VAE-2: (top, bottom) pairs) for token priors.
- `downsample_factor`: per-axis tuple, image size / latent size; `latent_channels`: int;
  `latent_shape(spatial) -> (latent_channels, *latent_spatial)`.
- `forward(x) -> AEOutput(reconstruction, loss_terms, indices, perplexity, metrics)`, where the
  already-weighted `loss_terms` sum to the autoencoder loss.
- `last_layer_weight()`: the decoder's final weight (adaptive adversarial weight).
- `config()`: JSON-able kwargs, `build_autoencoder(**model.config())` rebuilds the architecture.
"""

from medgen_cli.models.autoencoders import KLVAE, VQVAE, VQVAE2
from medgen_cli.models.base import AEOutput, Autoencoder
from medgen_cli.models.discriminator import PatchDiscriminator
from medgen_cli.models.fsq import FSQ
from medgen_cli.models.lfq import LFQ
from medgen_cli.models.quantizers import QuantizerOutput, VectorQuantizer
from medgen_cli.models.registry import build_autoencoder, build_discriminator

__all__ = [
    "AEOutput",
    "Autoencoder",
    "FSQ",
    "LFQ",
    "KLVAE",
    "PatchDiscriminator",
    "QuantizerOutput",
    "VQVAE",
    "VQVAE2",
    "VectorQuantizer",
    "build_autoencoder",
    "build_discriminator",
]
