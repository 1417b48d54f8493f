"""Settings of ``medgen train-ae`` and the training sections ``train-prior`` will share.

Shared sections: ``OptimSettings`` (optimizer, learning-rate schedule, clipping, accumulation) and
``TrainSettings`` (length, validation, checkpoints, EMA, precision). Autoencoder-only sections:
``LossSettings``, ``AdversarialSettings`` and ``AutoencoderSettings``. ``spatial_dims`` is not a
setting: it comes from the rank of the stored items.

``model.kind`` and ``model.quantizer`` are validated against the autoencoder and quantiser registries
(``models.registry``, ``models.quantization``; both torch-free), whose entries also hold the kind- and
quantiser-specific rules; ``AutoencoderSettings.autoencoder_config`` produces the model's typed config.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, field_validator, model_validator

from ..models.configs import AutoencoderConfig
from ..models.quantization import QUANTIZERS
from ..models.registry import AUTOENCODERS, AutoencoderKind, autoencoder_kind
from .base import FloatTuple, IntTuple, PerLevelInts, Section, _csv
from .common import AugmentSettings, DataSettings, RuntimeSettings

# the registries (torch-free) are the lists of kinds and quantisers: a new entry is a new choice here
AE_KINDS = tuple(AUTOENCODERS)
VQ_KINDS = tuple(name for name, entry in AUTOENCODERS.items() if entry.is_vq)
QUANTIZER_NAMES = tuple(QUANTIZERS)
QUANTIZER_FIELDS = frozenset().union(*(spec.fields for spec in QUANTIZERS.values()))  # settings a quantiser reads
KIND_FIELDS = frozenset().union(*(entry.settings_fields for entry in AUTOENCODERS.values()))  # settings of one kind
CONFIG_NAMES = {"codebook_ema": "ema", "codebook_decay": "decay"}  # settings field -> typed config field


def _factors(value):
    """One factor per level: an int (every axis) or a per-axis list, e.g. [[2, 2, 1], [2, 2, 2]]."""
    value = _csv(value)
    if value is None:
        return None
    try:
        out = []
        for f in value:
            if isinstance(f, (list, tuple)):
                out.append(tuple(_positive_int(v) for v in f))
            else:
                out.append(_positive_int(f))
        return tuple(out)
    except (TypeError, ValueError):
        raise ValueError("needs one factor per level, each a positive integer or a per-axis list, "
                         "e.g. 2,2 or [[2,2,1],[2,2,2]]") from None


def _positive_int(v) -> int:
    if isinstance(v, bool) or (isinstance(v, float) and not v.is_integer()):
        raise ValueError(v)
    n = int(v)
    if n < 1:
        raise ValueError(v)
    return n


Factors = Annotated[tuple[int | tuple[int, ...], ...], BeforeValidator(_factors)]


class OptimSettings(Section):
    optimizer: Literal["adam", "adamw"] = Field("adam", description="Optimizer: adam, or adamw (decoupled weight decay).")
    lr: float = Field(3e-4, gt=0, description="Peak learning rate (after warmup).")
    betas: FloatTuple = Field((0.9, 0.999), description="Adam betas (beta1, beta2).")
    weight_decay: float = Field(0.0, ge=0, description="Weight decay (decoupled for adamw).")
    warmup_steps: int = Field(0, ge=0, description="Linear learning-rate warmup from 0 over this many steps.")
    schedule: Literal["constant", "cosine", "linear"] = Field(
        "cosine", description="Learning-rate decay after warmup, down to lr * min_lr_ratio at the last step."
    )
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="Final learning rate as a fraction of lr (cosine, linear).")
    grad_clip: float = Field(1.0, ge=0, description="Clip the gradient norm to this value (0 = no clipping).")
    grad_accum: int = Field(1, ge=1, description="Batches whose gradients are accumulated per optimizer step.")

    @field_validator("betas")
    @classmethod
    def _two_betas(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if len(v) != 2 or not all(0.0 <= b < 1.0 for b in v):
            raise ValueError("needs two numbers in [0, 1), e.g. 0.9,0.999")
        return v


class AEOptimSettings(OptimSettings):
    """``optim`` of ``train-ae``: the shared fields with the autoencoder's defaults (probed on MR slices:
    8e-4 beat 3e-4 by 0.04 held-out SSIM at equal time; the 100-step warm-up protects the first
    Adam steps at that rate and shrinks with a time-sized schedule)."""

    lr: float = Field(8e-4, gt=0, description="Peak learning rate (after warmup).")
    warmup_steps: int = Field(
        100, ge=0, description="Linear learning-rate warmup from 0 over this many steps (at most train.steps - 1)."
    )


class TrainSettings(Section):
    steps: int = Field(10000, ge=1, description="Optimizer steps to train (the run stops at steps or max_minutes, whichever comes first).")
    max_minutes: float | None = Field(
        None, gt=0,
        description="Wall-clock training budget in minutes (null = no budget); counts across resumes. Warm-up and\n"
        "decay are sized to the steps the budget allows (estimated from the measured speed), so the run ends decayed.",
    )
    val_every: int = Field(500, ge=0, description="Validate every this many steps (0 = only at the end).")
    val_items: int = Field(16, ge=1, description="At most this many validation items are scored.")
    checkpoint_every: int = Field(500, ge=1, description="Save a resumable checkpoint every this many steps.")
    keep_last: int = Field(2, ge=1, description="Keep this many recent checkpoints (plus the best).")
    select: Literal["best", "last"] = Field(
        "best", description="Final weights: the best validation checkpoint, or the last step."
    )
    ema: bool = Field(False, description="Keep an exponential moving average of the weights and export it.")
    ema_decay: float = Field(0.999, gt=0, lt=1, description="Decay of the weight EMA (warmed up over the first steps).")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description="Arithmetic: auto = bf16 autocast where the device has native bf16 (CUDA GPUs; for train-ae also\n"
        "CPUs with AMX-BF16 or AVX512-BF16), fp32 elsewhere; fp32 forces full precision; fp16 is CUDA only.\n"
        "Weights, optimizer state and checkpoints stay fp32; quantisers and losses run in fp32.",
    )
    log_every: int = Field(50, ge=1, description="Write averaged training losses to metrics.jsonl every this many steps.")
    save_images: int = Field(4, ge=0, description="Validation items shown in each reconstruction PNG (0 = none).")


class AETrainSettings(TrainSettings):
    """``train`` of ``train-ae``: the shared fields plus the autoencoder's speed switches."""

    channels_last: bool | None = Field(
        None,
        description="channels_last memory format for the convolutions (model and batches); null = on for CUDA\n"
        "under bf16/fp16, off on CPUs (measured slower for whole autoencoders here, though single convs gain).",
    )
    compile: bool = Field(
        False, description="torch.compile the encoder and decoder (minutes of compilation; off unless measured to pay)."
    )


