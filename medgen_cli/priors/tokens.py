"""What the token prior kinds (transformer, maskgit, pixelcnn) share: checks of their latents, the
prefix conditions, the strategy recorded with a sample and the sampler summary."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import Tensor

from ..errors import UsageError

if TYPE_CHECKING:  # types only: the registry never imports the steps' loaders at run time
    from ..loaders.latents import Latents
    from ..settings.sample import SamplerSettings


def require_codes(lat: Latents, kind: str, what: str = "training data") -> None:
    """Refuse continuous latents, and code grids of varying shapes, for a token prior."""
    if not lat.summary.is_vq:
        raise UsageError(f"{lat.path} holds continuous {lat.summary.ae_kind} latents, but a {kind} prior "
                         f"needs VQ codes as {what}; encode with a vqvae, vqgan or vqvae2 autoencoder.")
    if lat.grid_shape is None:
        raise UsageError(f"the items of {lat.path} ({lat.store_name}) have code grids of different shapes; "
                         "a prior needs one grid, so preprocess with a fixed --shape.")


def refuse_two_levels(lat: Latents) -> None:
    if lat.is_vqvae2:
        raise UsageError(f"{lat.path} holds vqvae2 codes (a top and a bottom grid); model them with prior.kind pixelcnn.")


def cond_sources(conds: list[Latents]) -> list[dict[str, Any]]:
    """One prefix source per condition item of a subject (views get their own positions)."""
    return [{"num_embeddings": c.num_embeddings, "grid_shape": list(c.grid_shape)}
            for c in conds for _ in range(c.items_per_subject)]


def prefix_condition(cond: list[Tensor] | None, labels: Tensor | None) -> dict[str, Any]:
    return {"cond_tokens": cond or None, "labels": labels}


def refuse_diffusion_options(kind: str, s: SamplerSettings, prior: str) -> None:
    given = [k for k in ("scheduler", "eta", "guidance_scale") if k in s.diffusion_options()]
    if given:
        flag = {"scheduler": "--sampler"}.get(given[0], "--" + given[0].replace("_", "-"))
        raise UsageError(f"{flag} applies to diffusion priors, but {prior} is a {kind} prior.")


def token_strategy(kind: str):
    """The ``strategy`` of a token kind that draws token by token (refuses --strategy maskgit)."""

    def strategy(record: Any, s: SamplerSettings, prior: str) -> str:
        refuse_diffusion_options(kind, s, prior)
        if s.strategy == "maskgit":
            raise UsageError(f"--strategy maskgit needs a maskgit prior, but {prior} is a {kind} prior.")
        return s.token_strategy()

    return strategy


def sampler_summary(record: Any, s: SamplerSettings, prior: str) -> dict[str, Any]:
    """A token prior's sampler in the summary: the sampler settings as given."""
    return s.model_dump(mode="json")


def check_heads(p: Any) -> None:
    """Transformer widths split into attention heads."""
    if p.dim % p.num_heads:
        raise ValueError(f"prior.dim = {p.dim} must be divisible by prior.num_heads = {p.num_heads}")
