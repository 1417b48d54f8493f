"""Steps versus quality of medgen's samplers on trained conditional latent priors (issue 15).

For example 04 (CT 2x super-resolution: 3D volumes, condition joined by subject) and example 05
(low-dose -> full-dose 2D+T sequences, joined by item), side by side in one run, from the same start noise:

- the example's diffusion prior with DDPM 1,000 (the reference), DDIM 50/20/10 (eta 0) and
  DPM-Solver++(2M) 20/10/5;
- a rectified-flow prior trained here on the same latents with the example's settings (objective flow;
  the diffusion-only fields -- prediction, min-SNR, noise schedule -- at their defaults) for the wall
  time the example's prior took (its manifest's ``minutes``, as ``train.max_minutes``, so the learning-
  rate schedule is sized by time; validations count in both budgets), sampled with Euler and Heun 30/10/5.

Every sampler runs through ``medgen sample``'s own code: settings from ``load_settings`` as the CLI builds
them (``--all --set condition.split=test -n 1 --seed K --sampler X --steps N``), the conditions from
``steps/_sample_jobs.jobs_for`` and ``steps/_diffusion.py``, the latents from the diffusion prior kind's ``sample``, decoding
and clipping as ``sample.run`` does, the generator seeded as ``sample.run`` seeds a condition's first
batch. So every configuration of one condition item and seed starts from the same x_T (captured by a
forward hook and compared: ``same_start_noise``).

Scores: ``metrics.items.item_metrics`` (medgen evaluate's paired metrics, data range = the true
range of the item's intensity window): each sample against its target (the true full-resolution CT, the
full-dose sequence) and against the DDPM-1,000 sample from the same noise. The headline SSIM is slice-wise
across axis 2, as both examples' evaluate calls report it (05's 8 frames are too thin for 3D SSIM).
Time: ``s_per_sample`` = drawing the latents + decoding one item (models loaded once; one warm-up),
median over items and seeds; ``denoiser_calls`` counts UNet evaluations (Heun: 2n - 1). Disturbed runs
are redone while the ``--quiet-wait`` budget lasts (benchmarks/README.md). Goal of the issue: a
configuration of <= 10 steps within 0.01 SSIM (against the targets) of DDPM-1,000 (``meets_goal``).

Writes ``benchmarks/results/few_step.json`` (``--quick``: ``few_step_quick.json``).

Run: ``.venv/bin/python -m benchmarks.bench_few_step [--run04 runs/04_ct_superres] [--run05 runs/05_ct_sequences]
[--runs 04,05] [--seeds 0,1] [--max-items 4] [--retrain] [--threads 2] [--quiet-wait 1800] [--quick]``.
The flow prior is written to ``RUN/prior_flow`` and reused by later runs (``--retrain`` trains it again).
``--quick`` builds two tiny runs of the same two shapes from phantoms in a temporary directory and uses a
short ladder (DDPM 100 as the reference): a one-minute smoke test of the script, figures meaningless.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from benchmarks.bench_samplers import DenoiserClock, mean_rows, timed
from benchmarks.common import BUSY_SHARE, ForeignLoad, QuietGate, ct_like_volume, training_running, write_result
from medgen_cli.artefacts import require
from medgen_cli.errors import UsageError
from medgen_cli.io.store import Store, store_path
from medgen_cli.settings import (
    EncodeSettings,
    PreprocessSettings,
    SampleSettings,
    TrainAESettings,
    TrainPriorSettings,
    load_settings,
    validate_settings,
)
from medgen_cli.settings.diffusion import DIFFUSION_ONLY, FLOW_SAMPLERS
from medgen_cli.steps import _diffusion, encode_latents, preprocess, sample, train_ae, train_prior
from medgen_cli.inference import AutoencoderTiler, TilingOptions
from medgen_cli.settings.tiling import TilingSettings
from medgen_cli.loaders.autoencoder import load_autoencoder
from medgen_cli.loaders.prior import PriorRecord, load_prior
from medgen_cli.priors import prior_kind
from medgen_cli.steps._sample_jobs import jobs_for
from medgen_cli.steps._sample_output import decode
from medgen_cli.loaders.latents import prior_lineage
from medgen_cli.metrics.items import item_metrics

LADDER = (("ddpm", 1000), ("ddim", 50), ("ddim", 20), ("ddim", 10), ("dpmpp_2m", 20), ("dpmpp_2m", 10),
          ("dpmpp_2m", 5), ("flow_euler", 30), ("flow_euler", 10), ("flow_euler", 5), ("flow_heun", 30),
          ("flow_heun", 10), ("flow_heun", 5))
QUICK_LADDER = (("ddpm", 100), ("ddim", 10), ("ddim", 5), ("dpmpp_2m", 5), ("dpmpp_2m", 3), ("flow_euler", 5),
                ("flow_euler", 3), ("flow_heun", 5), ("flow_heun", 3))
AXIS = 2  # slice-wise SSIM across the thick (04: 5 mm) or time (05: 8 frames) axis
GOAL_STEPS, GOAL_SSIM = 10, 0.01
RUN_NAMES = {"04": "04_ct_superres", "05": "05_ct_sequences"}

# --quick: tiny runs shaped like the examples' (preprocess settings, condition store, phantom shape, prior extras)
QUICK = {
    "04_ct_superres": (["mode.kind=volume", "geometry.fit=16,16,16", "intensity.window=0,2000",
                        "derive.outputs=[downsample:2]"], "downsample2", (32, 32, 16), []),
    "05_ct_sequences": (["mode.kind=sequence", "mode.length=4", "mode.stride=4", "geometry.fit=16,16",
                         "intensity.window=pulmonary-vessels", "derive.outputs=[lowdose]", "derive.lowdose_fraction=0.05",
                         "derive.lowdose_sigma=20"], "lowdose", (32, 32, 12), ["condition.join=item"]),
}
QUICK_AE = ["model.kind=klvae", "model.channels=8,8", "model.num_res_blocks=1", "model.latent_channels=4",
            "data.batch_size=1", "train.steps=2", "train.val_every=0", "train.checkpoint_every=2",
            "train.save_images=0", "runtime.device=cpu"]
QUICK_PRIOR = ["prior.kind=diffusion", "data.batch_size=1", "data.val_split=train", "train.steps=8", "train.val_every=8",
               "train.checkpoint_every=8", "optim.lr=3e-3", "runtime.device=cpu", "diffusion.schedule=cosine",
               "diffusion.prediction=v", "diffusion.min_snr_gamma=5", "diffusion.base_channels=8",
               "diffusion.channel_mults=1,2", "diffusion.num_res_blocks=1", "diffusion.num_heads=2",
               "diffusion.num_groups=4"]

NOTES = [
    "DDPM draws fresh noise at every step from the same generator, so it shares only x_T with the others; DDIM "
    "(eta 0), DPM-Solver++ and the flow samplers are deterministic given x_T.",
    "Diffusion samplers use the example prior's own schedule and parameterisation (model.json); DDIM and "
    "DPM-Solver++ use trailing timesteps (from t = T-1). Flow samplers integrate from t = 1 to 0 on the "
    "prior's shifted grid (resolution-aware shift from the latent grid unless diffusion.flow_shift is set).",
    "The flow prior and the example's prior had the same wall-clock budget; their step counts and the CPU "
    "share of other processes during the flow training are recorded (the example's prior was trained earlier, "
    "under whatever load the machine had then).",
    "SSIM and PSNR against DDPM-1,000 measure how closely a fast sampler reproduces the slow one; against the "
    "targets they measure the task. Flow rows are a different model: only their target scores compare.",
]


def key(name: str, steps: int) -> str:
    return f"{name}_{steps}"


# ----------------------------------------------------------------------------------------- quick
def make_quick_run(root: Path, name: str) -> Path:
    """A tiny run shaped like example 04 or 05: phantoms -> preprocess -> KL-VAE -> latents -> diffusion prior."""
    import nibabel as nib

    prep_args, low_store, shape, prior_args = QUICK[name]
    run, raw = root / name, root / name / "raw"
    raw.mkdir(parents=True)
    for i in range(2):  # one training and one held-out subject, as in the examples
        volume = ct_like_volume(shape, seed=i)
        nib.save(nib.Nifti1Image(volume, np.diag([1.5, 1.5, 2.5, 1.0])), str(raw / f"ct{i}.nii.gz"))
    preprocess.run(load_settings(PreprocessSettings, None, [
        f"input.paths=[{raw}]", "input.modality=CT", "split.fractions=0.5,0,0.5", "split.seed=1", "runtime.workers=0",
        *prep_args]), run / "prep")
    train_ae.run(load_settings(TrainAESettings, None, [f"data.path={run / 'prep'}", *QUICK_AE]), run / "ae")
    for store, out in (("main", "lat"), (low_store, "lat_low")):
        encode_latents.run(load_settings(EncodeSettings, None, [f"ae={run / 'ae'}", f"data={run / 'prep'}",
                                                                f"store={store}", "runtime.device=cpu"]), run / out)
    train_prior.run(load_settings(TrainPriorSettings, None, [
        f"data.path={run / 'lat'}", f"condition.paths=[{run / 'lat_low'}]", *QUICK_PRIOR, *prior_args]), run / "prior")
    return run


# ------------------------------------------------------------------------------------ flow prior
def flow_settings(prior: Path, minutes: float) -> TrainPriorSettings:
    """The example prior's resolved settings with objective flow, its inputs, and its wall time as the budget."""
    manifest = require(prior, "prior")
    tree = json.loads(json.dumps(manifest.settings))
    for name in (*DIFFUSION_ONLY, "sampler", "eta"):  # the flow objective's defaults (sampler: flow_euler)
        tree["diffusion"].pop(name, None)
    tree["diffusion"]["objective"] = "flow"
    tree["data"]["path"] = next(r.path for r in manifest.inputs if r.role == "latents")
    tree["condition"]["paths"] = [r.path for r in manifest.inputs if r.role == "condition"]
    steps = int(manifest.summary.get("steps") or tree["train"]["steps"])
    tree["train"].update(max_minutes=minutes, steps=20 * max(steps, int(tree["train"]["steps"])))  # time binds
    tree["runtime"]["device"] = "cpu"
    return validate_settings(TrainPriorSettings, tree)


