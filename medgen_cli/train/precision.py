"""Device selection and mixed precision.

``auto`` picks CUDA, then MPS, then the CPU. Precision ``auto`` uses bf16 autocast on CUDA devices
that support it and fp32 elsewhere (bf16 autocast on CPUs without native bf16 is slower than
fp32, and MPS support varies); ``fp16`` autocast is CUDA-only and uses a gradient scaler. Layers
that must stay in float32 (vector quantisation) disable autocast themselves.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def select_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """The torch device for ``name`` in auto|cpu|cuda|mps (under torchrun, cuda:LOCAL_RANK)."""
    if name not in DEVICES:
        raise ValueError(f"device={name!r} must be one of {DEVICES}")
    mps = getattr(torch.backends, "mps", None)
    has_mps = mps is not None and mps.is_available()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if has_mps else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device='cuda' was asked for but torch sees no CUDA device; use --device cpu or auto")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    if name == "mps" and not has_mps:
        raise ValueError("device='mps' was asked for but MPS is not available; use --device cpu or auto")
    return torch.device(name)


@dataclass
class Precision:
    """How forward passes run on ``device``: ``dtype`` None means fp32 (autocast off).

    Args:
        device: compute device.
        dtype: autocast dtype (torch.bfloat16 / torch.float16) or None.
    """

    device: torch.device
    dtype: torch.dtype | None = None

    def __post_init__(self) -> None:
        enabled = self.dtype == torch.float16 and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=enabled)

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)


def resolve_precision(name: str, device: torch.device) -> Precision:
    """Precision for setting ``name`` in auto|fp32|bf16|fp16 on ``device``."""
    if name not in PRECISIONS:
        raise ValueError(f"precision={name!r} must be one of {PRECISIONS}")
    if name == "auto":
        ok = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return Precision(device, torch.bfloat16 if ok else None)
    if name == "fp32":
        return Precision(device, None)
    if name == "fp16":
        if device.type != "cuda":
            raise ValueError(f"precision='fp16' needs a CUDA device, not {device.type}; use bf16 or fp32")
        return Precision(device, torch.float16)
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError("precision='bf16' is not supported by this GPU; use fp16 or fp32")
    return Precision(device, torch.bfloat16)
