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

import copy
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medgen_cli.nn import MultiHeadSelfAttention
from medgen_cli.sampling.tokens import sample_tokens


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
    """Autoregressive prior over (B, H, W) code maps in raster order.

    Args:
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

    def __init__(
        self,
        num_embeddings: int,
        hidden_channels: int = 64,
        num_layers: int = 8,
        kernel_size: int = 3,
        dropout: float = 0.0,
        cond_num_embeddings: int | None = None,
        num_classes: int | None = None,
        attention_layers: Sequence[int] = (),
        num_heads: int = 4,
    ) -> None:
        super().__init__()
        if num_embeddings < 1:
            raise ValueError(f"num_embeddings must be >= 1, got {num_embeddings!r}")
        if kernel_size < 3 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and >= 3, got {kernel_size!r}")
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers!r}")
        attention_layers = sorted(int(i) for i in attention_layers)
        if any(not 0 <= i < num_layers for i in attention_layers):
            raise ValueError(f"attention_layers must be in [0, {num_layers}), got {attention_layers!r}")
        self._config = {
            "num_embeddings": num_embeddings, "hidden_channels": hidden_channels, "num_layers": num_layers,
            "kernel_size": kernel_size, "dropout": dropout, "cond_num_embeddings": cond_num_embeddings,
            "num_classes": num_classes, "attention_layers": attention_layers, "num_heads": num_heads,
        }
        C = hidden_channels
        self.num_embeddings = num_embeddings
        self.embed = nn.Embedding(num_embeddings, C)
        self.layers = nn.ModuleList(
            GatedMaskedConv(C, kernel_size, "A" if i == 0 else "B", dropout) for i in range(num_layers)
        )
        self.attention = nn.ModuleDict({str(i): CausalAttention2d(C, num_heads, dropout) for i in attention_layers})
        self.cond_embed = nn.Embedding(cond_num_embeddings, C) if cond_num_embeddings else None
        self.cond_conv = nn.Conv2d(C, C, 3, padding=1) if cond_num_embeddings else None
        self.label_embed = nn.Embedding(num_classes, C) if num_classes else None
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(C, C, 1), nn.ReLU(), nn.Conv2d(C, num_embeddings, 1))

    def config(self) -> dict[str, Any]:
        """JSON-able constructor keyword arguments: ``GatedPixelCNN(**m.config())`` rebuilds it."""
        return copy.deepcopy(self._config)

    def _cond_features(
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

    def _logits(self, codes: Tensor, cond: Tensor | None) -> Tensor:
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
        cond = self._cond_features(tuple(codes.shape[1:]), codes.shape[0], condition, labels)
        return self._logits(codes, cond)

    def loss(self, codes: Tensor, condition: Tensor | None = None, labels: Tensor | None = None) -> dict[str, Tensor]:
        """Cross-entropy over all positions (``loss``, nats) and ``bits_per_token`` (detached)."""
        ce = F.cross_entropy(self(codes, condition, labels), codes.long())
        return {"loss": ce, "bits_per_token": ce.detach() / math.log(2.0)}

    @torch.no_grad()
    def sample(
        self,
        shape: Sequence[int],
        condition: Tensor | None = None,
        labels: Tensor | None = None,
        sampler_kwargs: Mapping[str, Any] | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Draw (B, H, W) codes position by position in raster order (one full pass per position).

        Args:
            shape: (B, H, W).
            condition: (B, h, w) conditioning code map, when the model has one.
            labels: (B,) class labels, when the model has them.
            sampler_kwargs: keyword arguments of ``sample_tokens`` (default: multinomial).
            generator: source of randomness.
        """
        if len(shape) != 3 or any(int(s) < 1 for s in shape):
            raise ValueError(f"shape must be (B, H, W) positive sizes, got {tuple(shape)!r}")
        batch, height, width = (int(s) for s in shape)
        device = self.embed.weight.device
        kwargs = {"strategy": "multinomial", **(sampler_kwargs or {})}
        cond = self._cond_features((height, width), batch, condition, labels)
        codes = torch.zeros(batch, height, width, dtype=torch.long, device=device)
        for i in range(height):
            # Rows below i cannot influence row i (every layer is causal), so feed rows 0..i only.
            rows_cond = None if cond is None else cond[:, :, : i + 1]
            for j in range(width):
                logits = self._logits(codes[:, : i + 1], rows_cond)[:, :, i, j]  # (B, V)
                codes[:, i, j] = sample_tokens(logits, generator=generator, **kwargs)
        return codes
