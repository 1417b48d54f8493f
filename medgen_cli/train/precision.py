"""Device selection, mixed precision, memory format and CPU threads.

``auto`` picks CUDA, then MPS, then the CPU. Precision ``auto`` uses bf16 autocast on CUDA devices
that support it and, when the caller allows it (``cpu_bf16=True``, as ``train-ae`` does), on CPUs
with native bf16 arithmetic: AMX-BF16 or AVX512-BF16, read from /proc/cpuinfo's flags (``amx_bf16``,
``avx512_bf16``) because ``torch.backends.cpu.get_cpu_capability()`` reports the vector width
("AVX512") but not the bf16 extensions oneDNN uses for its bf16 convolutions and matmuls. Without
them oneDNN emulates bf16 and autocast is slower than fp32, so those CPUs, and MPS, stay in fp32.
Measured here (AVX512-BF16, no AMX; torch 2.13, one thread): a pair of 64-channel 3x3 convolutions
forward + backward 1.9x (2D) and 2.0x (3D) faster under bf16 autocast; whole default autoencoder
steps 1.6x (8 x 64^2) to 3.7x (1 x 32^3), though slower than fp32 on toy inputs (2 x 32^2).
``fp16`` autocast is CUDA-only and uses a gradient scaler. The weights, optimizer states, EMA
copies and checkpoints stay float32 under autocast; quantisers, losses and metrics run in float32
(they disable autocast or cast themselves).

Threads: `set_threads` applies ``runtime.threads`` (0 keeps torch's default, one per physical
core). How idle OpenMP threads wait is fixed when torch loads, so it cannot be set here: medgen's
package sets OMP_WAIT_POLICY=PASSIVE when unset (benchmarks/bench_contention.py).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from dataclasses import dataclass
from pathlib import Path

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


CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


@functools.lru_cache(maxsize=1)
def cpu_bf16_flags(cpuinfo: str = "/proc/cpuinfo") -> tuple[str, ...]:
    """The native-bf16 flags of this CPU among `CPU_BF16_FLAGS` (empty where /proc/cpuinfo is missing)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return ()
    line = next((ln for ln in text.splitlines() if ln.startswith(("flags", "Features"))), "")
    flags = set(line.partition(":")[2].split())
    return tuple(f for f in CPU_BF16_FLAGS if f in flags)


def native_bf16(device: torch.device) -> bool:
    """True where bf16 autocast is faster than fp32: CUDA with bf16 support, CPUs with AMX/AVX512-BF16."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        override = os.environ.get("MEDGEN_CPU_BF16")  # "0"/"1": tests and odd virtual machines
        return override == "1" if override in ("0", "1") else bool(cpu_bf16_flags())
    return False


def resolve_precision(name: str, device: torch.device, cpu_bf16: bool = False) -> Precision:
    """Precision for setting ``name`` in auto|fp32|bf16|fp16 on ``device``.

    Args:
        name: the setting.
        device: compute device.
        cpu_bf16: let ``auto`` pick bf16 on CPUs with native bf16 (autoencoders: measured);
            otherwise ``auto`` is bf16 on CUDA only, as before.
    """
    if name not in PRECISIONS:
        raise ValueError(f"precision={name!r} must be one of {PRECISIONS}")
    if name == "auto":
        ok = native_bf16(device) and (device.type == "cuda" or cpu_bf16)
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


def channels_last_format(spatial_dims: int) -> torch.memory_format:
    """torch.channels_last (2D) or torch.channels_last_3d (3D)."""
    if spatial_dims not in (2, 3):
        raise ValueError(f"channels_last needs spatial_dims 2 or 3, got {spatial_dims}")
    return torch.channels_last if spatial_dims == 2 else torch.channels_last_3d


def use_channels_last(setting: bool | None, precision: Precision) -> bool:
    """Whether `setting` (True, False or None = auto) puts convolutions in channels_last on ``precision.device``.

    auto: on for CUDA under bf16/fp16 (tensor cores want NHWC); off on CPUs, where oneDNN's bf16
    convolutions gain alone (1.1-1.2x for a 64-channel pair) but whole autoencoder steps lost
    (0.75-0.9x measured here: 1-channel stems, group norm and upsampling run slower in that layout).
    """
    if setting is not None and not isinstance(setting, bool):
        raise ValueError(f"channels_last={setting!r} must be true, false or null (auto)")
    if setting is not None:
        return setting
    return precision.device.type == "cuda" and precision.dtype is not None


def set_threads(threads: int) -> int:
    """Use ``threads`` CPU threads for torch's intra-op parallelism (0: keep torch's default); returns the count."""
    if threads < 0:
        raise ValueError(f"threads={threads} must be >= 0 (0 = torch's default)")
    if threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()
