"""A tiny pipeline shared by the encode-latents, train-prior and sample tests, made once per session.

``chain`` runs the real steps on 16^3 CT phantoms: preprocess (with two DRR views per CT) ->
train-ae for 2 steps (2D VQ-VAE, VQ-VAE-2 and KL-VAE on the DRRs, a 3D VQ-VAE on the CTs) ->
encode-latents; priors are trained on first use (`Chain.prior`) and cached.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from medgen_cli.settings import (
    EncodeSettings,
    PreprocessSettings,
    SampleSettings,
    TrainAESettings,
    TrainPriorSettings,
    load_settings,
)
from medgen_cli.steps import encode_latents, preprocess, train_ae, train_prior
from tests.conftest import sphere_phantom, write_nifti
from tests.train.helpers import TINY

AFFINE = np.array([[-1.5, 0, 0, 20.0], [0, 1.5, 0, -10.0], [0, 0, 2.0, 5.0], [0, 0, 0, 1]])
SUBJECTS = 6

# (autoencoder kind, data store) of each autoencoder, by name
AUTOENCODERS = {"vq": ("vqvae", "drr"), "vq2": ("vqvae2", "drr"), "kl": ("klvae", "drr"), "vq3d": ("vqvae", "main")}

PRIOR_ARGS = {
    "transformer": ["prior.dim=16", "prior.depth=1", "prior.num_heads=2"],
    "maskgit": ["prior.dim=16", "prior.depth=1", "prior.num_heads=2"],
    "pixelcnn": ["prior.hidden_channels=8", "prior.num_layers=2", "prior.num_heads=2"],
}


def encode_settings(ae: Path, prep: Path, store: str, *overrides: str) -> EncodeSettings:
    return load_settings(EncodeSettings, None, [f"ae={ae}", f"data={prep}", f"store={store}", "batch_size=4",
                                                "runtime.device=cpu", *overrides])


def prior_settings(latents: Path, kind: str, *overrides: str) -> TrainPriorSettings:
    """A 3-step CPU run of a tiny prior."""
    base = [f"data.path={latents}", f"prior.kind={kind}", "data.batch_size=2", "train.steps=3", "train.val_every=3",
            "train.checkpoint_every=3", "train.log_every=1", "train.val_items=4", "runtime.device=cpu", "optim.lr=3e-3"]
    return load_settings(TrainPriorSettings, None, [*base, *PRIOR_ARGS[kind], *overrides])


def sample_settings(prior: Path, *overrides: str, **flags) -> SampleSettings:
    return load_settings(SampleSettings, None, [f"prior={prior}", "num_samples=3", "batch_size=2", "runtime.device=cpu",
                                                *overrides], flags)


@dataclass
class Chain:
    """Artefacts of the tiny pipeline under ``root``."""

    root: Path
    prep: Path
    ae: dict[str, Path] = field(default_factory=dict)
    latents: dict[str, Path] = field(default_factory=dict)
    priors: dict[str, Path] = field(default_factory=dict)

    def prior(self, name: str) -> Path:
        """A trained prior: transformer, maskgit, pixelcnn (on the 2D VQ-VAE codes), pixelcnn2 (VQ-VAE-2),
        conditional (3D CT codes given the two DRR views' codes) or labelled (transformer, label = view)."""
        if name not in self.priors:
            latents, kind, extra = {
                "transformer": ("vq", "transformer", []),
                "maskgit": ("vq", "maskgit", []),
                "pixelcnn": ("vq", "pixelcnn", []),
                "pixelcnn2": ("vq2", "pixelcnn", []),
                "conditional": ("vq3d", "transformer", [f"condition.paths=[{self.latents['vq']}]"]),
                "labelled": ("vq", "transformer", ["condition.label=view"]),
            }[name]
            out = self.root / f"prior_{name}"
            train_prior.run(prior_settings(self.latents[latents], kind, *extra), out)
            self.priors[name] = out
        return self.priors[name]


@pytest.fixture(scope="session")
def chain(tmp_path_factory) -> Chain:
    root = tmp_path_factory.mktemp("chain")
    raw = root / "raw"
    raw.mkdir()
    for i in range(SUBJECTS):
        write_nifti(raw / f"ct{i:02d}.nii.gz", sphere_phantom((16, 16, 16), radius=0.2 + 0.03 * i, seed=i), AFFINE)
    prep = root / "prep"
    preprocess.run(load_settings(PreprocessSettings, None, [
        f"input.paths=[{raw}]", "input.modality=CT", "intensity.window=0,2000", "derive.outputs=[drr]",
        "split.fractions=0.5,0.25,0.25", "runtime.workers=0"]), prep)
    result = Chain(root, prep)
    for name, (kind, store) in AUTOENCODERS.items():
        settings = load_settings(TrainAESettings, None, [
            f"data.path={prep}", f"data.store={store}", f"model.kind={kind}", "model.channels=8,8",
            "model.num_res_blocks=1", "data.batch_size=2", "train.steps=2", "train.val_every=0",
            "train.checkpoint_every=2", "train.save_images=0", "runtime.device=cpu", *TINY[kind]])
        result.ae[name] = root / f"ae_{name}"
        train_ae.run(settings, result.ae[name])
        result.latents[name] = root / f"lat_{name}"
        encode_latents.run(encode_settings(result.ae[name], prep, store), result.latents[name])
    return result
