"""The pipeline's subcommands: ``preprocess``, ``train-ae``, ``encode-latents``, ``train-prior`` and ``sample``.

Each one parses its flags, loads settings (defaults -> --config -> --set -> flags), calls ``steps.<step>.run``
and prints one line about what it wrote; errors become one sentence and an exit code (`_ui.handled`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from ..errors import StepFailed
from ..loaders.summaries import AutoencoderSummary, LatentsSummary, PriorSummary, SamplesSummary
from ..settings import load_settings
from ..windows import preset_list
from ._ui import console, handled, progress_bar, state
from .app import (CONFIG_OPT, DEVICE_OPT, MAX_MINUTES_OPT, OVERWRITE_OPT, RESUME_OPT, SET_OPT, STEPS_OPT, THREADS_OPT, app,
                  parse_shard)


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
    from ..runtime import preprocess_threads
    from ..settings import PreprocessSettings
    from ..steps import preprocess

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
        preprocess_threads(settings.runtime.threads)
        shard_index = parse_shard(shard)
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
    steps: Optional[int] = STEPS_OPT,
    max_minutes: Optional[float] = MAX_MINUTES_OPT,
    device: Optional[str] = DEVICE_OPT,
    resume: bool = RESUME_OPT,
    threads: Optional[int] = THREADS_OPT,
    overwrite: bool = OVERWRITE_OPT,
) -> None:
    """Train a VQ-VAE, VQ-VAE-2, VQGAN or KL-VAE autoencoder (2D or 3D, from the data).

    Under torchrun (torchrun --nproc_per_node=N -m medgen_cli.cli train-ae ...) it trains with DistributedDataParallel; only rank 0 writes.
    """
    from ..settings import TrainAESettings
    from ..steps import train_ae

    with handled():
        flags = {"data.path": str(data) if data else None, "model.kind": kind, "train.steps": steps,
                 "train.max_minutes": max_minutes, "runtime.device": device, "runtime.threads": threads}
        settings = load_settings(TrainAESettings, config, set_, flags)
        main_rank = os.environ.get("RANK", "0") == "0"
        if not main_rank:
            state["quiet"] = True  # one progress line per job, from rank 0
        with progress_bar("train-ae") as update:
            result = train_ae.run(settings, out, overwrite=overwrite, resume=resume, progress=update)
        if main_rank:
            s = AutoencoderSummary.model_validate(result.summary)
            val = s.val
            best = (f", best validation SSIM {s.best_ssim:.3f} at step {s.best_step}"
                    if s.best_ssim is not None else "")
            last = f", last SSIM {val['ssim']:.3f}, PSNR {val['psnr']:.1f} dB" if "ssim" in val else ""
            console.print(f"[green]wrote[/] {escape(str(out))} ({s.kind}, {s.steps} steps{best}{last}; "
                          f"weights from step {s.selected_step})")


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
    device: Optional[str] = DEVICE_OPT,
    threads: Optional[int] = THREADS_OPT,
    overwrite: bool = OVERWRITE_OPT,
) -> None:
    """Encode every item of a store with a trained autoencoder: int16 codes (VQ) or scaled posterior means (KL).

    Re-running the same command resumes an interrupted run.
    """
    from ..settings import EncodeSettings
    from ..steps import encode_latents

    with handled():
        flags = {"ae": str(ae) if ae else None, "data": str(data) if data else None, "store": store,
                 "batch_size": batch_size, "dtype": dtype, "runtime.device": device, "runtime.threads": threads}
        settings = load_settings(EncodeSettings, config, set_, flags)
        with progress_bar("encode-latents") as update:
            result = encode_latents.run(settings, out, overwrite=overwrite, progress=update)
        s = LatentsSummary.model_validate(result.summary)
        what = (f"grids of {s.num_embeddings} codes" if s.is_vq
                else f"{s.latent_channels}-channel latents x {s.latent_scale:.4g}")
        resumed = f", {result.skipped} resumed" if result.skipped else ""
        console.print(f"[green]wrote[/] {escape(str(out))} ({s.items} items: {s.ae_kind} {what}, grid {s.grid_shape}{resumed})")


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
    steps: Optional[int] = STEPS_OPT,
    max_minutes: Optional[float] = MAX_MINUTES_OPT,
    device: Optional[str] = DEVICE_OPT,
    resume: bool = RESUME_OPT,
    threads: Optional[int] = THREADS_OPT,
    overwrite: bool = OVERWRITE_OPT,
) -> None:
    """Train a prior (causal transformer, MaskGIT, gated PixelCNN or latent diffusion UNet) over encode-latents' output.

    Under torchrun (torchrun --nproc_per_node=N -m medgen_cli.cli train-prior ...) it trains with DistributedDataParallel; only rank 0 writes.
    """
    from ..settings import TrainPriorSettings
    from ..priors import prior_kind
    from ..steps import train_prior

    with handled():
        flags = {"data.path": str(latents) if latents else None, "prior.kind": kind,
                 "condition.paths": [str(c) for c in condition] if condition else None, "condition.label": label,
                 "train.steps": steps, "train.max_minutes": max_minutes, "runtime.device": device, "runtime.threads": threads}
        settings = load_settings(TrainPriorSettings, config, set_, flags)
        main_rank = os.environ.get("RANK", "0") == "0"
        if not main_rank:
            state["quiet"] = True  # one progress line per job, from rank 0
        with progress_bar("train-prior") as update:
            result = train_prior.run(settings, out, overwrite=overwrite, resume=resume, progress=update)
        if main_rank:
            s = PriorSummary.model_validate(result.summary)
            val = s.val
            best = (f", best validation loss {s.best_loss:.4f} at step {s.best_step}"
                    if s.best_loss is not None else "")
            bits = f", {val['bits_per_token']:.3f} bits/token" if "bits_per_token" in val else ""
            what = prior_kind(s.kind).draws  # codes (token priors) or latents, as the kind declares
            console.print(f"[green]wrote[/] {escape(str(out))} ({s.kind} over {s.grid_shape} {what}, {s.steps} steps{best}{bits}; "
                          f"weights from step {s.selected_step})")


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
    device: Optional[str] = DEVICE_OPT,
    threads: Optional[int] = THREADS_OPT,
    overwrite: bool = OVERWRITE_OPT,
) -> None:
    """Draw samples from a prior and decode them with its autoencoder (found through the lineage).

    Writes samples.zarr, the sampled codes, NIfTI files in physical units and PNG previews. Re-running the same command resumes an interrupted run.
    """
    from ..settings import SampleSettings
    from ..steps import sample

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
        s = SamplesSummary.model_validate(result.summary)
        subjects = f" for {len(s.subjects)} subject(s)" if s.subjects else ""
        console.print(f"[green]wrote[/] {escape(str(out))} ({s.samples} samples of shape {s.shape}{subjects}, "
                      f"{s.prior_kind} prior, {s.strategy}, seed {s.seed})")