def train_flow(prior: Path, out: Path, retrain: bool, gate: QuietGate) -> dict[str, Any]:
    """Train (or reuse) the rectified-flow twin of ``prior`` in ``out``."""
    minutes = float(require(prior, "prior").summary["minutes"])
    if out.exists() and not retrain:
        try:
            if require(out, "prior").settings["train"]["max_minutes"] == minutes:
                return {"reused": True, "budget_minutes": minutes}
        except UsageError:
            pass
    settings = flow_settings(prior, minutes)
    gate.wait()
    print(f"training a rectified-flow prior for {minutes:.2f} min -> {out}", flush=True)
    with ForeignLoad() as load:
        t0 = time.perf_counter()
        train_prior.run(settings, out, overwrite=True)
    return {"reused": False, "budget_minutes": minutes, "wall_s": round(time.perf_counter() - t0, 1),
            "foreign_cpu_share": round(load.share, 3)}


def prior_summary(path: Path) -> dict[str, Any]:
    m = require(path, "prior")
    d = m.settings["diffusion"]
    keep = ("objective", "schedule", "prediction", "min_snr_gamma", "flow_time_sampling", "flow_shift",
            "flow_base_grid_numel", "base_channels", "channel_mults", "p_uncond")
    return {"path": str(path.resolve()), "diffusion": {k: d.get(k) for k in keep},
            "train": {k: m.settings["train"].get(k) for k in ("steps", "max_minutes", "ema", "select")},
            **{k: m.summary.get(k) for k in ("steps", "minutes", "selected_step", "parameters", "stopped_early")}}


