"""Diffusion UNet denoiser for 2D and 3D images or latents (Ho et al. 2020; Dhariwal & Nichol 2021).

Built from ``medgen_cli.nn`` blocks only: residual blocks that take a time embedding, spatial
self-attention at chosen levels, down/up-sampling by rank. The time step is embedded sinusoidally
(Vaswani et al. 2017) and passed through an MLP; an optional class label adds a learned embedding.
An image condition (e.g. a low-dose scan, another modality) is concatenated to the input channels.

Classifier-free guidance (Ho & Salimans 2022) needs a null condition: ``null_mask`` (B,) marks
samples whose conditioning is dropped. Their condition image is replaced by zeros and a presence
channel (concatenated too) is 0, and their label becomes the extra "null" class, so the network can
tell "no condition" from any real one. Train with ``random_null_mask`` and sample with
``medgen_cli.sampling.diffusion.sample_diffusion``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from medgen_cli.models.priors.config import UNetPriorConfig
from medgen_cli.nn import Downsample, ResBlock, SpatialSelfAttention, Upsample, make_act, make_conv, make_norm


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding (B, dim) of (B,) timesteps: [cos(t·f_k), sin(t·f_k)], f_k = max_period^(−k/half)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return nn.functional.pad(emb, (0, dim % 2))


def random_null_mask(
    batch_size: int, p_uncond: float, device: torch.device | None = None, generator: torch.Generator | None = None
) -> Tensor:
    """Bool (B,) mask dropping each sample's condition with probability ``p_uncond`` (CFG training)."""
    if not 0.0 <= p_uncond <= 1.0:
        raise ValueError(f"p_uncond must be in [0, 1], got {p_uncond!r}")
    return torch.rand(batch_size, device=device, generator=generator) < p_uncond


