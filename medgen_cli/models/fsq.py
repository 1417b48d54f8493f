"""Finite scalar quantisation (Mentzer et al. 2023, "Finite scalar quantization: VQ-VAE made simple").

Each of the d latent channels is bounded to a few values and rounded on its own: channel i takes
L_i levels, so the codebook is implicit, the product grid of prod(L_i) codes, with nothing to learn,
no commitment or codebook loss and no dead codes. Per channel (section 3 of the paper):

1. bound: f(z) = tanh(z + s) * h - o with h = (L - 1)(1 - eps) / 2, o = 1/2 for even L (0 for odd)
   and s = atanh(o / h), so that f(0) = 0 (L >= 3) and round(f(z)) takes exactly L integer values,
   -(L // 2) .. (L - 1) // 2;
2. round with a straight-through gradient;
3. normalise by L // 2, so the codes lie in [-1, 1].

Indices are the mixed-radix number of the shifted digits (digit i = level + L_i // 2, weight
prod(L_0..L_{i-1})), so channel 0 is the fastest-varying digit; `indices_to_latents` inverts it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from medgen_cli.models.quantization import DEFAULT_FSQ_LEVELS
from medgen_cli.models.quantizers import QuantizerOutput, channels_last_flat, code_stats

__all__ = ["FSQ", "DEFAULT_FSQ_LEVELS"]


def _check_levels(levels: Sequence[int]) -> tuple[int, ...]:
    out = tuple(int(v) for v in levels)
    # two levels cannot be centred on 0 by the shifted tanh (the shift would be atanh(>1))
    if not out or any(v < 3 for v in out) or any(float(v) != float(w) for v, w in zip(out, levels)):
        raise ValueError(f"fsq levels={list(levels)!r} must be a non-empty list of integers >= 3")
    return out


class FSQ(nn.Module):
    """Finite scalar quantiser over the channels of (B, d, *spatial) latents, d = len(levels).

    Args:
        levels: number of levels per channel, e.g. (8, 5, 5, 5) for 1,000 codes.
        eps: margin keeping the bounded values strictly inside the outermost rounding cells.
    """

    def __init__(self, levels: Sequence[int] = DEFAULT_FSQ_LEVELS, eps: float = 1e-3):
        super().__init__()
        self.levels = _check_levels(levels)
        if not 0.0 <= eps < 1.0:
            raise ValueError(f"eps={eps} must be in [0, 1)")
        self.eps = float(eps)
        self.embedding_dim = len(self.levels)
        self.num_embeddings = math.prod(self.levels)
        basis = [math.prod(self.levels[:i]) for i in range(len(self.levels))]
        # constants, rebuilt from `levels`: not part of the state dict
        self.register_buffer("_levels", torch.tensor(self.levels, dtype=torch.float32), persistent=False)
        self.register_buffer("_half", torch.tensor([v // 2 for v in self.levels], dtype=torch.float32), persistent=False)
        self.register_buffer("_basis", torch.tensor(basis, dtype=torch.int64), persistent=False)

    def extra_repr(self) -> str:
        return f"levels={list(self.levels)}, num_embeddings={self.num_embeddings}"

    # -- the three steps of the paper, on (N, d) rows --------------------------------------------
    def bound(self, flat: Tensor) -> Tensor:
        """tanh-bounded values whose rounding takes exactly L levels per channel."""
        half = (self._levels - 1) * (1 - self.eps) / 2
        offset = (1 - self._levels.remainder(2)) * 0.5  # 0.5 for even L
        shift = torch.atanh(offset / half)
        return torch.tanh(flat + shift) * half - offset

    def _digits_to_indices(self, levels_int: Tensor) -> Tensor:
        return ((levels_int + self._half).long() * self._basis).sum(-1)

    def forward(self, z: Tensor) -> QuantizerOutput:
        with torch.autocast(device_type=z.device.type, enabled=False):
            z = z.float()
            flat = channels_last_flat(z, self.embedding_dim)
            bounded = self.bound(flat)
            rounded = bounded + (bounded.round() - bounded).detach()  # straight-through rounding
            codes = rounded / self._half
            indices = self._digits_to_indices(rounded.detach().round())
            _, perplexity, usage = code_stats(indices, self.num_embeddings)
            quantized = codes.reshape(z.shape[0], *z.shape[2:], self.embedding_dim).movedim(z.ndim - 1, 1)
        return QuantizerOutput(quantized=quantized, indices=indices.reshape(z.shape[0], *z.shape[2:]),
                               loss_terms={}, perplexity=perplexity, usage=usage)

    # -- the lookup API shared with VectorQuantizer -----------------------------------------------
    def quantize(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """Encoder outputs (B, d, *spatial) -> (codes float32 (B, d, *spatial), indices (B, *spatial))."""
        with torch.autocast(device_type=z.device.type, enabled=False):
            flat = channels_last_flat(z.detach().float(), self.embedding_dim)
            indices = self._digits_to_indices(self.bound(flat).round()).reshape(z.shape[0], *z.shape[2:])
            return self.indices_to_latents(indices), indices

    def snap(self, z: Tensor) -> Tensor:
        """Latents already in code space (normalised, [-1, 1]) -> the nearest grid codes."""
        with torch.autocast(device_type=z.device.type, enabled=False):
            flat = channels_last_flat(z.detach().float(), self.embedding_dim)
            levels_int = torch.minimum(torch.maximum((flat * self._half).round(), -self._half),
                                       self._levels - 1 - self._half)
            indices = self._digits_to_indices(levels_int).reshape(z.shape[0], *z.shape[2:])
            return self.indices_to_latents(indices)

    def indices_to_latents(self, indices: Tensor) -> Tensor:
        """(B, *spatial) integer indices -> (B, d, *spatial) float32 codes."""
        if indices.dtype.is_floating_point or indices.dtype == torch.bool:
            raise ValueError(f"indices must be an integer tensor, got dtype {indices.dtype}")
        idx = indices.long()
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.num_embeddings):
            raise ValueError(f"fsq indices must lie in 0..{self.num_embeddings - 1}, got {int(idx.min())}..{int(idx.max())}")
        digits = (idx.unsqueeze(idx.ndim) // self._basis) % self._levels.long()  # (B, *spatial, d)
        codes = (digits.float() - self._half) / self._half
        return codes.movedim(idx.ndim, 1)  # dims >= 0 for ONNX

    @property
    def codebook(self) -> Tensor:
        """(K, d) implicit codebook: every code of the grid, in index order."""
        return self.indices_to_latents(torch.arange(self.num_embeddings, device=self._basis.device)[None])[0].t()
