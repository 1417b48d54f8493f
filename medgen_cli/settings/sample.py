"""Settings of ``medgen sample``: the sampler (token rules, or a diffusion / flow sampler), the
conditions to draw for, tiling of the decode and the runtime."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, field_validator, model_validator

from .base import Section
from .common import RuntimeSettings
from .diffusion import DETERMINISTIC_SAMPLERS, SamplerName
from .tiling import TilingSettings


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
