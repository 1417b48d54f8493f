"""The quantiser registry of the VQ autoencoders: "vq" (`VectorQuantizer`, learnt codebook, straight-
through or rotation-trick gradient), "fsq" (`FSQ`, Mentzer 2023) or "lfq" (`LFQ`, MAGVIT-v2).

All quantisers share one interface, which the autoencoders, `encode-latents` and the priors rely on:
``forward(z) -> QuantizerOutput``; ``quantize(z) -> (codes, indices)`` (no updates);
``snap(latents) -> codes``; ``indices_to_latents(indices)``; ``codebook`` (K, D);
``num_embeddings`` (K) and ``embedding_dim`` (D).

Each registry entry (`QuantizerSpec`) declares the settings fields it reads (``fields``), how it
resolves the code width and codebook size from ``embedding_dim`` / ``num_embeddings`` /
``fsq_levels`` (``resolve``: strict; ``sizes``: lenient, for settings that are checked afterwards),
its settings checks (``check``) and how it is built (``build``, which imports its torch module only
then). This module imports no torch, so settings validate quantisers without loading it.
Adding a quantiser: its module (the ``nn.Module``), a spec subclass and one line in `QUANTIZERS`,
and its test (see docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

__all__ = ["DEFAULT_FSQ_LEVELS", "MAX_INT16_CODES", "QUANTIZERS", "QuantizerSpec", "VQ_GRADIENTS", "build_quantizer",
           "quantizer_spec", "resolve_codebook"]

DEFAULT_FSQ_LEVELS = (8, 5, 5, 5)  # 1,000 codes: the FSQ paper's recommendation for a ~2^10 codebook
VQ_GRADIENTS = ("ste", "rotation")
MAX_INT16_CODES = 2**15  # encode-latents stores code indices as int16
SIZE_FIELDS = ("embedding_dim", "num_embeddings", "fsq_levels")
Sizes = tuple[int, int, "tuple[int, ...] | None"]


class QuantizerSpec(ABC):
    """One registry entry. Subclasses set ``name`` and ``fields`` and implement ``resolve``, ``sizes``
    and ``build``; ``check`` adds settings rules beyond the shared int16 limit."""

    name: ClassVar[str] = ""
    fields: ClassVar[frozenset[str]] = frozenset()  # AutoencoderSettings fields this quantiser reads
    int16_limit: ClassVar[bool] = True  # its codebook size follows from the settings: bound it by int16 indices

    @abstractmethod
    def resolve(self, embedding_dim: int | None, num_embeddings: int | None, fsq_levels: Sequence[int] | None) -> Sizes:
        """(embedding_dim, num_embeddings, fsq_levels) built; None means this quantiser's default."""

    @abstractmethod
    def sizes(self, embedding_dim: int, num_embeddings: int, fsq_levels: Sequence[int]) -> tuple[int, int]:
        """(code width, codebook size) the settings values imply, without checking them."""

    @abstractmethod
    def build(self, embedding_dim: int, num_embeddings: int, config: Any) -> Any:
        """The ``nn.Module`` from resolved sizes and the autoencoder's typed config (its other options)."""

    def check(self, embedding_dim: int, num_embeddings: int, fsq_levels: Sequence[int]) -> None:
        """Settings rules (messages name the ``model.*`` keys); the int16 limit is shared."""
        size = self.sizes(embedding_dim, num_embeddings, fsq_levels)[1]
        if self.int16_limit and size > MAX_INT16_CODES:
            raise ValueError(f"{self._size_source(num_embeddings, fsq_levels)} {size} codes, more than the "
                             f"{MAX_INT16_CODES} that encode-latents' int16 code indices hold; {self._size_fix()}")

    def config_sizes(self, embedding_dim: int, num_embeddings: int, fsq_levels: Sequence[int]) -> dict[str, Any]:
        """The size fields of an autoencoder config: the settings value where this quantiser reads it, else None."""
        given = {"embedding_dim": embedding_dim, "num_embeddings": num_embeddings,
                 "fsq_levels": tuple(fsq_levels) if fsq_levels is not None else None}
        return {k: (v if k in self.fields else None) for k, v in given.items()}

    def _size_source(self, num_embeddings: int, fsq_levels: Sequence[int]) -> str:
        return "model.num_embeddings ="

    def _size_fix(self) -> str:
        return f"use at most {MAX_INT16_CODES}"


class VQSpec(QuantizerSpec):
    """Learnt codebook (`models.quantizers.VectorQuantizer`); 8 channels and 256 codes by default."""

    name = "vq"
    fields = frozenset({"embedding_dim", "num_embeddings", "commitment_cost", "codebook_ema", "codebook_decay",
                        "dead_code_threshold", "vq_gradient"})
    int16_limit = False  # encode-latents refuses a larger codebook itself

    def resolve(self, embedding_dim, num_embeddings, fsq_levels):
        return embedding_dim or 8, num_embeddings or 256, None

    def sizes(self, embedding_dim, num_embeddings, fsq_levels):
        return embedding_dim, num_embeddings

    def build(self, embedding_dim, num_embeddings, config):
        from medgen_cli.models.quantizers import VectorQuantizer

        if config.vq_gradient not in VQ_GRADIENTS:
            raise ValueError(f"vq_gradient={config.vq_gradient!r} must be one of {VQ_GRADIENTS}")
        return VectorQuantizer(num_embeddings, embedding_dim, commitment_cost=config.commitment_cost,
                               decay=config.decay, dead_code_threshold=config.dead_code_threshold, ema=config.ema,
                               gradient=config.vq_gradient)


