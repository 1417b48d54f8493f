"""Runtime set-up of a step in one place: CPU threads, compute device, seeds, the allocator and, for
training, the precision and the torchrun process group. Errors in a setting become `UsageError`s.

- `inference_device`: threads + device (+ torch seed) of a step that runs models without training them
  (encode-latents, sample, evaluate, export);
- `training_runtime`: the same plus precision, adaptive threads, allocator tuning and the process group;
- `seed_everything`: torch, numpy and Python's ``random`` at once;
- `preprocess_threads`: ``runtime.threads`` for preprocess (SimpleITK's filters and torch).
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import numpy as np
import torch

from .errors import UsageError
from .train import distributed as dist_utils
from .train.allocator import tune_allocator
from .train.distributed import DistContext
from .train.precision import Precision, resolve_precision, select_device, set_threads
from .train.threads import allow_adaptive

__all__ = ["inference_device", "preprocess_threads", "seed_everything", "training_runtime"]


def inference_device(device_name: str = "auto", threads: int = 0, seed: int | None = None) -> torch.device:
    """Set torch's CPU threads (0 = its default) and seed (None = leave it), and return the device for
    ``device_name`` in auto|cpu|cuda|mps; a wrong setting is a `UsageError`."""
    try:
        set_threads(threads)
        device = select_device(device_name)
    except ValueError as err:
        raise UsageError(str(err)) from None
    if seed is not None:
        torch.manual_seed(seed)
    return device


def seed_everything(seed: int) -> None:
    """Seed torch, numpy and Python's ``random``."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


@contextlib.contextmanager
def training_runtime(device_name: str, precision_name: str, threads: int = 0, cpu_bf16: bool = False,
                     adaptive_threads: bool = False) -> Iterator[tuple[DistContext, torch.device, Precision]]:
    """(ctx, device, precision) for one training run; the process group is destroyed on exit.

    Args:
        device_name: runtime.device (auto, cpu, cuda, mps).
        precision_name: train.precision (auto, fp32, bf16, fp16).
        threads: torch CPU threads (runtime.threads; 0 = torch's default).
        cpu_bf16: precision auto may pick bf16 on CPUs with native bf16 (train-ae).
        adaptive_threads: runtime.adaptive_threads (used only with threads 0; `medgen_cli.train.threads`).
    """
    try:
        set_threads(threads)
        allow_adaptive(adaptive_threads and threads == 0)
    except ValueError as err:
        raise UsageError(str(err)) from None
    tune_allocator()
    try:
        device = select_device(device_name, dist_utils.env_context().local_rank)
        precision = resolve_precision(precision_name, device, cpu_bf16=cpu_bf16)
    except ValueError as err:
        raise UsageError(str(err)) from None
    ctx = dist_utils.setup(device)
    try:
        yield ctx, device, precision
    finally:
        dist_utils.cleanup(ctx)


def preprocess_threads(threads: int) -> None:
    """Apply ``runtime.threads`` to preprocess's multi-threaded parts: SimpleITK's filters (resampling)
    and torch (derived stores); 0 keeps their defaults."""
    if not threads:
        return
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    set_threads(threads)
