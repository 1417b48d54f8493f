"""``prior.kind = pixelcnn``: a `GatedPixelCNN` over 2D VQ code maps; VQ-VAE-2 latents get a
`TwoLevelPixelCNN` (a top prior with self-attention and a bottom prior conditioned on the top codes)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the registry loads without torch (the settings read it); the work imports it on use
    from torch import Tensor, nn

from ..errors import UsageError
from ..models.priors.config import GatedPixelCNNConfig
from . import tokens as _tokens
from .registry import PriorKind, register_prior


def build(settings: Any, lat: Any, conds: list, num_classes: int | None, extra_channels: int = 0):
    from ..models.priors.pixelcnn import GatedPixelCNN, TwoLevelPixelCNN
    from ..train.prior_task import pixelcnn_loss

    p = settings.prior
    _tokens.require_codes(lat, "pixelcnn")
    if len(lat.grid_shape) != 2:
        raise UsageError(f"{lat.path} holds {len(lat.grid_shape)}D code grids {lat.grid_shape}, but prior.kind pixelcnn "
                         "models 2D grids only; use transformer or maskgit.")
    common = dict(num_embeddings=lat.num_embeddings, hidden_channels=p.hidden_channels, num_layers=p.num_layers,
                  kernel_size=p.kernel_size, dropout=p.dropout, num_classes=num_classes, num_heads=p.num_heads)
    if not lat.is_vqvae2:
        return GatedPixelCNN(GatedPixelCNNConfig(**common, attention_layers=list(p.attention_layers or ()))), pixelcnn_loss
    every_fourth = [i for i in range(p.num_layers) if i % 4 == 3] or [p.num_layers - 1]
    top = GatedPixelCNNConfig(**common, attention_layers=list(p.attention_layers) if p.attention_layers is not None
                              else every_fourth)
    bottom = GatedPixelCNNConfig(**common, attention_layers=[], cond_num_embeddings=lat.num_embeddings)
    return TwoLevelPixelCNN(top, bottom), pixelcnn_loss


def rebuild(config: dict[str, Any]) -> nn.Module:
    """One level, or a VQ-VAE-2 pair (``{"top": {...}, "bottom": {...}}``)."""
    from ..models.priors.pixelcnn import GatedPixelCNN, TwoLevelPixelCNN

    return TwoLevelPixelCNN(**config) if set(config) == {"top", "bottom"} else GatedPixelCNN(**config)


def sample(model: nn.Module, record: Any, n: int, cond: list[Tensor] | None, labels: Tensor | None, s: Any,
           generator) -> dict[str, Tensor]:
    from ..sampling.pixelcnn import pixelcnn_generate, two_level_generate

    kwargs = {"labels": labels, "sampler_kwargs": s.token_kwargs(), "generator": generator}
    if record.top_grid_shape:  # vqvae2: top codes first, then the bottom given them
        return two_level_generate(model, (n, *record.top_grid_shape), (n, *record.grid_shape), **kwargs)
    return {"main": pixelcnn_generate(model, (n, *record.grid_shape), **kwargs)}


def check_settings(p: Any) -> None:
    if p.kernel_size % 2 == 0:
        raise ValueError(f"prior.kernel_size = {p.kernel_size} must be odd")
    if p.attention_layers and p.hidden_channels % p.num_heads:
        raise ValueError(f"prior.hidden_channels = {p.hidden_channels} must be divisible by "
                         f"prior.num_heads = {p.num_heads} when pixelcnn uses attention")
    bad = [i for i in p.attention_layers or () if not 0 <= i < p.num_layers]
    if bad:
        raise ValueError(f"prior.attention_layers = {list(p.attention_layers)} must index layers "
                         f"0..{p.num_layers - 1}")


KIND = register_prior(PriorKind(
    name="pixelcnn", config=GatedPixelCNNConfig, build=build, rebuild=rebuild, sample=sample,
    strategy=_tokens.token_strategy("pixelcnn"), sampler_summary=_tokens.sampler_summary,
    condition_paths=False, settings_fields=frozenset({"hidden_channels", "num_layers", "kernel_size", "attention_layers"}),
    check_settings=check_settings))
