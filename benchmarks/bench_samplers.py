"""DDIM (50 steps, eta 0) against DDPM (1,000 steps) on a trained conditional latent diffusion model:
wall time and SSIM / PSNR of the same items from the same start noise.

Input: the output directory of example 04 (``examples/04_ct_superres/run.sh RUN_DIR``: CT 2x
super-resolution, a 3D KL autoencoder and a diffusion prior over the full-resolution latents
conditioned on the latents of the downsample:2 copy). For every subject of the held-out split
(``test``) and of the training split (``train``, IN-SAMPLE: the prior was fitted to it), and every
seed, the script samples the subject's full-resolution volume with DDIM and with DDPM and scores
each against the true volume.

Sampling goes through ``medgen sample``'s own code: the settings are built by ``load_settings``
exactly as the CLI builds them (``--subject S --seed K -n 1 --sampler ddim|ddpm --steps N``), the
prior and autoencoder are loaded as ``sample.run`` loads them, the condition is prepared by its
``jobs_for`` + ``steps/_diffusion.py``, the latents are drawn by the diffusion prior kind's ``sample`` and
decoded and clipped as ``sample.run`` does, with the generator seeded as ``sample.run`` seeds the
first batch of one subject. The start noise is therefore the same for both samplers of a seed (the
first denoiser input is captured and compared); one ``sample.run`` call per sampler checks that the
pieces reproduce the command's output exactly (``cli_check``).

Timing (wall clock, ``--threads`` torch threads): ``total_s`` = drawing the latents + decoding one
item (loading the models and reading the condition, done once, is excluded); ``ms_per_step`` =
drawing time / steps; ``ms_per_denoiser_call`` = median time of one UNet call (forward hooks).
Figures per item are medians over seeds; DDIM and DDPM run in turn (A B A B ...) after one warm-up.
Disturbed runs are redone while the ``--quiet-wait`` budget lasts (see benchmarks/README.md).

Scores: ``metrics.items.item_metrics`` (what ``medgen evaluate`` computes: 3D SSIM, slice-wise
SSIM along axis 2, MS-SSIM, PSNR on the true data range of the CT window, MAE/RMSE also in HU), for
DDIM, DDPM, trilinear upsampling of the low-resolution input (``examples/04_ct_superres/trilinear.py``)
and the autoencoder's own reconstruction (the ceiling of any latent model); ``ddim_vs_ddpm`` scores
the two samplers' outputs of a seed against each other.

Writes ``benchmarks/results/samplers.json``.

Run: ``.venv/bin/python -m benchmarks.bench_samplers --run RUN_DIR [--steps-ddim 50] [--steps-ddpm 1000]
[--seeds 0,1] [--quick] [--threads 2] [--quiet-wait 1800] [--splits test,train] [--max-items N]``
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import BUSY_SHARE, ForeignLoad, QuietGate, training_running, write_result
from medgen_cli.artefacts import require
from medgen_cli.errors import UsageError
from medgen_cli.io.store import Store, store_path
from medgen_cli.settings import SampleSettings, load_settings
from medgen_cli.steps import _diffusion, sample
from medgen_cli.loaders.autoencoder import load_autoencoder
from medgen_cli.loaders.prior import PriorRecord, load_prior
from medgen_cli.priors import prior_kind
from medgen_cli.steps._sample_jobs import jobs_for
from medgen_cli.steps._sample_output import decode
from medgen_cli.loaders.latents import prior_lineage
from medgen_cli.metrics.features import reconstruct_items
from medgen_cli.metrics.items import item_metrics

TRILINEAR = Path(__file__).resolve().parent.parent / "examples" / "04_ct_superres" / "trilinear.py"
LOW_STORE = "downsample2"  # the derived store example 04 conditions on
AXIS = 2  # slice-wise SSIM across the 5 mm axis, as the example's evaluate calls
QUICK_STEPS = {"ddim": 5, "ddpm": 20}
WARMUP_STEPS = 2
SPLITS = ("test", "train")
SPLIT_NOTES = {"test": "held-out subject(s): out-of-sample", "train": "training subject(s): IN-SAMPLE (the prior and "
               "the autoencoder were fitted to them), an optimistic upper line, not a generalisation figure"}
SUMMARY_KEYS = ("ssim", "ssim_slicewise", "ms_ssim", "psnr", "mae_phys", "rmse_phys")

NOTES = [
    "Both samplers use the prior's own noise schedule and parameterisation (model.json) through "
    "make_scheduler; timesteps are trailing-spaced (at the default steps DDIM 50: t = 999, 979, ..., 19; "
    "DDPM 1,000: every t from 999 to 0).",
    "DDPM draws fresh noise at every step from the same generator, so DDIM and DDPM share only the start "
    "noise x_T; DDIM with eta 0 is deterministic given x_T.",
    "Guidance scale and the rest of the sampling options are the prior's defaults (recorded under "
    "sampler_options); with guidance 1 each step is one denoiser call.",
    "Wall times exclude loading the prior and the autoencoder and preparing the condition (once per run / "
    "subject, shared by both samplers); cli_check.sample_run_s is the whole `sample.run` call for one item, "
    "loading and writing included.",
]


# --------------------------------------------------------------------------------------- helpers
class DenoiserClock:
    """Times every call of the denoiser and keeps the first call's input (x_T) via forward hooks."""

    def __init__(self, model: torch.nn.Module):
        self.calls: list[float] = []
        self.first_input: torch.Tensor | None = None
        self._t0 = 0.0
        model.register_forward_pre_hook(self._pre)
        model.register_forward_hook(self._post)

    def reset(self) -> None:
        self.calls, self.first_input = [], None

    def _pre(self, module, args) -> None:
        if self.first_input is None:
            self.first_input = args[0].detach().clone()
        self._t0 = time.perf_counter()

    def _post(self, module, args, output) -> None:
        self.calls.append(time.perf_counter() - self._t0)


