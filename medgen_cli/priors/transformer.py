"""``prior.kind = transformer``: a causal `TransformerPrior` over VQ codes (any grid), decoded token by token."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the registry loads without torch (the settings read it); the work imports it on use
    from torch import Tensor, nn

from ..models.priors.config import TransformerPriorConfig
from . import tokens as _tokens
from .registry import PriorKind, register_prior


def build(settings: Any, lat: Any, conds: list, num_classes: int | None, extra_channels: int = 0):
    from ..models.priors.transformer import TransformerPrior
    from ..train.prior_task import transformer_loss

    p = settings.prior
    _tokens.require_codes(lat, "transformer")
    _tokens.refuse_two_levels(lat)
    config = TransformerPriorConfig(
        num_embeddings=lat.num_embeddings, grid_shape=lat.grid_shape, dim=p.dim, depth=p.depth, num_heads=p.num_heads,
        mlp_ratio=p.mlp_ratio, dropout=p.dropout, cond_sources=_tokens.cond_sources(conds), num_classes=num_classes,
        ordering=p.ordering, ordering_seed=p.ordering_seed)
    return TransformerPrior(config), transformer_loss


def sample(model: nn.Module, record: Any, n: int, cond: list[Tensor] | None, labels: Tensor | None, s: Any,
           generator) -> dict[str, Tensor]:
    from ..sampling.autoregressive import generate

    tokens = generate(model, model.num_tokens, batch_size=n, condition=_tokens.prefix_condition(cond, labels),
                      sampler_kwargs=s.token_kwargs(), use_cache=s.use_cache, generator=generator)
    return {"main": model.tokens_to_grid(tokens)}


def _network():
    from ..models.priors.transformer import TransformerPrior

    return TransformerPrior


KIND = register_prior(PriorKind(
    name="transformer", config=TransformerPriorConfig, build=build, rebuild=lambda c: _network()(**c),
    sample=sample, strategy=_tokens.token_strategy("transformer"), sampler_summary=_tokens.sampler_summary,
    settings_fields=frozenset({"dim", "depth", "mlp_ratio", "ordering", "ordering_seed"}),
    check_settings=_tokens.check_heads))
