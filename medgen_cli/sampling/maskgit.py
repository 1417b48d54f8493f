"""Iterative parallel decoding for masked token priors (MaskGIT, Chang et al. 2022, Sec. 3.2).

Start from a sequence where unknown positions hold the model's [MASK] id. At each of ``steps``
iterations the model predicts every position at once; a token is drawn for each masked position; the
draws are ranked by confidence (log-probability plus Gumbel noise whose temperature anneals to zero)
and the least confident are masked again. After step t (0-based) ``floor(n_unknown * cos(pi/2 *
(t+1)/steps))`` positions stay masked (the cosine schedule), which is zero after the last step, so
every position is filled. Given tokens are never changed.

The loop relies on this model contract:

- ``model.mask_token``: the [MASK] id;
- ``model.predict(tokens, **condition) -> logits``: ``tokens`` (B, N), ``logits`` (B, N, V).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from medgen_cli.sampling.tokens import sample_tokens


def cosine_mask_ratio(progress: Tensor | float) -> Tensor:
    """Fraction of tokens still masked after ``progress`` in [0, 1] of decoding (MaskGIT's cosine schedule)."""
    return torch.cos(0.5 * math.pi * torch.as_tensor(progress, dtype=torch.float64))


def _gumbel(shape: torch.Size, generator: torch.Generator | None, device: torch.device) -> Tensor:
    u = torch.rand(shape, generator=generator, device=device).clamp_(1e-20, 1.0 - 1e-7)
    return -torch.log(-torch.log(u))


@torch.no_grad()
def maskgit_generate(
    model: nn.Module,
    tokens: Tensor | None = None,
    *,
    num_tokens: int | None = None,
    batch_size: int | None = None,
    steps: int = 8,
    noise_temperature: float = 4.5,
    condition: Mapping[str, Any] | None = None,
    sampler_kwargs: Mapping[str, Any] | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Fill every masked position of ``tokens`` in ``steps`` parallel decoding iterations.

    Args:
        model: a masked prior following the contract in the module docstring.
        tokens: (B, N) initial tokens, ``model.mask_token`` where unknown; when None, all N =
            ``num_tokens`` positions of ``batch_size`` sequences are unknown.
        num_tokens, batch_size: size of a fully masked start (only without ``tokens``).
        steps: number of decoding iterations (MaskGIT uses 8-12).
        noise_temperature: scale of the Gumbel noise added to confidences, annealed linearly to 0.
        condition: keyword arguments passed to ``model.predict``.
        sampler_kwargs: keyword arguments of :func:`sample_tokens`; the default draws from the full
            softmax (``multinomial``), as MaskGIT does.
        generator: source of randomness.

    Returns:
        (B, N) int64 tokens without any [MASK].
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps!r}")
    if noise_temperature < 0:
        raise ValueError(f"noise_temperature must be >= 0, got {noise_temperature!r}")
    device = next(model.parameters()).device
    mask_id = model.mask_token
    if tokens is None:
        if not num_tokens or not batch_size or num_tokens < 1 or batch_size < 1:
            raise ValueError(
                f"without tokens, num_tokens and batch_size must be positive, got {num_tokens!r}, {batch_size!r}"
            )
        tokens = torch.full((batch_size, num_tokens), mask_id, dtype=torch.long, device=device)
    tokens = tokens.to(device).clone()
    condition = dict(condition or {})
    sampler_kwargs = {"strategy": "multinomial", **(sampler_kwargs or {})}
    n_unknown = (tokens == mask_id).sum(dim=1)  # (B,) per-sequence count at the start
    for step in range(steps):
        masked = tokens == mask_id  # (B, N)
        if not masked.any():
            break
        logits = model.predict(tokens, **condition).float()  # (B, N, V)
        drawn = sample_tokens(logits, generator=generator, **sampler_kwargs)
        drawn = torch.where(masked, drawn, tokens)  # keep fixed tokens
        # Confidence = log p(drawn) + annealed Gumbel noise; fixed tokens are never re-masked.
        logp = torch.log_softmax(logits, dim=-1).gather(-1, drawn[..., None])[..., 0]
        anneal = noise_temperature * (1.0 - (step + 1) / steps)
        confidence = logp + anneal * _gumbel(logp.shape, generator, device)
        confidence = confidence.masked_fill(~masked, float("inf"))
        # How many positions stay masked after this step (cosine schedule, 0 at the last step),
        # and at least one new token per step so decoding always progresses.
        ratio = cosine_mask_ratio((step + 1) / steps).item()
        n_keep_masked = torch.floor(n_unknown.double() * ratio).long()
        n_keep_masked = torch.minimum(n_keep_masked, (masked.sum(dim=1) - 1).clamp(min=0))
        if step == steps - 1:
            n_keep_masked.zero_()
        rank = confidence.argsort(dim=1).argsort(dim=1)  # 0 = least confident
        remask = rank < n_keep_masked[:, None]
        tokens = torch.where(remask, torch.full_like(drawn, mask_id), drawn)
    return tokens