def sample_settings(prior: Path, subject: str, seed: int, scheduler: str, steps: int) -> SampleSettings:
    """The settings `medgen sample --prior P --subject S --seed K -n 1 --sampler X --steps N [--eta 0]` builds."""
    flags = {"prior": str(prior), "num_samples": 1, "batch_size": 1, "runtime.seed": seed, "runtime.device": "cpu",
             "sampler.scheduler": scheduler, "sampler.steps": steps, "sampler.eta": 0.0 if scheduler == "ddim" else None,
             "condition.subject": subject, "nifti": False, "previews": False}
    return load_settings(SampleSettings, None, (), flags)


class Run:
    """The artefacts of one example-04 run, loaded once the way ``sample.run`` loads them."""

    def __init__(self, run_dir: Path):
        self.dir = run_dir
        self.prior = run_dir / "prior"
        self.device = torch.device("cpu")
        self.model, self.info = load_prior(self.prior, self.device)
        self.record = PriorRecord.model_validate(self.info)
        if self.info["kind"] != "diffusion" or not self.info.get("conditions"):
            raise SystemExit(f"{self.prior} holds a {self.info['kind']} prior without latent conditions; "
                             "this benchmark needs example 04's conditional diffusion prior.")
        self.lineage = prior_lineage(self.prior)
        self.ae, _ = load_autoencoder(self.lineage.autoencoder, self.device)
        self.data = Store.open(store_path(self.lineage.data, self.lineage.data_store))
        self.clock = DenoiserClock(self.model)

    def condition(self, settings: SampleSettings) -> tuple[Any, list[torch.Tensor]]:
        """The subject's sampling job and condition channels, prepared as ``sample.run`` prepares them."""
        jobs, conds = jobs_for(settings, self.record, self.device)
        codecs = _diffusion.condition_codecs(self.record, conds)
        return jobs[0], _diffusion.prepare_conditions(self.record, codecs, jobs[0].cond)

    @torch.no_grad()
    def draw(self, settings: SampleSettings, job_cond: tuple[Any, list[torch.Tensor]],
             bounds: tuple[float, float] | None) -> tuple[np.ndarray, dict[str, Any]]:
        """One item: latents by the diffusion prior kind's ``sample``, decoded and clipped as ``sample.run`` does."""
        self.clock.reset()
        t0 = time.perf_counter()
        job, cond = job_cond
        seed = sample._seed(settings.runtime.seed, job.item or job.subject or "", 0)
        generator = torch.Generator(device=self.device).manual_seed(seed)
        draws = prior_kind("diffusion").sample(self.model, self.record, 1, cond, None, settings.sampler, generator)
        t1 = time.perf_counter()
        image = decode(self.ae, self.record.latents, draws)[0]
        if bounds is not None:
            image = np.clip(image, *bounds)
        t2 = time.perf_counter()
        return image, {"total_s": t2 - t0, "sample_s": t1 - t0, "decode_s": t2 - t1,
                       "denoiser_calls": len(self.clock.calls),
                       "ms_per_denoiser_call": 1000 * statistics.median(self.clock.calls) if self.clock.calls else None}