# -------------------------------------------------------------------------------------- sampling
@dataclass
class Prior:
    """A prior artefact loaded as ``sample.run`` loads it, with a clock on its denoiser.

    Args:
        path: the artefact; model, info: ``load_prior``'s; clock: times the UNet calls, keeps x_T.
    """

    path: Path
    model: nn.Module
    info: dict[str, Any]
    clock: DenoiserClock

    @property
    def record(self) -> PriorRecord:
        return PriorRecord.model_validate(self.info)

    @classmethod
    def open(cls, path: Path) -> Prior:
        model, info = load_prior(path, "cpu")
        return cls(path, model, info, DenoiserClock(model))


def sample_settings(prior: Path, name: str, steps: int, seed: int, split: str) -> SampleSettings:
    """What ``medgen sample --prior P --all --set condition.split=S -n 1 --seed K --sampler X --steps N`` builds."""
    flags = {"prior": str(prior), "num_samples": 1, "batch_size": 1, "runtime.seed": seed, "runtime.device": "cpu",
             "sampler.scheduler": name, "sampler.steps": steps, "sampler.eta": 0.0 if name == "ddim" else None,
             "condition.all_subjects": True, "condition.split": split, "nifti": False, "previews": False}
    return load_settings(SampleSettings, None, (), flags)