class FSQSpec(QuantizerSpec):
    """Finite scalar quantisation (`models.fsq.FSQ`): width and size follow from the levels."""

    name = "fsq"
    fields = frozenset({"fsq_levels"})

    def resolve(self, embedding_dim, num_embeddings, fsq_levels):
        levels = tuple(int(v) for v in (fsq_levels or DEFAULT_FSQ_LEVELS))
        implied = (len(levels), math.prod(levels))
        if (embedding_dim or implied[0], num_embeddings or implied[1]) != implied:
            raise ValueError(f"fsq_levels={list(levels)} implies embedding_dim={implied[0]} and num_embeddings="
                             f"{implied[1]}, got embedding_dim={embedding_dim} and num_embeddings={num_embeddings}")
        return implied[0], implied[1], levels

    def sizes(self, embedding_dim, num_embeddings, fsq_levels):
        return len(fsq_levels), math.prod(fsq_levels)

    def check(self, embedding_dim, num_embeddings, fsq_levels):
        if any(v < 3 for v in fsq_levels):
            raise ValueError(f"model.fsq_levels = {list(fsq_levels)} must all be >= 3")
        super().check(embedding_dim, num_embeddings, fsq_levels)

    def build(self, embedding_dim, num_embeddings, config):
        from medgen_cli.models.fsq import FSQ

        return FSQ(config.fsq_levels or DEFAULT_FSQ_LEVELS)

    def _size_source(self, num_embeddings, fsq_levels):
        return f"model.fsq_levels = {list(fsq_levels)} give"

    def _size_fix(self):
        return "use fewer or smaller levels"


class LFQSpec(QuantizerSpec):
    """Lookup-free quantisation (`models.lfq.LFQ`): 2^embedding_dim codes (default 8 channels)."""

    name = "lfq"
    fields = frozenset({"num_embeddings", "commitment_cost", "entropy_weight"})

    def resolve(self, embedding_dim, num_embeddings, fsq_levels):
        if num_embeddings is not None and not _power_of_two(num_embeddings):
            raise ValueError(f"lfq needs num_embeddings a power of two (2^embedding_dim), got {num_embeddings}")
        dim = embedding_dim or (num_embeddings.bit_length() - 1 if num_embeddings else 8)
        if num_embeddings is not None and 2**dim != num_embeddings:
            raise ValueError(f"lfq has 2^embedding_dim codes: embedding_dim={embedding_dim} does not give "
                             f"num_embeddings={num_embeddings}")
        return dim, 2**dim, None

    def sizes(self, embedding_dim, num_embeddings, fsq_levels):
        return num_embeddings.bit_length() - 1, num_embeddings

    def check(self, embedding_dim, num_embeddings, fsq_levels):
        if not _power_of_two(num_embeddings):
            raise ValueError(f"model.num_embeddings = {num_embeddings} must be a power of two for quantizer lfq "
                             "(2^channels codes), e.g. 1024")
        super().check(embedding_dim, num_embeddings, fsq_levels)

    def build(self, embedding_dim, num_embeddings, config):
        from medgen_cli.models.lfq import LFQ

        return LFQ(embedding_dim, commitment_cost=config.commitment_cost, entropy_weight=config.entropy_weight)


def _power_of_two(n: int) -> bool:
    return n >= 2 and not n & (n - 1)


QUANTIZERS: dict[str, QuantizerSpec] = {"vq": VQSpec(), "fsq": FSQSpec(), "lfq": LFQSpec()}


def quantizer_spec(name: str) -> QuantizerSpec:
    """The registry entry of quantiser ``name``; an unknown name is a ValueError listing the registry."""
    if name not in QUANTIZERS:
        raise ValueError(f"quantizer={name!r} must be one of {tuple(QUANTIZERS)}")
    return QUANTIZERS[name]


def _users(field: str) -> str:
    return " or ".join(f"quantizer={n!r}" for n, s in QUANTIZERS.items() if field in s.fields)


def resolve_codebook(quantizer: str, embedding_dim: int | None, num_embeddings: int | None,
                     fsq_levels: Sequence[int] | None) -> Sizes:
    """(embedding_dim, num_embeddings, fsq_levels) for ``quantizer``; None means the quantiser's default.

    vq: 8 and 256 by default. fsq: both follow from the levels (default 8, 5, 5, 5). lfq: the
    codebook is 2^embedding_dim (default 256 codes, 8 channels). Given values must agree.
    """
    spec = quantizer_spec(quantizer)
    if fsq_levels is not None and "fsq_levels" not in spec.fields:
        raise ValueError(f"fsq_levels={list(fsq_levels)} only applies to {_users('fsq_levels')}, not {quantizer!r}")
    return spec.resolve(embedding_dim, num_embeddings, fsq_levels)


def build_quantizer(quantizer: str, embedding_dim: int, num_embeddings: int, config: Any) -> Any:
    """The quantiser named ``quantizer`` from resolved sizes (see `resolve_codebook`) and the autoencoder's
    typed config (commitment_cost, decay, ema, dead_code_threshold, vq_gradient, entropy_weight, fsq_levels)."""
    spec = quantizer_spec(quantizer)
    if "vq_gradient" not in spec.fields and config.vq_gradient != "ste":
        raise ValueError(f"vq_gradient={config.vq_gradient!r} only applies to {_users('vq_gradient')}, not {quantizer!r}")
    return spec.build(embedding_dim, num_embeddings, config)