def timed(fn, gate: QuietGate):
    """``fn()`` after waiting for a quiet machine, redone while disturbed (within the gate's budget)."""
    redos = 0
    while True:
        gate.wait()
        with ForeignLoad() as load:
            result = fn()
        if not gate.redo(load.share, redos):
            return result, load.share
        redos += 1


def cli_check(run: Run, settings: SampleSettings, image: np.ndarray) -> dict[str, Any]:
    """Run ``sample.run`` itself for one item and compare its stored output with ``image``."""
    with tempfile.TemporaryDirectory(prefix="bench_samplers_") as tmp:
        t0 = time.perf_counter()
        result = sample.run(settings, Path(tmp) / "samples")
        elapsed = time.perf_counter() - t0
        theirs = Store.open(store_path(result.out, "samples")).read(result.ids[0])
    diff = float(np.abs(theirs.astype(np.float64) - image.astype(np.float64)).max())
    return {"scheduler": settings.sampler.scheduler, "steps": settings.sampler.steps, "seed": settings.runtime.seed,
            "subject": settings.condition.subject, "max_abs_diff": diff, "identical": diff == 0.0,
            "sample_run_s": round(elapsed, 3)}


def trilinear_rows(prep: Path, split: str) -> dict[str, dict[str, float]]:
    """Per-item metrics of example 04's trilinear baseline (its own script, imported by path)."""
    spec = importlib.util.spec_from_file_location("example04_trilinear", TRILINEAR)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(str(prep), split, LOW_STORE, AXIS)["items"]


def mean_rows(rows: list[dict[str, float]]) -> dict[str, float]:
    keys = [k for k in rows[0] if isinstance(rows[0][k], (int, float))]
    return {k: round(float(np.mean([r[k] for r in rows])), 5) for k in keys}


def median_timing(runs: list[dict[str, Any]], steps: int) -> dict[str, Any]:
    med = {k: statistics.median(r[k] for r in runs) for k in ("total_s", "sample_s", "decode_s")}
    calls = [r["ms_per_denoiser_call"] for r in runs if r["ms_per_denoiser_call"] is not None]
    return {**{k: round(v, 4) for k, v in med.items()}, "ms_per_step": round(1000 * med["sample_s"] / steps, 2),
            "ms_per_denoiser_call": round(statistics.median(calls), 2) if calls else None,
            "denoiser_calls": runs[0]["denoiser_calls"], "times_total_s": [round(r["total_s"], 4) for r in runs],
            "foreign_cpu_share": round(max(r["foreign_cpu_share"] for r in runs), 3)}