def held_out_items(priors: dict[str, Prior], data: Store, split: str, max_items: int) -> list[dict[str, Any]]:
    """The held-out condition items (first ``max_items``), each with its target and its condition per prior."""
    items = []
    for family, prior in priors.items():
        jobs, conds = jobs_for(sample_settings(prior.path, "ddim" if family == "diffusion" else "flow_euler", 1, 0,
                                                   split), prior.record, torch.device("cpu"))
        codecs = _diffusion.condition_codecs(prior.record, conds)
        for n, job in enumerate(jobs[:max_items]):
            if family == "diffusion":
                item = job.item or data.subjects()[job.subject][0]
                target, meta = data.read_item(item)
                items.append({"key": job.item or job.subject, "item": item, "target": target, "meta": meta, "cond": {}})
            if items[n]["key"] != (job.item or job.subject):
                raise SystemExit(f"{prior.path} draws for {job.item or job.subject}, the diffusion prior for {items[n]['key']}")
            items[n]["cond"][family] = _diffusion.prepare_conditions(prior.record, codecs, job.cond)
    return items


@torch.no_grad()
def draw(prior: Prior, ae: nn.Module, settings: SampleSettings, item: dict[str, Any], family: str):
    """One sample as ``sample.run`` draws, decodes and clips it; returns the image and its timing."""
    prior.clock.reset()
    t0 = time.perf_counter()
    generator = torch.Generator().manual_seed(sample._seed(settings.runtime.seed, item["key"], 0))
    draws = prior_kind("diffusion").sample(prior.model, prior.record, 1, item["cond"][family], None, settings.sampler,
                                         generator)
    t1 = time.perf_counter()
    image = decode(ae, prior.record.latents, draws)[0]
    mapping = item["meta"].intensity
    if mapping.clip:
        image = np.clip(image, *sorted((mapping.out_low, mapping.out_high)))
    t2 = time.perf_counter()
    calls = prior.clock.calls
    return image, {"total_s": t2 - t0, "sample_s": t1 - t0, "decode_s": t2 - t1, "denoiser_calls": len(calls),
                   "ms_per_denoiser_call": 1000 * statistics.median(calls) if calls else None}


def measure(priors: dict[str, Prior], ae: nn.Module, item: dict[str, Any], seed: int, sampler: str, steps: int,
            split: str, gate: QuietGate, reference: dict[str, Any]) -> dict[str, Any]:
    """One configuration on one item and seed, timed and scored; the first call of a seed is the reference."""
    family = "flow" if sampler in FLOW_SAMPLERS else "diffusion"
    prior = priors[family]
    settings = sample_settings(prior.path, sampler, steps, seed, split)
    (image, t), share = timed(lambda: draw(prior, ae, settings, item, family), gate)
    x_T = prior.clock.first_input[:1]
    first = not reference
    if first:
        reference.update(image=image, x_T=x_T)
    return {"item": item["item"], "seed": seed, "sampler": sampler, "steps": steps, "family": family, **t,
            "foreign_cpu_share": round(share, 3), "same_start_noise": bool(torch.equal(x_T, reference["x_T"])),
            "vs_target": item_metrics(image, item["target"], item["meta"], AXIS, item["item"]),
            "vs_reference": None if first else item_metrics(image, reference["image"], item["meta"], AXIS, item["item"])}


