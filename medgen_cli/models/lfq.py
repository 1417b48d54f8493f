"""Lookup-free quantisation (Yu et al. 2024, "Language model beats diffusion: tokenizer is key to
visual generation", MAGVIT-v2, section 3.1).

Each of the d latent channels is quantised to its sign, so the codebook is the implicit set
{-1, 1}^d of K = 2^d codes and the index of a code is sum_i 2^i [z_i > 0] (channel 0 is the least
significant bit). The gradient is straight-through; the losses are a commitment term
beta ||z - sg[q]||^2 and the entropy penalty of the paper,

    L_entropy = E_n[H(p_n)] - gamma H(E_n[p_n]),

where p_n is the soft assignment of latent n to the K codes, softmax_c(-||z_n - c||^2 / tau) =
softmax_c(2 z_n . c / tau). The first term makes each assignment confident, the second spreads
the batch over the whole codebook. p_n factorises over channels (p(c_i = 1) = sigmoid(4 z_i /
tau)), so the per-sample entropy is a sum of binary entropies; the batch mean needs the K-way
distribution and is computed on at most `MAX_ENTROPY_ELEMENTS` (rows x codes) by taking every
k-th row.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medgen_cli.models.quantizers import QuantizerOutput, channels_last_flat, code_stats

__all__ = ["LFQ", "MAX_ENTROPY_ELEMENTS"]

MAX_ENTROPY_ELEMENTS = 1 << 22  # rows x codes of the soft assignment matrix per step (16 MB in fp32)


class LFQ(nn.Module):
    """Lookup-free quantiser over the channels of (B, d, *spatial) latents.

    Args:
        dim: latent channels d (codebook 2^d).
        commitment_cost: beta, weight of ||z - sg[q]||^2.
        entropy_weight: weight of the entropy penalty (0 disables it).
        diversity_gamma: gamma, weight of the codebook (batch) entropy inside the penalty.
        temperature: tau of the soft assignment.
    """

    def __init__(self, dim: int, commitment_cost: float = 0.25, entropy_weight: float = 0.1,
                 diversity_gamma: float = 1.0, temperature: float = 0.01):
        super().__init__()
        if not isinstance(dim, int) or not 1 <= dim <= 30:
            raise ValueError(f"lfq dim={dim!r} must be an integer in 1..30 (codebook 2^dim)")
        if min(commitment_cost, entropy_weight, diversity_gamma) < 0 or not temperature > 0:
            raise ValueError(f"commitment_cost={commitment_cost}, entropy_weight={entropy_weight} and "
                             f"diversity_gamma={diversity_gamma} must be >= 0 and temperature={temperature} > 0")
        self.embedding_dim = dim
        self.num_embeddings = 2**dim
        self.commitment_cost = float(commitment_cost)
        self.entropy_weight = float(entropy_weight)
        self.diversity_gamma = float(diversity_gamma)
        self.temperature = float(temperature)
        self.register_buffer("_bits", 2 ** torch.arange(dim, dtype=torch.int64), persistent=False)

    def extra_repr(self) -> str:
        return f"dim={self.embedding_dim}, num_embeddings={self.num_embeddings}, entropy_weight={self.entropy_weight}"

    def _indices(self, flat: Tensor) -> Tensor:
        return ((flat > 0).long() * self._bits).sum(-1)

    def entropy_terms(self, flat: Tensor) -> tuple[Tensor, Tensor]:
        """(mean per-sample entropy, entropy of the mean assignment) of (N, d) latents, in nats."""
        logits = 4 * flat / self.temperature  # per channel: p(c_i = +1) = sigmoid(logits_i)
        p = torch.sigmoid(logits)
        per_sample = -(p * F.logsigmoid(logits) + (1 - p) * F.logsigmoid(-logits)).sum(1).mean()
        step = max(1, math.ceil(flat.shape[0] * self.num_embeddings / MAX_ENTROPY_ELEMENTS))
        rows = flat[::step]
        probs = torch.softmax(2 * rows @ self.codebook.t() / self.temperature, dim=1)  # (n, K)
        mean = probs.mean(0)
        return per_sample, -(mean * torch.log(mean.clamp_min(1e-12))).sum()

    def forward(self, z: Tensor) -> QuantizerOutput:
        with torch.autocast(device_type=z.device.type, enabled=False):
            z = z.float()
            flat = channels_last_flat(z, self.embedding_dim)
            codes = torch.where(flat > 0, 1.0, -1.0)
            indices = self._indices(flat.detach())
            loss_terms = {"commitment": self.commitment_cost * F.mse_loss(flat, codes)}
            if self.training and self.entropy_weight > 0:
                per_sample, batch = self.entropy_terms(flat)
                loss_terms["entropy"] = self.entropy_weight * (per_sample - self.diversity_gamma * batch)
            _, perplexity, usage = code_stats(indices, self.num_embeddings)
            quantized = flat + (codes - flat).detach()  # straight-through estimator
            quantized = quantized.reshape(z.shape[0], *z.shape[2:], self.embedding_dim).movedim(z.ndim - 1, 1)
        return QuantizerOutput(quantized=quantized, indices=indices.reshape(z.shape[0], *z.shape[2:]),
                               loss_terms=loss_terms, perplexity=perplexity, usage=usage)

    # -- the lookup API shared with VectorQuantizer -----------------------------------------------
    def quantize(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """(B, d, *spatial) -> (codes in {-1, 1} float32, indices (B, *spatial))."""
        with torch.autocast(device_type=z.device.type, enabled=False):
            flat = channels_last_flat(z.detach().float(), self.embedding_dim)
            indices = self._indices(flat).reshape(z.shape[0], *z.shape[2:])
            return self.indices_to_latents(indices), indices

    def snap(self, z: Tensor) -> Tensor:
        """Latents in code space -> their sign codes (the same as `quantize`)."""
        return self.quantize(z)[0]

    def indices_to_latents(self, indices: Tensor) -> Tensor:
        """(B, *spatial) integer indices -> (B, d, *spatial) float32 codes in {-1, 1}."""
        if indices.dtype.is_floating_point or indices.dtype == torch.bool:
            raise ValueError(f"indices must be an integer tensor, got dtype {indices.dtype}")
        idx = indices.long()
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.num_embeddings):
            raise ValueError(f"lfq indices must lie in 0..{self.num_embeddings - 1}, got {int(idx.min())}..{int(idx.max())}")
        bits = (idx.unsqueeze(idx.ndim) // self._bits) % 2  # (B, *spatial, d); no bitwise ops, for ONNX
        return (bits.float() * 2 - 1).movedim(idx.ndim, 1)

    @property
    def codebook(self) -> Tensor:
        """(K, d) implicit codebook {-1, 1}^d in index order."""
        return self.indices_to_latents(torch.arange(self.num_embeddings, device=self._bits.device)[None])[0].t()
