"""Tiny preprocessed artefacts and settings for the training tests (16^2 / 16^3 blobs, 8 channels)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medgen_cli.artefacts import ArtefactWriter
from medgen_cli.meta import ImageMeta, IntensityMapping
from medgen_cli.io.store import Store, store_path
from medgen_cli.settings import load_settings
from medgen_cli.settings.train import TrainAESettings

WINDOW = IntensityMapping(method="window", unit="HU", in_low=-1000, in_high=1000, out_low=-1, out_high=1, clip=True)


def blob(spatial_dims: int, size: int = 16, seed: int = 0, contrast: float = 1.0) -> np.ndarray:
    """A soft bright ball at a random place on a dark background, values in [-1, 1]."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, size)] * spatial_dims, indexing="ij")
    r = np.sqrt(sum((g - rng.uniform(-0.3, 0.3)) ** 2 for g in grids))
    return (contrast * np.tanh(3 * (0.5 - r))).astype(np.float32)


def make_prep(path: Path, spatial_dims: int = 2, n_train: int = 4, n_val: int = 2, mapping: IntensityMapping = WINDOW,
              seed: int = 0, contrast: float = 1.0, size: int = 16) -> Path:
    """A complete ``preprocessed`` artefact at ``path`` with train and val items."""
    writer = ArtefactWriter(path, "preprocessed", {})
    store = Store.create(store_path(writer.open()))
    for i in range(n_train + n_val):
        arr = blob(spatial_dims, size, seed * 100 + i, contrast)
        store.write(f"item{i:02d}", arr, ImageMeta(subject=f"s{i}", intensity=mapping), dtype="float32",
                    split="train" if i < n_train else "val")
    writer.commit({})
    return path


TINY = {
    "vqvae": ["model.embedding_dim=8", "model.num_embeddings=32"],
    "vqgan": ["model.embedding_dim=8", "model.num_embeddings=32", "adversarial.channels=8", "adversarial.layers=2",
              "adversarial.start_step=1"],
    "vqvae2": ["model.embedding_dim=8", "model.num_embeddings=32", "model.top_channels=[8]"],
    "klvae": ["model.latent_channels=4"],
}


def tiny_settings(prep: Path, kind: str = "vqvae", *overrides: str) -> TrainAESettings:
    """Settings of a few-step CPU run with 8-channel models."""
    base = [
        f"data.path={prep}", f"model.kind={kind}", "model.channels=8,8", "model.num_res_blocks=1",
        "data.batch_size=2", "train.steps=6", "train.val_every=3", "train.checkpoint_every=2", "train.log_every=1",
        "train.save_images=2", "runtime.device=cpu", "optim.lr=2e-3", *TINY[kind],
    ]
    return load_settings(TrainAESettings, None, [*base, *overrides])
