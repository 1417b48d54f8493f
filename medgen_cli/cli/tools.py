"""The tool subcommands: ``evaluate``, ``export``, ``inspect`` and ``config show|validate``.

Like the pipeline's (`medgen_cli.cli.pipeline`): parse, load settings, call the step, print what it wrote.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from ..errors import StepFailed, UsageError
from ..loaders.summaries import ExportSummary
from ..settings import load_settings
from ._ui import console, handled, out_console, print_table, progress_bar
from .app import CONFIG_OPT, DEVICE_OPT, OVERWRITE_OPT, SET_OPT, THREADS_OPT, app, config_app


# ---------------------------------------------------------------------------------------- evaluate
@app.command("evaluate", epilog="Example: medgen evaluate --ae ae/ --data prep/ --split test --out eval/ ; "
             "medgen evaluate --samples samples/ --data prep/ --out eval_s/")
def evaluate_cmd(
    out: str = typer.Option(..., "--out", "-o", help="Output artefact directory or fsspec URL (s3://bucket/run/name)."),
    ae: Optional[str] = typer.Option(None, "--ae", help="Autoencoder artefact: reconstruction metrics of --data (for --samples: overrides the one in the lineage)."),
    data: Optional[str] = typer.Option(None, "--data", "-d", help="Preprocessed artefact with the real items."),
    samples: Optional[str] = typer.Option(None, "--samples", help="Samples artefact: distances, diversity and memorisation (with --data), paired metrics (with --target)."),
    target: Optional[str] = typer.Option(None, "--target", help="Preprocessed artefact with the ground truth of conditional samples, joined by condition item id or subject id."),
    split: Optional[str] = typer.Option(None, "--split", help="Split of the real items (default: test with --ae, train with --samples, every split with --target)."),
    store: Optional[str] = typer.Option(None, "--store", help="Store of --data: main or a derived one."),
    target_store: Optional[str] = typer.Option(None, "--target-store", help="Store of --target."),
    axis: Optional[int] = typer.Option(None, "--axis", help="Spatial axis of slice-wise SSIM for volumes: 0, 1 or 2."),
    max_pictures: Optional[int] = typer.Option(None, "--max-pictures", help="Items pictured (strips, views, MIPs, error maps)."),
    threshold: Optional[float] = typer.Option(None, "--memorisation-threshold", help="SSIM to the nearest training item above which a sample is flagged."),
    device: Optional[str] = DEVICE_OPT,
    config: Optional[Path] = CONFIG_OPT,
    set_: list[str] = SET_OPT,
    threads: Optional[int] = THREADS_OPT,
    overwrite: bool = OVERWRITE_OPT,
) -> None:
    """Score an autoencoder's reconstructions, or samples: distances, diversity, memorisation, paired metrics."""
    from ..settings import EvaluateSettings
    from ..steps import evaluate

    with handled():
        paths = {"ae": ae, "data": data, "samples": samples, "target": target}
        flags = {**{k: str(v) if v else None for k, v in paths.items()}, "split": split, "store": store,
                 "target_store": target_store, "axis": axis, "max_pictures": max_pictures,
                 "memorisation_threshold": threshold, "runtime.device": device, "runtime.threads": threads}
        settings = load_settings(EvaluateSettings, config, set_, flags)
        with progress_bar("evaluate") as update:
            result = evaluate.run(settings, out, overwrite=overwrite, progress=update)
        print_table(f"{result.mode} metrics", ("section", "metric", "value"), result.rows)
        flagged = result.metrics.get("memorisation", {}).get("flagged", 0)
        if flagged:
            console.print(f"[bold yellow]{flagged} sample(s) look like copies of training items[/]; "
                          f"see {escape(f'{out}/memorisation.csv')} and {escape(f'{out}/pictures/memorisation')}")
        console.print(f"[green]wrote[/] {escape(str(out))}")


# ------------------------------------------------------------------------------------------ export
@app.command("export", epilog="Example: medgen export samples/ --format nifti --out nii/ ; "
             "medgen export ae/ --format onnx --out ae_onnx/")
