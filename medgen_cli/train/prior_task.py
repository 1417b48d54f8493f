"""The prior training task for the generic `Trainer`: token priors over VQ codes.

A prior and its loss are wrapped in one module, `PriorObjective`, whose ``forward(batch)`` returns
the loss terms: the forward pass that DistributedDataParallel must see is then the one the loss
runs. The loss of each prior kind is a plain function ``loss_fn(prior, batch, generator)`` (the
prior registry, ``medgen_cli.priors``, names each kind's): cross-entropy in nats as ``loss`` and
``bits_per_token``; the MaskGIT loss masks positions at random (from ``generator`` when given). A VQ-VAE-2 prior is a `TwoLevelPixelCNN` (a
top and a bottom PixelCNN, the bottom one conditioned on the top codes): its loss is the sum of both,
and bits per token are averaged over all tokens of both levels.

Validation scores loss and bits per token over the validation items; randomness (MaskGIT's masks)
comes from a generator seeded afresh at every validation, so the scores of two steps compare and
validation never touches the training random streams (exact resume).

Batches are dicts from `medgen_cli.data.latents.LatentsDataset`: ``codes`` (B, *grid) int64,
optional ``top`` (B, *top_grid), ``condition`` [(B, *grid_k), ...] and ``label`` (B,).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

LossFn = Callable[[nn.Module, dict[str, Any], "torch.Generator | None"], dict[str, Tensor]]


def transformer_loss(prior: nn.Module, batch: dict[str, Any], generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """Teacher-forced next-token cross-entropy of a `TransformerPrior` (prefix: condition grids, label)."""
    return prior.loss(batch["codes"], cond_tokens=batch.get("condition"), labels=batch.get("label"))


def maskgit_loss(prior: nn.Module, batch: dict[str, Any], generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """Masked-token cross-entropy of a `MaskGITPrior` with a cosine-schedule random mask."""
    return prior.loss(batch["codes"], cond_tokens=batch.get("condition"), labels=batch.get("label"),
                      generator=generator)


def pixelcnn_loss(prior: nn.Module, batch: dict[str, Any], generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """Cross-entropy of a `GatedPixelCNN`, or of a VQ-VAE-2 `TwoLevelPixelCNN` given the batch's top codes."""
    if "top" not in batch:
        return prior.loss(batch["codes"], labels=batch.get("label"))
    return prior.loss(batch["codes"], batch["top"], labels=batch.get("label"))


class PriorObjective(nn.Module):
    """A prior and its loss as one module (what the `Trainer` trains, averages and checkpoints).

    Args:
        prior: the prior (its weights are ``prior.*`` of this module's state dict).
        loss_fn: ``loss_fn(prior, batch, generator) -> {"loss", "bits_per_token", ...}``.
    """

    def __init__(self, prior: nn.Module, loss_fn: LossFn):
        super().__init__()
        self.prior = prior
        self.loss_fn = loss_fn

    def forward(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> dict[str, Tensor]:
        return self.loss_fn(self.prior, batch, generator)


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Move the tensors of a batch (and lists of them) to ``device``; other entries stay."""
    out: dict[str, Any] = {}
    for key, value in batch.items():
        if isinstance(value, Tensor):
            out[key] = value.to(device, non_blocking=True)
        elif isinstance(value, (list, tuple)) and value and all(isinstance(v, Tensor) for v in value):
            out[key] = [v.to(device, non_blocking=True) for v in value]
        else:
            out[key] = value
    return out


class PriorTask:
    """Training and validation of one prior.

    Args:
        objective: the `PriorObjective` (DDP-wrapped when distributed).
        loader_fn: ``loader_fn(epoch, start_batch)`` -> this rank's training batches.
        device: compute device.
        val_batches: ``val_batches()`` -> validation batches (None: no validation).
        val_seed: seed of the validation generator (MaskGIT masks).
    """

    best_metric = "loss"
    best_mode = "min"

    def __init__(self, objective: nn.Module, loader_fn: Callable[[int, int], Iterable[dict]], device: torch.device, *,
                 val_batches: Callable[[], Iterable[dict]] | None = None, val_seed: int = 0):
        self.modules: dict[str, nn.Module] = {"model": objective}
        self.loader_fn = loader_fn
        self.device = device
        self.val_batches = val_batches
        self.val_seed = val_seed

    def train_batches(self, epoch: int, start_batch: int) -> Iterable[dict]:
        return self.loader_fn(epoch, start_batch)

    def training_step(self, batch: dict, step: int) -> dict[str, Tensor]:
        out = self.modules["model"](to_device(batch, self.device))
        return {k: (v if k == "loss" else v.detach()) for k, v in out.items()}

    @torch.no_grad()
    def validation(self, model: nn.Module, step: int) -> dict[str, float]:
        if self.val_batches is None:
            return {}
        generator = torch.Generator(device=self.device).manual_seed(self.val_seed)
        sums: dict[str, float] = {}
        n = 0
        for batch in self.val_batches():
            batch = to_device(batch, self.device)
            size = int(batch["codes"].shape[0])
            for key, value in model(batch, generator=generator).items():
                sums[key] = sums.get(key, 0.0) + float(value) * size
            n += size
        if n == 0:
            return {}
        metrics = {k: v / n for k, v in sums.items()}
        metrics["perplexity"] = float(math.pow(2.0, min(metrics["bits_per_token"], 1000.0)))
        return metrics
