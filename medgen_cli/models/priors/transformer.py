"""Decoder-only transformer prior over a flattened 2D or 3D code grid.

The image-GPT / VQGAN "taming transformers" recipe (Chen et al. 2020; Esser et al. 2021) built like
nanoGPT: token + positional embeddings, pre-norm blocks, a linear head predicting the next code.

The sequence is ``[prefix | start, t_0, ..., t_{N-2}]``: the prefix holds conditioning token grids
and an optional class-label token (``ConditionPrefix``); it is attended bidirectionally and every
target sees all of it, while targets attend causally to earlier targets only (a prefix-LM mask).
Decoder input i (the start token for i = 0, else target i-1) carries the positional embedding of
the cell it predicts, target i, so any ``ordering`` (raster, random, ...) tells the model where it
is going next. Codes are visited in the order of ``make_ordering``; ``grid_to_tokens`` and
``tokens_to_grid`` convert between grids and sequences.

Sampling (``medgen_cli.sampling.autoregressive.generate``) calls ``forward_tokens`` with a
key/value cache.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medgen_cli.models.priors.config import TransformerPriorConfig
from medgen_cli.models.priors.layers import (
    ConditionPrefix,
    GridPositionalEmbedding,
    KVCache,
    TransformerStack,
    check_grid_shape,
    init_weights,
    prefix_lm_mask,
)
from medgen_cli.models.priors.ordering import make_ordering
from medgen_cli.nn import causal_mask


class TransformerPrior(nn.Module):
    """Causal transformer over the codes of a VQ autoencoder: ``TransformerPrior(config)`` or
    ``TransformerPrior(num_embeddings, grid_shape, **fields)`` (`TransformerPriorConfig`).

    Config fields:
        num_embeddings: codebook size V of the modelled codes.
        grid_shape: shape of the code grid, e.g. (16, 16) or (8, 8, 8).
        dim: token width.
        depth: number of transformer blocks.
        num_heads: attention heads per block.
        mlp_ratio: MLP width relative to ``dim``.
        dropout: dropout in embeddings, attention and MLP.
        ordering: grid traversal (see ``models/priors/ordering.py``).
        ordering_seed: seed of the ``random`` ordering.
        cond_sources: conditioning token grids, each ``{"num_embeddings": V_k, "grid_shape": [...]}``.
        num_classes: number of class labels for label conditioning, or None.
    """

    def __init__(self, *args: Any, **overrides: Any) -> None:
        super().__init__()
        self.cfg = c = TransformerPriorConfig.of(args, overrides)
        if c.num_embeddings < 1:
            raise ValueError(f"num_embeddings must be >= 1, got {c.num_embeddings!r}")
        self.grid_shape = check_grid_shape(c.grid_shape)
        self.num_embeddings = c.num_embeddings
        self.num_tokens = math.prod(self.grid_shape)
        self.start_token = c.num_embeddings  # the extra row of the token table
        perm, inv = make_ordering(self.grid_shape, c.ordering, c.ordering_seed)
        self.register_buffer("perm", perm, persistent=False)
        self.register_buffer("inv_perm", inv, persistent=False)
        self.token_emb = nn.Embedding(c.num_embeddings + 1, c.dim)
        self.pos_emb = GridPositionalEmbedding(self.grid_shape, c.dim)
        self.prefix = ConditionPrefix(c.dim, [s.model_dump() for s in c.cond_sources], c.num_classes)
        self.drop = nn.Dropout(c.dropout)
        self.stack = TransformerStack(c.dim, c.depth, c.num_heads, c.mlp_ratio, c.dropout)
        self.head = nn.Linear(c.dim, c.num_embeddings, bias=False)
        self.apply(init_weights)

    def config(self) -> dict[str, Any]:
        """JSON-able constructor keyword arguments: ``TransformerPrior(**m.config())`` rebuilds it."""
        return self.cfg.config()

    # -- grid <-> sequence ----------------------------------------------------------------------
    def grid_to_tokens(self, codes: Tensor) -> Tensor:
        """(B, *grid_shape) codes → (B, N) tokens in sequence order."""
        if tuple(codes.shape[1:]) != self.grid_shape:
            raise ValueError(f"codes of shape {tuple(codes.shape)} do not match grid_shape {self.grid_shape}")
        return codes.flatten(1).long()[:, self.perm]

    def tokens_to_grid(self, tokens: Tensor) -> Tensor:
        """(B, N) tokens in sequence order → (B, *grid_shape) codes."""
        if tokens.ndim != 2 or tokens.shape[1] != self.num_tokens:
            raise ValueError(f"tokens of shape {tuple(tokens.shape)} are not (B, {self.num_tokens})")
        return tokens[:, self.inv_perm].reshape(-1, *self.grid_shape)

    # -- network --------------------------------------------------------------------------------
    def hidden_states(
        self,
        inputs: Tensor,
        kv_cache: KVCache | None = None,
        start: int = 0,
        cond_tokens: Sequence[Tensor] | None = None,
        labels: Tensor | None = None,
    ) -> tuple[Tensor, KVCache]:
        """Final hidden states of the new positions and the updated cache.

        Without a cache (``start`` must be 0) the output covers prefix and inputs, (B, P + n, dim);
        with a cache it covers the n new inputs only, (B, n, dim).
        """
        n = inputs.shape[1]
        if start < 0 or start + n > self.num_tokens:
            raise ValueError(f"inputs at indices {start}..{start + n - 1} exceed the {self.num_tokens} positions")
        if kv_cache is None and start != 0:
            raise ValueError(f"start={start} needs a kv_cache holding the earlier positions")
        x = self.token_emb(inputs) + self.pos_emb()[self.perm[start : start + n]]  # position of the predicted cell
        if kv_cache is None:
            prefix = self.prefix(cond_tokens, labels)
            plen = 0 if prefix is None else prefix.shape[1]
            if prefix is not None:
                x = torch.cat([prefix.expand(x.shape[0], -1, -1), x], dim=1)
            mask = prefix_lm_mask(plen, n, device=x.device)
        else:
            past = kv_cache[0][0].shape[2]  # prefix + earlier inputs
            mask = None if n == 1 else causal_mask(n, past + n, device=x.device)
        return self.stack(self.drop(x), attn_mask=mask, kv_cache=kv_cache)

    def forward_tokens(
        self,
        inputs: Tensor,
        kv_cache: KVCache | None = None,
        start: int = 0,
        cond_tokens: Sequence[Tensor] | None = None,
        labels: Tensor | None = None,
    ) -> tuple[Tensor, KVCache]:
        """Next-token logits for decoder inputs at indices ``start .. start + n - 1``.

        Args:
            inputs: (B, n) decoder inputs; index 0 is ``start_token``, index i > 0 is target i-1.
            kv_cache: cache returned by the previous call (None on the first call).
            start: sequence index of ``inputs[:, 0]``.
            cond_tokens, labels: conditioning (read only when ``kv_cache`` is None).

        Returns:
            (B, n, V) logits, where ``logits[:, j]`` predicts target ``start + j``, and the new cache.
        """
        h, cache = self.hidden_states(inputs, kv_cache, start, cond_tokens, labels)
        return self.head(h[:, h.shape[1] - inputs.shape[1] :]), cache

    def forward(
        self, codes: Tensor, cond_tokens: Sequence[Tensor] | None = None, labels: Tensor | None = None
    ) -> Tensor:
        """Teacher-forced logits (B, N, V) in sequence order for (B, *grid_shape) codes."""
        targets = self.grid_to_tokens(codes)
        start = torch.full_like(targets[:, :1], self.start_token)
        inputs = torch.cat([start, targets[:, :-1]], dim=1)
        logits, _ = self.forward_tokens(inputs, cond_tokens=cond_tokens, labels=labels)
        return logits

    def loss(
        self, codes: Tensor, cond_tokens: Sequence[Tensor] | None = None, labels: Tensor | None = None
    ) -> dict[str, Tensor]:
        """Cross-entropy over all targets (``loss``, nats) and the same in ``bits_per_token`` (detached)."""
        logits = self(codes, cond_tokens=cond_tokens, labels=labels)
        ce = F.cross_entropy(logits.reshape(-1, self.num_embeddings), self.grid_to_tokens(codes).reshape(-1))
        return {"loss": ce, "bits_per_token": ce.detach() / math.log(2.0)}
