"""The raster-order sampling loop of a PixelCNN prior (van den Oord et al. 2016), apart from the model.

The loop relies on two methods of the model, never on its class: ``condition_features(size, batch,
condition, labels)`` (features shared by every position, or None) and ``logits(codes, features)``
((B, V, h, W) logits for the first h rows). Every layer is causal, so position (i, j) needs rows
0..i only: each step feeds those rows (one pass per position, as before the loop moved here).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from medgen_cli.sampling.tokens import sample_tokens


@torch.no_grad()
def pixelcnn_generate(
    model: nn.Module,
    shape: Sequence[int],
    condition: Tensor | None = None,
    labels: Tensor | None = None,
    sampler_kwargs: Mapping[str, Any] | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Draw (B, H, W) codes position by position in raster order.

    Args:
        model: a PixelCNN prior (``condition_features`` and ``logits``).
        shape: (B, H, W).
        condition: (B, h, w) conditioning code map, when the model has one.
        labels: (B,) class labels, when the model has them.
        sampler_kwargs: keyword arguments of ``sample_tokens`` (default: multinomial).
        generator: source of randomness.
    """
    if len(shape) != 3 or any(int(s) < 1 for s in shape):
        raise ValueError(f"shape must be (B, H, W) positive sizes, got {tuple(shape)!r}")
    batch, height, width = (int(s) for s in shape)
    device = next(model.parameters()).device
    kwargs = {"strategy": "multinomial", **(sampler_kwargs or {})}
    cond = model.condition_features((height, width), batch, condition, labels)
    codes = torch.zeros(batch, height, width, dtype=torch.long, device=device)
    for i in range(height):
        rows_cond = None if cond is None else cond[:, :, : i + 1]
        for j in range(width):
            logits = model.logits(codes[:, : i + 1], rows_cond)[:, :, i, j]  # (B, V)
            codes[:, i, j] = sample_tokens(logits, generator=generator, **kwargs)
    return codes


@torch.no_grad()
def two_level_generate(
    model: nn.Module,
    top_shape: Sequence[int],
    shape: Sequence[int],
    labels: Tensor | None = None,
    sampler_kwargs: Mapping[str, Any] | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """A VQ-VAE-2 pair (``model["top"]``, ``model["bottom"]``): top codes first, then the bottom given them.

    Returns ``{"main": bottom codes (B, *shape[1:]), "top": top codes (B, *top_shape[1:])}``.
    """
    top = pixelcnn_generate(model["top"], top_shape, labels=labels, sampler_kwargs=sampler_kwargs, generator=generator)
    main = pixelcnn_generate(model["bottom"], shape, condition=top, labels=labels, sampler_kwargs=sampler_kwargs,
                             generator=generator)
    return {"main": main, "top": top}
