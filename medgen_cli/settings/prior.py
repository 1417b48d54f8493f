"""Settings of ``medgen encode-latents``, ``medgen train-prior`` and ``medgen sample``.

``train-prior`` shares ``data``, ``optim``, ``train`` and ``runtime`` with ``train-ae``; its own
sections are ``prior`` (the architecture, chosen by ``prior.kind``) and ``condition`` (latents
artefacts joined by subject, class labels). A new prior kind adds its name to ``PRIOR_KINDS``, its
fields to ``PriorModelSettings`` (listed in ``_OWN_FIELDS``) and a task builder in
``steps/train_prior.py`` and a sampler in ``steps/sample.py``.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, model_validator

from .base import IntTuple, Section
from .common import DataSettings, RuntimeSettings
from .train import OptimSettings, TrainSettings

PRIOR_KINDS = ("transformer", "maskgit", "pixelcnn")
TOKEN_KINDS = ("transformer", "maskgit", "pixelcnn")  # priors over VQ codes


# ---------------------------------------------------------------------------------- encode-latents
class EncodeSettings(Section):
    """Settings of ``medgen encode-latents``."""

    ae: str = Field("", description="The autoencoder artefact (made by medgen train-ae).")
    data: str = Field("", description="The preprocessed artefact whose items are encoded (all splits).")
    store: str = Field("main", description="Store inside the data artefact: main, or a derived one (drr, lowdose, ...).")
    batch_size: int = Field(8, ge=1, description="Items encoded per forward pass (items of one shape are batched together).")
    dtype: Literal["float32", "float16"] = Field(
        "float32", description="Stored type of KL latents (VQ codes are always int16 indices)."
    )
    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings, description="Device and threads.")


# ------------------------------------------------------------------------------------- train-prior
class PriorModelSettings(Section):
    kind: Literal["transformer", "maskgit", "pixelcnn"] = Field(
        "transformer",
        description="Prior: transformer (causal, any grid), maskgit (masked tokens, any grid) or\n"
        "pixelcnn (gated PixelCNN, 2D grids; for vqvae2 latents a top and a bottom prior).",
    )
    dim: int = Field(256, ge=8, description="transformer, maskgit: token width.")
    depth: int = Field(8, ge=1, description="transformer, maskgit: transformer blocks.")
    num_heads: int = Field(8, ge=1, description="Attention heads (transformer, maskgit; pixelcnn attention layers).")
    mlp_ratio: float = Field(4.0, gt=0, description="transformer, maskgit: MLP width relative to dim.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout.")
    ordering: Literal["raster", "snake", "zigzag", "hilbert", "random"] = Field(
        "raster", description="transformer: order in which grid cells are generated (raster, snake, zigzag, hilbert, random)."
    )
    ordering_seed: int = Field(0, ge=0, description="transformer: seed of the random ordering.")
    hidden_channels: int = Field(64, ge=1, description="pixelcnn: width of the vertical and horizontal stacks.")
    num_layers: int = Field(8, ge=1, description="pixelcnn: gated layers.")
    kernel_size: int = Field(3, ge=3, description="pixelcnn: odd kernel size of the gated convolutions.")
    attention_layers: IntTuple | None = Field(
        None, description="pixelcnn: gated layers followed by causal self-attention;\n"
        "null = every 4th layer of the vqvae2 top prior (the bottom and single-level priors: none)."
    )

    @model_validator(mode="after")
    def _consistent(self):
        if self.kind in ("transformer", "maskgit") and self.dim % self.num_heads:
            raise ValueError(f"prior.dim = {self.dim} must be divisible by prior.num_heads = {self.num_heads}")
        if self.kind == "pixelcnn":
            if self.kernel_size % 2 == 0:
                raise ValueError(f"prior.kernel_size = {self.kernel_size} must be odd")
            if self.attention_layers and self.hidden_channels % self.num_heads:
                raise ValueError(f"prior.hidden_channels = {self.hidden_channels} must be divisible by "
                                 f"prior.num_heads = {self.num_heads} when pixelcnn uses attention")
            bad = [i for i in self.attention_layers or () if not 0 <= i < self.num_layers]
            if bad:
                raise ValueError(f"prior.attention_layers = {list(self.attention_layers)} must index layers "
                                 f"0..{self.num_layers - 1}")
        # a field of another kind left at a non-default value is almost certainly a mistake
        foreign = set().union(*(f for k, f in _OWN_FIELDS.items() if k != self.kind)) - _OWN_FIELDS[self.kind]
        changed = sorted(n for n in foreign if getattr(self, n) != type(self).model_fields[n].default)
        if changed:
            raise ValueError(f"prior.{changed[0]} does not apply to prior.kind = {self.kind!r}; remove it or change the kind")
        return self


_OWN_FIELDS: dict[str, set[str]] = {
    "transformer": {"dim", "depth", "mlp_ratio", "ordering", "ordering_seed"},
    "maskgit": {"dim", "depth", "mlp_ratio"},
    "pixelcnn": {"hidden_channels", "num_layers", "kernel_size", "attention_layers"},
}


class ConditionSettings(Section):
    paths: list[str] = Field(
        default_factory=list,
        description="Latents artefacts joined to the training items by subject id; their codes form the prefix\n"
        "(transformer, maskgit). Several items of one subject (X-ray views) are ordered by view, then id.",
    )
    store: str = Field("main", description="Store inside each condition artefact (main, or top for vqvae2 latents).")
    label: str | None = Field(
        None, description="Item attribute whose values are class labels (e.g. modality); null = no labels."
    )


class TrainPriorSettings(Section):
    """Settings of ``medgen train-prior``."""

    data: DataSettings = Field(default_factory=DataSettings, description="Training data: a latents artefact.")
    prior: PriorModelSettings = Field(default_factory=PriorModelSettings, description="Prior architecture.")
    condition: ConditionSettings = Field(default_factory=ConditionSettings, description="Conditioning by subject and label.")
    optim: OptimSettings = Field(default_factory=OptimSettings, description="Optimizer and learning-rate schedule.")
    train: TrainSettings = Field(default_factory=TrainSettings, description="Length, validation, checkpoints, EMA, precision.")
    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings, description="Seed, device and threads.")

    @model_validator(mode="after")
    def _consistent(self):
        if self.data.patch_size is not None:
            raise ValueError(f"data.patch_size = {list(self.data.patch_size)} does not apply to priors "
                             "(they model whole code grids); remove it")
        if self.optim.warmup_steps >= self.train.steps and self.optim.warmup_steps > 0:
            raise ValueError(f"optim.warmup_steps = {self.optim.warmup_steps} must be below train.steps = {self.train.steps}")
        if self.train.max_minutes is not None and not math.isfinite(self.train.max_minutes):
            raise ValueError(f"train.max_minutes = {self.train.max_minutes} must be a finite number of minutes")
        if self.condition.paths and self.prior.kind == "pixelcnn":
            raise ValueError("condition.paths needs prior.kind transformer or maskgit (pixelcnn takes labels only)")
        return self


# ------------------------------------------------------------------------------------------ sample
class SamplerSettings(Section):
    strategy: Literal["auto", "greedy", "top-k", "top-p", "multinomial", "maskgit"] = Field(
        "auto",
        description="How each token is drawn: greedy (most likely), top-k, top-p, multinomial (full softmax),\n"
        "or maskgit (iterative parallel decoding; maskgit priors always decode this way).\n"
        "auto = top-k when top_k is set, else top-p when top_p is set, else multinomial.",
    )
    top_k: int | None = Field(None, ge=1, description="Draw among the k most likely tokens (implies strategy top-k under auto).")
    top_p: float | None = Field(None, gt=0, le=1, description="Draw from the smallest set of tokens whose mass reaches p.")
    temperature: float = Field(1.0, ge=0, description="Logits are divided by it (0 = greedy).")
    steps: int = Field(12, ge=1, description="maskgit: decoding iterations.")
    noise_temperature: float = Field(4.5, ge=0, description="maskgit: Gumbel noise on the confidences, annealed to 0.")
    use_cache: bool = Field(True, description="transformer: reuse keys and values of earlier tokens (same tokens, faster).")

    @model_validator(mode="after")
    def _consistent(self):
        if self.strategy == "top-k" and self.top_k is None:
            raise ValueError("sampler.strategy = 'top-k' needs sampler.top_k (e.g. --top-k 50)")
        if self.strategy == "top-p" and self.top_p is None:
            raise ValueError("sampler.strategy = 'top-p' needs sampler.top_p (e.g. --top-p 0.9)")
        if self.strategy == "greedy" and (self.top_k is not None or self.top_p is not None):
            raise ValueError("sampler.strategy = 'greedy' takes no top_k or top_p; remove them or choose top-k/top-p")
        return self

    def token_strategy(self) -> str:
        """The per-token rule of `medgen_cli.sampling.sample_tokens` (greedy, top-k, top-p, multinomial)."""
        if self.strategy not in ("auto", "maskgit"):
            return self.strategy
        if self.top_k is not None:
            return "top-k"
        if self.top_p is not None:
            return "top-p"
        return "multinomial"

    def token_kwargs(self) -> dict:
        """Keyword arguments of ``sample_tokens``."""
        return {"strategy": self.token_strategy(), "temperature": self.temperature, "top_k": self.top_k,
                "top_p": self.top_p}


class SampleConditionSettings(Section):
    paths: list[str] = Field(
        default_factory=list, description="Condition latents artefacts (empty = those the prior was trained with)."
    )
    subject: str | None = Field(None, description="Generate for this subject's condition items.")
    all_subjects: bool = Field(False, description="Generate for every subject found in all condition artefacts.")
    split: str | None = Field(None, description="With all_subjects: only subjects of this split (null = every split).")
    label: str | None = Field(None, description="Class label value for label-conditioned priors (null = cycle through the classes).")

    @model_validator(mode="after")
    def _one_choice(self):
        if self.subject is not None and self.all_subjects:
            raise ValueError("condition.subject and condition.all_subjects exclude each other; give one (--subject or --all)")
        return self


class SampleSettings(Section):
    """Settings of ``medgen sample``."""

    prior: str = Field("", description="The prior artefact (made by medgen train-prior).")
    num_samples: int = Field(16, ge=1, description="Samples to draw (per subject when conditioned on subjects).")
    batch_size: int = Field(16, ge=1, description="Samples drawn at once.")
    sampler: SamplerSettings = Field(default_factory=SamplerSettings, description="How tokens are drawn.")
    condition: SampleConditionSettings = Field(
        default_factory=SampleConditionSettings, description="Subjects and labels for conditional priors."
    )
    nifti: bool = Field(True, description="Also write nifti/<id>.nii.gz in physical units.")
    previews: bool = Field(True, description="Write PNG previews (a grid for 2D, orthogonal views for 3D).")
    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings, description="Seed, device and threads.")
