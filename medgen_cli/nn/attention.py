"""Self-attention for token sequences and for feature maps of any spatial rank.

`MultiHeadSelfAttention` is the scaled dot-product attention of Vaswani et al. 2017 ("Attention is
all you need") computed with `torch.nn.functional.scaled_dot_product_attention`; it supports a
boolean mask, causal masking and an incremental key/value cache for autoregressive priors.
`SpatialSelfAttention` applies it to (B, C, *spatial) feature maps as the non-local block used in
the VQGAN / LDM autoencoders (Esser 2021, Rombach 2022) and in diffusion UNets.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from medgen_cli.nn.layers import make_norm

__all__ = ["MultiHeadSelfAttention", "SpatialSelfAttention", "causal_mask"]


def causal_mask(num_queries: int, num_keys: int, device: torch.device | None = None) -> Tensor:
    """Boolean (num_queries, num_keys) mask, True = may attend.

    The queries are the LAST `num_queries` positions of a sequence of `num_keys` positions, so
    query i sits at absolute position `num_keys - num_queries + i` and sees keys 0..that position.
    """
    if num_queries > num_keys:
        raise ValueError(f"num_queries={num_queries} exceeds num_keys={num_keys}")
    offset = num_keys - num_queries
    return torch.ones(num_queries, num_keys, dtype=torch.bool, device=device).tril(diagonal=offset)


class MultiHeadSelfAttention(nn.Module):
    """Multi-head self-attention over token sequences via torch.nn.functional.scaled_dot_product_attention.

    Args:
        dim: token width; must be divisible by `num_heads`.
        num_heads: number of attention heads.
        dropout: dropout on the attention weights and on the output projection (training only).
        bias: whether the qkv and output projections have biases.
    """

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True):
        super().__init__()
        if dim <= 0 or num_heads <= 0 or dim % num_heads != 0:
            raise ValueError(f"dim={dim} must be a positive multiple of num_heads={num_heads}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout={dropout} must be in [0, 1)")
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.dropout = dropout
        self.qkv = nn.Linear(dim, 3 * dim, bias=bias)
        self.proj = nn.Linear(dim, dim, bias=bias)
        self.proj_drop = nn.Dropout(dropout)

    def forward(
        self,
        x: Tensor,
        attn_mask: Tensor | None = None,
        is_causal: bool = False,
        kv_cache: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """Attend `x` (B, N, dim) to itself (and to the cached past keys/values).

        Args:
            x: (B, N, dim) tokens; with `kv_cache` these are the N newest positions.
            attn_mask: bool (N, N_k) or (B, 1, N, N_k), True = may attend, where N_k = N_past + N.
                A float additive mask is accepted too (SDPA semantics).
            is_causal: mask out keys after each query's absolute position.
            kv_cache: (k, v), each (B, heads, N_past, head_dim), from earlier calls.

        Returns:
            (B, N, dim) output and the updated cache (k, v), each (B, heads, N_past + N, head_dim).
        """
        if x.ndim != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"expected x of shape (B, N, {self.dim}), got {tuple(x.shape)}")
        q, k, v = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.num_heads)
        if kv_cache is not None:
            past_k, past_v = kv_cache
            k = torch.cat([past_k.to(k.dtype), k], dim=2)
            v = torch.cat([past_v.to(v.dtype), v], dim=2)
        num_q, num_k = q.shape[2], k.shape[2]

        mask = attn_mask
        if mask is not None and tuple(mask.shape[-2:]) != (num_q, num_k):
            raise ValueError(
                f"attn_mask shape {tuple(mask.shape)} does not end in (N_q, N_k)=({num_q}, {num_k})"
            )
        sdpa_causal = False
        if is_causal:
            if mask is None and num_q == num_k:
                sdpa_causal = True  # the fast path: SDPA's own top-left causal mask is correct here
            else:
                # Queries are the last num_q positions: build the offset mask explicitly, since
                # SDPA's is_causal aligns to the top-left corner when num_q != num_k.
                causal = causal_mask(num_q, num_k, device=x.device)
                if mask is None:
                    mask = causal
                elif mask.dtype == torch.bool:
                    mask = mask & causal
                else:
                    mask = mask.masked_fill(~causal, float("-inf"))
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=sdpa_causal,
        )
        out = self.proj_drop(self.proj(rearrange(out, "b h n d -> b n (h d)")))
        return out, (k, v)


class SpatialSelfAttention(nn.Module):
    """Residual self-attention over all positions of a (B, C, *spatial) feature map.

    norm -> flatten the spatial axes into tokens -> MultiHeadSelfAttention -> reshape -> + input.
    Works for any rank; `spatial_dims` is used to check the input and pick the norm.

    Args:
        spatial_dims: number of spatial axes (1, 2 or 3).
        channels: feature channels (= token width); must be divisible by `num_heads`.
        num_heads: attention heads.
        norm: "group" | "batch" | "instance" | "none".
        num_groups: groups for group norm.
        dropout: attention dropout.
    """

    def __init__(
        self,
        spatial_dims: int,
        channels: int,
        num_heads: int = 1,
        norm: str = "group",
        num_groups: int = 8,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.spatial_dims = spatial_dims
        self.norm = make_norm(spatial_dims, norm, channels, num_groups=num_groups)
        self.attn = MultiHeadSelfAttention(channels, num_heads, dropout=dropout)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != self.spatial_dims + 2:
            raise ValueError(
                f"expected (B, C, *spatial) with {self.spatial_dims} spatial axes, got {tuple(x.shape)}"
            )
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # (B, N, C)
        out, _ = self.attn(tokens)
        return x + out.transpose(1, 2).reshape(x.shape)
