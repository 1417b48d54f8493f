"""``medgen train-prior``: train a prior over the latents of an ``encode-latents`` artefact.

Orchestration only: read the latents (and condition latents joined by item id or by subject,
``condition.join``), build the prior of
``prior.kind`` and its loss through the prior registry (``medgen_cli.priors``), run the generic
`Trainer` with the `PriorTask` (a `DiffusionTask` for priors over continuous latents, see
``steps/_diffusion.py``), and write the artefact::

    prior/  manifest.json  settings.yaml
            model.safetensors  final weights (best validation loss or last; EMA weights if enabled)
            model.json         kind, config (rebuilds the prior alone), latents (their summary),
                               conditions, join, classes, grid_shape, num_embeddings, spatial_dims
                               (diffusion: also latent, diffusion, sampling, condition_latents; masks
                               when conditioned on label maps, see ``steps/_mask_condition.py``;
                               spacing when conditioned on it, see ``steps/_spacing_condition.py``)
            checkpoints/  metrics.jsonl  plots/losses.png

Token priors (transformer, maskgit, pixelcnn) need VQ codes; vqvae2 latents get a PixelCNN pair
(a top prior with self-attention and a bottom prior conditioned on the top codes). Diffusion priors
model KL latents or the continuous latents of a VQ autoencoder. Training reuses train-ae's loop:
checkpoints, exact resume, DDP under torchrun, mixed precision, weight EMA.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Subset

from ..artefacts import ArtefactWriter
from ..data.latents import LatentsDataset, resolve_join
from ..errors import UsageError
from ..io import fs
from ..io.store import store_path
from ..loaders.latents import Latents, open_latents
from ..loaders.prior import PriorRecord
from ..loaders.summaries import summary_json
from ..priors import prior_kind
from ..priors.tokens import require_codes
from ..settings.prior import TrainPriorSettings
from ..train import distributed as dist_utils
from ..train.diffusion_task import DiffusionTask
from ..train.loop import Trainer
from ..train.prior_task import PriorObjective, PriorTask
from . import _diffusion
from ._training import data_loaders, finish_metrics, open_on_main, seed_everything, training_runtime, write_model

log = logging.getLogger(__name__)

SSIM_WINDOW = 11  # the window of the second validation tier's SSIM (metrics.ssim's default)


@dataclass
class TrainPriorResult:
    """What ``run`` returns.

    Args:
        out: the artefact directory (written by rank 0).
        summary: the manifest summary (empty on ranks other than 0).
        model: the final prior (CPU, eval mode).
        info: the ``model.json`` written (rank 0).
        rank: this process's rank.
    """

    out: Path
    summary: dict[str, Any] = field(default_factory=dict)
    model: nn.Module | None = None
    info: dict[str, Any] = field(default_factory=dict)
    rank: int = 0


# ------------------------------------------------------------------------------------------- data
def _classes(settings: TrainPriorSettings, lat: Latents) -> list[str]:
    attr = settings.condition.label
    if attr is None:
        return []
    values = set()
    for item_id in lat.store.ids():
        value = lat.store.item_attrs(item_id).get(attr)
        if value is None:
            raise UsageError(f"item {item_id!r} of {lat.path} has no attribute {attr!r} (condition.label).")
        values.add(str(value))
    return sorted(values)


def _datasets(settings: TrainPriorSettings, lat: Latents, conds: list[Latents], classes: list[str],
              wrap: Callable[[LatentsDataset], Any] | None = None):
    """Training and validation datasets (``wrap`` turns a `LatentsDataset` into what the prior trains on)."""
    d = settings.data
    levels = {"top": store_path(lat.path, "top")} if lat.is_vqvae2 else {}
    common = dict(levels=levels, condition_stores=[c.store for c in conds], join=_join(settings, lat, conds),
                  label_attr=settings.condition.label, classes=classes)
    try:
        train = LatentsDataset(lat.store, d.train_split, **common)
    except ValueError as err:
        raise UsageError(str(err)) from None
    val = None
    if d.val_split and lat.store.ids(d.val_split):
        try:
            val = LatentsDataset(lat.store, d.val_split, **common)
            if conds and [len(i) for i in val.samples[0][2]] != [len(i) for i in train.samples[0][2]]:
                raise ValueError("its subjects have another number of condition items than the training subjects")
        except ValueError as err:  # e.g. no validation subject has condition items
            log.warning("validation split %r is unusable: %s", d.val_split, err)
            val = None
    if val is None:
        log.warning("validation scores the first %d training items instead", settings.train.val_items)
        val = train
    if conds:
        first = train.samples[0][2]
        for cond, ids in zip(conds, first):
            cond.items_per_subject = len(ids)
    if wrap is not None:
        train, val = wrap(train), wrap(val)
    return train, Subset(val, range(min(settings.train.val_items, len(val))))


def _join(settings: TrainPriorSettings, lat: Latents, conds: list[Latents]) -> str:
    """The join of training items to condition items, resolved once (auto -> item or subject) and logged."""
    if not conds:
        return "subject"
    try:
        join = resolve_join(lat.store, [c.store for c in conds], settings.condition.join)
    except ValueError as err:
        raise UsageError(f"{err}.") from None
    why = {"item": "each item with the condition item of the same id",
           "subject": "each item with every condition item of its subject"}[join]
    log.info("condition.join = %s -> %s: %s", settings.condition.join, join, why)
    return join


def _sample_check(settings: TrainPriorSettings, lat: Latents, conds: list[Latents], diffusion, val, device):
    """The second validation tier (None when off); refused up front for items it cannot score.

    It scores samples by SSIM with an 11-voxel window: over whole items, or slice by slice across
    the thin axis of a volume (a 2D+T sequence of 8 frames). Smaller items would fail at the first
    validation, after training time was spent.
    """
    check = _diffusion.sample_check(settings, lat, conds, diffusion, val, device)
    sizes = sorted(check.targets.shape[2:]) if check is not None else []
    if sizes and sizes[len(sizes) - 2] < SSIM_WINDOW:
        raise UsageError(f"diffusion.sample_every = {settings.diffusion.sample_every} scores samples by SSIM with an "
                         f"{SSIM_WINDOW}-voxel window, but the items are {list(check.targets.shape[2:])}; set "
                         "diffusion.sample_every to 0 and evaluate the samples with medgen evaluate --target.")
    return check


# -------------------------------------------------------------------------------------------- run
def run(settings: TrainPriorSettings, out: Path | str, *, overwrite: bool = False, resume: bool = False,
        progress: Callable[[int, int, str], None] | None = None) -> TrainPriorResult:
    """Train a prior and write the ``prior`` artefact ``out``.

    Args:
        settings: resolved settings.
        out: output directory.
        overwrite: replace an existing ``out`` (and discard an interrupted ``out.partial``).
        resume: continue an interrupted ``out.partial`` from its last checkpoint.
        progress: ``progress(step, total, text)`` after every optimizer step (rank 0 only).
    """
    with training_runtime(settings.runtime.device, settings.train.precision, settings.runtime.threads,
                          adaptive_threads=settings.runtime.adaptive_threads) as (ctx, device, precision):
        return _run(settings, fs.location(out), ctx, device, precision, overwrite, resume, progress)


def _run(settings, out, ctx, device, precision, overwrite, resume, progress) -> TrainPriorResult:
    d = settings.data
    if not d.path:
        raise UsageError("no latents given; pass --latents DIR (an encode-latents artefact) or set data.path.")
    kind = prior_kind(settings.prior.kind)
    lat = open_latents(d.path, "latents", d.store)
    conds = [open_latents(p, "condition", settings.condition.store) for p in settings.condition.paths]
    diffusion = None if kind.token else _diffusion.prepare(settings, lat, conds)  # continuous latents: codecs
    if kind.token:  # token priors read condition codes as a prefix
        for cond in conds:
            require_codes(cond, kind.name, what="condition")
    if lat.is_vqvae2 and d.store != "main":
        raise UsageError(f"data.store = {d.store!r}: for vqvae2 latents train on main (the top store is read with it).")
    classes = _classes(settings, lat)
    train, val = _datasets(settings, lat, conds, classes, wrap=diffusion.wrap if diffusion else None)
    join = _base(train).join

    seed_everything(settings.runtime.seed)  # identical initial weights on every rank
    try:
        extra = (diffusion.extra_channels,) if diffusion is not None else ()  # label-map and spacing channels
        prior, loss_fn = kind.build(settings, lat, conds, len(classes) or None, *extra)
    except UsageError:
        raise
    except ValueError as err:  # a model constructor refused its arguments
        raise UsageError(f"invalid prior settings: {err}") from None
    objective = PriorObjective(prior, loss_fn).to(device)

    # the sampling tier of diffusion validation runs on the main rank only; built before any output is written
    check = _sample_check(settings, lat, conds, diffusion, val, device) if diffusion is not None and ctx.is_main else None

    masks = diffusion.masks if diffusion is not None else None
    refs = [lat.ref, *[c.ref for c in conds], *([masks.ref] if masks is not None and masks.ref else [])]
    writer = ArtefactWriter(out, "prior", settings.model_dump(mode="json"), refs, overwrite=overwrite,
                            resume=resume) if ctx.is_main else None
    partial = open_on_main(ctx, writer)

    task = _make_task(settings, objective, train, val, check if diffusion is not None else False, device, ctx)
    seed_everything(settings.runtime.seed * 1_000_003 + 7919 * ctx.rank + 1)  # per-rank training randomness
    trainer = Trainer(task, settings.optim, settings.train, precision, partial, ctx, progress)
    resumed = trainer.resume() if resume else False
    log.info("training a %s prior over %s latents %s (%d items) on %s (%s)%s", settings.prior.kind,
             lat.summary.ae_kind, lat.grid_shape, len(train), device, precision.name,
             ", resumed" if resumed else "")
    state = trainer.fit()

    weights, chosen_step = trainer.final_weights()
    final = PriorObjective(kind.rebuild(prior.config()), loss_fn)
    final.load_state_dict(weights)
    final = final.prior.eval()
    result = TrainPriorResult(out=out, model=final, rank=ctx.rank)
    if ctx.is_main:
        info = _model_info(settings, lat, conds, classes, final, chosen_step, join)
        if diffusion is not None:
            info.update(_diffusion.model_info(settings, diffusion, lat, conds))
        PriorRecord.model_validate(info)  # what load_prior reads back: a typed record (raises on a missing key)
        result.info = info
        write_model(partial, final.state_dict(), result.info)
        last_val = finish_metrics(partial)
        result.summary = _summary(settings, lat, conds, classes, diffusion, join, state, chosen_step, final) | {
            "val": last_val, "device": str(device), "precision": precision.name, "world_size": ctx.world_size}
        writer.commit(result.summary)
        log.info("wrote %s", out)
    dist_utils.barrier()
    return result


def _make_task(settings: TrainPriorSettings, objective: nn.Module, train, val, check, device: torch.device,
               ctx) -> PriorTask | DiffusionTask:
    """The training task over ``train`` (validation on ``val``); ``check`` is the diffusion sampling check (None
    off the main rank), or False for token priors."""
    d = settings.data
    loader_fn, val_batches = data_loaders(train, val, d.batch_size, d.num_workers, settings.runtime.seed, ctx, device)
    common = dict(val_batches=val_batches if len(val) else None, val_seed=settings.runtime.seed)
    if check is False:
        return PriorTask(dist_utils.wrap_ddp(objective, device), loader_fn, device, **common)
    return DiffusionTask(dist_utils.wrap_ddp(objective, device), loader_fn, device, sample_check=check,
                         val_every=settings.train.val_every, total_steps=settings.train.steps, **common)


def _summary(settings: TrainPriorSettings, lat: Latents, conds: list[Latents], classes: list[str], diffusion,
             join, state, chosen_step: int, final: nn.Module) -> dict[str, Any]:
    """The manifest summary of a trained prior (without the runtime facts the caller adds)."""
    masks = diffusion.masks if diffusion is not None else None
    spacing = diffusion is not None and diffusion.spacing is not None
    return {
        "kind": settings.prior.kind, "grid_shape": lat.grid_shape, "num_embeddings": lat.num_embeddings,
        "conditional": bool(conds) or masks is not None or spacing, "join": join, "spacing": spacing,
        "masks": masks.info()["labels"] if masks is not None else None, "num_classes": len(classes) or None,
        "steps": state.step, "stopped_early": state.stopped_early, "selected_step": chosen_step,
        "best_step": state.best_step, "best_loss": state.best_value, "minutes": round(state.elapsed / 60.0, 3),
        "parameters": sum(p.numel() for p in final.parameters()),
    }


def _base(dataset) -> LatentsDataset:
    """The `LatentsDataset` under a wrapped training dataset (diffusion wraps it)."""
    return getattr(dataset, "base", dataset)


def _model_info(settings: TrainPriorSettings, lat: Latents, conds: list[Latents], classes: list[str],
                final: nn.Module, step: int, join: str | None) -> dict[str, Any]:
    return {
        "kind": settings.prior.kind,
        "config": final.config(),
        "latents": summary_json(lat.summary),  # the latents manifest's summary as it reads
        "latents_path": lat.ref.path,  # resolved (or a normalised URL)
        "store": lat.store_name,
        "levels": ["top", "bottom"] if lat.is_vqvae2 else ["main"],
        "grid_shape": lat.grid_shape,
        "top_grid_shape": lat.summary.stores["top"].grid_shape if lat.is_vqvae2 else None,
        "num_embeddings": lat.num_embeddings,
        "spatial_dims": lat.summary.spatial_dims,
        "conditions": [{"path": c.ref.path, "store": c.store_name, "role": "condition",
                        "num_embeddings": c.num_embeddings, "grid_shape": c.grid_shape,
                        "items_per_subject": c.items_per_subject} for c in conds],
        "join": join,  # item: condition item of the same id; subject: the subject's items (absent in old priors)
        "num_classes": len(classes) or None,
        "classes": classes,
        "label_attr": settings.condition.label,
        "weights": "ema" if settings.train.ema else "model",
        "step": step,
    }
