"""Drawing discrete tokens from logits: greedy, temperature, top-k and nucleus (top-p) sampling.

Top-k follows Fan et al. 2018 ("Hierarchical Neural Story Generation"); top-p (nucleus) follows
Holtzman et al. 2020 ("The Curious Case of Neural Text Degeneration"): keep the smallest set of most
likely tokens whose probability mass reaches ``p``. All randomness goes through an optional
``torch.Generator`` so a seed reproduces a draw.
"""

from __future__ import annotations

from numbers import Integral

import torch
from torch import Tensor

STRATEGIES = ("greedy", "top-k", "top-p", "multinomial")

# Temperatures at or below this are treated as greedy decoding (the limit T -> 0 of softmax(l / T)).
GREEDY_TEMPERATURE = 1e-6


def _check_filters(top_k: int | None, top_p: float | None) -> None:
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, Integral) or top_k < 1):
        raise ValueError(f"top_k must be a positive integer or None, got {top_k!r}")
    if top_p is not None and not 0.0 < float(top_p) <= 1.0:
        raise ValueError(f"top_p must be in (0, 1] or None, got {top_p!r}")


def filter_logits(logits: Tensor, top_k: int | None = None, top_p: float | None = None) -> Tensor:
    """Set the logits of tokens outside the top-k and/or the top-p nucleus to ``-inf``.

    Args:
        logits: (..., V) unnormalised log-probabilities (temperature already applied).
        top_k: keep the ``top_k`` most likely tokens (all of them when ``top_k >= V``).
        top_p: keep the smallest set of most likely tokens whose probability reaches ``top_p``;
            the most likely token is always kept.

    Returns:
        A new tensor of the same shape; the input is not modified.
    """
    _check_filters(top_k, top_p)
    out = logits.clone()
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(out, int(top_k), dim=-1).values[..., -1:]  # (..., 1) smallest kept logit
        out = out.masked_fill(out < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(out, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits.float(), dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs  # mass of strictly more likely tokens
        drop_sorted = mass_before >= top_p  # the first token always has mass_before == 0
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        out = out.masked_fill(drop, float("-inf"))
    return out


def sample_tokens(
    logits: Tensor,
    strategy: str = "greedy",
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Draw one token per row of ``logits``.

    Args:
        logits: (..., V) logits.
        strategy: ``greedy`` (argmax), ``top-k`` (needs ``top_k``), ``top-p`` (needs ``top_p``) or
            ``multinomial`` (the full softmax). A filter given alongside another stochastic
            strategy is applied too (e.g. top-k followed by top-p).
        temperature: logits are divided by it before filtering; ``<= 1e-6`` means greedy.
        top_k, top_p: see :func:`filter_logits`.
        generator: source of randomness for reproducible draws.

    Returns:
        (...) int64 token ids.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature!r}")
    _check_filters(top_k, top_p)
    if strategy == "top-k" and top_k is None:
        raise ValueError("strategy 'top-k' needs top_k, got top_k=None")
    if strategy == "top-p" and top_p is None:
        raise ValueError("strategy 'top-p' needs top_p, got top_p=None")
    if strategy == "greedy" or temperature <= GREEDY_TEMPERATURE:
        return logits.argmax(dim=-1)
    filtered = filter_logits(logits.float() / temperature, top_k=top_k, top_p=top_p)
    probs = torch.softmax(filtered, dim=-1)
    flat = probs.reshape(-1, probs.shape[-1])  # multinomial takes at most 2 dims
    draws = torch.multinomial(flat, num_samples=1, generator=generator)
    return draws.reshape(probs.shape[:-1])