class LossSettings(Section):
    l1: float = Field(1.0, ge=0, description="Weight of the L1 reconstruction loss.")
    l2: float = Field(0.0, ge=0, description="Weight of the L2 (mean squared error) reconstruction loss.")
    ms_ssim: float = Field(
        0.0, ge=0, description="Weight of 1 - MS-SSIM (kornia; 3D uses a multi-window SSIM3D), on the store's data range."
    )

    @model_validator(mode="after")
    def _some_loss(self):
        if self.l1 == 0 and self.l2 == 0 and self.ms_ssim == 0:
            raise ValueError("loss.l1, loss.l2 and loss.ms_ssim are all 0; give at least one a positive weight")
        return self


class AdversarialSettings(Section):
    enabled: bool | None = Field(
        None, description="Train against a patch discriminator; null = on for model.kind vqgan, off otherwise."
    )
    loss: Literal["hinge", "nonsaturating"] = Field("hinge", description="Adversarial loss.")
    weight: float = Field(0.5, ge=0, description="Weight of the generator's adversarial loss.")
    start_step: int = Field(1000, ge=0, description="Step at which the discriminator starts training and being used.")
    adaptive: bool = Field(
        True, description="Scale the adversarial loss by the ratio of gradient norms at the decoder's last layer (VQGAN)."
    )
    channels: int = Field(64, ge=1, description="Width of the discriminator's first layer (doubled per layer, at most 8x).")
    layers: int = Field(3, ge=1, description="Strided layers of the discriminator.")
    norm: Literal["batch", "instance", "none"] = Field("batch", description="Normalisation in the discriminator.")

    def active(self, kind: str) -> bool:
        """Whether the discriminator is used for an autoencoder of ``kind``."""
        return self.enabled if self.enabled is not None else autoencoder_kind(kind).adversarial


