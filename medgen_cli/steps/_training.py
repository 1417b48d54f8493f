"""What the trainable steps (train-ae, train-prior) share around the generic `Trainer`
(their runtime set-up, `training_runtime` and `seed_everything`, is in `medgen_cli.runtime`).

- `open_on_main`: rank 0 opens the artefact's ``OUT.partial`` and tells the other ranks where it is;
- `write_model`: ``model.safetensors`` + ``model.json`` (nothing pickled);
- `finish_metrics`: the ``plots/losses.png`` of ``metrics.jsonl`` and its last validation record.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from ..artefacts import ArtefactWriter
from ..errors import UsageError
from ..loaders import MODEL_FILE, MODEL_JSON
from ..runtime import seed_everything, training_runtime  # noqa: F401 - re-exported for the training steps
from ..train import distributed as dist_utils
from ..train.distributed import DistContext
from ..train.metrics_log import read_metrics
from ..train.checkpoint import write_atomic



def open_on_main(ctx: DistContext, writer: ArtefactWriter | None) -> Path:
    """Rank 0 opens ``writer`` (``OUT.partial``); every rank gets its path, or the same error."""
    opened = None
    if ctx.is_main:
        try:
            opened = ("ok", str(writer.open()))
        except Exception as err:
            dist_utils.broadcast_object(("error", str(err)))  # release the other ranks, then fail here
            raise
    status, text = dist_utils.broadcast_object(opened)
    if status == "error":
        raise UsageError(text)
    return Path(text)


def write_model(partial: Path, weights: dict[str, torch.Tensor], info: dict[str, Any]) -> None:
    """Write ``model.safetensors`` (the weights) and ``model.json`` (``info``) into ``partial``."""
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in weights.items()}
    # through a temporary file: a full disk is one sentence and leaves no half-written weights
    write_atomic(partial / MODEL_FILE, lambda tmp: save_file(tensors, str(tmp)), "write weights")
    text = json.dumps(info, indent=2) + "\n"
    write_atomic(partial / MODEL_JSON, lambda tmp: tmp.write_text(text), "write model.json")


def finish_metrics(partial: Path) -> dict[str, Any]:
    """Plot ``metrics.jsonl`` to ``plots/losses.png``; returns the last validation record (or {})."""
    from ..viz import plot_metrics

    path = partial / "metrics.jsonl"
    records = read_metrics(path) if path.exists() else []
    if records:
        plot_metrics(path, partial / "plots" / "losses.png")
    last = next((r for r in reversed(records) if r.get("phase") == "val"), {})
    return {k: v for k, v in last.items() if k not in ("step", "phase")}


def data_loaders(train, val, batch_size: int, num_workers: int, seed: int, ctx: DistContext,
                 device: torch.device) -> tuple[Callable[[int, int], Any], Callable[[], Any]]:
    """``(loader_fn, val_batches)`` of a training run: ``loader_fn(epoch, start_batch)`` gives this rank's
    shuffled shard of ``train`` positioned for a resume; ``val_batches()`` the validation batches in order."""
    from ..data import make_loader, set_epoch

    try:
        loader = make_loader(train, batch_size, shuffle=True, seed=seed, rank=ctx.rank, world_size=ctx.world_size,
                             num_workers=num_workers, drop_last=True, pin_memory=device.type == "cuda")
    except ValueError as err:
        raise UsageError(f"data.batch_size = {batch_size}: {err}") from None

    def loader_fn(epoch: int, start_batch: int):
        set_epoch(loader, epoch, start_batch)
        return loader

    def val_batches():
        return torch.utils.data.DataLoader(val, batch_size=batch_size, shuffle=False)

    return loader_fn, val_batches
