"""``medgen train-ae``: train a VQ-VAE, VQ-VAE-2, VQGAN or KL-VAE on a preprocessed artefact.

Orchestration only: read the data artefact, build datasets (whole items or patches) and the model
(``spatial_dims`` from the rank of the items), run the generic `Trainer` with the
`AutoencoderTask`, and write the artefact::

    ae/  manifest.json  settings.yaml
         model.safetensors   final weights (best or last per train.select; EMA weights if enabled)
         model.json          kind, config (rebuilds the model alone), latent_scale, data_range,
                             intensity mapping, spatial_dims, input_shape, patch_size
         checkpoints/        resumable checkpoints (last N + best.pt)
         metrics.jsonl  plots/losses.png  plots/recon_<step>.png

Under ``torchrun`` every rank trains on its shard of the data; only rank 0 writes, the other ranks
wait at barriers. ``resume=True`` continues ``OUT.partial`` from its last checkpoint.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import Subset

from ..artefacts import ArtefactWriter, input_ref
from ..data import ItemDataset, PatchDataset, build_augmentation, data_range, open_store
from ..errors import UsageError
from ..io import fs
from ..io.store import store_path
from ..loaders.autoencoder import AutoencoderRecord
from ..models.registry import build_autoencoder, build_discriminator
from ..settings.train import TrainAESettings
from ..train import distributed as dist_utils
from ..train.ae_task import AETaskConfig, AutoencoderTask, compile_pyramids, latent_scale
from ..train.loop import Trainer
from ..train.losses import ReconstructionLoss
from ..train.precision import channels_last_format, use_channels_last
from ._training import (MODEL_FILE, MODEL_JSON, data_loaders, finish_metrics, open_on_main, seed_everything,
                        training_runtime, write_model)

log = logging.getLogger(__name__)

__all__ = ["MODEL_FILE", "MODEL_JSON", "TrainAEResult", "run"]


@dataclass
class TrainAEResult:
    """What ``run`` returns.

    Args:
        out: the artefact directory (written by rank 0).
        summary: facts recorded in the manifest (steps, best step, last validation metrics, ...);
            empty on ranks other than 0.
        model: the final model (CPU, eval mode), for callers in the same process; on ranks other
            than 0 it holds the last weights (only rank 0 validates and knows the best).
        rank: this process's rank.
    """

    out: Path
    summary: dict[str, Any] = field(default_factory=dict)
    model: nn.Module | None = None
    rank: int = 0


@dataclass
class _Data:
    train: Any
    val: Any | None
    spatial_dims: int
    input_shape: tuple[int, ...]
    data_range: float
    value_range: tuple[float, float] | None
    intensity: dict[str, Any]
    meta_of: Any  # item id -> ImageMeta


# ------------------------------------------------------------------------------------------- data
def _open_data(settings: TrainAESettings) -> tuple[_Data, Any]:
    d = settings.data
    if not d.path:
        raise UsageError("no training data given; pass --data DIR (a preprocessed artefact) or set data.path.")
    ref = input_ref(d.path, "data", "preprocessed")
    try:
        store = open_store(store_path(d.path, d.store))
    except ValueError:
        raise UsageError(f"{d.path} has no store named {d.store!r} (data.store); see `medgen inspect {d.path}`.") from None
    try:
        if d.patch_size:
            train = PatchDataset(store, d.train_split, d.patch_size, seed=settings.runtime.seed)
            shape = tuple(train.patch_size)
        else:
            train = ItemDataset(store, d.train_split)
            shape = tuple(train.shape)
        span = data_range(store, d.train_split)
    except ValueError as err:
        raise UsageError(str(err)) from None
    mapping = store.meta(train.ids[0]).intensity
    value_range = (min(mapping.out_low, mapping.out_high), max(mapping.out_low, mapping.out_high)) if mapping.clip else None
    val = _validation_set(settings, store, train)
    return _Data(train, val, len(shape), shape, span, value_range, mapping.to_dict(), store.meta), ref


def _validation_set(settings: TrainAESettings, store: Any, train: Any) -> Any | None:
    """The first ``val_items`` items (or fixed patches) of the validation split; training items if it is empty."""
    d, n = settings.data, settings.train.val_items
    split = d.val_split if d.val_split and store.ids(d.val_split) else None
    if split is None:
        log.warning("split %r has no items: validation scores the first %d training items instead", d.val_split, n)
        split = d.train_split
    if d.patch_size:
        ds = PatchDataset(store, split, d.patch_size, seed=settings.runtime.seed + 1)  # epoch 0: fixed patches
        return Subset(ds, range(min(n, len(ds))))
    ids = store.ids(split)[:n]
    ds = ItemDataset(store, ids=ids)
    if tuple(ds.shape) != tuple(train.shape):
        raise UsageError(f"validation items have shape {ds.shape} but training items {train.shape}; preprocess them alike.")
    return ds


def _check_geometry(settings: TrainAESettings, data: _Data) -> None:
    m = settings.model
    if m.factorized_3d and data.spatial_dims != 3:
        raise UsageError("model.factorized_3d needs 3D items, but the data are 2D; set model.factorized_3d=false.")
    try:
        factor = m.factors(data.spatial_dims)
    except ValueError as err:
        raise UsageError(str(err)) from None
    if any(s % f for s, f in zip(data.input_shape, factor)):
        raise UsageError(
            f"items of shape {list(data.input_shape)} are not divisible by the model's downsampling factor {list(factor)}; "
            "preprocess with a fitting --shape, train on patches (data.patch_size) or change model.downsample."
        )


# ------------------------------------------------------------------------------------------ model
def _build_models(settings: TrainAESettings, spatial_dims: int) -> tuple[nn.Module, nn.Module | None]:
    kind = settings.model.kind
    try:
        config = settings.model.autoencoder_config(in_channels=1, spatial_dims=spatial_dims)
        model = build_autoencoder(kind, spatial_dims, config)
        disc = None
        if settings.adversarial.active(kind):
            a = settings.adversarial
            disc = build_discriminator(spatial_dims=spatial_dims, in_channels=1, channels=a.channels,
                                       num_layers=a.layers, norm=a.norm)
    except ValueError as err:
        raise UsageError(f"invalid model settings: {err}") from None
    return model, disc


# -------------------------------------------------------------------------------------------- run
def run(settings: TrainAESettings, out: Path | str, *, overwrite: bool = False, resume: bool = False,
        progress: Callable[[int, int, str], None] | None = None) -> TrainAEResult:
    """Train an autoencoder and write the ``autoencoder`` artefact ``out``.

    Args:
        settings: resolved settings.
        out: output directory.
        overwrite: replace an existing ``out`` (and discard an interrupted ``out.partial``).
        resume: continue an interrupted ``out.partial`` from its last checkpoint.
        progress: ``progress(step, total, text)`` after every optimizer step (rank 0 only).
    """
    with training_runtime(settings.runtime.device, settings.train.precision, settings.runtime.threads,
                          cpu_bf16=True, adaptive_threads=settings.runtime.adaptive_threads) as (ctx, device, precision):
        return _run(settings, fs.location(out), ctx, device, precision, overwrite, resume, progress)


def _run(settings, out, ctx, device, precision, overwrite, resume, progress) -> TrainAEResult:
    if settings.data.val_split == "test" and settings.train.select == "best":
        log.warning("data.val_split is 'test' and train.select 'best': the weights are chosen on the test split, so "
                    "scores on it are biased; validate on 'val' (or the training items) or set train.select=last")
    data, ref = _open_data(settings)
    _check_geometry(settings, data)
    seed_everything(settings.runtime.seed)  # identical initial weights on every rank
    model, disc = _build_models(settings, data.spatial_dims)
    # weights stay float32 (autocast computes in bf16/fp16); channels_last only changes the strides
    channels_last = use_channels_last(settings.train.channels_last, precision)
    memory_format = channels_last_format(data.spatial_dims) if channels_last else None
    for module in (model, disc):
        if module is not None:
            module.to(device=device, memory_format=memory_format or torch.preserve_format)

    # rank 0 owns the artefact; the others learn where it is
    writer = ArtefactWriter(out, "autoencoder", settings.model_dump(mode="json"), [ref], overwrite=overwrite,
                            resume=resume) if ctx.is_main else None
    partial = open_on_main(ctx, writer)

    d = settings.data
    loader_fn, val_batches = data_loaders(data.train, data.val, d.batch_size, d.num_workers, settings.runtime.seed,
                                          ctx, device)

    aug_opts = settings.augment.model_dump()
    if data.value_range is not None:
        aug_opts["fill"] = data.value_range[0]
    augmentation = build_augmentation(data.spatial_dims, aug_opts)
    loss = settings.loss
    adv = settings.adversarial
    task = AutoencoderTask(
        dist_utils.wrap_ddp(model, device),
        loader_fn,
        ReconstructionLoss(data.spatial_dims, loss.l1, loss.l2, loss.ms_ssim, data.data_range),
        device,
        val_batches=val_batches if data.val is not None else None,
        discriminator=dist_utils.wrap_ddp(disc, device) if disc is not None else None,
        augmentation=augmentation.to(device) if augmentation is not None else None,
        config=AETaskConfig(
            data_range=data.data_range, value_range=data.value_range, adversarial_loss=adv.loss,
            adversarial_weight=adv.weight, adversarial_start=adv.start_step, adaptive=adv.adaptive,
            image_dir=partial / "plots" if ctx.is_main else None, save_images=settings.train.save_images,
            meta_of=data.meta_of, memory_format=memory_format,
        ),
    )
    seed_everything(settings.runtime.seed * 1_000_003 + 7919 * ctx.rank + 1)  # per-rank training randomness
    trainer = Trainer(task, settings.optim, settings.train, precision, partial, ctx, progress)
    if settings.train.compile:  # after the weight EMA copied the eager model
        log.info("compiling %d encoder/decoder pyramids with torch.compile", compile_pyramids(model))
    resumed = trainer.resume() if resume else False
    log.info("training %s (%dD, input %s) on %s (%s%s), %d process(es)%s", settings.model.kind, data.spatial_dims,
             list(data.input_shape), device, precision.name, ", channels_last" if memory_format else "",
             ctx.world_size, ", resumed" if resumed else "")
    state = trainer.fit()

    weights, chosen_step = trainer.final_weights()
    final = build_autoencoder(model.kind, config=model.typed_config)
    final.load_state_dict(weights)
    final.eval()
    result = TrainAEResult(out=out, model=final, rank=ctx.rank)
    if ctx.is_main:
        result.summary = _finish(settings, data, partial, final, trainer, state, chosen_step, device, precision,
                                 memory_format is not None)
        writer.commit(result.summary)
        log.info("wrote %s", out)
    dist_utils.barrier()
    return result


def _finish(settings, data, partial, final, trainer, state, chosen_step, device, precision, channels_last) -> dict[str, Any]:
    """Latent scale (KL), model files and plots, and the manifest summary (rank 0)."""
    scale, scale_stats = None, {}
    if final.typed_config.scales_latents:  # continuous latents: a diffusion prior needs their scale
        n = min(settings.model.latent_scale_items, len(data.train))
        picks = np.linspace(0, len(data.train) - 1, n).round().astype(int).tolist()
        batches = torch.utils.data.DataLoader(Subset(data.train, picks), batch_size=settings.data.batch_size)
        final.to(device)
        scale, scale_stats = latent_scale(final, batches, device)
        final.cpu()
    record = AutoencoderRecord(
        kind=settings.model.kind,
        config=final.config(),
        latent_scale=scale,
        data_range=data.data_range,
        intensity=data.intensity,
        spatial_dims=data.spatial_dims,
        input_shape=list(data.input_shape),
        patch_size=list(settings.data.patch_size) if settings.data.patch_size else None,
        latent_shape=list(final.latent_shape(data.input_shape)),
        weights="ema" if settings.train.ema else "model",
        step=chosen_step,
        training_precision=precision.name,  # the weights are float32 either way
    )
    write_model(partial, final.state_dict(), record.model_dump(mode="json"))
    last_val = finish_metrics(partial)
    return {
        "kind": settings.model.kind,
        "spatial_dims": data.spatial_dims,
        "steps": state.step,
        "stopped_early": state.stopped_early,
        "selected_step": chosen_step,
        "best_step": state.best_step,
        "best_ssim": state.best_value,
        "val": last_val,
        "minutes": round(state.elapsed / 60.0, 3),
        "device": str(device),
        "precision": precision.name,
        "channels_last": channels_last,
        "compiled": settings.train.compile,
        "planned_steps": state.planned_steps,
        "world_size": trainer.ctx.world_size,
        "parameters": sum(p.numel() for p in final.parameters()),
        "latent_scale": scale,
        **scale_stats,
    }
