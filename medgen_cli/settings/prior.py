"""Settings of ``medgen encode-latents``, ``medgen train-prior`` and ``medgen sample``.

``tiling`` (``TilingSettings``, in encode-latents and sample) says when and how volumes too large
for memory are encoded or decoded tile by tile (``medgen_cli.inference``).

``train-prior`` shares ``data``, ``optim``, ``train`` and ``runtime`` with ``train-ae``; its own
sections are ``prior`` (the architecture, chosen by ``prior.kind``), ``condition`` (latents
artefacts joined by item id or by subject, class labels, label maps of diffusion priors) and
``diffusion`` (the UNet, the objective -- a DDPM noise schedule or rectified flow --, loss,
classifier-free guidance and sampling defaults of
``prior.kind = diffusion``). Sampler names are those of ``medgen_cli.sampling.sampler_names()``, by
family (``DIFFUSION_SAMPLERS``, ``FLOW_SAMPLERS``). A new token prior kind
adds its name to ``PRIOR_KINDS``, its fields to ``PriorModelSettings`` (listed in ``_OWN_FIELDS``),
a task builder in ``steps/train_prior.py`` and a sampler in ``steps/sample.py``.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, field_validator, model_validator

from .base import IntTuple, PerLevelInts, Section
from .common import DataSettings, RuntimeSettings
from .train import OptimSettings, TrainSettings

PRIOR_KINDS = ("transformer", "maskgit", "pixelcnn", "diffusion")
TOKEN_KINDS = ("transformer", "maskgit", "pixelcnn")  # priors over VQ codes

# The registered samplers (``medgen_cli.sampling``) by the objective they run; tests keep them equal.
DIFFUSION_SAMPLERS = ("ddim", "ddpm", "dpmpp_2m")
FLOW_SAMPLERS = ("flow_euler", "flow_heun")
DETERMINISTIC_SAMPLERS = ("dpmpp_2m", *FLOW_SAMPLERS)  # they take eta = 0 only
DEFAULT_SAMPLER = {"diffusion": "ddim", "flow": "flow_euler"}  # diffusion.sampler when not given
SamplerName = Literal["ddim", "ddpm", "dpmpp_2m", "flow_euler", "flow_heun"]
# DiffusionSettings fields of one objective only: left at their defaults by the other
DIFFUSION_ONLY = ("schedule", "beta_start", "beta_end", "num_train_timesteps", "prediction", "min_snr_gamma")
FLOW_ONLY = ("flow_time_sampling", "flow_logit_mean", "flow_logit_std", "flow_shift", "flow_base_grid_numel",
             "flow_shift_exponent")


def sampler_objective(name: str) -> str:
    """``diffusion`` or ``flow``: the objective a prior must have been trained with to run sampler ``name``."""
    return "flow" if name in FLOW_SAMPLERS else "diffusion"


def samplers_of(objective: str) -> tuple[str, ...]:
    """The sampler names that run a prior trained with ``objective``."""
    return FLOW_SAMPLERS if objective == "flow" else DIFFUSION_SAMPLERS


def wrong_family(name: str, objective: str) -> str | None:
    """None when sampler ``name`` runs an ``objective`` prior, else the clause saying what would."""
    if sampler_objective(name) == objective:
        return None
    *rest, last = samplers_of(objective)
    return f"{name} is a {sampler_objective(name)} sampler, and a {objective} prior takes {', '.join(rest)} or {last}"


# ------------------------------------------------------------------------------------------ tiling
class TilingSettings(Section):
    """Sliding-window encode and decode of volumes larger than memory (``medgen_cli.inference``)."""

    mode: Literal["auto", "always", "never"] = Field(
        "auto", description="auto: tile a volume whose whole-volume encode or decode would need more than max_gib;\n"
        "always: tile every volume; never: whole volumes, whatever the memory."
    )
    max_gib: float | None = Field(
        None, gt=0, description="Memory for the autoencoder's activations in GiB; null = half of the memory free when the\n"
        "step starts (the GPU's free memory on CUDA)."
    )
    tile_size: IntTuple | None = Field(
        None, description="Largest tile (its core, without the halo) in image voxels, one value or one per axis; null = the\n"
        "tiles that fit max_gib with the least overlap. Rounded down to a multiple of the downsampling factor."
    )
    halo: IntTuple | None = Field(
        None, description="Context around each tile in image voxels per side; null = the autoencoder's receptive field, with\n"
        "which tiles join exactly. A smaller halo is faster and blends neighbouring tiles with cosine weights."
    )
    norm: Literal["exact", "tile"] = Field(
        "exact", description="Group-norm statistics of tiled runs: exact = the whole volume's (one short pass per norm\n"
        "layer, about 4-6x the work of one pass in all; equals whole-volume inference up to float error);\n"
        "tile = each tile's own (one pass, fast, visible seams where tiles differ, e.g. air and body)."
    )

    @field_validator("tile_size", "halo")
    @classmethod
    def _per_axis(cls, v: tuple[int, ...] | None, info) -> tuple[int, ...] | None:
        least = 1 if info.field_name == "tile_size" else 0
        if v is not None and (len(v) not in (1, 2, 3) or any(n < least for n in v)):
            raise ValueError(f"needs one integer >= {least} or one per axis (2 or 3), e.g. 128 or 128,128,64")
        return v

    def options(self) -> dict:
        """Keyword arguments of ``medgen_cli.inference.TilingOptions``."""
        values = self.model_dump(exclude={"norm"})
        return {**values, "norm_passes": None if self.norm == "exact" else 1}


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
    tiling: TilingSettings = Field(default_factory=TilingSettings, description="Tiled encoding of volumes too large for memory.")
    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings, description="Device and threads.")


# ------------------------------------------------------------------------------------- train-prior
class PriorModelSettings(Section):
    kind: Literal["transformer", "maskgit", "pixelcnn", "diffusion"] = Field(
        "transformer",
        description="Prior: transformer (causal, any grid), maskgit (masked tokens, any grid),\n"
        "pixelcnn (gated PixelCNN, 2D grids; for vqvae2 latents a top and a bottom prior), or\n"
        "diffusion (a UNet denoiser over KL latents or the continuous latents of a VQ autoencoder;\n"
        "its settings are the diffusion section).",
    )
    dim: int = Field(256, ge=8, description="transformer, maskgit: token width.")
    depth: int = Field(8, ge=1, description="transformer, maskgit: transformer blocks.")
    num_heads: int = Field(8, ge=1, description="Attention heads (transformer, maskgit; pixelcnn attention layers).")
    mlp_ratio: float = Field(4.0, gt=0, description="transformer, maskgit: MLP width relative to dim.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout (transformer, maskgit, pixelcnn; diffusion: diffusion.dropout).")
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
        if self.kind == "diffusion":
            moved = [n for n in ("num_heads", "dropout") if getattr(self, n) != type(self).model_fields[n].default]
            if moved:
                raise ValueError(f"prior.{moved[0]} does not apply to prior.kind = 'diffusion'; set diffusion.{moved[0]}")
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
    "diffusion": set(),  # its fields are the diffusion section
}


class DiffusionSettings(Section):
    """``prior.kind = diffusion``: a `UNetPrior` over continuous latents (Rombach et al. 2022).

    ``objective`` chooses what the UNet learns: ``diffusion`` (a DDPM noise schedule, eps / v / x0
    prediction, ``sampling/schedulers.py``) or ``flow`` (rectified flow: straight paths from the data
    to noise, velocity prediction, ``sampling/flow.py``). The ``flow_*`` fields are the constructor
    arguments of ``FlowEulerScheduler``; ``sampler`` defaults to ddim or flow_euler by the objective.
    """

    objective: Literal["diffusion", "flow"] = Field(
        "diffusion", description="What the UNet learns: diffusion (DDPM noise schedule; samplers ddim, ddpm, dpmpp_2m) or\n"
        "flow (rectified flow / flow matching, velocity on straight paths; samplers flow_euler, flow_heun)."
    )
    flow_time_sampling: Literal["uniform", "logit_normal"] = Field(
        "uniform", description="flow: training times t in [0, 1], uniform or logit-normal (SD3's; it rarely visits t near 0)."
    )
    flow_logit_mean: float = Field(0.0, description="flow: mean m of the logit-normal training times t = sigmoid(m + s n).")
    flow_logit_std: float = Field(1.0, gt=0, description="flow: std s of the logit-normal training times.")
    flow_shift: float | None = Field(
        None, gt=0, description="flow: timestep shift t' = s t / (1 + (s - 1) t) of training and sampling times (s > 1: more\n"
        "time at high noise); null = resolution-aware, s = (latent grid elements / flow_base_grid_numel) ^\n"
        "flow_shift_exponent (SD3 Sec. 5.3.2); a number = that shift at every latent size."
    )
    flow_base_grid_numel: int = Field(
        1024, ge=1, description="flow, flow_shift null: latent grid elements (channels excluded) at which the shift is 1\n"
        "(1024 = SD3's 32x32 latents of 256^2 images)."
    )
    flow_shift_exponent: float = Field(
        0.5, ge=0, description="flow, flow_shift null: exponent of the size ratio (0.5 as SD3; 1/spatial_dims as MONAI)."
    )
    schedule: Literal["linear", "scaled_linear", "cosine"] = Field(
        "scaled_linear", description="Noise schedule: linear, scaled_linear (latent diffusion's) or cosine (Nichol & Dhariwal)."
    )
    beta_start: float = Field(0.00085, gt=0, lt=1, description="First beta of the linear schedules (cosine ignores it).")
    beta_end: float = Field(0.012, gt=0, lt=1, description="Last beta of the linear schedules (cosine ignores it).")
    num_train_timesteps: int = Field(1000, ge=2, description="Diffusion steps T of training.")
    prediction: Literal["eps", "v", "x0"] = Field("eps", description="What the UNet predicts: eps (the noise), v or x0.")
    min_snr_gamma: float | None = Field(
        None, gt=0, description="Min-SNR-gamma loss weighting (Hang et al. 2023; 5 is usual); null = plain MSE."
    )
    base_channels: int = Field(64, ge=1, description="UNet: channels of the first level.")
    channel_mults: PerLevelInts = Field((1, 2, 4), description="UNet: channel multiplier per level (one 2x downsampling\n"
                                    "between levels: the latent grid must be divisible by 2^(levels-1)).")
    num_res_blocks: int = Field(2, ge=1, description="UNet: residual blocks per level.")
    attention_levels: IntTuple = Field((), description="UNet: levels (0-based) with self-attention after each block.")
    mid_attention: bool = Field(True, description="UNet: self-attention in the middle block.")
    num_heads: int = Field(4, ge=1, description="UNet: attention heads.")
    num_groups: int = Field(8, ge=1, description="UNet: group-norm groups (must divide every level's channels).")
    dropout: float = Field(0.0, ge=0, lt=1, description="UNet: dropout in the residual blocks.")
    p_uncond: float = Field(
        0.1, ge=0, lt=1, description="Classifier-free guidance: probability that a training item's condition\n"
        "(condition latents and label) is dropped; unconditional priors ignore it."
    )
    sample_every: int = Field(
        0, ge=0, description="Second validation tier: every this many steps (and at the end), sample\n"
        "sample_items validation items with diffusion.sampler (ddim when that is ddpm), decode them and log\n"
        "SSIM/PSNR against their real images (conditional priors); 0 = off. Runs at the first validation at\n"
        "or after each multiple."
    )
    sample_items: int = Field(4, ge=1, description="Validation items sampled by the second tier.")
    sample_steps: int = Field(10, ge=1, description="Sampler steps of the second validation tier.")
    sampler: SamplerName = Field(
        "ddim", description="Default sampler of medgen sample (--sampler): ddim, ddpm or dpmpp_2m (DPM-Solver++ 2M) for\n"
        "objective diffusion, flow_euler or flow_heun for objective flow; when not given, ddim or flow_euler."
    )
    steps: int = Field(50, ge=1, description="Default sampler steps of medgen sample (--steps; flow_heun calls the UNet\n"
                       "about twice per step).")
    eta: float = Field(0.0, ge=0, description="Default DDIM eta of medgen sample (0 = deterministic; --eta); dpmpp_2m and\n"
                       "the flow samplers are deterministic and take 0 only.")
    guidance_scale: float = Field(
        1.0, ge=0, description="Default classifier-free guidance scale of medgen sample (1 = the conditional model; --guidance-scale)."
    )

    @model_validator(mode="before")
    @classmethod
    def _default_sampler(cls, data):
        """A sampler not given follows the objective (flow_euler for flow), so the resolved settings name it."""
        objective = data.get("objective", "diffusion") if isinstance(data, dict) else None
        if isinstance(objective, str) and objective in DEFAULT_SAMPLER and data.get("sampler") is None:
            data = {**data, "sampler": DEFAULT_SAMPLER[objective]}
        return data

    @model_validator(mode="after")
    def _objective(self):
        """Fields and sampler of the other objective are refused, as is eta with a deterministic sampler."""
        fields = type(self).model_fields
        foreign, other = (FLOW_ONLY, "flow") if self.objective == "diffusion" else (DIFFUSION_ONLY, "diffusion")
        changed = [n for n in foreign if getattr(self, n) != fields[n].default]
        if changed:
            name = changed[0]
            raise ValueError(f"diffusion.{name} = {getattr(self, name)!r} applies to diffusion.objective = {other!r} only, "
                             f"not {self.objective!r}; remove it or set diffusion.objective={other}")
        sized = [n for n in ("flow_base_grid_numel", "flow_shift_exponent") if getattr(self, n) != fields[n].default]
        if self.flow_shift is not None and sized:
            raise ValueError(f"diffusion.{sized[0]} sizes the resolution-aware shift, but diffusion.flow_shift = "
                             f"{self.flow_shift} fixes it; remove one of them")
        clash = wrong_family(self.sampler, self.objective)
        if clash:
            raise ValueError(f"diffusion.sampler = {self.sampler!r} cannot sample a prior of diffusion.objective = "
                             f"{self.objective!r}: {clash}")
        if self.sampler in DETERMINISTIC_SAMPLERS and self.eta != 0:
            raise ValueError(f"diffusion.eta = {self.eta} applies to the ddim sampler only; {self.sampler} is "
                             "deterministic and takes eta 0")
        return self

    def flow_scheduler_args(self, grid_numel: int) -> dict:
        """Keyword arguments of ``FlowEulerScheduler`` for latents of ``grid_numel`` elements (channels excluded)."""
        resolution_aware = self.flow_shift is None
        return {"time_sampling": self.flow_time_sampling, "logit_mean": self.flow_logit_mean,
                "logit_std": self.flow_logit_std, "shift": 1.0 if resolution_aware else self.flow_shift,
                "base_grid_numel": self.flow_base_grid_numel if resolution_aware else None,
                "grid_numel": int(grid_numel), "shift_exponent": self.flow_shift_exponent}

    @model_validator(mode="after")
    def _consistent(self):
        levels = len(self.channel_mults)
        if not levels or any(m < 1 for m in self.channel_mults):
            raise ValueError(f"diffusion.channel_mults = {list(self.channel_mults)} must be positive integers")
        bad = [i for i in self.attention_levels if not 0 <= i < levels]
        if bad:
            raise ValueError(f"diffusion.attention_levels = {list(self.attention_levels)} must index the "
                             f"{levels} levels of diffusion.channel_mults (0..{levels - 1})")
        for m in (1, *self.channel_mults):
            if (self.base_channels * m) % self.num_groups:
                raise ValueError(f"diffusion.base_channels x {m} = {self.base_channels * m} channels must be divisible "
                                 f"by diffusion.num_groups = {self.num_groups}")
        attended = [self.channel_mults[i] for i in self.attention_levels]
        attended += [self.channel_mults[-1]] if self.mid_attention else []
        for m in attended:
            if (self.base_channels * m) % self.num_heads:
                raise ValueError(f"diffusion.base_channels x {m} = {self.base_channels * m} channels with attention "
                                 f"must be divisible by diffusion.num_heads = {self.num_heads}")
        if self.schedule != "cosine" and self.beta_start > self.beta_end:
            raise ValueError(f"diffusion.beta_start = {self.beta_start} must not exceed diffusion.beta_end = {self.beta_end}")
        for name in ("steps", "sample_steps") if self.objective == "diffusion" else ():
            if getattr(self, name) > self.num_train_timesteps:
                raise ValueError(f"diffusion.{name} = {getattr(self, name)} must not exceed "
                                 f"diffusion.num_train_timesteps = {self.num_train_timesteps}")
        if self.guidance_scale != 1.0 and self.p_uncond == 0:
            raise ValueError(f"diffusion.guidance_scale = {self.guidance_scale} needs diffusion.p_uncond > 0 "
                             "(the prior must learn the unconditional model too)")
        return self

    @property
    def grid_multiple(self) -> int:
        """Every latent grid axis must be a multiple of this (the UNet halves it between levels)."""
        return 2 ** (len(self.channel_mults) - 1)


class ConditionSettings(Section):
    paths: list[str] = Field(
        default_factory=list,
        description="Latents artefacts joined to the training items (see join); their codes form the prefix\n"
        "(transformer, maskgit), their latents extra channels (diffusion).",
    )
    store: str = Field("main", description="Store inside each condition artefact (main, or top for vqvae2 latents).")
    join: Literal["auto", "item", "subject"] = Field(
        "auto",
        description="How a training item finds its condition items: item (the item of the same id, e.g. the\n"
        "lowdose copy of sequence k for sequence k; derived stores of one preprocess artefact share ids),\n"
        "subject (every item of its subject, ordered by view then id: X-ray views of a CT), or auto\n"
        "(item when every training item id is in every condition store, else subject). The join used is\n"
        "recorded in the prior, and medgen sample draws per condition item or per subject accordingly.",
    )
    label: str | None = Field(
        None, description="Item attribute whose values are class labels (e.g. modality); null = no labels."
    )
    masks: bool | str = Field(
        False, description="diffusion: condition on label maps (preprocess --masks). true = the masks of the preprocessed\n"
        "artefact the latents were encoded from; a path = a preprocessed artefact with a masks store holding\n"
        "the training items' ids. Each label value seen in training becomes one channel: the fraction of a\n"
        "latent voxel's image voxels with that label (one-hot, averaged per latent voxel), concatenated to\n"
        "the UNet input and dropped with diffusion.p_uncond like the other conditions."
    )
    spacing: bool = Field(
        False, description="diffusion: condition on each item's voxel spacing (mm): log(spacing) per axis, normalised by the\n"
        "training items' mean and std (recorded in model.json), as constant UNet input channels dropped with\n"
        "diffusion.p_uncond like the other conditions. medgen sample then takes condition.spacing (default: the\n"
        "training median) or the spacing of its condition items."
    )

    @field_validator("masks")
    @classmethod
    def _masks(cls, v: bool | str) -> bool | str:
        if isinstance(v, str) and not v.strip():
            raise ValueError("needs true, false or the path of a preprocessed artefact with masks")
        return v


class TrainPriorSettings(Section):
    """Settings of ``medgen train-prior``."""

    data: DataSettings = Field(default_factory=DataSettings, description="Training data: a latents artefact.")
    prior: PriorModelSettings = Field(default_factory=PriorModelSettings, description="Prior architecture.")
    condition: ConditionSettings = Field(default_factory=ConditionSettings, description="Conditioning on latents (by item or subject) and labels.")
    diffusion: DiffusionSettings = Field(
        default_factory=DiffusionSettings, description="prior.kind diffusion: UNet, noise schedule, loss, guidance, sampling."
    )
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
        if self.condition.masks is not False:
            if self.prior.kind != "diffusion":
                raise ValueError(f"condition.masks needs prior.kind = 'diffusion' (label maps become UNet input "
                                 f"channels), not {self.prior.kind!r}")
            if self.condition.paths:
                raise ValueError("condition.masks and condition.paths exclude each other (a prior conditioned on "
                                 "masks and on other latents is not supported yet); give one of them")
        if self.condition.spacing and self.prior.kind != "diffusion":
            raise ValueError(f"condition.spacing needs prior.kind = 'diffusion' (the spacing becomes UNet input "
                             f"channels), not {self.prior.kind!r}")
        if self.condition.paths and self.prior.kind == "pixelcnn":
            raise ValueError("condition.paths needs prior.kind transformer or maskgit or diffusion (pixelcnn takes labels only)")
        if self.prior.kind != "diffusion":
            changed = [n for n, f in DiffusionSettings.model_fields.items() if getattr(self.diffusion, n) != f.default]
            if changed:
                raise ValueError(f"diffusion.{changed[0]} applies to prior.kind = 'diffusion' only, not "
                                 f"{self.prior.kind!r}; remove it or change the kind")
        elif self.diffusion.guidance_scale != 1.0 and not (self.condition.paths or self.condition.label
                                                           or self.condition.masks is not False
                                                           or self.condition.spacing):
            raise ValueError(f"diffusion.guidance_scale = {self.diffusion.guidance_scale} needs a conditional prior "
                             "(condition.paths, condition.label, condition.masks or condition.spacing)")
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
    steps: int | None = Field(
        None, ge=1, description="maskgit: decoding iterations (null = 12); diffusion: denoising steps\n"
        "(null = the prior's diffusion.steps)."
    )
    noise_temperature: float = Field(4.5, ge=0, description="maskgit: Gumbel noise on the confidences, annealed to 0.")
    use_cache: bool = Field(True, description="transformer: reuse keys and values of earlier tokens (same tokens, faster).")
    scheduler: SamplerName | None = Field(
        None, description="diffusion priors: ddim (Song et al.), ddpm (ancestral) or dpmpp_2m (DPM-Solver++ 2M); flow priors:\n"
        "flow_euler or flow_heun; null = the prior's default."
    )
    eta: float | None = Field(None, ge=0, description="diffusion: DDIM stochasticity (0 = deterministic; dpmpp_2m and the flow\n"
                              "samplers take 0 only); null = the prior's default for ddim, else 0.")
    guidance_scale: float | None = Field(
        None, ge=0, description="diffusion: classifier-free guidance scale (1 = the conditional model alone,\n"
        "0 = the unconditional one); null = the prior's default."
    )

    @model_validator(mode="after")
    def _consistent(self):
        if self.strategy == "top-k" and self.top_k is None:
            raise ValueError("sampler.strategy = 'top-k' needs sampler.top_k (e.g. --top-k 50)")
        if self.strategy == "top-p" and self.top_p is None:
            raise ValueError("sampler.strategy = 'top-p' needs sampler.top_p (e.g. --top-p 0.9)")
        if self.strategy == "greedy" and (self.top_k is not None or self.top_p is not None):
            raise ValueError("sampler.strategy = 'greedy' takes no top_k or top_p; remove them or choose top-k/top-p")
        if self.scheduler in DETERMINISTIC_SAMPLERS and self.eta:
            raise ValueError(f"sampler.eta = {self.eta} applies to the ddim sampler only; {self.scheduler} is "
                             "deterministic and takes eta 0")
        return self

    def diffusion_options(self) -> dict[str, float | str]:
        """The diffusion options given (scheduler, steps, eta, guidance_scale), without the unset ones."""
        values = {"scheduler": self.scheduler, "steps": self.steps, "eta": self.eta, "guidance_scale": self.guidance_scale}
        return {k: v for k, v in values.items() if v is not None}

    def token_options(self) -> list[str]:
        """The token-sampling options set away from their defaults (a diffusion prior refuses them)."""
        fields = ("strategy", "top_k", "top_p", "temperature", "noise_temperature", "use_cache")
        return [n for n in fields if getattr(self, n) != type(self).model_fields[n].default]

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
        default_factory=list, description="Condition latents artefacts (empty = those the prior was trained with); for a\n"
        "mask-conditioned prior (condition.masks), one preprocessed artefact with a masks store: num_samples\n"
        "images are drawn for each of its masks (of condition.split or condition.subject when given)."
    )
    subject: str | None = Field(None, description="Generate for this subject's condition items (item-joined priors:\n"
                                "num_samples for each of its items).")
    all_subjects: bool = Field(False, description="Generate for every subject found in all condition artefacts\n"
                               "(item-joined priors: for every condition item).")
    split: str | None = Field(None, description="With all_subjects: only subjects (or items) of this split (null = every split).")
    label: str | None = Field(None, description="Class label value for label-conditioned priors (null = cycle through the classes).")
    spacing: list[float] | None = Field(
        None, description="Spacing-conditioned priors (condition.spacing): the voxel spacing in mm, one value per axis\n"
        "(X,Y or X,Y,Z), the samples are drawn for and written with; null = the training items' median. Samples\n"
        "drawn for condition items (masks, condition latents) take those items' spacing instead."
    )

    @field_validator("spacing", mode="before")
    @classmethod
    def _spacing_list(cls, v):
        if isinstance(v, str):  # --set condition.spacing=0.7,0.7
            v = [p for p in v.replace("[", "").replace("]", "").split(",") if p.strip()]
        return v

    @field_validator("spacing")
    @classmethod
    def _spacing(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and (not v or not all(math.isfinite(x) and x > 0 for x in v)):
            raise ValueError(f"needs positive spacings in mm, one per axis (e.g. 0.7,0.7), got {v}")
        return v

    @model_validator(mode="after")
    def _one_choice(self):
        if self.subject is not None and self.all_subjects:
            raise ValueError("condition.subject and condition.all_subjects exclude each other; give one (--subject or --all)")
        return self


class SampleSettings(Section):
    """Settings of ``medgen sample``."""

    prior: str = Field("", description="The prior artefact (made by medgen train-prior).")
    num_samples: int = Field(16, ge=1, description="Samples to draw (per subject, or per condition item, when conditional).")
    batch_size: int = Field(16, ge=1, description="Samples drawn at once.")
    sampler: SamplerSettings = Field(default_factory=SamplerSettings, description="How tokens (or diffusion latents) are drawn.")
    condition: SampleConditionSettings = Field(
        default_factory=SampleConditionSettings, description="Subjects and labels for conditional priors."
    )
    nifti: bool = Field(True, description="Also write nifti/<id>.nii.gz in physical units.")
    previews: bool = Field(True, description="Write PNG previews (a grid for 2D, orthogonal views for 3D).")
    tiling: TilingSettings = Field(default_factory=TilingSettings, description="Tiled decoding of volumes too large for memory.")
    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings, description="Seed, device and threads.")
