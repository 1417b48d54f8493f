"""Model export: an autoencoder's encoder and decoder as TorchScript or ONNX, each checked against
PyTorch after export; safetensors weights with a model card.

The encoder and decoder are exported as separate modules (small wrappers over the shared
autoencoder interface, see ``medgen_cli.models``):

* ``encoder``: image ``(B, 1, *spatial)`` -> latents (``encode_to_latents``: quantised codes for VQ
  models, the posterior mean for KL; not multiplied by the KL latent scale);
* ``decoder``: latents -> image (``decode_latents``; VQ models snap to their codebook first);
* VQ models also ``encoder_indices``: image -> int64 code indices (VQ-VAE-2: top and bottom grids)
  and ``decoder_indices``: indices -> image, the token path a discrete prior uses.

TorchScript modules are made with ``torch.jit.trace`` on a fixed example (batch 1, the training
input shape); ONNX files with PyTorch's TorchScript-based exporter (``dynamo=False``; the dynamo
exporter needs onnxscript) at opset ``ONNX_OPSET`` with a dynamic batch axis. Every exported file
is then loaded and run on a *different* input (batch 2) and its outputs compared with PyTorch's:
the largest absolute difference must stay within the tolerance (1e-4 by default), and integer
code indices must agree exactly. Tracing records the control flow of the example: the input
shape is fixed apart from the batch (shape checks in the models become constants).

ONNX needs the optional extra ``pip install 'medgen-cli[onnx]'`` (onnx and onnxruntime).
"""

from __future__ import annotations

import importlib.util
import logging
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from .. import __version__
from ..errors import StepFailed

if TYPE_CHECKING:  # the card reads the records; building them is the loaders' business
    from ..loaders.autoencoder import AutoencoderRecord
    from ..loaders.summaries import AutoencoderSummary

log = logging.getLogger(__name__)

ONNX_OPSET = 17
SUFFIX = {"torchscript": ".pt", "onnx": ".onnx"}


class ExportCheckError(StepFailed):
    """An exported model does not reproduce PyTorch's outputs."""


# ------------------------------------------------------------------------------------ wrappers
class LatentEncoder(nn.Module):
    """Image -> latents (``encode_to_latents`` of the autoencoder ``model``)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model.encode_to_latents(x)


class LatentDecoder(nn.Module):
    """Latents -> image (``decode_latents`` of the autoencoder ``model``)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, z: Tensor) -> Tensor:
        return self.model.decode_latents(z)


class IndexEncoder(nn.Module):
    """Image -> code indices (``encode_to_indices`` of the VQ autoencoder ``model``; VQ-VAE-2: (top, bottom))."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor):
        return self.model.encode_to_indices(x)


class IndexDecoder(nn.Module):
    """Code indices -> image (``decode_indices`` of the VQ autoencoder ``model``; VQ-VAE-2 takes top and bottom)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, *indices: Tensor) -> Tensor:
        return self.model.decode_indices(*indices)


@dataclass
class ModulePlan:
    """One module to export, with a tracing example and a different input to check it on.

    Args:
        name: file stem ("encoder", "decoder", ...).
        module: the wrapper.
        example: inputs traced (batch 1).
        check: inputs the check runs (batch 2).
        input_names, output_names: ONNX graph names.
    """

    name: str
    module: nn.Module
    example: tuple[Tensor, ...]
    check: tuple[Tensor, ...]
    input_names: list[str]
    output_names: list[str]


@dataclass
class ExportedModule:
    """An exported file and its check.

    Args:
        name: module name.
        path: the file written.
        max_abs_diff: largest absolute difference to PyTorch on the check input.
        input_shapes: shapes of the check inputs.
    """

    name: str
    path: Path
    max_abs_diff: float
    input_shapes: list[list[int]]

    def record(self) -> dict[str, Any]:
        return {"name": self.name, "file": self.path.name, "max_abs_diff": self.max_abs_diff,
                "check_input_shapes": self.input_shapes}


def _as_tuple(out) -> tuple[Tensor, ...]:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def random_input(model: nn.Module, input_shape: Sequence[int], batch: int,
                 value_range: tuple[float, float] = (-1.0, 1.0), seed: int = 0) -> Tensor:
    """Uniform random images ``(batch, in_channels, *input_shape)`` in ``value_range`` (seeded)."""
    lo, hi = value_range
    g = torch.Generator().manual_seed(seed)
    return lo + (hi - lo) * torch.rand(batch, int(model.config().get("in_channels", 1)), *input_shape, generator=g)