def export_cmd(
    source: str = typer.Argument(..., help="Preprocessed, samples or latents (with --decode) artefact; an autoencoder for model formats."),
    out: str = typer.Option(..., "--out", "-o", help="Output artefact directory or fsspec URL (s3://bucket/run/name)."),
    fmt: Optional[str] = typer.Option(None, "--format", "-f", help="nifti, nrrd, mha, dicom or png; torchscript, onnx or safetensors for models."),
    store: Optional[str] = typer.Option(None, "--store", help="Store to export (default: main; samples for a samples artefact)."),
    split: Optional[str] = typer.Option(None, "--split", help="Export only this split."),
    items: Optional[str] = typer.Option(None, "--items", help="Export only these item ids, e.g. id1,id2."),
    decode: bool = typer.Option(False, "--decode", help="Decode latents to images through their autoencoder."),
    device: Optional[str] = typer.Option(None, "--device", help="auto, cpu, cuda or mps (decoding latents)."),
    config: Optional[Path] = CONFIG_OPT,
    set_: list[str] = SET_OPT,
    threads: Optional[int] = THREADS_OPT,
    overwrite: bool = OVERWRITE_OPT,
) -> None:
    """Write a store's items as NIfTI, NRRD, MHA, DICOM or PNG, or an autoencoder as TorchScript, ONNX or safetensors."""
    from ..settings import ExportSettings
    from ..steps import export

    with handled():
        flags = {"source": str(source), "format": fmt, "store": store, "split": split, "items": items,
                 "decode": decode or None, "runtime.device": device, "runtime.threads": threads}
        settings = load_settings(ExportSettings, config, set_, flags)
        with progress_bar("export") as update:
            result = export.run(settings, out, overwrite=overwrite, progress=update)
        s = ExportSummary.model_validate(result.summary)
        if s.is_model:
            print_table(f"{s.format} export of {s.source}", ("module", "file", "max |difference| to PyTorch"),
                        [(m.name, m.file, f"{m.max_abs_diff:.2e}") for m in s.modules])
            console.print(f"[green]wrote[/] {escape(str(out))} (every module within {s.tolerance:g} of PyTorch)")
        else:
            synthetic = f", {s.synthetic} marked synthetic" if s.synthetic else ""
            console.print(f"[green]wrote[/] {escape(str(out))} ({s.items} item(s) as {s.format}{synthetic})")


# ---------------------------------------------------------------------------------------- inspect
@app.command("inspect", epilog="Example: medgen inspect prep/ --json ; medgen inspect prep/ --check")
def inspect_cmd(
    path: str = typer.Argument(..., help="Any medgen artefact directory (or fsspec URL)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
    check: bool = typer.Option(False, "--check", help="Read and verify every chunk of every store (exit 1 if one is damaged)."),
) -> None:
    """Describe an artefact: kind, status, settings, lineage and, for stores, their contents."""
    from ..steps import inspect as inspect_step

    def show(report: dict) -> None:
        if as_json:
            out_console.print_json(json.dumps(report))
        else:
            inspect_step.render(report, out_console)

    with handled():
        try:
            report = inspect_step.run(path, check=check)
        except StepFailed as err:  # a damaged store: show the whole report, then the one-sentence error
            if getattr(err, "report", None) is not None:
                show(err.report)
            raise
        show(report)


# ----------------------------------------------------------------------------------------- config
def _step_model(step: str):
    from ..settings import STEP_SETTINGS

    if step not in STEP_SETTINGS:
        raise UsageError(f"unknown step {step!r}; choose one of {', '.join(STEP_SETTINGS)}")
    return STEP_SETTINGS[step]


@config_app.command("show", epilog="Example: medgen config show preprocess > prep.yaml")
def config_show_cmd(
    step: str = typer.Argument(..., help="Step name, e.g. preprocess."),
    config: Optional[Path] = CONFIG_OPT,
    set_: list[str] = SET_OPT,
) -> None:
    """Print a step's settings (defaults, or resolved from --config/--set) as commented YAML."""
    from ..settings import settings_to_yaml

    with handled():
        settings = load_settings(_step_model(step), config, set_, {})
        sys.stdout.write(settings_to_yaml(settings))


@config_app.command("validate", epilog="Example: medgen config validate prep.yaml --step preprocess")
def config_validate_cmd(
    file: Path = typer.Argument(..., help="Settings file to check."),
    step: str = typer.Option(..., "--step", help="Step the file is for."),
) -> None:
    """Check a settings file; exit 2 with the bad keys if it is wrong."""
    with handled():
        load_settings(_step_model(step), file, [], {})
        console.print(f"[green]ok[/] {escape(str(file))} is valid {step} settings")
