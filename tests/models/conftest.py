"""Tiny CPU-sized autoencoders shared by the model tests."""

import pytest
import torch

from medgen_cli.models import build_autoencoder

TINY = {
    "vqvae": dict(channels=(8, 16), num_res_blocks=1, num_groups=4, embedding_dim=4, num_embeddings=16),
    "vqgan": dict(channels=(8, 16), num_res_blocks=1, num_groups=4, embedding_dim=4, num_embeddings=16),
    "vqvae2": dict(
        channels=(8, 8), top_channels=(8,), num_res_blocks=1, num_groups=4, embedding_dim=4, num_embeddings=16
    ),
    "klvae": dict(channels=(8, 16), num_res_blocks=1, num_groups=4, latent_channels=4),
}


@pytest.fixture
def tiny_autoencoder():
    """Factory: tiny_autoencoder(kind, spatial_dims, **overrides) with a fixed seed."""

    def make(kind: str, spatial_dims: int, **overrides):
        torch.manual_seed(0)
        return build_autoencoder(kind, spatial_dims, in_channels=2, **{**TINY[kind], **overrides})

    return make