def prior_summary(run: Run) -> dict[str, Any]:
    """What the prior is and how long it trained (from its manifest and model.json)."""
    manifest = require(run.prior, "prior")
    s, d = manifest.settings, manifest.settings.get("diffusion", {})
    keep = ("schedule", "prediction", "num_train_timesteps", "min_snr_gamma", "base_channels", "channel_mults",
            "num_res_blocks", "attention_levels", "mid_attention", "p_uncond", "steps", "sampler", "eta", "guidance_scale")
    ae = require(run.lineage.autoencoder, "autoencoder")
    return {
        "path": str(run.prior.resolve()),
        "diffusion": {k: d[k] for k in keep if k in d},
        "train_steps_set": s.get("train", {}).get("steps"),
        "steps_trained": manifest.summary.get("steps"),
        "selected_step": manifest.summary.get("selected_step"),
        "best_val_loss": manifest.summary.get("best_loss"),
        "val": manifest.summary.get("val"),
        "parameters": manifest.summary.get("parameters"),
        "ema": s.get("train", {}).get("ema"),
        "latent_grid": run.info["grid_shape"],
        "autoencoder": {"path": str(Path(run.lineage.autoencoder).resolve()), "kind": ae.settings.get("model", {}).get("kind"),
                        "steps_trained": ae.summary.get("steps")},
    }


def bench_item(run: Run, split: str, subject: str, item_id: str, steps: dict[str, int], seeds: list[int],
               gate: QuietGate, checks: list[dict[str, Any]], check_every_sampler: bool) -> dict[str, Any]:
    """Both samplers for every seed on one subject (DDIM then DDPM: A B A B ...), timed and scored."""
    target, meta = run.data.read_item(item_id)
    lo, hi = sorted((meta.intensity.out_low, meta.intensity.out_high))
    bounds = (lo, hi) if meta.intensity.clip else None
    cond = run.condition(sample_settings(run.prior, subject, seeds[0], "ddim", steps["ddim"]))
    per_seed, timing = [], {name: [] for name in steps}
    for seed in seeds:
        images, starts, row = {}, {}, {"seed": seed}
        for name, n in steps.items():
            settings = sample_settings(run.prior, subject, seed, name, n)
            (image, t), share = timed(lambda: run.draw(settings, cond, bounds), gate)
            timing[name].append({**t, "foreign_cpu_share": share})
            images[name], starts[name] = image, run.clock.first_input
            row[name] = item_metrics(image, target, meta, AXIS, item_id)
            print(f"{split:5s} {subject} seed {seed} {name} {n:4d} steps: {t['total_s']:7.2f} s "
                  f"({1000 * t['sample_s'] / n:6.1f} ms/step)  SSIM {row[name].get('ssim', float('nan')):.4f}  "
                  f"PSNR {row[name]['psnr']:.2f} dB  (other processes: {share:.0%} CPU)", flush=True)
            if not checks or (check_every_sampler and len(checks) < len(steps)):
                checks.append(cli_check(run, settings, image))  # the command itself: once (--quick: per sampler)
                print(f"      sample.run check ({name}): max |diff| = {checks[-1]['max_abs_diff']:.3g}")
        row["same_start_noise"] = bool(torch.equal(starts["ddim"], starts["ddpm"]))
        row["ddim_vs_ddpm"] = item_metrics(images["ddim"], images["ddpm"], meta, AXIS, item_id)
        per_seed.append(row)
    t_med = {name: median_timing(runs, steps[name]) for name, runs in timing.items()}
    return {
        "subject": subject, "seeds": seeds, "per_seed": per_seed, "timing": t_med,
        "time_ratio_ddpm_over_ddim": round(t_med["ddpm"]["total_s"] / t_med["ddim"]["total_s"], 3),
        "ms_per_step_ratio_ddpm_over_ddim": round(t_med["ddpm"]["ms_per_step"] / t_med["ddim"]["ms_per_step"], 3),
        "mean_over_seeds": {name: mean_rows([r[name] for r in per_seed]) for name in steps},
        "ddim_vs_ddpm_mean_over_seeds": mean_rows([r["ddim_vs_ddpm"] for r in per_seed]),
    }


