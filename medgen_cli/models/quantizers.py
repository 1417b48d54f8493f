"""Vector quantisation for VQ-VAE / VQ-VAE-2 / VQGAN latents, for any spatial rank.

`VectorQuantizer` follows van den Oord et al. 2017 ("Neural discrete representation learning"):
nearest-codebook lookup, straight-through gradient and commitment loss. With `ema=True` (the
default) the codebook is updated by exponential moving averages of cluster sizes and embedding sums
with Laplace smoothing (Appendix A.1 of that paper; Razavi et al. 2019); with `ema=False` it is
learnt by gradient through the codebook loss ||sg[z] - e||^2. Codes whose EMA usage falls below
`dead_code_threshold` are restarted on random encoder outputs of the current batch (as in
Dhariwal et al. 2020, Jukebox). The codebook is initialised from encoder outputs of the first
training batch (data-dependent initialisation, as k-means-initialised codebooks do): a codebook
that starts far from the encoder's outputs leaves most codes unused until the dead-code restarts
reach them, which in a short run is most of the run.

`gradient="rotation"` replaces the straight-through estimator by the rotation trick of Fifty et al.
2024 ("Restructuring vector quantization with the rotation trick"): the encoder output e is
rotated and rescaled onto its code q by a constant (stop-gradient) map, q~ = sg[|q|/|e| R] e with R
the rotation taking e/|e| to q/|q| (built from a Householder reflection, never as a matrix), so the
forward value is q and the encoder's gradient is |q|/|e| R^T dL/dq~: it keeps the angle between the
gradient and the code, where the straight-through copy ignores where e sits inside its cell.

Quantisation always runs in float32 with autocast disabled: distances and EMA statistics are not
safe in bf16/fp16. Under `torch.distributed`, counts and sums are all-reduced and restart picks are
broadcast from rank 0, so every rank holds the same codebook.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from medgen_cli.models.quantization import VQ_GRADIENTS

__all__ = ["QuantizerOutput", "VectorQuantizer", "VQ_GRADIENTS", "rotation_trick", "code_stats", "channels_last_flat"]


log = logging.getLogger(__name__)


@dataclass
class QuantizerOutput:
    """Result of `VectorQuantizer.forward`.

    quantized: (B, D, *spatial) float32 codebook vectors, straight-through to the input.
    indices: (B, *spatial) int64 code indices.
    loss_terms: weighted loss terms ("commitment", plus "codebook" when ema=False).
    perplexity: scalar, exp of the entropy of the code usage in this batch.
    usage: scalar, fraction of codes used in this batch.
    """

    quantized: Tensor
    indices: Tensor
    loss_terms: dict[str, Tensor]
    perplexity: Tensor
    usage: Tensor


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def channels_last_flat(z: Tensor, dim: int) -> Tensor:
    """(B, D, *spatial) -> (N, D) code vectors, checking D (every quantiser's input convention)."""
    if z.ndim < 3 or z.shape[1] != dim:
        raise ValueError(f"expected (B, {dim}, *spatial) latents, got {tuple(z.shape)}")
    return z.movedim(1, z.ndim - 1).reshape(-1, dim)  # dims >= 0 for ONNX


def code_stats(indices: Tensor, num_embeddings: int) -> tuple[Tensor, Tensor, Tensor]:
    """(counts (K,), perplexity, usage) of flat code ``indices`` in one batch."""
    counts = torch.bincount(indices.reshape(-1), minlength=num_embeddings).float()
    probs = counts / counts.sum().clamp_min(1.0)
    perplexity = torch.exp(-(probs * torch.log(probs + 1e-10)).sum())
    return counts, perplexity, (counts > 0).float().mean()


def rotation_trick(e: Tensor, q: Tensor, eps: float = 1e-8) -> Tensor:
    """Rows of ``e`` (N, D) carried onto the rows of ``q`` by the rotation trick (Fifty et al. 2024).

    Returns q in value, with d out / d e = sg[lambda R], lambda = |q| / |e| and
    R = I - 2 r r^T + 2 q^ e^T (e^ = e / |e|, q^ = q / |q|, r = (e^ + q^) / |e^ + q^|), applied as
    R e = e - 2 r (r . e) + 2 q^ (e^ . e) without forming the D x D matrix.
    """
    with torch.no_grad():
        e_norm = e.norm(dim=1, keepdim=True).clamp_min(eps)
        q_norm = q.norm(dim=1, keepdim=True)
        e_hat, q_hat = e / e_norm, q / q_norm.clamp_min(eps)
        r = e_hat + q_hat
        r = r / r.norm(dim=1, keepdim=True).clamp_min(eps)
        scale = q_norm / e_norm
    rotated = scale * (e - 2 * r * (r * e).sum(1, keepdim=True) + 2 * q_hat * (e_hat * e).sum(1, keepdim=True))
    return rotated + (q - rotated).detach()  # exactly q forward (the rotation rounds in the last bits)


class VectorQuantizer(nn.Module):
    """Nearest-neighbour vector quantiser over channel vectors of (B, D, *spatial) inputs.

    Args:
        num_embeddings: codebook size K.
        embedding_dim: code width D (= channels of the input).
        commitment_cost: beta, weight of ||z - sg[e]||^2.
        decay: EMA decay of cluster sizes and sums (also used for usage tracking when ema=False).
        eps: Laplace smoothing constant of the EMA cluster sizes.
        dead_code_threshold: codes whose EMA usage (vectors per batch) is below this are restarted
            on random encoder outputs during training; 0 disables restarts. Restarted codes get an
            EMA usage of 1.
        ema: EMA codebook updates (True) or codebook loss with gradient updates (False).
        gradient: "ste" (straight-through copy of the gradient) or "rotation" (the rotation trick).
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        commitment_cost: float = 0.25,
        decay: float = 0.99,
        eps: float = 1e-5,
        dead_code_threshold: float = 1.0,
        ema: bool = True,
        gradient: str = "ste",
    ):
        super().__init__()
        if gradient not in VQ_GRADIENTS:
            raise ValueError(f"gradient={gradient!r} must be one of {VQ_GRADIENTS}")
        if num_embeddings < 1:
            raise ValueError(f"num_embeddings={num_embeddings} must be >= 1")
        if embedding_dim < 1:
            raise ValueError(f"embedding_dim={embedding_dim} must be >= 1")
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay={decay} must be in [0, 1)")
        if eps < 0 or commitment_cost < 0 or dead_code_threshold < 0:
            raise ValueError(
                f"eps={eps}, commitment_cost={commitment_cost} and dead_code_threshold={dead_code_threshold} "
                "must be >= 0"
            )
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.commitment_cost = commitment_cost
        self.decay = decay
        self.eps = eps
        self.dead_code_threshold = dead_code_threshold
        self.ema = ema
        self.gradient = gradient
        init = torch.empty(num_embeddings, embedding_dim).uniform_(-1.0 / num_embeddings, 1.0 / num_embeddings)
        # Usage starts at one vector per code and sums at the code itself, so an unused code keeps
        # its position (sum / size is constant under decay) instead of collapsing to zero.
        self.register_buffer("cluster_size", torch.ones(num_embeddings))
        # set by the first training batch (see _initialise); saved with the weights
        self.register_buffer("initialized", torch.tensor(False))
        if ema:
            self.register_buffer("embedding", init)
            self.register_buffer("embed_sum", init.clone())
        else:
            self.embedding = nn.Parameter(init)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # weights saved before the `initialized` flag existed hold a trained codebook
        state_dict.setdefault(prefix + "initialized", torch.tensor(True))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def codebook(self) -> Tensor:
        """(K, D) codebook."""
        return self.embedding

    def extra_repr(self) -> str:
        return (f"num_embeddings={self.num_embeddings}, embedding_dim={self.embedding_dim}, ema={self.ema}, "
                f"gradient={self.gradient}")

    def _flatten(self, z: Tensor) -> Tensor:
        return channels_last_flat(z, self.embedding_dim)

    def _nearest(self, flat: Tensor) -> Tensor:
        codebook = self.embedding.detach().float()
        distances = (
            flat.detach().pow(2).sum(1, keepdim=True) - 2 * flat.detach() @ codebook.t() + codebook.pow(2).sum(1)
        )
        return distances.argmin(dim=1)

    def quantize(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """Nearest codes of z (B, D, *spatial): (quantized float32 (B, D, *spatial), indices (B, *spatial)).

        No losses, no codebook updates and no straight-through gradient.
        """
        with torch.autocast(device_type=z.device.type, enabled=False):
            flat = self._flatten(z.float())
            indices = self._nearest(flat).reshape(z.shape[0], *z.shape[2:])
            return self.indices_to_latents(indices), indices

    def snap(self, z: Tensor) -> Tensor:
        """Nearest codes of latents already in code space (what `decode_latents` decodes)."""
        return self.quantize(z)[0]

    def indices_to_latents(self, indices: Tensor) -> Tensor:
        """Inverse of the lookup: (B, *spatial) int indices -> (B, D, *spatial) float32 codes."""
        if indices.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.bool):
            raise ValueError(f"indices must be an integer tensor, got dtype {indices.dtype}")
        with torch.autocast(device_type=indices.device.type, enabled=False):
            return F.embedding(indices.long(), self.embedding.float()).movedim(indices.ndim, 1)

    def forward(self, z: Tensor) -> QuantizerOutput:
        with torch.autocast(device_type=z.device.type, enabled=False):
            z = z.float()
            flat = self._flatten(z)
            if self.training and not bool(self.initialized):
                self._initialise(flat.detach())
            indices = self._nearest(flat)
            codes = F.embedding(indices, self.embedding.float())  # (N, D); grad to codebook if not ema
            counts, perplexity, usage = code_stats(indices, self.num_embeddings)
            loss_terms = {"commitment": self.commitment_cost * F.mse_loss(flat, codes.detach())}
            if not self.ema:
                loss_terms["codebook"] = F.mse_loss(codes, flat.detach())
            if self.training:
                self._update(flat.detach(), indices, counts)

            if self.gradient == "rotation":
                quantized = rotation_trick(flat, codes.detach())
            else:
                quantized = flat + (codes - flat).detach()  # straight-through estimator
            quantized = quantized.reshape(z.shape[0], *z.shape[2:], self.embedding_dim).movedim(z.ndim - 1, 1)
        return QuantizerOutput(
            quantized=quantized,
            indices=indices.reshape(z.shape[0], *z.shape[2:]),
            loss_terms=loss_terms,
            perplexity=perplexity,
            usage=usage,
        )

    @torch.no_grad()
    def _update(self, flat: Tensor, indices: Tensor, counts: Tensor) -> None:
        """EMA statistics (and codebook, if ema) from one batch, then dead-code restarts."""
        counts = counts.clone()
        sums = torch.zeros_like(self.embedding, dtype=torch.float32).index_add_(0, indices, flat)
        if _distributed():
            dist.all_reduce(counts)
            dist.all_reduce(sums)
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        if self.ema:
            self.embed_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
            total = self.cluster_size.sum()
            smoothed = (self.cluster_size + self.eps) / (total + self.num_embeddings * self.eps) * total
            self.embedding.copy_(self.embed_sum / smoothed.unsqueeze(1))
        self._restart_dead_codes(flat)

    @torch.no_grad()
    def _initialise(self, flat: Tensor) -> None:
        """Codebook := random distinct encoder outputs of this batch (rank 0's, under DDP)."""
        n = flat.shape[0]
        if n >= self.num_embeddings:
            picks = flat[torch.randperm(n, device=flat.device)[: self.num_embeddings]]
        else:  # fewer vectors than codes: repeat them with a little jitter so codes stay distinct
            picks = flat[torch.randint(n, (self.num_embeddings,), device=flat.device)]
            picks = picks + 1e-3 * picks.std().clamp_min(1e-6) * torch.randn_like(picks)
        picks = picks.contiguous()
        if _distributed():
            dist.broadcast(picks, src=0)
        self.embedding.data.copy_(picks.to(self.embedding.dtype))
        if self.ema:
            self.embed_sum.copy_(picks)
        self.cluster_size.fill_(1.0)
        self.initialized.fill_(True)

    @torch.no_grad()
    def _restart_dead_codes(self, flat: Tensor) -> None:
        if self.dead_code_threshold <= 0:
            return
        dead = self.cluster_size < self.dead_code_threshold  # identical on all ranks
        num_dead = int(dead.sum())
        if num_dead == 0:
            return
        picks = flat[torch.randint(flat.shape[0], (num_dead,), device=flat.device)].contiguous()
        if _distributed():
            dist.broadcast(picks, src=0)
        self.embedding.data[dead] = picks.to(self.embedding.dtype)
        self.cluster_size[dead] = 1.0
        if self.ema:
            self.embed_sum[dead] = picks
        log.debug("restarted %d dead codes of %d", num_dead, self.num_embeddings)
