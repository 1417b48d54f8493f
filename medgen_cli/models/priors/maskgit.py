"""Bidirectional masked-token transformer prior (MaskGIT, Chang et al. 2022).

The same blocks and conditioning prefix as ``TransformerPrior`` but without a causal mask: every
position sees every other one, and a [MASK] token marks the unknown codes. Training masks a random
subset of size ``ceil(r · N)`` with r = cos(π/2 · u), u ~ U(0, 1) (the paper's cosine schedule) and
scores the cross-entropy on the masked positions only. Sampling is
``medgen_cli.sampling.maskgit.maskgit_generate`` (iterative parallel decoding through ``predict``).
Tokens are in raster order: ``grid_to_tokens`` / ``tokens_to_grid`` flatten and restore the grid.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medgen_cli.models.priors.config import MaskGITPriorConfig
from medgen_cli.models.priors.layers import (
    ConditionPrefix,
    GridPositionalEmbedding,
    TransformerStack,
    check_grid_shape,
    init_weights,
)


class MaskGITPrior(nn.Module):
    """Masked-token transformer over the codes of a VQ autoencoder: ``MaskGITPrior(config)`` or
    ``MaskGITPrior(num_embeddings, grid_shape, **fields)`` (`MaskGITPriorConfig`).

    Config fields:
        num_embeddings: codebook size V of the modelled codes.
        grid_shape: shape of the code grid, e.g. (16, 16) or (8, 8, 8).
        dim: token width.
        depth: number of transformer blocks.
        num_heads: attention heads per block.
        mlp_ratio: MLP width relative to ``dim``.
        dropout: dropout in embeddings, attention and MLP.
        cond_sources: conditioning token grids, each ``{"num_embeddings": V_k, "grid_shape": [...]}``.
        num_classes: number of class labels for label conditioning, or None.
    """

    def __init__(self, *args: Any, **overrides: Any) -> None:
        super().__init__()
        self.cfg = c = MaskGITPriorConfig.of(args, overrides)
        if c.num_embeddings < 1:
            raise ValueError(f"num_embeddings must be >= 1, got {c.num_embeddings!r}")
        self.grid_shape = check_grid_shape(c.grid_shape)
        self.num_embeddings = c.num_embeddings
        self.num_tokens = math.prod(self.grid_shape)
        self.mask_token = c.num_embeddings  # the extra row of the token table
        self.token_emb = nn.Embedding(c.num_embeddings + 1, c.dim)
        self.pos_emb = GridPositionalEmbedding(self.grid_shape, c.dim)
        self.prefix = ConditionPrefix(c.dim, [s.model_dump() for s in c.cond_sources], c.num_classes)
        self.drop = nn.Dropout(c.dropout)
        self.stack = TransformerStack(c.dim, c.depth, c.num_heads, c.mlp_ratio, c.dropout)
        self.head = nn.Linear(c.dim, c.num_embeddings, bias=False)
        self.apply(init_weights)

    def config(self) -> dict[str, Any]:
        """JSON-able constructor keyword arguments: ``MaskGITPrior(**m.config())`` rebuilds it."""
        return self.cfg.config()

    def grid_to_tokens(self, codes: Tensor) -> Tensor:
        """(B, *grid_shape) codes → (B, N) raster-order tokens."""
        if tuple(codes.shape[1:]) != self.grid_shape:
            raise ValueError(f"codes of shape {tuple(codes.shape)} do not match grid_shape {self.grid_shape}")
        return codes.flatten(1).long()

    def tokens_to_grid(self, tokens: Tensor) -> Tensor:
        """(B, N) raster-order tokens → (B, *grid_shape) codes."""
        if tokens.ndim != 2 or tokens.shape[1] != self.num_tokens:
            raise ValueError(f"tokens of shape {tuple(tokens.shape)} are not (B, {self.num_tokens})")
        return tokens.reshape(-1, *self.grid_shape)

    def predict(
        self, tokens: Tensor, cond_tokens: Sequence[Tensor] | None = None, labels: Tensor | None = None
    ) -> Tensor:
        """Logits (B, N, V) for every position of (B, N) tokens (``mask_token`` where unknown)."""
        if tokens.ndim != 2 or tokens.shape[1] != self.num_tokens:
            raise ValueError(f"tokens of shape {tuple(tokens.shape)} are not (B, {self.num_tokens})")
        x = self.token_emb(tokens) + self.pos_emb()
        prefix = self.prefix(cond_tokens, labels)
        if prefix is not None:
            x = torch.cat([prefix.expand(x.shape[0], -1, -1), x], dim=1)
        h, _ = self.stack(self.drop(x))  # no mask: fully bidirectional
        return self.head(h[:, h.shape[1] - self.num_tokens :])

    def forward(
        self, codes: Tensor, cond_tokens: Sequence[Tensor] | None = None, labels: Tensor | None = None
    ) -> Tensor:
        """Logits (B, N, V) for a (B, *grid_shape) code grid that may contain ``mask_token``."""
        return self.predict(self.grid_to_tokens(codes), cond_tokens, labels)

    def random_mask(
        self, batch_size: int, device: torch.device | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """Bool (B, N) training mask: ceil(cos(π/2 · u) · N) random positions per row, u ~ U(0, 1)."""
        u = torch.rand(batch_size, generator=generator, device=device)
        ratio = torch.cos(0.5 * math.pi * u)
        n_masked = torch.ceil(ratio * self.num_tokens).long().clamp(1, self.num_tokens)  # (B,)
        scores = torch.rand(batch_size, self.num_tokens, generator=generator, device=device)
        rank = scores.argsort(dim=1).argsort(dim=1)
        return rank < n_masked[:, None]

    def loss(
        self,
        codes: Tensor,
        cond_tokens: Sequence[Tensor] | None = None,
        labels: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """Cross-entropy on the masked positions (``loss``, nats), ``bits_per_token`` and ``mask_ratio``."""
        targets = self.grid_to_tokens(codes)
        mask = self.random_mask(targets.shape[0], targets.device, generator)
        inputs = targets.masked_fill(mask, self.mask_token)
        logits = self.predict(inputs, cond_tokens, labels)
        ce = F.cross_entropy(logits[mask], targets[mask])
        return {
            "loss": ce,
            "bits_per_token": ce.detach() / math.log(2.0),
            "mask_ratio": mask.float().mean().detach(),
        }
