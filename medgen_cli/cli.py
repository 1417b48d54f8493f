"""The ``medgen`` command line: one short function per subcommand.

Each command loads settings (defaults -> --config -> --set -> flags), calls ``steps.<step>.run``
and turns known errors into one clear sentence and an exit code: 0 success, 1 the step failed
(e.g. some inputs were bad: they are named), 2 usage or settings error.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.text import Text

from . import __version__
from .errors import MedgenError, StepFailed, UsageError, os_error_sentence
from .settings import load_settings
from .windows import preset_list

app = typer.Typer(
    name="medgen",
    help="Train generative models of medical images and sample new ones.\n\n"
    "Steps chain through artefact directories: preprocess -> train-ae -> encode-latents -> train-prior -> sample.",
    rich_markup_mode="rich",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Show default settings or check a settings file.", no_args_is_help=True)
app.add_typer(config_app, name="config")

console = Console(stderr=True)
out_console = Console()
log = logging.getLogger("medgen_cli")

EXIT_FAILED = StepFailed.exit_code


# ------------------------------------------------------------------------------------ shared bits
def _version(value: bool) -> None:
    if value:
        out_console.print(f"medgen {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show debug messages and tracebacks."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only warnings and errors; no progress bars."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    root = logging.getLogger("medgen_cli")
    root.handlers[:] = [RichHandler(console=console, show_time=False, show_path=verbose, markup=False)]
    root.setLevel(level)
    root.propagate = False
    _state["verbose"], _state["quiet"] = verbose, quiet
    from .train.allocator import tune_allocator

    tune_allocator()  # keep freed tensor memory for reuse (see medgen_cli/train/allocator.py)


_state: dict[str, bool] = {"verbose": False, "quiet": False}


@contextmanager
def handled() -> Iterator[None]:
    """Turn every error into one red sentence and the README's exit code (a traceback only with -v).

    UsageError (settings, flags, input artefacts) -> 2; StepFailed, OS errors (a full disk, a
    permission), memory and anything unexpected -> 1.
    """
    try:
        yield
    except typer.Exit:
        raise
    except MedgenError as err:
        _fail(str(err), err.exit_code)
    except KeyboardInterrupt:
        _fail("interrupted; run the same command again to resume (training steps need --resume)", EXIT_FAILED)
    except OSError as err:
        _debug_traceback()
        _fail(os_error_sentence(err), EXIT_FAILED)
    except MemoryError:
        _debug_traceback()
        _fail("out of memory; lower the batch size (or data.patch_size) or free memory, then run the same command again",
              EXIT_FAILED)
    except Exception as err:  # noqa: BLE001 - the last line of defence: no traceback unless -v
        _debug_traceback()
        _fail(f"{type(err).__name__}: {err} (re-run with -v for the traceback)", EXIT_FAILED)


def _debug_traceback() -> None:
    if _state["verbose"]:
        console.print_exception()


MAX_MESSAGE = 2000  # characters of an error message printed (a message quoting a huge value stays readable)


def _fail(message: str, code: int) -> None:
    message = " ".join(str(message).split())
    if len(message) > MAX_MESSAGE:
        message = message[:MAX_MESSAGE] + "..."
    text = Text("error: ", style="bold red")
    text.append(message)  # plain text: a bracket in a path or value is never read as rich markup
    console.print(text, highlight=False, soft_wrap=True)  # no newlines inside paths: they stay copyable
    raise typer.Exit(code)


@contextmanager
def progress_bar(description: str) -> Iterator[Any]:
    """A rich progress bar; yields ``update(done, total, text)`` (silent with -q)."""
    if _state["quiet"]:
        yield lambda done, total, text="": None
        return
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[text]}", markup=False),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False) as bar:
        task = bar.add_task(description, total=None, text="")

        def update(done: int, total: int, text: str = "") -> None:
            bar.update(task, completed=done, total=total, text=text)

        yield update


def _print_table(title: str, columns: tuple[str, ...], rows) -> None:
    from rich.table import Table

    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    out_console.print(table)


CONFIG_OPT = typer.Option(None, "--config", "-c", help="Settings file (YAML, JSON or TOML); `medgen config show STEP` prints one.")
SET_OPT = typer.Option([], "--set", "-s", help="Override one setting: key.path=value (repeatable).")
OVERWRITE_OPT = typer.Option(False, "--overwrite", help="Replace the output directory if it exists.")
THREADS_OPT = typer.Option(None, "--threads", min=0, help="CPU threads of this step (runtime.threads; default 0 = one per physical core). "
                           "--threads 1 keeps a step steady on a machine other work shares.")


def _parse_shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise UsageError(f"--shard {text[:40]!r} must look like I/N, e.g. 0/4") from None
    if not 0 <= i < n:
        raise UsageError(f"--shard {text!r} needs 0 <= I < N (shards are numbered from 0), e.g. 0/4 ... 3/4")
    return i, n


def _preprocess_threads(threads: int) -> None:
    """Apply ``runtime.threads`` to preprocess's multi-threaded parts: SimpleITK's filters (resampling)
    and torch (derived stores); 0 keeps their defaults."""
    if not threads:
        return
    import SimpleITK as sitk

    from .train.precision import set_threads

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    set_threads(threads)


# ------------------------------------------------------------------------------------- preprocess
@app.command("preprocess", epilog="Example: medgen preprocess data/*.nrrd --out prep/ --window lung --spacing 1.5")
def preprocess_cmd(
    inputs: list[str] = typer.Argument(..., help="Files, directories (DICOM series or image folders) or glob patterns."),
    out: str = typer.Option(..., "--out", "-o", help="Output artefact directory or fsspec URL (s3://bucket/run/name)."),
    config: Optional[Path] = CONFIG_OPT,
    set_: list[str] = SET_OPT,
    mode: Optional[str] = typer.Option(None, help="volume, slices or sequence."),
    spacing: Optional[str] = typer.Option(None, help="Resample to this spacing in mm, e.g. 1.5 or 0.8,0.8,2."),
    fit: Optional[str] = typer.Option(None, help="Fit into this size keeping the aspect ratio, e.g. 64,64[,64]."),
    shape: Optional[str] = typer.Option(None, help="Crop or pad to this shape."),
    window: Optional[str] = typer.Option(None, help=f"CT window centre,width in HU or a preset ({preset_list()})."),
    modality: Optional[str] = typer.Option(None, help="Force the modality: CT, MR, XR or OT."),
    orientation: Optional[str] = typer.Option(None, help="Canonical orientation, default RAS."),
    derive: Optional[list[str]] = typer.Option(None, help="Derived paired store: drr, lowdose, downsample:F (repeatable)."),
    split: Optional[str] = typer.Option(None, help="Subject fractions train,val,test, e.g. 0.8,0.1,0.1."),
    seed: Optional[int] = typer.Option(None, help="Seed of the split (and of derived noise)."),
    subject_pattern: Optional[str] = typer.Option(None, help="Regex whose group 'subject' is the subject id."),
    subject_csv: Optional[Path] = typer.Option(None, help="CSV with columns path,subject[,split]; a split pins that subject (train/val/test)."),
    masks: Optional[str] = typer.Option(None, "--masks", help="Label image per input, stored on each item's grid in the store 'masks': suffix:_label (lung1_image.nrrd -> lung1_label.nrrd), csv:FILE (columns path,mask), csv (the --subject-csv mask column) or pattern:TEMPLATE with {stem} and {dir}."),
    dtype: Optional[str] = typer.Option(None, help="Stored type: float16, float32 or int16."),
    workers: Optional[int] = typer.Option(None, help="Worker processes."),
    shard: str = typer.Option("0/1", help="Process only shard I of N (0-based), e.g. 3/8 in a SLURM array."),
    strict: bool = typer.Option(False, help="Stop at the first bad input."),
    threads: Optional[int] = THREADS_OPT,
    overwrite: bool = OVERWRITE_OPT,
) -> None:
    """Read raw scans (NIfTI, DICOM, NRRD, MHA, PNG) into a chunked, compressed zarr store.

    Re-running the same command resumes an interrupted run.
    """
    from .settings import PreprocessSettings
    from .steps import preprocess

    with handled():
        flags = {
            "input.paths": list(inputs), "mode.kind": mode, "geometry.spacing": spacing, "geometry.fit": fit,
            "geometry.shape": shape, "intensity.window": window, "input.modality": modality,
            "geometry.orientation": orientation, "derive.outputs": derive or None, "split.fractions": split,
            "split.seed": seed, "input.subject_pattern": subject_pattern,
            "input.subject_csv": str(subject_csv) if subject_csv else None, "store.dtype": dtype, "masks.source": masks,
            "runtime.workers": workers, "runtime.threads": threads,
        }
        settings = load_settings(PreprocessSettings, config, set_, flags)
        _preprocess_threads(settings.runtime.threads)
        shard_index = _parse_shard(shard)
        with progress_bar("preprocess") as update:
            result = preprocess.run(settings, out, overwrite=overwrite, shard=shard_index, strict=strict,
                                    progress=update)
        if not result.committed:
            console.print(f"shard {escape(shard)} done; {escape(str(out))} is committed when the last shard finishes.")
            return
        counts = ", ".join(f"{n}: {c} items" for n, c in result.items.items())
        console.print(f"[green]wrote[/] {escape(str(out))} ({counts})" + (f", {result.skipped} inputs resumed" if result.skipped else ""))
        if result.failed:
            for path, reason in result.failed:
                console.print(f"[red]failed[/] {escape(reason if path in reason else f'{path}: {reason}')}", highlight=False)
            raise StepFailed(f"{len(result.failed)} input(s) failed; the other items were written")


# --------------------------------------------------------------------------------------- train-ae
@app.command("train-ae", epilog="Example: medgen train-ae --data prep/ --out ae/ --kind vqgan --max-minutes 10")
def train_ae_cmd(
    data: Optional[str] = typer.Option(None, "--data", "-d", help="Preprocessed artefact to train on (or data.path in --config)."),
    out: str = typer.Option(..., "--out", "-o", help="Output artefact directory or fsspec URL (s3://bucket/run/name)."),
    config: Optional[Path] = CONFIG_OPT,
    set_: list[str] = SET_OPT,
    kind: Optional[str] = typer.Option(None, "--kind", help="Autoencoder: vqvae, vqvae2, vqgan or klvae."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Optimizer steps."),
    max_minutes: Optional[float] = typer.Option(None, "--max-minutes", help="Wall-clock budget; stops at --steps or this, whichever comes first."),
    device: Optional[str] = typer.Option(None, "--device", help="auto, cpu, cuda or mps."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run from OUT.partial's last checkpoint."),
    threads: Optional[int] = THREADS_OPT,
    overwrite: bool = OVERWRITE_OPT,
) -> None:
    """Train a VQ-VAE, VQ-VAE-2, VQGAN or KL-VAE autoencoder (2D or 3D, from the data).

    Under torchrun (torchrun --nproc_per_node=N -m medgen_cli.cli train-ae ...) it trains with DistributedDataParallel; only rank 0 writes.
    """
    from .settings import TrainAESettings
    from .steps import train_ae

    with handled():
        flags = {"data.path": str(data) if data else None, "model.kind": kind, "train.steps": steps,
                 "train.max_minutes": max_minutes, "runtime.device": device, "runtime.threads": threads}
        settings = load_settings(TrainAESettings, config, set_, flags)
        main_rank = os.environ.get("RANK", "0") == "0"
        if not main_rank:
            _state["quiet"] = True  # one progress line per job, from rank 0
        with progress_bar("train-ae") as update:
            result = train_ae.run(settings, out, overwrite=overwrite, resume=resume, progress=update)
        if main_rank:
            s, val = result.summary, result.summary.get("val", {})
            best = (f", best validation SSIM {s['best_ssim']:.3f} at step {s['best_step']}"
                    if s.get("best_ssim") is not None else "")
            last = f", last SSIM {val['ssim']:.3f}, PSNR {val['psnr']:.1f} dB" if "ssim" in val else ""
            console.print(f"[green]wrote[/] {escape(str(out))} ({s['kind']}, {s['steps']} steps{best}{last}; "
                          f"weights from step {s['selected_step']})")


# --------------------------------------------------------------------------------- encode-latents
@app.command("encode-latents", epilog="Example: medgen encode-latents --ae ae/ --data prep/ --out lat/")
def encode_latents_cmd(
    ae: Optional[str] = typer.Option(None, "--ae", help="Autoencoder artefact to encode with (or ae in --config)."),
    data: Optional[str] = typer.Option(None, "--data", "-d", help="Preprocessed artefact whose items are encoded (all splits)."),
    out: str = typer.Option(..., "--out", "-o", help="Output artefact directory or fsspec URL (s3://bucket/run/name)."),
    config: Optional[Path] = CONFIG_OPT,
    set_: list[str] = SET_OPT,
    store: Optional[str] = typer.Option(None, "--store", help="Store of the data artefact: main (default) or a derived one, e.g. drr."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Items per forward pass."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="KL latents: float32 or float16 (VQ codes are always int16)."),
    device: Optional[str] = typer.Option(None, "--device", help="auto, cpu, cuda or mps."),
    threads: Optional[int] = THREADS_OPT,
    overwrite: bool = OVERWRITE_OPT,
) -> None:
    """Encode every item of a store with a trained autoencoder: int16 codes (VQ) or scaled posterior means (KL).

    Re-running the same command resumes an interrupted run.
    """
    from .settings import EncodeSettings
    from .steps import encode_latents

    with handled():
        flags = {"ae": str(ae) if ae else None, "data": str(data) if data else None, "store": store,
                 "batch_size": batch_size, "dtype": dtype, "runtime.device": device, "runtime.threads": threads}
        settings = load_settings(EncodeSettings, config, set_, flags)
        with progress_bar("encode-latents") as update:
            result = encode_latents.run(settings, out, overwrite=overwrite, progress=update)
        s = result.summary
        what = (f"grids of {s['num_embeddings']} codes" if s["is_vq"]
                else f"{s['latent_channels']}-channel latents x {s['latent_scale']:.4g}")
        resumed = f", {result.skipped} resumed" if result.skipped else ""
        console.print(f"[green]wrote[/] {escape(str(out))} ({s['items']} items: {s['ae_kind']} {what}, grid {s['grid_shape']}{resumed})")


# ------------------------------------------------------------------------------------ train-prior
@app.command("train-prior", epilog="Example: medgen train-prior --latents lat/ --out prior/ --kind transformer --condition lat_xray/")
def train_prior_cmd(
    latents: Optional[str] = typer.Option(None, "--latents", "-l", help="Latents artefact to train on (or data.path in --config)."),
    out: str = typer.Option(..., "--out", "-o", help="Output artefact directory or fsspec URL (s3://bucket/run/name)."),
    config: Optional[Path] = CONFIG_OPT,
    set_: list[str] = SET_OPT,
    kind: Optional[str] = typer.Option(None, "--kind", help="Prior: transformer, maskgit, pixelcnn or diffusion."),
    condition: Optional[list[str]] = typer.Option(None, "--condition", help="Latents artefact joined by item id or by subject (condition.join): a prefix for token priors, channels for diffusion (repeatable)."),
    label: Optional[str] = typer.Option(None, "--label", help="Item attribute whose values are class labels, e.g. view."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Optimizer steps."),
    max_minutes: Optional[float] = typer.Option(None, "--max-minutes", help="Wall-clock budget; stops at --steps or this, whichever comes first."),
    device: Optional[str] = typer.Option(None, "--device", help="auto, cpu, cuda or mps."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run from OUT.partial's last checkpoint."),
    threads: Optional[int] = THREADS_OPT,
    overwrite: bool = OVERWRITE_OPT,
) -> None:
    """Train a prior (causal transformer, MaskGIT, gated PixelCNN or latent diffusion UNet) over encode-latents' output.

    Under torchrun (torchrun --nproc_per_node=N -m medgen_cli.cli train-prior ...) it trains with DistributedDataParallel; only rank 0 writes.
    """
    from .settings import TrainPriorSettings
    from .steps import train_prior

    with handled():
        flags = {"data.path": str(latents) if latents else None, "prior.kind": kind,
                 "condition.paths": [str(c) for c in condition] if condition else None, "condition.label": label,
                 "train.steps": steps, "train.max_minutes": max_minutes, "runtime.device": device, "runtime.threads": threads}
        settings = load_settings(TrainPriorSettings, config, set_, flags)
        main_rank = os.environ.get("RANK", "0") == "0"
        if not main_rank:
            _state["quiet"] = True  # one progress line per job, from rank 0
        with progress_bar("train-prior") as update:
            result = train_prior.run(settings, out, overwrite=overwrite, resume=resume, progress=update)
        if main_rank:
            s, val = result.summary, result.summary.get("val", {})
            best = (f", best validation loss {s['best_loss']:.4f} at step {s['best_step']}"
                    if s.get("best_loss") is not None else "")
            bits = f", {val['bits_per_token']:.3f} bits/token" if "bits_per_token" in val else ""
            what = "latents" if s["kind"] == "diffusion" else "codes"
            console.print(f"[green]wrote[/] {escape(str(out))} ({s['kind']} over {s['grid_shape']} {what}, {s['steps']} steps{best}{bits}; "
                          f"weights from step {s['selected_step']})")


# ----------------------------------------------------------------------------------------- sample
@app.command("sample", epilog="Example: medgen sample --prior prior/ --out samples/ -n 16 --top-k 50")
def sample_cmd(
    prior: Optional[str] = typer.Option(None, "--prior", "-p", help="Prior artefact to sample from (or prior in --config)."),
    out: str = typer.Option(..., "--out", "-o", help="Output artefact directory or fsspec URL (s3://bucket/run/name)."),
    config: Optional[Path] = CONFIG_OPT,
    set_: list[str] = SET_OPT,
    num_samples: Optional[int] = typer.Option(None, "-n", "--num-samples", help="Samples to draw (per subject when conditional)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed; the same seed gives the same samples."),
    strategy: Optional[str] = typer.Option(None, "--strategy", help="greedy, top-k, top-p, multinomial or maskgit (default: top-k with --top-k, top-p with --top-p, else multinomial)."),
    top_k: Optional[int] = typer.Option(None, "--top-k", help="Draw among the K most likely tokens (alone it implies --strategy top-k)."),
    top_p: Optional[float] = typer.Option(None, "--top-p", help="Draw from the smallest set of tokens whose probability reaches P."),
    temperature: Optional[float] = typer.Option(None, "--temperature", help="Divide the logits by T (0 = greedy)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="MaskGIT decoding iterations (default 12), or diffusion/flow sampler steps (default: the prior's, 50)."),
    sampler: Optional[str] = typer.Option(None, "--sampler", help="Diffusion priors: ddim, ddpm or dpmpp_2m (DPM-Solver++ 2M); flow priors (diffusion.objective=flow): flow_euler or flow_heun (default: the prior's, ddim or flow_euler)."),
    eta: Optional[float] = typer.Option(None, "--eta", help="Diffusion priors: DDIM stochasticity, 0 = deterministic (default: the prior's, 0); dpmpp_2m and the flow samplers take 0 only."),
    guidance_scale: Optional[float] = typer.Option(None, "--guidance-scale", help="Diffusion priors: classifier-free guidance; 1 = the conditional model, 0 = the unconditional one (default: the prior's, 1)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Samples drawn at once."),
    condition: Optional[list[str]] = typer.Option(None, "--condition", help="Condition latents artefact (default: those the prior was trained with; repeatable)."),
    subject: Optional[str] = typer.Option(None, "--subject", help="Generate for this subject's condition items."),
    all_subjects: bool = typer.Option(False, "--all", help="Generate for every subject (item-joined priors: every condition item) of the condition artefacts."),
    label: Optional[str] = typer.Option(None, "--label", help="Class label for label-conditioned priors."),
    device: Optional[str] = typer.Option(None, "--device", help="auto, cpu, cuda or mps."),
    threads: Optional[int] = THREADS_OPT,
    overwrite: bool = OVERWRITE_OPT,
) -> None:
    """Draw samples from a prior and decode them with its autoencoder (found through the lineage).

    Writes samples.zarr, the sampled codes, NIfTI files in physical units and PNG previews. Re-running the same command resumes an interrupted run.
    """
    from .settings import SampleSettings
    from .steps import sample

    with handled():
        flags = {"prior": str(prior) if prior else None, "num_samples": num_samples, "runtime.seed": seed,
                 "sampler.strategy": strategy, "sampler.top_k": top_k, "sampler.top_p": top_p,
                 "sampler.temperature": temperature, "sampler.steps": steps, "batch_size": batch_size,
                 "sampler.scheduler": sampler, "sampler.eta": eta, "sampler.guidance_scale": guidance_scale,
                 "condition.paths": [str(c) for c in condition] if condition else None,
                 "condition.subject": subject, "condition.all_subjects": True if all_subjects else None,
                 "condition.label": label, "runtime.device": device, "runtime.threads": threads}
        settings = load_settings(SampleSettings, config, set_, flags)
        with progress_bar("sample") as update:
            result = sample.run(settings, out, overwrite=overwrite, progress=update)
        s = result.summary
        subjects = f" for {len(s['subjects'])} subject(s)" if s["subjects"] else ""
        console.print(f"[green]wrote[/] {escape(str(out))} ({s['samples']} samples of shape {s['shape']}{subjects}, "
                      f"{s['prior_kind']} prior, {s['strategy']}, seed {s['seed']})")


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
    device: Optional[str] = typer.Option(None, "--device", help="auto, cpu, cuda or mps."),
    config: Optional[Path] = CONFIG_OPT,
    set_: list[str] = SET_OPT,
    threads: Optional[int] = THREADS_OPT,
    overwrite: bool = OVERWRITE_OPT,
) -> None:
    """Score an autoencoder's reconstructions, or samples: distances, diversity, memorisation, paired metrics."""
    from .settings import EvaluateSettings
    from .steps import evaluate

    with handled():
        paths = {"ae": ae, "data": data, "samples": samples, "target": target}
        flags = {**{k: str(v) if v else None for k, v in paths.items()}, "split": split, "store": store,
                 "target_store": target_store, "axis": axis, "max_pictures": max_pictures,
                 "memorisation_threshold": threshold, "runtime.device": device, "runtime.threads": threads}
        settings = load_settings(EvaluateSettings, config, set_, flags)
        with progress_bar("evaluate") as update:
            result = evaluate.run(settings, out, overwrite=overwrite, progress=update)
        _print_table(f"{result.mode} metrics", ("section", "metric", "value"), result.rows)
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
    from .settings import ExportSettings
    from .steps import export

    with handled():
        flags = {"source": str(source), "format": fmt, "store": store, "split": split, "items": items,
                 "decode": decode or None, "runtime.device": device, "runtime.threads": threads}
        settings = load_settings(ExportSettings, config, set_, flags)
        with progress_bar("export") as update:
            result = export.run(settings, out, overwrite=overwrite, progress=update)
        s = result.summary
        if "modules" in s:
            _print_table(f"{s['format']} export of {s['source']}", ("module", "file", "max |difference| to PyTorch"),
                         [(m["name"], m["file"], f"{m['max_abs_diff']:.2e}") for m in s["modules"]])
            console.print(f"[green]wrote[/] {escape(str(out))} (every module within {s['tolerance']:g} of PyTorch)")
        else:
            synthetic = f", {s['synthetic']} marked synthetic" if s["synthetic"] else ""
            console.print(f"[green]wrote[/] {escape(str(out))} ({s['items']} item(s) as {s['format']}{synthetic})")


# ---------------------------------------------------------------------------------------- inspect
@app.command("inspect", epilog="Example: medgen inspect prep/ --json ; medgen inspect prep/ --check")
def inspect_cmd(
    path: str = typer.Argument(..., help="Any medgen artefact directory (or fsspec URL)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
    check: bool = typer.Option(False, "--check", help="Read and verify every chunk of every store (exit 1 if one is damaged)."),
) -> None:
    """Describe an artefact: kind, status, settings, lineage and, for stores, their contents."""
    from .steps import inspect as inspect_step

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
    from .settings import STEP_SETTINGS

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
    from .settings import settings_to_yaml

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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