def bench_run(name: str, run: Path, flow_dir: Path, ladder, seeds: list[int], split: str, max_items: int,
              gate: QuietGate, retrain: bool) -> dict[str, Any]:
    """Every configuration of ``ladder`` on the held-out items of one example run."""
    training = train_flow(run / "prior", flow_dir, retrain, gate)
    priors = {"diffusion": Prior.open(run / "prior"), "flow": Prior.open(flow_dir)}
    lineage = prior_lineage(run / "prior")
    model_ae, _ = load_autoencoder(lineage.autoencoder, "cpu")
    ae = AutoencoderTiler(model_ae, TilingOptions(**TilingSettings().options()), torch.device("cpu"))  # as sample.run
    data = Store.open(store_path(lineage.data, lineage.data_store))
    items = held_out_items(priors, data, split, max_items)
    if not items:
        raise SystemExit(f"{run}: no condition item of split {split!r}")
    for family, sampler in (("diffusion", "ddim"), ("flow", "flow_euler")):  # untimed warm-up
        draw(priors[family], ae, sample_settings(priors[family].path, sampler, 2, 0, split), items[0], family)
    rows = []
    for item in items:
        for seed in seeds:
            reference: dict[str, Any] = {}
            for sampler, steps in ladder:
                rows.append(measure(priors, ae, item, seed, sampler, steps, split, gate, reference))
                r = rows[-1]
                versus = f" (vs reference {r['vs_reference']['ssim_slicewise']:.4f})" if r["vs_reference"] else ""
                print(f"{name} {item['item']} seed {seed} {sampler:10s} {steps:4d}: {r['total_s']:7.2f} s  SSIM "
                      f"{r['vs_target']['ssim_slicewise']:.4f}{versus}  PSNR {r['vs_target']['psnr']:.2f} dB  "
                      f"(other processes {r['foreign_cpu_share']:.0%} CPU)", flush=True)
    table = summarise(rows, ladder)
    return {"run_dir": str(run.resolve()), "split": split, "items": [i["item"] for i in items], "seeds": seeds,
            "diffusion_prior": prior_summary(run / "prior"), "flow_prior": {**prior_summary(flow_dir), **training},
            "same_start_noise": all(r["same_start_noise"] for r in rows), "table": table,
            "meets_goal": [k for k, e in table.items() if e["meets_goal"]], "rows": rows}


def summarise(rows: list[dict[str, Any]], ladder) -> dict[str, dict[str, Any]]:
    """Per configuration: median time, mean scores against the targets and against the reference (DDPM)."""
    table = {}
    for sampler, steps in ladder:
        rs = [r for r in rows if r["sampler"] == sampler and r["steps"] == steps]
        calls = [r["ms_per_denoiser_call"] for r in rs if r["ms_per_denoiser_call"] is not None]
        refs = [r["vs_reference"] for r in rs if r["vs_reference"]]
        table[key(sampler, steps)] = {
            "sampler": sampler, "steps": steps, "prior": rs[0]["family"], "denoiser_calls": rs[0]["denoiser_calls"],
            "s_per_sample": round(statistics.median(r["total_s"] for r in rs), 4),
            "sample_s": round(statistics.median(r["sample_s"] for r in rs), 4),
            "ms_per_denoiser_call": round(statistics.median(calls), 2) if calls else None,
            "foreign_cpu_share": max(r["foreign_cpu_share"] for r in rs),
            "vs_target": mean_rows([r["vs_target"] for r in rs]),
            "vs_reference": mean_rows(refs) if refs else None,  # None for the reference itself
        }
    ref = table[key(*ladder[0])]
    for entry in table.values():
        entry["speedup"] = round(ref["s_per_sample"] / entry["s_per_sample"], 2)
        entry["delta_ssim_vs_reference"] = round(entry["vs_target"]["ssim_slicewise"] - ref["vs_target"]["ssim_slicewise"], 5)
        entry["meets_goal"] = entry["steps"] <= GOAL_STEPS and entry["delta_ssim_vs_reference"] >= -GOAL_SSIM
    return table


def print_table(name: str, table: dict[str, dict[str, Any]]) -> None:
    print(f"\n{name}: sampler     steps calls  s/sample speedup | vs target: SSIM   PSNR  dSSIM | vs reference: SSIM   PSNR")
    for e in table.values():
        t, r = e["vs_target"], e["vs_reference"] or {"ssim_slicewise": 1.0, "psnr": float("inf")}
        print(f"  {e['sampler']:12s} {e['steps']:5d} {e['denoiser_calls']:5d} {e['s_per_sample']:9.3f} {e['speedup']:7.1f} | "
              f"{t['ssim_slicewise']:16.4f} {t['psnr']:6.2f} {e['delta_ssim_vs_reference']:+.4f}"
              f"{'*' if e['meets_goal'] else ' '} | {r['ssim_slicewise']:13.4f} {r['psnr']:6.2f}")
    print("  (* = <= 10 steps within 0.01 SSIM of the reference against the targets)")