class UNetPrior(nn.Module):
    """UNet predicting noise (or v, or x_0) from (x_t, t, conditioning): ``UNetPrior(config)`` or
    ``UNetPrior(spatial_dims, in_channels, **fields)`` (`UNetPriorConfig`).

    Config fields:
        spatial_dims: 2 or 3 (any rank ``medgen_cli.nn`` supports).
        in_channels: channels of x_t.
        out_channels: channels of the prediction (default ``in_channels``).
        base_channels: channels of the first level.
        channel_mults: channel multiplier per level; one down-sampling between levels.
        num_res_blocks: residual blocks per level on the way down (one more on the way up).
        attention_levels: indices of levels with self-attention after each residual block.
        mid_attention: self-attention in the middle block.
        num_heads: attention heads.
        dropout: dropout in residual blocks.
        num_groups: group-norm groups (channels must be divisible by it).
        cond_channels: channels of an image condition concatenated to the input (0 = none).
        num_classes: number of class labels (None = no label conditioning).
    """

    def __init__(self, *args: Any, **overrides: Any) -> None:
        super().__init__()
        self.cfg = c = UNetPriorConfig.of(args, overrides)
        channel_mults, attention_levels = c.channel_mults, c.attention_levels
        if not channel_mults or any(m < 1 for m in channel_mults):
            raise ValueError(f"channel_mults must be positive integers, got {channel_mults!r}")
        if any(not 0 <= i < len(channel_mults) for i in attention_levels):
            raise ValueError(
                f"attention_levels must index channel_mults (0..{len(channel_mults) - 1}), got {attention_levels!r}"
            )
        if c.num_res_blocks < 1:
            raise ValueError(f"num_res_blocks must be >= 1, got {c.num_res_blocks!r}")
        if c.cond_channels < 0:
            raise ValueError(f"cond_channels must be >= 0, got {c.cond_channels!r}")
        if c.num_classes is not None and c.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1 or None, got {c.num_classes!r}")
        spatial_dims, in_channels, out_channels = c.spatial_dims, c.in_channels, c.out_channels
        base_channels, num_res_blocks, num_groups = c.base_channels, c.num_res_blocks, c.num_groups
        dropout, num_heads, cond_channels, num_classes = c.dropout, c.num_heads, c.cond_channels, c.num_classes
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.cond_channels = cond_channels
        self.num_classes = num_classes
        self.num_levels = len(channel_mults)
        sd, emb_dim = spatial_dims, 4 * base_channels
        self.base_channels = base_channels
        self.time_mlp = nn.Sequential(nn.Linear(base_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        # the extra row is the null label used when a sample's condition is dropped
        self.label_emb = nn.Embedding(num_classes + 1, emb_dim) if num_classes else None

        def res(cin: int, cout: int) -> ResBlock:
            return ResBlock(sd, cin, cout, emb_channels=emb_dim, num_groups=num_groups, dropout=dropout)

        def attn(ch: int) -> SpatialSelfAttention:
            return SpatialSelfAttention(sd, ch, num_heads=num_heads, num_groups=num_groups)

        extra = cond_channels + 1 if cond_channels else 0  # condition + presence channel
        self.in_conv = make_conv(sd, in_channels + extra, base_channels, 3)
        self.down = nn.ModuleList()
        skips, ch = [base_channels], base_channels
        for level, mult in enumerate(channel_mults):
            for _ in range(num_res_blocks):
                stage = [res(ch, base_channels * mult)]
                ch = base_channels * mult
                if level in attention_levels:
                    stage.append(attn(ch))
                self.down.append(nn.ModuleList(stage))
                skips.append(ch)
            if level < self.num_levels - 1:
                self.down.append(nn.ModuleList([Downsample(sd, ch, ch, factor=2)]))
                skips.append(ch)
        self.mid = nn.ModuleList([res(ch, ch), attn(ch) if c.mid_attention else nn.Identity(), res(ch, ch)])
        self.up = nn.ModuleList()
        for level in reversed(range(self.num_levels)):
            for _ in range(num_res_blocks + 1):
                stage = [res(ch + skips.pop(), base_channels * channel_mults[level])]
                ch = base_channels * channel_mults[level]
                if level in attention_levels:
                    stage.append(attn(ch))
                self.up.append(nn.ModuleList(stage))
            if level > 0:
                self.up.append(nn.ModuleList([Upsample(sd, ch, ch, factor=2)]))
        self.out = nn.Sequential(
            make_norm(sd, "group", ch, num_groups), make_act("silu"), make_conv(sd, ch, out_channels, 3)
        )
        nn.init.zeros_(self.out[-1].weight)  # start as a zero predictor (stable early training)
        nn.init.zeros_(self.out[-1].bias)

    def config(self) -> dict[str, Any]:
        """JSON-able constructor keyword arguments: ``UNetPrior(**m.config())`` rebuilds it."""
        return self.cfg.config()

    def _inputs(self, x: Tensor, cond: Tensor | None, labels: Tensor | None, null_mask: Tensor | None):
        """Concatenate the (possibly dropped) condition and build the label part of the embedding."""
        batch = x.shape[0]
        keep = torch.ones(batch, dtype=torch.bool, device=x.device) if null_mask is None else ~null_mask.bool()
        if self.cond_channels:
            bshape = (batch, 1) + (1,) * self.spatial_dims
            if cond is None:  # no condition given: every sample uses the null condition
                keep = torch.zeros_like(keep)
                cond = x.new_zeros(batch, self.cond_channels, *x.shape[2:])
            if tuple(cond.shape) != (batch, self.cond_channels, *x.shape[2:]):
                expected = (batch, self.cond_channels, *x.shape[2:])
                raise ValueError(f"cond of shape {tuple(cond.shape)} does not match {expected}")
            flag = keep.to(x.dtype).reshape(bshape)
            x = torch.cat([x, cond * flag, flag.expand(batch, 1, *x.shape[2:])], dim=1)
        elif cond is not None:
            raise ValueError("cond was given but the model was built with cond_channels=0")
        label_emb = None
        if self.label_emb is not None:
            null = torch.full((batch,), self.num_classes, dtype=torch.long, device=x.device)
            labels = null if labels is None else torch.where(keep, labels.long(), null)
            label_emb = self.label_emb(labels)
        elif labels is not None:
            raise ValueError("labels were given but the model was built with num_classes=None")
        return x, label_emb

    def forward(
        self,
        x: Tensor,
        t: Tensor,
        cond: Tensor | None = None,
        labels: Tensor | None = None,
        null_mask: Tensor | None = None,
    ) -> Tensor:
        """Prediction (B, out_channels, *spatial) for x_t (B, in_channels, *spatial) at timesteps t (B,).

        Args:
            cond: (B, cond_channels, *spatial) image condition; None = null condition for all.
            labels: (B,) class labels; None = null label for all.
            null_mask: (B,) bool, True where the condition and label are dropped.
        """
        if x.ndim != self.spatial_dims + 2 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"x of shape {tuple(x.shape)} is not (B, {self.in_channels}, <{self.spatial_dims} spatial axes>)"
            )
        factor = 2 ** (self.num_levels - 1)
        if any(s % factor for s in x.shape[2:]):
            raise ValueError(f"spatial size {tuple(x.shape[2:])} must be divisible by {factor}")
        t = torch.as_tensor(t, device=x.device).reshape(-1).expand(x.shape[0])
        h, label_emb = self._inputs(x, cond, labels, null_mask)
        emb = self.time_mlp(timestep_embedding(t, self.base_channels))
        if label_emb is not None:
            emb = emb + label_emb
        h = self.in_conv(h)
        skips = [h]
        for stage in self.down:
            h = self._run(stage, h, emb)
            skips.append(h)
        h = self._run(self.mid, h, emb)
        for stage in self.up:
            if isinstance(stage[0], ResBlock):
                h = torch.cat([h, skips.pop()], dim=1)
            h = self._run(stage, h, emb)
        return self.out(h)

    @staticmethod
    def _run(stage: nn.ModuleList, h: Tensor, emb: Tensor) -> Tensor:
        for layer in stage:
            h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
        return h
