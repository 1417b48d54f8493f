"""The token-by-token sampling loop for autoregressive priors (GPT-style, as in nanoGPT's ``generate``).

The loop knows nothing about the model class. It relies on this contract:

- ``model.start_token``: the id of the start (BOS) token that opens every target sequence;
- ``model.forward_tokens(inputs, kv_cache=None, start=0, **condition) -> (logits, new_cache)``:
  ``inputs`` (B, n) are decoder inputs at sequence indices ``start .. start+n-1`` (index 0 is the
  start token, index i > 0 holds target token i-1); ``logits`` (B, n, V) at index i predict target
  token i. Without a cache the model also encodes its conditioning prefix from ``condition``; with a
  cache the prefix is already in it.

Tokens come back in the model's sequence order; the model maps them back to its grid
(e.g. ``TransformerPrior.tokens_to_grid``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from medgen_cli.sampling.tokens import sample_tokens


@torch.no_grad()
def generate(
    model: nn.Module,
    num_tokens: int,
    *,
    prefix_tokens: Tensor | None = None,
    batch_size: int | None = None,
    condition: Mapping[str, Any] | None = None,
    sampler_kwargs: Mapping[str, Any] | None = None,
    use_cache: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Sample ``num_tokens`` new tokens after an optional known beginning ``prefix_tokens``.

    Args:
        model: an autoregressive prior following the contract in the module docstring.
        num_tokens: number of tokens to draw.
        prefix_tokens: (B, m) known first target tokens (e.g. to continue a partial grid).
        batch_size: B when there are no ``prefix_tokens``.
        condition: keyword arguments passed to ``forward_tokens`` (e.g. ``cond_tokens``, ``labels``).
        sampler_kwargs: keyword arguments of :func:`sample_tokens` (strategy, temperature, ...).
        use_cache: reuse keys/values of earlier steps; gives the same tokens as recomputing.
        generator: source of randomness.

    Returns:
        (B, m + num_tokens) int64 tokens in sequence order (the prefix included).
    """
    if num_tokens < 0:
        raise ValueError(f"num_tokens must be >= 0, got {num_tokens!r}")
    device = next(model.parameters()).device
    if prefix_tokens is None:
        if batch_size is None or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer without prefix_tokens, got {batch_size!r}")
        prefix_tokens = torch.empty(batch_size, 0, dtype=torch.long, device=device)
    start = torch.full((prefix_tokens.shape[0], 1), model.start_token, dtype=torch.long, device=device)
    seq = torch.cat([start, prefix_tokens.to(device)], dim=1)  # decoder inputs so far
    condition, sampler_kwargs = dict(condition or {}), dict(sampler_kwargs or {})
    cache, done = None, 0  # `done` = how many inputs the cache already holds
    for _ in range(num_tokens):
        if use_cache:
            logits, cache = model.forward_tokens(seq[:, done:], kv_cache=cache, start=done, **condition)
            done = seq.shape[1]
        else:
            logits, _ = model.forward_tokens(seq, **condition)
        nxt = sample_tokens(logits[:, -1], generator=generator, **sampler_kwargs)
        seq = torch.cat([seq, nxt[:, None]], dim=1)
    return seq[:, 1:]
