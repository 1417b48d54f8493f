"""Distributed data-parallel training under ``torchrun`` (PyTorch's own launcher, no home-made code).

``setup()`` reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT) and
initialises the process group: NCCL for CUDA devices, gloo otherwise. Without those variables it
returns a single-process context and every helper here is a no-op, so the same code runs alone.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

log = logging.getLogger(__name__)


@dataclass
class DistContext:
    """Where this process sits in the job.

    Args:
        rank: global rank.
        world_size: number of processes.
        local_rank: rank on this machine (selects the GPU).
        initialized: whether ``setup`` created the process group (and ``cleanup`` should end it).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialized: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def env_context() -> DistContext:
    """Rank and world size from torchrun's environment variables (no process group yet)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"torchrun environment RANK={rank}, WORLD_SIZE={world} is inconsistent")
    return DistContext(rank, world, local)


def setup(device: torch.device) -> DistContext:
    """Initialise the process group when launched by torchrun with more than one process.

    Args:
        device: this process's compute device; CUDA selects NCCL, anything else gloo.
    """
    ctx = env_context()
    if ctx.world_size == 1:
        return ctx
    if dist.is_initialized():  # someone else (a test, a notebook) owns the group
        return DistContext(dist.get_rank(), dist.get_world_size(), ctx.local_rank, initialized=False)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend, rank=ctx.rank, world_size=ctx.world_size)
    log.info("distributed: rank %d of %d (%s)", ctx.rank, ctx.world_size, backend)
    return DistContext(ctx.rank, ctx.world_size, ctx.local_rank, initialized=True)


def is_active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    if is_active():
        dist.barrier()


def cleanup(ctx: DistContext) -> None:
    """Destroy the process group if ``setup`` created it."""
    if ctx.initialized and dist.is_initialized():
        dist.destroy_process_group()


def wrap_ddp(module: nn.Module, device: torch.device) -> nn.Module:
    """DistributedDataParallel around ``module`` when distributed, else ``module`` itself.

    Trainable parameters and buffers are broadcast from rank 0 at construction, so every rank
    starts from the same weights (and the same codebook).
    """
    if not is_active() or not any(p.requires_grad for p in module.parameters()):
        return module
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids)


def unwrap(module: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (or the module itself)."""
    return module.module if isinstance(module, DistributedDataParallel) else module


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (a list of one element when not distributed)."""
    if not is_active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    if not is_active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on at least one (e.g. a time budget ran out)."""
    if not is_active():
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)
