"""Patch discriminator and adversarial loss functions for VQGAN-style training.

`PatchDiscriminator` is the PatchGAN of Isola et al. 2017 as used by Esser et al. 2021 (VQGAN):
strided convolutions whose output is a grid of real/fake logits, one per receptive-field patch,
for any spatial rank. The losses are pure functions of logits: hinge (Lim & Ye 2017) and
non-saturating (Goodfellow et al. 2014); `adaptive_weight` is VQGAN's balance between the
reconstruction and generator losses (eq. 7 of Esser et al. 2021).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medgen_cli.nn.blocks import check_factor
from medgen_cli.nn.layers import check_spatial_dims, make_conv, make_norm

__all__ = [
    "PatchDiscriminator",
    "hinge_d_loss",
    "hinge_g_loss",
    "nonsaturating_d_loss",
    "nonsaturating_g_loss",
    "adaptive_weight",
]


class PatchDiscriminator(nn.Module):
    """PatchGAN discriminator: (B, in_channels, *spatial) -> (B, 1, *patch_grid) logits.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels.
        channels: width of the first layer (doubled per layer, capped at 8x).
        num_layers: number of strided layers.
        norm: "batch" | "instance" | "group" | "none".
        kernel_size: kernel of every convolution. 3 (not the paper's 4) keeps the patch grid
            non-empty for the small crops and anisotropic volumes medgen trains on.
        stride: per-axis stride of the strided layers, e.g. (2, 2, 1) for thick-slice volumes.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int = 1,
        channels: int = 64,
        num_layers: int = 3,
        norm: str = "batch",
        kernel_size: int = 3,
        stride: int | Sequence[int] = 2,
    ):
        super().__init__()
        check_spatial_dims(spatial_dims)
        if num_layers < 1:
            raise ValueError(f"num_layers={num_layers} must be >= 1")
        if channels < 1:
            raise ValueError(f"channels={channels} must be >= 1")
        strides = check_factor(stride, spatial_dims)
        self._config = {
            "spatial_dims": spatial_dims, "in_channels": in_channels, "channels": channels,
            "num_layers": num_layers, "norm": norm, "kernel_size": kernel_size, "stride": list(strides),
        }
        bias = norm == "none"  # a norm's shift replaces the conv bias
        act = lambda: nn.LeakyReLU(0.2)  # noqa: E731
        layers: list[nn.Module] = [make_conv(spatial_dims, in_channels, channels, kernel_size, strides), act()]
        prev = channels
        for n in range(1, num_layers + 1):
            width = channels * min(2**n, 8)
            layer_stride = strides if n < num_layers else 1  # the last hidden layer keeps the grid
            layers += [
                make_conv(spatial_dims, prev, width, kernel_size, layer_stride, bias=bias),
                make_norm(spatial_dims, norm, width, num_groups=math.gcd(32, width)),
                act(),
            ]
            prev = width
        layers.append(make_conv(spatial_dims, prev, 1, kernel_size))
        self.net = nn.Sequential(*layers)
        self.apply(_init_weights)

    def config(self) -> dict[str, Any]:
        """JSON-able kwargs for `build_discriminator(**config)`."""
        return dict(self._config)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def _init_weights(module: nn.Module) -> None:
    """DCGAN initialisation: conv weights N(0, 0.02), norm scales N(1, 0.02)."""
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm)) or (
        isinstance(module, (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)) and module.affine
    ):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def hinge_d_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """0.5 * (E[relu(1 - D(x))] + E[relu(1 + D(G(z)))])."""
    return 0.5 * (F.relu(1.0 - real_logits.float()).mean() + F.relu(1.0 + fake_logits.float()).mean())


def hinge_g_loss(fake_logits: Tensor) -> Tensor:
    """-E[D(G(z))]."""
    return -fake_logits.float().mean()


def nonsaturating_d_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """0.5 * (E[softplus(-D(x))] + E[softplus(D(G(z)))]) = binary cross-entropy on logits."""
    return 0.5 * (F.softplus(-real_logits.float()).mean() + F.softplus(fake_logits.float()).mean())


def nonsaturating_g_loss(fake_logits: Tensor) -> Tensor:
    """E[softplus(-D(G(z)))] = -E[log sigmoid(D(G(z)))]."""
    return F.softplus(-fake_logits.float()).mean()


def adaptive_weight(
    rec_loss: Tensor, g_loss: Tensor, last_layer: Tensor, max_weight: float = 1e4, eps: float = 1e-4
) -> Tensor:
    """||grad_L rec_loss|| / (||grad_L g_loss|| + eps), clamped to [0, max_weight] and detached.

    `last_layer` is the decoder's final weight (`model.last_layer_weight()`); both losses must
    still have their graphs (they are retained for the caller's backward pass).
    """
    rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    weight = rec_grad.norm() / (g_grad.norm() + eps)
    return weight.clamp(0.0, max_weight).detach()
