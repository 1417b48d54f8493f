"""Gated PixelCNN prior over 2D code maps (van den Oord et al. 2016, "Conditional Image Generation
with PixelCNN Decoders"), as used for the VQ-VAE and VQ-VAE-2 priors (Razavi et al. 2019).

Causality comes from padding and shifting rather than from masked weights:

- the vertical stack at row i sees rows <= i (a (k//2+1, k) kernel padded on top); it reaches the
  horizontal stack only shifted down one row, so the horizontal stack at (i, j) gets rows < i;
- the horizontal stack sees columns <= j of its own row (a (1, k//2+1) kernel padded on the left);
  the first layer (type A) shifts its input right by one so position (i, j) never sees itself, and
  has no residual connection; later layers (type B) may see (i, j) of the previous features.

Together the two stacks cover every earlier position (no blind spot). Options: a conditioning
code map (the VQ-VAE-2 bottom prior given the top codes: embedded, upsampled to the bottom grid and
added as a bias to every gate) and a class label; causal self-attention over raster order after
chosen layers (the VQ-VAE-2 top prior), using ``medgen_cli.nn.MultiHeadSelfAttention``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medgen_cli.models.priors.config import GatedPixelCNNConfig
from medgen_cli.nn import MultiHeadSelfAttention


def _shift_down(x: Tensor) -> Tensor:
    return F.pad(x, (0, 0, 1, 0))[:, :, :-1]


def _shift_right(x: Tensor) -> Tensor:
    return F.pad(x, (1, 0))[..., :-1]


def _gate(x: Tensor) -> Tensor:
    a, b = x.chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(b)


class GatedMaskedConv(nn.Module):
    """One gated layer with a vertical and a horizontal stack.

    Args:
        channels: feature channels of both stacks.
        kernel_size: odd kernel size k >= 3.
        mask_type: ``A`` (first layer: excludes the current position) or ``B``.
        dropout: dropout before the horizontal output projection.
    """

    def __init__(self, channels: int, kernel_size: int, mask_type: str, dropout: float = 0.0) -> None:
        super().__init__()
        if mask_type not in ("A", "B"):
            raise ValueError(f"mask_type must be 'A' or 'B', got {mask_type!r}")
        self.mask_type = mask_type
        self.pad = kernel_size // 2
        self.v_conv = nn.Conv2d(channels, 2 * channels, (self.pad + 1, kernel_size))
        self.v_to_h = nn.Conv2d(2 * channels, 2 * channels, 1)
        self.h_conv = nn.Conv2d(channels, 2 * channels, (1, self.pad + 1))
        self.h_out = nn.Conv2d(channels, channels, 1)
        self.cond_proj = nn.Conv2d(channels, 2 * channels, 1)
        self.drop = nn.Dropout(dropout)

    def forward(self, v: Tensor, h: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        p = self.pad
        v_feat = self.v_conv(F.pad(v, (p, p, p, 0)))  # (B, 2C, H, W): rows i-p..i, cols j-p..j+p
        h_src = _shift_right(h) if self.mask_type == "A" else h
        h_feat = self.h_conv(F.pad(h_src, (p, 0, 0, 0))) + self.v_to_h(_shift_down(v_feat))
        if cond is not None:
            bias = self.cond_proj(cond)  # conditioning is fully known: no causality constraint
            v_feat, h_feat = v_feat + bias, h_feat + bias
        h_out = self.h_out(self.drop(_gate(h_feat)))
        if self.mask_type == "B":
            h_out = h_out + h
        return _gate(v_feat), h_out


class CausalAttention2d(nn.Module):
    """Residual self-attention over a (B, C, H, W) map in raster order, each position seeing <= itself."""

    def __init__(self, channels: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.attn = MultiHeadSelfAttention(channels, num_heads, dropout=dropout)

    def forward(self, x: Tensor) -> Tensor:
        tokens = x.flatten(2).transpose(1, 2)  # (B, HW, C), raster order
        out, _ = self.attn(self.norm(tokens), is_causal=True)
        return x + out.transpose(1, 2).reshape(x.shape)


class GatedPixelCNN(nn.Module):
    """Autoregressive prior over (B, H, W) code maps in raster order: ``GatedPixelCNN(config)`` or
    ``GatedPixelCNN(num_embeddings, **fields)`` (`GatedPixelCNNConfig`). Sampling is
    ``medgen_cli.sampling.pixelcnn.pixelcnn_generate`` (a full pass per position).

    Config fields:
        num_embeddings: codebook size V of the modelled codes.
        hidden_channels: width of both stacks.
        num_layers: number of gated layers (the first is type A).
        kernel_size: odd kernel size of the gated convolutions.
        dropout: dropout inside gated layers and attention.
        cond_num_embeddings: codebook size of a conditioning code map (e.g. VQ-VAE-2 top codes), or None.
        num_classes: number of class labels, or None.
        attention_layers: indices of gated layers followed by causal self-attention.
        num_heads: attention heads.
    """

    def __init__(self, *args: Any, **overrides: Any) -> None:
        super().__init__()
        self.cfg = c = GatedPixelCNNConfig.of(args, overrides)
        if c.num_embeddings < 1:
            raise ValueError(f"num_embeddings must be >= 1, got {c.num_embeddings!r}")
        if c.kernel_size < 3 or c.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and >= 3, got {c.kernel_size!r}")
        if c.num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {c.num_layers!r}")
        if any(not 0 <= i < c.num_layers for i in c.attention_layers):
            raise ValueError(f"attention_layers must be in [0, {c.num_layers}), got {c.attention_layers!r}")
        C = c.hidden_channels
        self.num_embeddings = c.num_embeddings
        self.embed = nn.Embedding(c.num_embeddings, C)
        self.layers = nn.ModuleList(
            GatedMaskedConv(C, c.kernel_size, "A" if i == 0 else "B", c.dropout) for i in range(c.num_layers)
        )
        self.attention = nn.ModuleDict({str(i): CausalAttention2d(C, c.num_heads, c.dropout) for i in c.attention_layers})
        self.cond_embed = nn.Embedding(c.cond_num_embeddings, C) if c.cond_num_embeddings else None
        self.cond_conv = nn.Conv2d(C, C, 3, padding=1) if c.cond_num_embeddings else None
        self.label_embed = nn.Embedding(c.num_classes, C) if c.num_classes else None
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(C, C, 1), nn.ReLU(), nn.Conv2d(C, c.num_embeddings, 1))

    def config(self) -> dict[str, Any]:
        """JSON-able constructor keyword arguments: ``GatedPixelCNN(**m.config())`` rebuilds it."""
        return self.cfg.config()

    def condition_features(
        self, size: tuple[int, int], batch: int, condition: Tensor | None, labels: Tensor | None
    ) -> Tensor | None:
        """(B, C, H, W) conditioning features shared by all layers, or None."""
        if (condition is None) != (self.cond_embed is None):
            raise ValueError("condition must be given exactly when cond_num_embeddings is set")
        if (labels is None) != (self.label_embed is None):
            raise ValueError("labels must be given exactly when num_classes is set")
        feat = None
        if condition is not None:
            if condition.ndim != 3:
                raise ValueError(f"condition must be a (B, h, w) code map, got shape {tuple(condition.shape)}")
            c = self.cond_embed(condition.long()).permute(0, 3, 1, 2)  # (B, C, h, w)
            feat = self.cond_conv(F.interpolate(c, size=size, mode="nearest"))
        if labels is not None:
            lab = self.label_embed(labels.long())[:, :, None, None].expand(batch, -1, *size)
            feat = lab if feat is None else feat + lab
        return feat

    def logits(self, codes: Tensor, cond: Tensor | None) -> Tensor:
        """Logits (B, V, h, W) of (B, h, W) codes given the features of `condition_features` (rows 0..h-1 of them)."""
        x = self.embed(codes.long()).permute(0, 3, 1, 2)  # (B, C, H, W)
        v, h = x, x
        for i, layer in enumerate(self.layers):
            v, h = layer(v, h, cond)
            if str(i) in self.attention:
                h = self.attention[str(i)](h)
        return self.head(h)

    def forward(self, codes: Tensor, condition: Tensor | None = None, labels: Tensor | None = None) -> Tensor:
        """Logits (B, V, H, W) of p(code at (i, j) | codes before it in raster order, conditioning)."""
        if codes.ndim != 3:
            raise ValueError(f"codes must be a (B, H, W) code map, got shape {tuple(codes.shape)}")
        cond = self.condition_features(tuple(codes.shape[1:]), codes.shape[0], condition, labels)
        return self.logits(codes, cond)

    def loss(self, codes: Tensor, condition: Tensor | None = None, labels: Tensor | None = None) -> dict[str, Tensor]:
        """Cross-entropy over all positions (``loss``, nats) and ``bits_per_token`` (detached)."""
        ce = F.cross_entropy(self(codes, condition, labels), codes.long())
        return {"loss": ce, "bits_per_token": ce.detach() / math.log(2.0)}


class TwoLevelPixelCNN(nn.ModuleDict):
    """The VQ-VAE-2 prior (Razavi et al. 2019): a ``top`` `GatedPixelCNN` over the top codes and a
    ``bottom`` one conditioned on them (state-dict keys ``top.*`` and ``bottom.*``).

    Args:
        top: config of the top prior (or its dict, as in ``model.json``).
        bottom: config of the bottom prior; its ``cond_num_embeddings`` is the top codebook size.
    """

    def __init__(self, top: GatedPixelCNNConfig | dict[str, Any], bottom: GatedPixelCNNConfig | dict[str, Any]) -> None:
        top = top if isinstance(top, GatedPixelCNNConfig) else GatedPixelCNNConfig(**top)
        bottom = bottom if isinstance(bottom, GatedPixelCNNConfig) else GatedPixelCNNConfig(**bottom)
        super().__init__({"top": GatedPixelCNN(top), "bottom": GatedPixelCNN(bottom)})

    def config(self) -> dict[str, Any]:
        """``{"top": {...}, "bottom": {...}}``: ``TwoLevelPixelCNN(**m.config())`` rebuilds it."""
        return {name: level.config() for name, level in self.items()}

    def loss(self, codes: Tensor, top: Tensor, labels: Tensor | None = None) -> dict[str, Tensor]:
        """Sum of both levels' cross-entropies; bits per token averaged over the tokens of both levels."""
        up = self["top"].loss(top, labels=labels)
        down = self["bottom"].loss(codes, condition=top, labels=labels)
        n_top, n_bottom = top[0].numel(), codes[0].numel()
        bits = (up["bits_per_token"] * n_top + down["bits_per_token"] * n_bottom) / (n_top + n_bottom)
        return {"loss": up["loss"] + down["loss"], "bits_per_token": bits,
                "bits_per_token_top": up["bits_per_token"], "bits_per_token_bottom": down["bits_per_token"]}