# ------------------------------------------------------------------------------------------ main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run04", type=Path, default=Path("runs/04_ct_superres"), help="output of examples/04_ct_superres/run.sh")
    parser.add_argument("--run05", type=Path, default=Path("runs/05_ct_sequences"), help="output of examples/05_ct_sequences/run.sh")
    parser.add_argument("--runs", default="04,05", help="which examples to benchmark")
    parser.add_argument("--split", default="test", help="split of the condition items (held out: test)")
    parser.add_argument("--seeds", default="0,1", help="comma-separated sample seeds (--seed of medgen sample)")
    parser.add_argument("--max-items", type=int, default=4, help="at most this many condition items per example")
    parser.add_argument("--retrain", action="store_true", help="train the flow priors again even if RUN/prior_flow exists")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: OMP_NUM_THREADS, else 2)")
    parser.add_argument("--quiet-wait", type=float, default=None, help="seconds to wait for a quiet machine in all "
                        "(default 1800; 0 with --quick)")
    parser.add_argument("--quick", action="store_true", help="tiny self-made runs and a short ladder (smoke test)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads or int(os.environ.get("OMP_NUM_THREADS") or 2))
    gate = QuietGate(args.quiet_wait if args.quiet_wait is not None else (0.0 if args.quick else 1800.0))
    busy = training_running()
    ladder = QUICK_LADDER if args.quick else LADDER
    seeds = [0] if args.quick else [int(s) for s in args.seeds.split(",") if s.strip()]
    names = [RUN_NAMES[n.strip()] for n in args.runs.split(",") if n.strip()]
    with tempfile.TemporaryDirectory(prefix="bench_few_step_") as tmp:
        if args.quick:
            dirs = {name: make_quick_run(Path(tmp), name) for name in names}
        else:
            dirs = {name: {"04_ct_superres": args.run04, "05_ct_sequences": args.run05}[name] for name in names}
        runs = {name: bench_run(name, run, run / "prior_flow", ladder, seeds, args.split,
                                2 if args.quick else args.max_items, gate, args.retrain or args.quick)
                for name, run in dirs.items()}
    foreign = max(r["foreign_cpu_share"] for run in runs.values() for r in run["rows"])
    busy |= training_running()
    result = {
        "benchmark": "steps versus quality of diffusion (DDPM, DDIM, DPM-Solver++) and rectified-flow (Euler, Heun) "
                     "samplers on examples 04 and 05, same start noise (issue 15)",
        "quick": args.quick, "machine_busy": foreign > BUSY_SHARE or (busy and gate.remaining <= 0),
        "training_run_seen": busy, "max_foreign_cpu_share": foreign, **gate.report(),
        "torch_threads": torch.get_num_threads(), "ladder": [key(*c) for c in ladder], "reference": key(*ladder[0]),
        "goal": f"<= {GOAL_STEPS} steps within {GOAL_SSIM} slice-wise SSIM (vs targets) of the reference",
        "metrics": "metrics.items.item_metrics (medgen evaluate's paired metrics; ssim_slicewise across "
                   f"axis {AXIS} is the headline; data range = the item's intensity window)",
        "caveat": "each example holds out one subject (04: one CT; 05: overlapping sequences of one CT): "
                  "a demonstration, not a validation",
        "runs": runs, "notes": NOTES, "versions": {"torch": torch.__version__},
    }
    path = write_result("few_step_quick" if args.quick else "few_step", result)
    for name, run in runs.items():
        print_table(name, run["table"])
        print(f"  same start noise: {run['same_start_noise']}; meets the goal: {', '.join(run['meets_goal']) or 'none'}")
    print(f"wrote {path}" + ("  (machine busy: other processes shared the CPU)" if result["machine_busy"] else ""))


if __name__ == "__main__":
    try:
        main()
    except UsageError as err:  # a run directory that is not example 04's or 05's, a missing artefact, ...
        raise SystemExit(str(err)) from None
