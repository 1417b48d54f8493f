"""Pieces shared by the token priors (``TransformerPrior``, ``MaskGITPrior``).

- ``GridPositionalEmbedding``: learned positions factorised per grid axis (the embedding of cell
  (i, j, k) is the sum of one row per axis, as in the axial embeddings of Ho et al. 2019), so a
  16x16x16 grid needs 48 rows instead of 4096 and the model knows the grid's shape.
- ``ConditionPrefix``: embeds conditioning token grids (each source with its own codebook table and
  positions, so codebooks of different sizes work together) and an optional class label into a
  prefix of the sequence.
- ``TransformerBlock``: a pre-norm block (GPT-2, Radford et al. 2019) around
  ``medgen_cli.nn.MultiHeadSelfAttention``, passing a key/value cache through.
- ``prefix_lm_mask``: the attention mask of a prefix language model (Raffel et al. 2020, Fig. 3).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from medgen_cli.nn import MultiHeadSelfAttention

KVCache = list[tuple[Tensor, Tensor]]


def check_grid_shape(grid_shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(int(s) for s in grid_shape)
    if not 1 <= len(shape) <= 3 or any(s < 1 for s in shape):
        raise ValueError(f"grid_shape must be 1 to 3 positive sizes, got {grid_shape!r}")
    return shape


def init_weights(module: nn.Module) -> None:
    """GPT-2 style initialisation: N(0, 0.02) for linear and embedding weights, zero biases."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


def prefix_lm_mask(prefix_len: int, num_targets: int, device: torch.device | None = None) -> Tensor:
    """Bool (L, L) mask, True = may attend, for a sequence [prefix (P), targets (N)].

    Prefix positions attend to every prefix position (both ways) and to no target; target i attends
    to the whole prefix and to targets 0..i, never to a later target.
    """
    total = prefix_len + num_targets
    mask = torch.zeros(total, total, dtype=torch.bool, device=device)
    mask[:, :prefix_len] = True
    mask[prefix_len:, prefix_len:] = torch.ones(num_targets, num_targets, dtype=torch.bool, device=device).tril()
    return mask


class GridPositionalEmbedding(nn.Module):
    """Learned factorised positions of a grid: ``pos[i, j, k] = e0[i] + e1[j] + e2[k]``.

    Args:
        grid_shape: sizes of the grid axes.
        dim: embedding width.
    """

    def __init__(self, grid_shape: Sequence[int], dim: int) -> None:
        super().__init__()
        self.grid_shape = check_grid_shape(grid_shape)
        self.axes = nn.ParameterList([nn.Parameter(torch.randn(s, dim) * 0.02) for s in self.grid_shape])

    def forward(self) -> Tensor:
        """(N, dim) embeddings of all cells in raster order."""
        ndim = len(self.grid_shape)
        total = 0
        for d, table in enumerate(self.axes):
            view = [1] * ndim + [table.shape[-1]]
            view[d] = table.shape[0]
            total = total + table.reshape(view)  # broadcast over the other axes
        return total.reshape(math.prod(self.grid_shape), -1)


class ConditionPrefix(nn.Module):
    """Embeds conditioning token grids and a class label into a (B, P, dim) prefix.

    Args:
        dim: embedding width.
        cond_sources: one mapping per conditioning source with ``num_embeddings`` (its codebook size)
            and ``grid_shape``; each gets its own token table and positional embedding.
        num_classes: number of class labels (one label token), or None.
    """

    def __init__(self, dim: int, cond_sources: Sequence[Mapping[str, Any]] = (), num_classes: int | None = None):
        super().__init__()
        self.sources = [
            {"num_embeddings": int(s["num_embeddings"]), "grid_shape": list(check_grid_shape(s["grid_shape"]))}
            for s in cond_sources
        ]
        for s in self.sources:
            if s["num_embeddings"] < 1:
                raise ValueError(f"cond source num_embeddings must be >= 1, got {s['num_embeddings']!r}")
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"num_classes must be >= 1 or None, got {num_classes!r}")
        self.num_classes = num_classes
        self.token_tables = nn.ModuleList(nn.Embedding(s["num_embeddings"], dim) for s in self.sources)
        self.positions = nn.ModuleList(GridPositionalEmbedding(s["grid_shape"], dim) for s in self.sources)
        self.label_table = nn.Embedding(num_classes, dim) if num_classes else None
        self.length = sum(math.prod(s["grid_shape"]) for s in self.sources) + (1 if num_classes else 0)

    def forward(self, cond_tokens: Sequence[Tensor] | None = None, labels: Tensor | None = None) -> Tensor | None:
        """``cond_tokens``: one (B, *grid_shape) int tensor per source; ``labels``: (B,) ints.

        Returns the (B, P, dim) prefix, or None when the model has no conditioning.
        """
        cond_tokens = list(cond_tokens or [])
        if len(cond_tokens) != len(self.sources):
            raise ValueError(f"expected {len(self.sources)} conditioning token grids, got {len(cond_tokens)}")
        if (labels is None) != (self.label_table is None):
            raise ValueError(
                f"labels must be given exactly when num_classes is set (num_classes={self.num_classes!r}, "
                f"labels {'missing' if labels is None else 'given'})"
            )
        parts = []
        for tokens, source, table, pos in zip(cond_tokens, self.sources, self.token_tables, self.positions):
            if list(tokens.shape[1:]) != source["grid_shape"]:
                raise ValueError(
                    f"conditioning tokens of shape {tuple(tokens.shape)} do not match grid {source['grid_shape']}"
                )
            parts.append(table(tokens.flatten(1)) + pos())
        if self.label_table is not None:
            parts.append(self.label_table(labels.reshape(-1, 1)))
        return torch.cat(parts, dim=1) if parts else None


class TransformerBlock(nn.Module):
    """Pre-norm transformer block: x + attn(ln(x)), then x + mlp(ln(x)).

    Args:
        dim: token width.
        num_heads: attention heads.
        mlp_ratio: hidden width of the MLP relative to ``dim``.
        dropout: dropout in attention and MLP.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = MultiHeadSelfAttention(dim, num_heads, dropout=dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim), nn.Dropout(dropout))

    def forward(
        self, x: Tensor, attn_mask: Tensor | None = None, kv_cache: tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        h, cache = self.attn(self.norm1(x), attn_mask=attn_mask, kv_cache=kv_cache)
        x = x + h
        return x + self.mlp(self.norm2(x)), cache


class TransformerStack(nn.Module):
    """``depth`` blocks and a final LayerNorm; threads one cache entry per block."""

    def __init__(self, dim: int, depth: int, num_heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0):
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth!r}")
        self.blocks = nn.ModuleList(TransformerBlock(dim, num_heads, mlp_ratio, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(
        self, x: Tensor, attn_mask: Tensor | None = None, kv_cache: KVCache | None = None
    ) -> tuple[Tensor, KVCache]:
        new_cache: KVCache = []
        for i, block in enumerate(self.blocks):
            x, entry = block(x, attn_mask=attn_mask, kv_cache=None if kv_cache is None else kv_cache[i])
            new_cache.append(entry)
        return self.norm(x), new_cache
