"""Reconstruction quality per CPU-minute: medgen's default `train-ae` against the minimal VQ-VAE of
BASELINES.md, trained for the same wall time side by side, one thread each, each pinned to its own
core, on one real MR head and scored on another person's (issue 13).

Data: the pyradiomics MR heads as examples/01_mr_vqvae/run.sh prepares them (`medgen preprocess
brain1 brain2 --mode slices --fit 64,64 --split 0.5,0,0.5 --seed 1`): brain1's 25 axial slices
train, brain2's 23 slices (another person) are held out and used only for the scores. Two subjects:
a demonstration on real images, not a validation.

Runs (``--minutes`` each, default 10), in pairs started together on cores 0 and 1:

1. ``script`` (the minimal VQ-VAE below, ~60 lines: two stride-2 convs, two ReZero residual blocks
   each side, a 512 x 64 EMA codebook initialised from the first batch, Adam 3e-4, no schedule, no
   augmentation, MSE + 0.25 commitment, batch 32, fp32) beside ``medgen`` (`medgen train-ae --data
   prep --max-minutes M`: every other setting at its default);
2. ``medgen_fsq`` beside ``medgen_lfq`` (model.quantizer fsq / lfq, otherwise defaults);
3. ``medgen_rotation`` (model.vq_gradient rotation) beside ``medgen_fp32`` (train.precision fp32,
   the same time: what the bf16 fast path buys);
4. ``steps_bf16`` beside ``steps_fp32``: the default config for the same number of steps
   (``--precision-steps``, default 800; no time budget), bf16 autocast against fp32: the fast path
   leaves the quality unchanged when the SSIMs agree within the noise of the run.
``--example`` adds examples/01_mr_vqvae/ae.yaml (with data.val_split val, so no model selection on
the held-out person).

Scores on the held-out slices, every model reconstructing in fp32: medgen's SSIM (Gaussian window
11, sigma 1.5, valid region, L = the stored range 2.0; what `medgen evaluate` reports), scikit-image's
``structural_similarity`` with the same convention and with its defaults (7x7 uniform window),
PSNR, codebook usage (share of codes used on the held-out slices), steps and seconds per step.
Target: medgen's default >= script + 0.05 (medgen's SSIM) at 10 minutes.

Writes ``benchmarks/results/quality.json``. Run:
``.venv/bin/python -m benchmarks.bench_quality [--minutes 10] [--quick] [--runs script medgen ...]``
(~45 min at 10 minutes: three timed pairs and the step-bound pair).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.common import write_result

ROOT = Path(__file__).resolve().parents[1]
WORK = Path(os.environ.get("MEDGEN_BENCH_CACHE", Path.home() / ".cache" / "medgen" / "bench_quality"))
DATA_RANGE = 2.0  # the stored range: the MR intensities are mapped onto [-1, 1]
TARGET = 0.05
MEDGEN_RUNS = {
    "medgen": [],
    "medgen_fsq": ["model.quantizer=fsq"],
    "medgen_lfq": ["model.quantizer=lfq", "model.num_embeddings=1024"],
    "medgen_rotation": ["model.vq_gradient=rotation"],
    "medgen_fp32": ["train.precision=fp32"],
    "steps_bf16": ["train.precision=auto"],  # step-bound runs (no time budget), see start_run
    "steps_fp32": ["train.precision=fp32"],
}
PAIRS = [("script", "medgen"), ("medgen_fsq", "medgen_lfq"), ("medgen_rotation", "medgen_fp32"),
         ("steps_bf16", "steps_fp32")]


# ------------------------------------------------------------------------ the minimal VQ-VAE script
def minimal_vqvae(train: np.ndarray, test: np.ndarray, minutes: float, seed: int = 0, max_steps: int | None = None) -> dict:
    """BASELINES.md's recipe, written plainly. Returns reconstructions of ``test`` and counters."""
    import torch
    from torch import nn
    import torch.nn.functional as F

    torch.manual_seed(seed)

    class Res(nn.Module):  # ReZero residual block: x + a * conv1x1(relu(conv3x3(relu(x)))), a starts at 0
        def __init__(self, ch):
            super().__init__()
            self.body = nn.Sequential(nn.ReLU(), nn.Conv2d(ch, ch // 2, 3, padding=1), nn.ReLU(), nn.Conv2d(ch // 2, ch, 1))
            self.alpha = nn.Parameter(torch.zeros(1))

        def forward(self, x):
            return x + self.alpha * self.body(x)

    h, k, d = 128, 512, 64
    enc = nn.Sequential(nn.Conv2d(1, h, 4, 2, 1), nn.ReLU(), nn.Conv2d(h, h, 4, 2, 1), Res(h), Res(h), nn.Conv2d(h, d, 1))
    dec = nn.Sequential(nn.Conv2d(d, h, 3, padding=1), Res(h), Res(h), nn.ReLU(), nn.ConvTranspose2d(h, h, 4, 2, 1),
                        nn.ReLU(), nn.ConvTranspose2d(h, 1, 4, 2, 1))
    codebook, sizes, sums = torch.zeros(k, d), torch.ones(k), torch.zeros(k, d)

    def quantise(z, update):
        flat = z.permute(0, 2, 3, 1).reshape(-1, d)
        if update and not sums.any():  # initialise from the first batch
            codebook.copy_(flat[torch.randperm(len(flat))[:k]].detach())
            sums.copy_(codebook)
        idx = torch.cdist(flat.detach(), codebook).argmin(1)
        q = codebook[idx]
        if update:  # EMA codebook (decay 0.99, Laplace smoothing)
            onehot = F.one_hot(idx, k).float()
            sizes.mul_(0.99).add_(onehot.sum(0), alpha=0.01)
            sums.mul_(0.99).add_(onehot.t() @ flat.detach(), alpha=0.01)
            n = sizes.sum()
            codebook.copy_(sums / ((sizes + 1e-5) / (n + k * 1e-5) * n)[:, None])
        commit = F.mse_loss(flat, q.detach())
        q = flat + (q - flat).detach()
        return q.reshape(z.shape[0], z.shape[2], z.shape[3], d).permute(0, 3, 1, 2), commit, idx

    opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=3e-4)
    x_all = torch.from_numpy(train).float()
    steps, start = 0, time.monotonic()
    while time.monotonic() - start < minutes * 60 and steps < (max_steps or float("inf")):
        x = x_all[torch.randint(len(x_all), (32,))]
        q, commit, _ = quantise(enc(x), update=True)
        loss = F.mse_loss(dec(q), x) + 0.25 * commit
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps += 1
    elapsed = time.monotonic() - start
    with torch.no_grad():
        q, _, idx = quantise(enc(torch.from_numpy(test).float()), update=False)
        recon = dec(q).numpy()
    return {"recon": recon, "steps": steps, "seconds": elapsed, "codes_used": int(idx.unique().numel()), "codebook": k}


# ------------------------------------------------------------------------------------ preparation
def prepare(work: Path) -> Path:
    """The preprocessed artefact (cached) and train/test arrays in ``work/slices.npz``."""
    prep, arrays = work / "prep", work / "slices.npz"
    if not (prep / "manifest.json").is_file():
        data = subprocess.run([sys.executable, str(ROOT / "examples" / "fetch_data.py")], check=True,
                              capture_output=True, text=True).stdout.strip().splitlines()[-1]
        subprocess.run([sys.executable, "-m", "medgen_cli.cli", "-q", "preprocess", f"{data}/brain1_image.nrrd",
                        f"{data}/brain2_image.nrrd", "--out", str(prep), "--mode", "slices", "--fit", "64,64",
                        "--split", "0.5,0,0.5", "--seed", "1", "--overwrite"], check=True, cwd=ROOT)
    if not arrays.is_file():
        from medgen_cli.data import open_store
        from medgen_cli.io.store import store_path

        store = open_store(store_path(prep))
        split = {}
        for name in ("train", "test"):
            ids = store.ids(name)
            subjects = {Path(str(store.meta(i).source)).name.split("_")[0] for i in ids}
            split[name] = (np.stack([store.read(i)[None] for i in ids]).astype(np.float32), sorted(subjects))
        if split["train"][1] != ["brain1"] or split["test"][1] != ["brain2"]:
            raise SystemExit(f"expected brain1 in train and brain2 in test, got {split['train'][1]} / {split['test'][1]}")
        np.savez(arrays, train=split["train"][0], test=split["test"][0])
    return prep


# ------------------------------------------------------------------------------------------ runs
def _pinned(core: int):
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []

    def pin():
        if cores:
            os.sched_setaffinity(0, {cores[core % len(cores)]})

    return pin


def start_run(name: str, core: int, args, prep: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    log = open(WORK / f"{name}.log", "w")
    if name == "script":
        cmd = [sys.executable, "-m", "benchmarks.bench_quality", "--child-script", "--minutes", str(args.minutes)]
    else:
        example = ["--config", str(ROOT / "examples" / "01_mr_vqvae" / "ae.yaml"), "--set", "data.val_split=val",
                   "--set", "train.steps=100000"] if name == "medgen_example" else []
        length = f"train.steps={args.precision_steps}" if name.startswith("steps_") else f"train.max_minutes={args.minutes}"
        sets = [length, "runtime.threads=1", *MEDGEN_RUNS.get(name, [])]
        cmd = [sys.executable, "-m", "medgen_cli.cli", "-q", "train-ae", "--data", str(prep), "--out",
               str(WORK / "runs" / name), "--overwrite", *example, *[a for s in sets for a in ("--set", s)]]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_pinned(core))


def child_script(minutes: float) -> None:
    import torch

    torch.set_num_threads(1)
    arrays = np.load(WORK / "slices.npz")
    out = minimal_vqvae(arrays["train"], arrays["test"], minutes)
    np.save(WORK / "script_recon.npy", out.pop("recon"))
    (WORK / "script.json").write_text(json.dumps(out))


def medgen_recon(name: str) -> tuple[np.ndarray, dict]:
    """Held-out reconstructions of a medgen run (fp32 inference) and its counters."""
    import torch

    from medgen_cli.artefacts import require
    from medgen_cli.loaders.autoencoder import load_autoencoder

    out = WORK / "runs" / name
    model, info = load_autoencoder(out)
    x = torch.from_numpy(np.load(WORK / "slices.npz")["test"])
    with torch.no_grad():
        idx = model.encode_to_indices(x)
        recon = model.decode_indices(idx).numpy()
    summary = require(out, "autoencoder").summary
    return recon, {"steps": summary["steps"], "seconds": summary["minutes"] * 60, "codes_used": int(idx.unique().numel()),
                   "codebook": int(info["config"]["num_embeddings"]), "precision": summary["precision"],
                   "planned_steps": summary.get("planned_steps"), "quantizer": info["config"].get("quantizer", "vq")}


def scores(recon: np.ndarray, test: np.ndarray) -> dict:
    import torch
    from skimage.metrics import structural_similarity

    from medgen_cli.metrics.image import psnr, ssim

    r, t = torch.from_numpy(recon).double(), torch.from_numpy(test).double()
    gauss = [structural_similarity(a[0], b[0], data_range=DATA_RANGE, gaussian_weights=True, sigma=1.5,
                                   use_sample_covariance=False) for a, b in zip(recon, test)]
    plain = [structural_similarity(a[0], b[0], data_range=DATA_RANGE) for a, b in zip(recon, test)]
    return {"ssim_medgen": float(ssim(r, t, DATA_RANGE).mean()), "ssim_skimage_gaussian": float(np.mean(gauss)),
            "ssim_skimage_default": float(np.mean(plain)), "psnr_db": float(psnr(r, t, DATA_RANGE).mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="training wall time of every run")
    parser.add_argument("--quick", action="store_true", help="smoke run: 0.3 minutes per run")
    parser.add_argument("--runs", nargs="+", default=None, help="subset of script, medgen, medgen_fsq, ... (in pairs)")
    parser.add_argument("--example", action="store_true", help="also run examples/01_mr_vqvae/ae.yaml")
    parser.add_argument("--precision-steps", type=int, default=800, help="steps of the bf16-vs-fp32 pair")
    parser.add_argument("--child-script", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_script:
        child_script(args.minutes)
        return
    if args.quick:
        args.minutes, args.precision_steps = 0.3, 10
    WORK.mkdir(parents=True, exist_ok=True)
    prep = prepare(WORK)
    pairs = PAIRS + ([("medgen_example",)] if args.example else [])
    if args.runs:
        pairs = [tuple(r for r in p if r in args.runs) for p in pairs]
    test = np.load(WORK / "slices.npz")["test"]
    results, loads = {}, []
    for pair in [p for p in pairs if p]:
        length = f"{args.precision_steps} steps" if pair[0].startswith("steps_") else f"{args.minutes} min"
        print(f"training {' and '.join(pair)} side by side for {length} ...", flush=True)
        procs = {name: start_run(name, core, args, prep) for core, name in enumerate(pair)}
        for name, proc in procs.items():
            if proc.wait():
                raise SystemExit(f"run {name} failed; see {WORK / (name + '.log')}")
        loads.append(os.getloadavg()[0])  # 1-minute load: ~2 = our two runs alone
        for name in pair:
            if name == "script":
                recon, info = np.load(WORK / "script_recon.npy"), json.loads((WORK / "script.json").read_text())
            else:
                recon, info = medgen_recon(name)
            info["seconds_per_step"] = round(info["seconds"] / max(1, info["steps"]), 4)
            info["codebook_usage"] = round(info["codes_used"] / info["codebook"], 4)
            results[name] = {**scores(recon, test), **info}
            r = results[name]
            print(f"  {name:16s} SSIM {r['ssim_medgen']:.4f} (skimage {r['ssim_skimage_gaussian']:.4f} / default "
                  f"{r['ssim_skimage_default']:.4f})  PSNR {r['psnr_db']:.2f} dB  {r['steps']} steps "
                  f"({r['seconds_per_step']:.3f} s/step)  codebook usage {r['codebook_usage']:.1%}", flush=True)
    summary = {"benchmark": "held-out reconstruction after equal wall time, one pinned core each",
               "quick": args.quick, "minutes": args.minutes, "train": "brain1 (25 slices)",
               "held_out": "brain2 (23 slices, another person)", "data_range": DATA_RANGE,
               "load_average_after_pairs": [round(v, 2) for v in loads], "runs": results}
    if "steps_bf16" in results and "steps_fp32" in results:
        summary["bf16_minus_fp32_same_steps"] = round(results["steps_bf16"]["ssim_medgen"]
                                                      - results["steps_fp32"]["ssim_medgen"], 4)
    if "script" in results and "medgen" in results:
        margin = results["medgen"]["ssim_medgen"] - results["script"]["ssim_medgen"]
        summary.update(margin_ssim_medgen=round(margin, 4), target=f"medgen - script >= {TARGET}",
                       target_met=margin >= TARGET)
        print(f"medgen - script: {margin:+.4f} SSIM (target +{TARGET})")
    print(f"wrote {write_result('quality', summary)}")


if __name__ == "__main__":
    main()