@torch.no_grad()
def plan_autoencoder(model: nn.Module, input_shape: Sequence[int], value_range: tuple[float, float] = (-1.0, 1.0),
                     seed: int = 0) -> list[ModulePlan]:
    """The modules of an autoencoder to export, with example and check inputs.

    Args:
        model: the autoencoder in eval mode (on the CPU).
        input_shape: spatial shape of the images (the training input shape).
        value_range: range of stored values the random inputs are drawn from.
        seed: seed of the random inputs.
    """
    x1 = random_input(model, input_shape, 1, value_range, seed)
    x2 = random_input(model, input_shape, 2, value_range, seed + 1)
    plans = [ModulePlan("encoder", LatentEncoder(model), (x1,), (x2,), ["image"], ["latents"])]
    z1, z2 = model.encode_to_latents(x1), model.encode_to_latents(x2)
    plans.append(ModulePlan("decoder", LatentDecoder(model), (z1,), (z2,), ["latents"], ["image"]))
    if model.is_vq:
        i1, i2 = _as_tuple(model.encode_to_indices(x1)), _as_tuple(model.encode_to_indices(x2))
        names = ["top", "bottom"] if len(i1) == 2 else ["indices"]
        plans.append(ModulePlan("encoder_indices", IndexEncoder(model), (x1,), (x2,), ["image"], names))
        plans.append(ModulePlan("decoder_indices", IndexDecoder(model), i1, i2, names, ["image"]))
    return plans


