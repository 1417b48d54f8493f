"""Tiny but realistic autoencoders, a CT-like phantom and seam measures for the tiled-inference
tests (benchmarks/bench_tiled.py uses them too).

Freshly built medgen autoencoders start with ReZero gates at 0 (every residual block is the
identity) and unit group-norm affines, which would make tiling look easier than it is. `realistic`
opens the gates and spreads the norm affines as training does, and initialises VQ codebooks from
the phantom's encoder outputs (medgen's data-dependent codebook initialisation), so codes vary.
"""

from __future__ import annotations

import numpy as np
import torch

from medgen_cli.models.registry import build_autoencoder
from medgen_cli.settings.train import AutoencoderSettings


def phantom(shape=(48, 48, 48), seed=0) -> np.ndarray:
    """(1, 1, *shape) float32 in stored units [-1, 1]: air, a body ellipsoid, two lungs, noise."""
    rng = np.random.default_rng(seed)
    g = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    z = g[2] if len(shape) == 3 else 0.0
    body = (g[0] / 0.85) ** 2 + (g[1] / 0.65) ** 2 + (z / 0.9) ** 2 < 1
    lung = lambda c: ((g[0] - c) / 0.25) ** 2 + (g[1] / 0.4) ** 2 + (z / 0.6) ** 2 < 1  # noqa: E731
    vol = np.full(shape, -1.0, np.float32)
    vol[body] = 0.05
    vol[lung(0.35) | lung(-0.35)] = -0.85
    return (vol + rng.normal(0, 0.02, shape)).astype(np.float32)[None, None]


def realistic(model: torch.nn.Module, x: np.ndarray, seed: int = 0) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gate"):
                p.copy_(0.1 + 0.4 * torch.rand((), generator=gen))
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=gen))
            elif "norm" in name and name.endswith("bias"):
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))
        if model.is_vq:
            model.train()
            model(torch.from_numpy(x))  # the first training batch initialises the codebooks
    return model.eval()


def tiny(kind: str, spatial_dims: int, x: np.ndarray, **overrides) -> torch.nn.Module:
    """A 4-16 channel autoencoder of ``kind`` with medgen's default layout, made realistic on ``x``."""
    base = dict(kind=kind, channels=(8, 16), num_groups=4)
    if kind != "klvae":
        base.update(embedding_dim=8, num_embeddings=64)
    if kind == "vqvae2":
        base.update(top_channels=(16,))
    settings = AutoencoderSettings(**{**base, **overrides})
    torch.manual_seed(0)
    return realistic(build_autoencoder(kind, spatial_dims, **settings.model_kwargs(1)), x)


def seams(diff: np.ndarray, borders: list[list[int]]) -> dict[str, tuple[float, float]]:
    """(at the borders, elsewhere) of two seam measures of a difference image (*lead, *spatial):
    ``level``: mean |diff| on the two planes either side of each tile border vs all other planes;
    ``jump``: mean |diff[i] - diff[i-1]| across each border plane vs across all other planes."""
    sd = len(borders)
    level_b, level_i, jump_b, jump_i = [], [], [], []
    for axis, cuts in enumerate(borders):
        ax = diff.ndim - sd + axis
        a = np.moveaxis(np.abs(diff), ax, 0)
        j = np.moveaxis(np.abs(np.diff(diff, axis=ax)), ax, 0)  # j[i - 1] = diff[i] - diff[i - 1]
        near = np.zeros(a.shape[0], bool)
        for c in cuts:
            near[[c - 1, c]] = True
        level_b.append(a[near].mean())
        level_i.append(a[~near].mean())
        across = np.zeros(j.shape[0], bool)
        across[[c - 1 for c in cuts]] = True
        jump_b.append(j[across].mean())
        jump_i.append(j[~across].mean())
    return {"level": (float(np.mean(level_b)), float(np.mean(level_i))),
            "jump": (float(np.mean(jump_b)), float(np.mean(jump_i)))}


def no_seam(measure: tuple[float, float]) -> bool:
    """A seam measure passes when the borders are at most twice the rest (plus float noise)."""
    border, inside = measure
    return border <= 2 * inside + 1e-6


def borders(tiler, spatial_dims: int) -> list[list[int]]:
    """Image positions of the tile borders of the plan ``tiler`` used last, per axis."""
    cores = {}
    plan_cores = [t.core(tiler.unit) for t in tiler.last_plan]
    for axis in range(spatial_dims):
        cores[axis] = sorted({c[axis].start for c in plan_cores if c[axis].start > 0})
    return [cores[a] for a in range(spatial_dims)]