def split_result(run: Run, prep: Path, split: str, items: dict[str, dict[str, Any]], steps: dict[str, int],
                 seeds: list[int]) -> dict[str, Any]:
    """One split: the items' figures with the trilinear line and the autoencoder ceiling, and their means."""
    tri = trilinear_rows(prep, split)
    ae_rows = {r["item"]: r for r in reconstruct_items(run.ae, run.data, list(items), run.device, 1, AXIS, set())[0]}
    for item_id, item in items.items():
        item["trilinear"] = tri[item_id]
        item["autoencoder_ceiling"] = {k: v for k, v in ae_rows[item_id].items() if isinstance(v, float)}
    rows = list(items.values())
    return {
        "note": SPLIT_NOTES.get(split, ""), "in_sample": split == "train", "items": len(rows),
        "subjects": [r["subject"] for r in rows], "seeds_per_item": len(seeds),
        "mean": {**{name: mean_rows([r["mean_over_seeds"][name] for r in rows]) for name in steps},
                 "ddim_vs_ddpm": mean_rows([r["ddim_vs_ddpm_mean_over_seeds"] for r in rows]),
                 "trilinear": mean_rows([r["trilinear"] for r in rows]),
                 "autoencoder_ceiling": mean_rows([r["autoencoder_ceiling"] for r in rows])},
        "timing_median_over_items": {name: {k: round(statistics.median(r["timing"][name][k] for r in rows), 4)
                                            for k in ("total_s", "sample_s", "decode_s", "ms_per_step")}
                                     for name in steps},
        "items_detail": items,
    }



