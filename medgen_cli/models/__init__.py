"""Generative models: autoencoders (this package's top level) and priors (`models.priors`).

Autoencoders: `VQVAE` (van den Oord 2017; also the VQGAN autoencoder of Esser 2021), `VQVAE2`
(Razavi 2019), `KLVAE` (Rombach 2022), built by name with `build_autoencoder(kind, spatial_dims,
config=None, **overrides)` from the registry (`models.registry`) and a frozen typed config
(`models.configs`: `VQVAEConfig`, `VQVAE2Config`, `KLVAEConfig`); `PatchDiscriminator` and the adversarial losses live in `models.discriminator`. The VQ
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
- `typed_config`: the resolved typed config; `config()` is its JSON dump (model.json's "config"), and
  `build_autoencoder(**model.config())` rebuilds the architecture.

Names are imported on first use (PEP 562), so `models.configs`, `models.registry` and
`models.quantization` load without torch (settings validate kinds and quantisers with them).
"""

import importlib

_EXPORTS = {
    "AEOutput": "base", "Autoencoder": "base", "PatchDiscriminator": "discriminator", "FSQ": "fsq", "LFQ": "lfq",
    "KLVAE": "klvae", "VQVAE": "autoencoders", "VQVAE2": "vqvae2", "QuantizerOutput": "quantizers",
    "VectorQuantizer": "quantizers", "AUTOENCODERS": "registry", "autoencoder_kind": "registry",
    "build_autoencoder": "registry", "build_discriminator": "registry", "AutoencoderConfig": "configs",
    "KLVAEConfig": "configs", "VQVAE2Config": "configs", "VQVAEConfig": "configs", "QUANTIZERS": "quantization",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"medgen_cli.models.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'medgen_cli.models' has no attribute {name!r}")