class AutoencoderSettings(Section):
    kind: Literal[AE_KINDS] = Field(
        "vqvae", description="Autoencoder: vqvae, vqvae2 (hierarchical), vqgan (VQ + discriminator) or klvae (continuous)."
    )
    channels: PerLevelInts = Field((64, 128), description="Encoder channels per level (the decoder mirrors them).")
    num_res_blocks: IntTuple = Field(
        (2,),
        description="Residual blocks per level: one value for every level, or one per level (0 allowed);\n"
        "e.g. [0, 2] with layout full keeps none at full resolution.",
    )
    downsample: Factors | None = Field(
        None,
        description="Downsampling factor per level: an int or a per-axis list, e.g. [[2,2,1],[2,2,2]];\n"
        "null = 2 per axis at every level (klvae: not after the last level).",
    )
    layout: Literal["strided", "full"] = Field(
        "strided",
        description="strided: downsample before each level (no block at full resolution; MONAI's arithmetic);\n"
        "full: a full-resolution first level (medgen's earlier layout: ~4x (2D) to ~8x (3D) the arithmetic).",
    )
    mid_blocks: int = Field(0, ge=0, description="Residual blocks in the middle block of encoder and decoder (0 = none).")
    res_kernels: IntTuple = Field(
        (3, 1),
        description="Kernels of the two convolutions of a residual block: [3, 1] (the original VQ-VAE's unit)\n"
        "or [3, 3] (VQGAN/LDM's and medgen's earlier blocks: 18/10 of the arithmetic).",
    )
    quantizer: Literal[QUANTIZER_NAMES] = Field(
        "vq",
        description="VQ kinds: vq (learnt codebook), fsq (finite scalar quantisation, codebook = product of\n"
        "model.fsq_levels) or lfq (lookup-free: signs of log2(num_embeddings) channels, entropy penalty).",
    )
    vq_gradient: Literal["ste", "rotation"] = Field(
        "ste", description="quantizer vq: straight-through gradient, or the rotation trick (Fifty et al. 2024)."
    )
    fsq_levels: IntTuple = Field((8, 5, 5, 5), description="quantizer fsq: levels per latent channel (each >= 3).")
    entropy_weight: float = Field(0.1, ge=0, description="quantizer lfq: weight of the entropy penalty.")
    embedding_dim: int = Field(64, ge=1, description="VQ: code width (latent channels; fsq and lfq derive it).")
    num_embeddings: int = Field(512, ge=1, description="VQ: codebook size (lfq: a power of two; fsq derives it).")
    commitment_cost: float = Field(0.25, ge=0, description="VQ: weight of the commitment loss.")
    codebook_ema: bool = Field(True, description="VQ: update the codebook by EMA (true) or by gradient (false).")
    codebook_decay: float = Field(0.99, ge=0, lt=1, description="VQ: EMA decay of the codebook statistics.")
    dead_code_threshold: float = Field(
        1.0, ge=0, description="VQ: restart codes whose EMA usage (vectors per batch) falls below this (0 = never)."
    )
    top_channels: PerLevelInts = Field((128,), description="vqvae2: channels per level of the top encoder.")
    top_downsample: Factors | None = Field(None, description="vqvae2: per-level factors of the top encoder (null = 2).")
    latent_channels: int = Field(4, ge=1, description="klvae: latent channels.")
    kl_weight: float = Field(1e-6, ge=0, description="klvae: weight of the KL term.")
    latent_scale_items: int = Field(
        64, ge=1, description="klvae: training items whose latent means set the scaling factor (1 / std)."
    )
    norm: Literal["group", "batch", "instance", "none"] = Field("group", description="Normalisation in the blocks.")
    num_groups: int = Field(8, ge=1, description="Groups of group norm (must divide every channel count).")
    attention_levels: IntTuple = Field((), description="Levels (0-based) with self-attention after each block.")
    mid_attention: bool = Field(False, description="Self-attention in the middle block.")
    num_heads: int = Field(1, ge=1, description="Attention heads.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout in residual blocks.")
    factorized_3d: bool = Field(False, description="3D only: factorised (2+1)D convolutions (cheaper).")
    rezero: bool = Field(True, description="ReZero-gated residual blocks (branch scaled by a learnt factor from 0).")
    upsample_mode: Literal["nearest", "transpose", "shuffle"] = Field(
        "nearest", description="Decoder upsampling: nearest + conv, transposed conv, or shuffle (sub-pixel conv, ICNR)."
    )

    @model_validator(mode="after")
    def _consistent(self):
        levels = len(self.channels)
        if levels == 0 or any(c < 1 for c in self.channels):
            raise ValueError(f"model.channels = {list(self.channels)} must be a non-empty list of positive integers")
        entry = autoencoder_kind(self.kind)
        self._check_kind_fields(entry)
        if entry.is_vq:
            self._check_quantizer()
        if self.norm == "group":
            bad = sorted(c for c in self.autoencoder_config().norm_widths() if c % self.num_groups)
            if bad:
                raise ValueError(f"model.num_groups = {self.num_groups} must divide every channel count; {bad} is not divisible")
        if self.downsample is not None and len(self.downsample) != levels:
            raise ValueError(
                f"model.downsample = {_show(self.downsample)} needs one factor per level of model.channels ({levels} levels)"
            )
        blocks = self.num_res_blocks
        if len(blocks) not in (1, levels) or any(b < 0 for b in blocks) or (len(blocks) == 1 and blocks[0] < 1) or not sum(blocks):
            raise ValueError(
                f"model.num_res_blocks = {list(blocks)} must be one integer >= 1 or one integer >= 0 per level of "
                f"model.channels ({levels} levels, not all 0)"
            )
        if len(self.res_kernels) != 2 or any(k < 1 or k % 2 == 0 for k in self.res_kernels):
            raise ValueError(f"model.res_kernels = {list(self.res_kernels)} must be two odd kernel sizes, e.g. [3, 3] or [3, 1]")
        bad_levels = [a for a in self.attention_levels if not 0 <= a < levels]
        if bad_levels:
            raise ValueError(f"model.attention_levels = {list(self.attention_levels)} must index levels 0..{levels - 1}")
        return self

    def _changed(self, names: set[str] | frozenset[str]) -> list[str]:
        """``names`` set away from their defaults, sorted."""
        return sorted(n for n in names if getattr(self, n) != type(self).model_fields[n].default)

    def _check_kind_fields(self, entry: AutoencoderKind) -> None:
        # a field of another kind left at a non-default value is almost certainly a mistake
        foreign = KIND_FIELDS - entry.settings_fields
        if not entry.is_vq:
            foreign |= QUANTIZER_FIELDS | {"quantizer"}
        changed = self._changed(foreign)
        if changed:
            raise ValueError(f"model.{changed[0]} does not apply to model.kind = {self.kind!r}; remove it or change the kind")

    def _check_quantizer(self) -> None:
        spec = QUANTIZERS[self.quantizer]
        changed = self._changed(QUANTIZER_FIELDS - spec.fields)
        if changed:
            raise ValueError(f"model.{changed[0]} does not apply to model.quantizer = {self.quantizer!r}; remove it or "
                             "change the quantizer")
        spec.check(self.embedding_dim, self.num_embeddings, self.fsq_levels)

    def code_dim(self) -> int:
        """Channels of a code: embedding_dim (vq), len(fsq_levels) (fsq) or log2(num_embeddings) (lfq)."""
        return QUANTIZERS[self.quantizer].sizes(self.embedding_dim, self.num_embeddings, self.fsq_levels)[0]

    def codebook_size(self) -> int:
        """Codes of the quantiser: num_embeddings (vq, lfq) or the product of fsq_levels."""
        return QUANTIZERS[self.quantizer].sizes(self.embedding_dim, self.num_embeddings, self.fsq_levels)[1]

    def factors(self, spatial_dims: int) -> tuple[int, ...]:
        """Total per-axis downsampling factor for ``spatial_dims`` axes, down to the coarsest code grid
        (the kind's config knows its default last level and any further pyramid, e.g. vqvae2's top)."""
        total = [1] * spatial_dims
        for f in self.autoencoder_config().grid_factors():
            axes = (f,) * spatial_dims if isinstance(f, int) else tuple(f)
            if len(axes) != spatial_dims:
                raise ValueError(f"model.downsample factor {list(axes)} needs {spatial_dims} values for {spatial_dims}D data")
            total = [t * a for t, a in zip(total, axes)]
        return tuple(total)

    def res_blocks(self) -> int | tuple[int, ...]:
        """``num_res_blocks`` for the model: one int for every level, else the per-level values."""
        return self.num_res_blocks[0] if len(self.num_res_blocks) == 1 else tuple(self.num_res_blocks)

    def autoencoder_config(self, in_channels: int = 1, spatial_dims: int | None = None) -> AutoencoderConfig:
        """The typed config of the model (its class from the registry entry of ``kind``): every settings
        field the config has (``codebook_ema`` / ``codebook_decay`` as ``ema`` / ``decay``), the quantiser's
        size fields where it reads them (None: it derives them), the kind's defaults for the rest."""
        entry = autoencoder_kind(self.kind)
        fields = entry.config_cls.model_fields
        values = {CONFIG_NAMES.get(n, n): getattr(self, n) for n in type(self).model_fields
                  if CONFIG_NAMES.get(n, n) in fields and n != "kind"}
        values.update(in_channels=in_channels, num_res_blocks=self.res_blocks())
        if entry.is_vq:
            values.update(QUANTIZERS[self.quantizer].config_sizes(self.embedding_dim, self.num_embeddings,
                                                                  self.fsq_levels))
        return entry.make_config(self.kind, spatial_dims, **values)

    def model_kwargs(self, in_channels: int) -> dict:
        """The config fields these settings set, as JSON: ``build_autoencoder(kind, spatial_dims, **kwargs)``
        builds the same model as ``autoencoder_config`` (kept for callers that build by keywords)."""
        return self.autoencoder_config(in_channels).model_dump(mode="json", exclude_unset=True,
                                                               exclude={"kind", "spatial_dims"})