# ------------------------------------------------------------------------------------------ main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="output directory of examples/04_ct_superres/run.sh")
    parser.add_argument("--steps-ddim", type=int, default=50)
    parser.add_argument("--steps-ddpm", type=int, default=1000)
    parser.add_argument("--seeds", default="0,1", help="comma-separated sample seeds (--seed of medgen sample)")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run: DDIM {QUICK_STEPS['ddim']} vs DDPM {QUICK_STEPS['ddpm']} steps, no quiet wait")
    parser.add_argument("--splits", default=",".join(SPLITS), help="splits of the preprocessed data to score")
    parser.add_argument("--max-items", type=int, default=None, help="at most this many subjects per split")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: OMP_NUM_THREADS when set, else 2 like the other benchmarks)")
    parser.add_argument("--quiet-wait", type=float, default=None,
                        help="seconds to spend waiting for a quiet machine, redoing disturbed runs "
                             "(default 1800; 0 with --quick)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    threads = args.threads or int(os.environ.get("OMP_NUM_THREADS") or 2)
    torch.set_num_threads(threads)
    steps = dict(QUICK_STEPS) if args.quick else {"ddim": args.steps_ddim, "ddpm": args.steps_ddpm}
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    gate = QuietGate(args.quiet_wait if args.quiet_wait is not None else (0.0 if args.quick else 1800.0))
    busy = training_running()

    run = Run(args.run)
    prep = Path(run.lineage.data)
    options = {name: _diffusion.sampling_options(run.info, sample_settings(run.prior, "", 0, name, n).sampler,
                                                 str(run.prior)) for name, n in steps.items()}

    # untimed warm-up on the first subject found
    first_subject = next(iter(run.data.subjects(args.splits.split(",")[0]) or run.data.subjects()))
    warm = sample_settings(run.prior, first_subject, seeds[0], "ddim", WARMUP_STEPS)
    run.draw(warm, run.condition(warm), None)

    splits, checks = {}, []
    for split in [s for s in args.splits.split(",") if s]:
        subjects = run.data.subjects(split)
        if args.max_items:
            subjects = dict(list(subjects.items())[:args.max_items])
        items = {}
        for subject, ids in subjects.items():
            if len(ids) != 1:
                print(f"subject {subject}: {len(ids)} items in {prep}; a super-resolved sample pairs with one; skipped")
                continue
            items[ids[0]] = bench_item(run, split, subject, ids[0], steps, seeds, gate, checks, args.quick)
        if not items:
            print(f"split {split}: no items in {prep}; skipped")
            continue
        splits[split] = split_result(run, prep, split, items, steps, seeds)
    same_noise = all(r["same_start_noise"] for s in splits.values() for i in s["items_detail"].values()
                     for r in i["per_seed"])

    if not splits:
        raise SystemExit(f"no item of {prep} in splits {args.splits}")
    all_items = [r for s in splits.values() for r in s["items_detail"].values()]
    overall = {name: {k: round(statistics.median(r["timing"][name][k] for r in all_items), 4)
                      for k in ("total_s", "sample_s", "decode_s", "ms_per_step", "ms_per_denoiser_call")}
               for name in steps}
    foreign = max(r["timing"][name]["foreign_cpu_share"] for r in all_items for name in steps)
    busy |= training_running()
    n_test = splits.get("test", {}).get("items", 0)
    result = {
        "benchmark": f"DDIM {steps['ddim']} (eta 0) vs DDPM {steps['ddpm']} steps, conditional latent diffusion "
                     "(example 04, CT 2x super-resolution)",
        "quick": args.quick,
        "machine_busy": foreign > BUSY_SHARE or (busy and gate.remaining <= 0),
        "training_run_seen": busy,
        "max_foreign_cpu_share": foreign,
        "timing": "per item and seed: DDIM then DDPM from the same start noise, after one warm-up; medians over seeds",
        **gate.report(),
        "torch_threads": torch.get_num_threads(),
        "run_dir": str(args.run.resolve()),
        "rests_on": {split: f"{s['items']} item(s) of {s['items']} subject(s) x {len(seeds)} seed(s)"
                     + (" (in-sample)" if s["in_sample"] else "") for split, s in splits.items()},
        "caveat": (f"figures rest on {n_test} held-out subject(s) and {len(seeds)} seed(s): a demonstration, "
                   "not a validation; train figures are in-sample"),
        "settings": {"steps": steps, "seeds": seeds, "eta_ddim": 0.0, "sampler_options": options, "axis": AXIS,
                     "device": "cpu", "splits": list(splits), "metrics": "metrics.items.item_metrics "
                     "(medgen evaluate's paired metrics; data range = the CT window in stored values)"},
        "prior": prior_summary(run),
        "same_start_noise": same_noise,
        "cli_check": checks,
        "timing_median_over_items": overall,
        "time_ratio_ddpm_over_ddim": round(overall["ddpm"]["total_s"] / overall["ddim"]["total_s"], 3),
        "ms_per_step_ratio_ddpm_over_ddim": round(overall["ddpm"]["ms_per_step"] / overall["ddim"]["ms_per_step"], 3),
        "splits": splits,
        "notes": NOTES,
        "versions": {"torch": torch.__version__},
    }
    path = write_result("samplers", result)
    print(json.dumps({k: result[k] for k in ("time_ratio_ddpm_over_ddim", "same_start_noise")}))
    for split, s in splits.items():
        m = s["mean"]
        print(f"{split} ({s['items']} item(s){', in-sample' if s['in_sample'] else ''}): " + "  ".join(
            f"{name} SSIM {m[name].get('ssim', float('nan')):.4f} PSNR {m[name]['psnr']:.2f}"
            for name in (*steps, "trilinear", "autoencoder_ceiling")))
    print(f"wrote {path}" + ("  (machine busy: other processes shared the CPU)" if result["machine_busy"] else ""))


if __name__ == "__main__":
    try:
        main()
    except UsageError as err:  # a run directory that is not example 04's, too many steps, ...
        raise SystemExit(str(err)) from None
