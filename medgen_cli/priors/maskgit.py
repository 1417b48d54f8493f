"""``prior.kind = maskgit``: a bidirectional `MaskGITPrior` over VQ codes, decoded in parallel iterations."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the registry loads without torch (the settings read it); the work imports it on use
    from torch import Tensor, nn

from ..models.priors.config import MaskGITPriorConfig
from . import tokens as _tokens
from .registry import PriorKind, register_prior

MASKGIT_STEPS = 12  # decoding iterations when sampler.steps is unset


def build(settings: Any, lat: Any, conds: list, num_classes: int | None, extra_channels: int = 0):
    from ..models.priors.maskgit import MaskGITPrior
    from ..train.prior_task import maskgit_loss

    p = settings.prior
    _tokens.require_codes(lat, "maskgit")
    _tokens.refuse_two_levels(lat)
    config = MaskGITPriorConfig(
        num_embeddings=lat.num_embeddings, grid_shape=lat.grid_shape, dim=p.dim, depth=p.depth, num_heads=p.num_heads,
        mlp_ratio=p.mlp_ratio, dropout=p.dropout, cond_sources=_tokens.cond_sources(conds), num_classes=num_classes)
    return MaskGITPrior(config), maskgit_loss


def sample(model: nn.Module, record: Any, n: int, cond: list[Tensor] | None, labels: Tensor | None, s: Any,
           generator) -> dict[str, Tensor]:
    from ..sampling.maskgit import maskgit_generate

    tokens = maskgit_generate(model, num_tokens=model.num_tokens, batch_size=n, steps=s.steps or MASKGIT_STEPS,
                              noise_temperature=s.noise_temperature, condition=_tokens.prefix_condition(cond, labels),
                              sampler_kwargs=s.token_kwargs(), generator=generator)
    return {"main": model.tokens_to_grid(tokens)}


def strategy(record: Any, s: Any, prior: str) -> str:
    """maskgit, or maskgit+<token rule> when the tokens of each iteration are drawn another way."""
    _tokens.refuse_diffusion_options("maskgit", s, prior)
    token = s.token_strategy()
    return "maskgit" if token == "multinomial" else f"maskgit+{token}"


def _network():
    from ..models.priors.maskgit import MaskGITPrior

    return MaskGITPrior


KIND = register_prior(PriorKind(
    name="maskgit", config=MaskGITPriorConfig, build=build, rebuild=lambda c: _network()(**c), sample=sample,
    strategy=strategy, sampler_summary=_tokens.sampler_summary,
    settings_fields=frozenset({"dim", "depth", "mlp_ratio"}), check_settings=_tokens.check_heads))