# ---------------------------------------------------------------------------------- exporters
def onnx_missing() -> str | None:
    """None when ONNX export works here, else what to install."""
    missing = [m for m in ("onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
    if missing:
        return (f"ONNX export needs the optional packages {' and '.join(missing)}; "
                "install them with pip install 'medgen-cli[onnx]'")
    return None


def _max_abs_diff(expected: Sequence[Tensor], got: Sequence[np.ndarray | Tensor]) -> float:
    if len(expected) != len(got):
        return float("inf")
    worst = 0.0
    for e, o in zip(expected, got):
        o = torch.as_tensor(np.asarray(o) if not isinstance(o, Tensor) else o)
        if tuple(o.shape) != tuple(e.shape):
            return float("inf")
        worst = max(worst, float((o.double() - e.double()).abs().max()) if e.numel() else 0.0)
    return worst


@contextmanager
def _quiet_tracing() -> Iterator[None]:
    """Tracing warns about every shape check it freezes; with a fixed input shape that is intended.
    TorchScript and the TorchScript-based ONNX exporter also warn that they are deprecated (torch 2.9+)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        yield


def export_torchscript(plan: ModulePlan, directory: Path) -> Path:
    """Trace ``plan.module`` on its example and save it as ``<name>.pt``."""
    with _quiet_tracing():
        traced = torch.jit.trace(plan.module, plan.example, check_trace=False)
    path = Path(directory) / f"{plan.name}.pt"
    traced.save(str(path))
    return path


def run_torchscript(path: Path, inputs: Sequence[Tensor]) -> tuple[Tensor, ...]:
    with torch.no_grad(), _quiet_tracing():
        return _as_tuple(torch.jit.load(str(path), map_location="cpu")(*inputs))


def export_onnx(plan: ModulePlan, directory: Path) -> Path:
    """Export ``plan.module`` to ``<name>.onnx`` with a dynamic batch axis and validate the graph."""
    import onnx

    path = Path(directory) / f"{plan.name}.onnx"
    axes = {n: {0: "batch"} for n in plan.input_names + plan.output_names}
    with _quiet_tracing():
        torch.onnx.export(plan.module, plan.example, str(path), input_names=plan.input_names,
                          output_names=plan.output_names, dynamic_axes=axes, opset_version=ONNX_OPSET, dynamo=False)
    onnx.checker.check_model(str(path))
    return path


def run_onnx(path: Path, input_names: Sequence[str], inputs: Sequence[Tensor]) -> list[np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # deterministic and polite on a shared machine
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, {n: t.numpy() for n, t in zip(input_names, inputs)})


def export_checked(plan: ModulePlan, fmt: str, directory: Path, tolerance: float = 1e-4) -> ExportedModule:
    """Export one module as ``fmt`` ("torchscript" | "onnx"), run the file and compare with PyTorch.

    Raises:
        ExportCheckError: the exported file's outputs differ by more than ``tolerance``.
    """
    if fmt not in SUFFIX:
        raise ValueError(f"model export format must be one of {', '.join(SUFFIX)}, got {fmt!r}")
    with torch.no_grad():
        expected = _as_tuple(plan.module(*plan.check))
    if fmt == "torchscript":
        path = export_torchscript(plan, directory)
        got = run_torchscript(path, plan.check)
    else:
        path = export_onnx(plan, directory)
        got = run_onnx(path, plan.input_names, plan.check)
    diff = _max_abs_diff(expected, got)
    if not diff <= tolerance:
        raise ExportCheckError(f"{path.name} differs from PyTorch by {diff:.3g} on a check input "
                               f"(tolerance {tolerance:g}); the export is not usable")
    log.info("%s: max |difference| to PyTorch %.3g", path.name, diff)
    return ExportedModule(plan.name, path, diff, [list(t.shape) for t in plan.check])


# ---------------------------------------------------------------------------------- model card
def _bullets(items: dict[str, Any]) -> str:
    return "\n".join(f"- {k}: {v}" for k, v in items.items() if v not in (None, "", [], {}))


def _lineage_lines(node: dict[str, Any], depth: int = 0) -> list[str]:
    role = f"{node['role']}: " if node.get("role") else ""
    kind = node.get("kind", "unreadable")
    lines = [f"{'  ' * depth}- {role}{kind} `{node['path']}`" + (f" ({node['created']})" if node.get("created") else "")]
    for child in node.get("inputs", []):
        lines += _lineage_lines(child, depth + 1)
    return lines


def _model_section(info: AutoencoderRecord, summary: AutoencoderSummary) -> str:
    config = info.config
    return _bullets({
        "architecture": f"{info.kind} ({info.spatial_dims}D), channels {config.get('channels')}",
        "input": f"(B, {config.get('in_channels', 1)}, {', '.join(map(str, info.input_shape or []))}) stored values",
        "latents": f"(B, {', '.join(map(str, info.latent_shape or []))})",
        "codebook": config.get("num_embeddings"),  # VQ configs only
        "latent scale (KL)": info.latent_scale,
        "parameters": summary.parameters,
        "weights": f"{info.weights} weights of step {info.step}",
    })


def _metrics_section(summary: AutoencoderSummary) -> str:
    val = summary.val
    return _bullets({
        "training steps": summary.steps,
        "best validation SSIM": (f"{summary.best_ssim:.4f} at step {summary.best_step}"
                                 if summary.best_ssim is not None else None),
        **{f"last validation {k}": f"{v:.4g}" for k, v in val.items() if isinstance(v, (int, float))},
    }) or "- none recorded"


def _data_section(data: dict[str, Any] | None) -> str:
    if not data:
        return "- the training data artefact was not available at export time"
    return _bullets({
        "items": data.get("items"), "subjects": data.get("subjects"), "splits": data.get("splits"),
        "shapes": data.get("shapes"), "modalities": data.get("modalities"), "intensity": data.get("intensity"),
        "spacing (mm)": f"{data.get('spacing_min')} .. {data.get('spacing_max')}",
    })


def _training_section(settings: dict[str, Any]) -> str:
    data = settings.get("data", {})
    return _bullets({
        "data": f"`{data.get('path')}` store {data.get('store')}, split {data.get('train_split')}",
        "loss": settings.get("loss"), "optimizer": settings.get("optim"),
        "train": {k: v for k, v in (settings.get("train") or {}).items() if k in ("steps", "max_minutes", "ema", "select", "precision")},
        "augmentation": settings.get("augment") if (settings.get("augment") or {}).get("enabled") else "none",
    })


def model_card(info: AutoencoderRecord, summary: AutoencoderSummary, settings: dict[str, Any],
               data: dict[str, Any] | None, lineage: dict[str, Any], source: str) -> str:
    """A model card (``README.md``) for exported autoencoder weights.

    Args:
        info: ``model.json`` of the autoencoder (`load_autoencoder_record`).
        summary: the autoencoder manifest's summary (steps, validation metrics, ...) as its record.
        settings: the autoencoder's resolved settings.
        data: summary of the training store (``Store.summary()``), or None when unavailable.
        lineage: ``artefacts.lineage`` of the autoencoder.
        source: the autoencoder artefact's path.
    """
    intensity = info.intensity or {}
    model, metrics = _model_section(info, summary), _metrics_section(summary)
    data_text, training = _data_section(data), _training_section(settings)
    mapping = (f"{intensity.get('method')} {intensity.get('in_low')}..{intensity.get('in_high')} {intensity.get('unit')} "
               f"-> [{intensity.get('out_low')}, {intensity.get('out_high')}]" + (" (clipped)" if intensity.get("clip") else ""))
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return f"""# medgen autoencoder: {info.kind} ({info.spatial_dims}D)

Exported by medgen {__version__} on {created} from `{source}`.

## Files
- `model.safetensors`: the weights (no pickled code).
- `model.json`: kind, architecture config, latent scale and intensity mapping; it rebuilds the model alone.

```python
import json
from safetensors.torch import load_file
from medgen_cli.models import build_autoencoder

info = json.load(open("model.json"))
model = build_autoencoder(**info["config"]).eval()
model.load_state_dict(load_file("model.safetensors"))
```

## Model
{model}

Inputs are stored values: physical values mapped by {mapping}. Map outputs back through the same
mapping to get physical units.

## Training data
{data_text}

## Training settings
{training}

## Metrics
{metrics}

## Lineage
{chr(10).join(_lineage_lines(lineage))}

## Intended use and limits
- Intended use: research on generative models of medical images (compression, latent
  representations, synthetic data for method development).
- Not a medical device. Do not use it, or images it produces, for diagnosis, treatment or any
  clinical decision.
- Trained on small data: the metrics above come from a few validation items of one data set and do
  not show how it behaves on other scanners, protocols, populations or pathologies.
- Reconstructions can hide or invent small structures. Mark every generated image as synthetic
  (medgen export does) and check generated images for memorised training patients
  (`medgen evaluate --samples`).
- The training images may be subject to data-use agreements that also bind these weights.
"""