def _listed(factors):
    return None if factors is None else [f if isinstance(f, int) else list(f) for f in factors]


def _show(factors) -> str:
    return str(_listed(factors))


class TrainAESettings(Section):
    """Settings of ``medgen train-ae``."""

    data: DataSettings = Field(default_factory=DataSettings, description="Training data: a preprocessed artefact.")
    augment: AugmentSettings = Field(default_factory=AugmentSettings, description="On-the-fly augmentation of training batches.")
    model: AutoencoderSettings = Field(default_factory=AutoencoderSettings, description="Autoencoder architecture.")
    loss: LossSettings = Field(default_factory=LossSettings, description="Reconstruction loss mix.")
    adversarial: AdversarialSettings = Field(
        default_factory=AdversarialSettings, description="Patch discriminator (VQGAN-style training)."
    )
    optim: AEOptimSettings = Field(default_factory=AEOptimSettings, description="Optimizer and learning-rate schedule.")
    train: AETrainSettings = Field(
        default_factory=AETrainSettings, description="Length, validation, checkpoints, EMA, precision, speed."
    )
    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings, description="Seed, device and threads.")

    @model_validator(mode="after")
    def _patch_fits_latent_grid(self):
        patch = self.data.patch_size
        if patch is not None:
            if len(patch) not in (2, 3) or any(p < 1 for p in patch):
                raise ValueError(f"data.patch_size = {list(patch)} needs 2 or 3 positive integers")
            factor = self.model.factors(len(patch))
            if any(p % f for p, f in zip(patch, factor)):
                raise ValueError(
                    f"data.patch_size = {list(patch)} is not divisible by the model's downsampling factor "
                    f"{list(factor)}; choose a multiple of it"
                )
        if self.train.max_minutes is not None and not math.isfinite(self.train.max_minutes):
            raise ValueError(f"train.max_minutes = {self.train.max_minutes} must be a finite number of minutes")
        return self
