"""Pick a quantiser by name for the VQ autoencoders: "vq" (`VectorQuantizer`, learnt codebook, straight-
through or rotation-trick gradient), "fsq" (`FSQ`, Mentzer 2023) or "lfq" (`LFQ`, MAGVIT-v2).

All three share one interface, which the autoencoders, `encode-latents` and the priors rely on:
``forward(z) -> QuantizerOutput``; ``quantize(z) -> (codes, indices)`` (no updates);
``snap(latents) -> codes``; ``indices_to_latents(indices)``; ``codebook`` (K, D);
``num_embeddings`` (K) and ``embedding_dim`` (D).

`resolve_codebook` turns the autoencoders' flat kwargs into the (embedding_dim, num_embeddings)
each quantiser implies, so `model.json` records what was built.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from torch import nn

from medgen_cli.models.fsq import DEFAULT_FSQ_LEVELS, FSQ
from medgen_cli.models.lfq import LFQ
from medgen_cli.models.quantizers import VQ_GRADIENTS, VectorQuantizer

__all__ = ["QUANTIZERS", "build_quantizer", "resolve_codebook"]

QUANTIZERS = ("vq", "fsq", "lfq")


def resolve_codebook(quantizer: str, embedding_dim: int | None, num_embeddings: int | None,
                     fsq_levels: Sequence[int] | None) -> tuple[int, int, tuple[int, ...] | None]:
    """(embedding_dim, num_embeddings, fsq_levels) for ``quantizer``; None means the quantiser's default.

    vq: 8 and 256 by default. fsq: both follow from the levels (default 8, 5, 5, 5). lfq: the
    codebook is 2^embedding_dim (default 256 codes, 8 channels). Given values must agree.
    """
    if quantizer not in QUANTIZERS:
        raise ValueError(f"quantizer={quantizer!r} must be one of {QUANTIZERS}")
    if fsq_levels is not None and quantizer != "fsq":
        raise ValueError(f"fsq_levels={list(fsq_levels)} only applies to quantizer='fsq', not {quantizer!r}")
    if quantizer == "vq":
        return embedding_dim or 8, num_embeddings or 256, None
    if quantizer == "fsq":
        levels = tuple(int(v) for v in (fsq_levels or DEFAULT_FSQ_LEVELS))
        implied = (len(levels), math.prod(levels))
        if (embedding_dim or implied[0], num_embeddings or implied[1]) != implied:
            raise ValueError(f"fsq_levels={list(levels)} implies embedding_dim={implied[0]} and num_embeddings="
                             f"{implied[1]}, got embedding_dim={embedding_dim} and num_embeddings={num_embeddings}")
        return implied[0], implied[1], levels
    if num_embeddings is not None and (num_embeddings < 2 or num_embeddings & (num_embeddings - 1)):
        raise ValueError(f"lfq needs num_embeddings a power of two (2^embedding_dim), got {num_embeddings}")
    dim = embedding_dim or (num_embeddings.bit_length() - 1 if num_embeddings else 8)
    if num_embeddings is not None and 2**dim != num_embeddings:
        raise ValueError(f"lfq has 2^embedding_dim codes: embedding_dim={embedding_dim} does not give "
                         f"num_embeddings={num_embeddings}")
    return dim, 2**dim, None


def build_quantizer(quantizer: str, embedding_dim: int, num_embeddings: int, *, fsq_levels: Sequence[int] | None,
                    commitment_cost: float, decay: float, ema: bool, dead_code_threshold: float, vq_gradient: str,
                    entropy_weight: float) -> nn.Module:
    """The quantiser named ``quantizer`` from resolved sizes (see `resolve_codebook`)."""
    if vq_gradient not in VQ_GRADIENTS:
        raise ValueError(f"vq_gradient={vq_gradient!r} must be one of {VQ_GRADIENTS}")
    if quantizer != "vq" and vq_gradient != "ste":
        raise ValueError(f"vq_gradient={vq_gradient!r} only applies to quantizer='vq', not {quantizer!r}")
    if quantizer == "fsq":
        return FSQ(fsq_levels or DEFAULT_FSQ_LEVELS)
    if quantizer == "lfq":
        return LFQ(embedding_dim, commitment_cost=commitment_cost, entropy_weight=entropy_weight)
    return VectorQuantizer(num_embeddings, embedding_dim, commitment_cost=commitment_cost, decay=decay,
                           dead_code_threshold=dead_code_threshold, ema=ema, gradient=vq_gradient)


def quantizer_config(quantizer: str, fsq_levels: tuple[int, ...] | None, vq_gradient: str,
                     entropy_weight: float) -> dict[str, Any]:
    """The quantiser's own entries of an autoencoder's config (always recorded, so old files stay exact)."""
    return {"quantizer": quantizer, "fsq_levels": list(fsq_levels) if fsq_levels else None,
            "vq_gradient": vq_gradient, "entropy_weight": entropy_weight}
