"""Diffusion sampling time of medgen against MONAI 1.6.1 (issue 5, the MONAI part), as a ratio.

DDIM with 50 steps (eta = 0, 1,000 training steps, linear betas) from the same start noise, on
4 x 32^2 latents, batch 4, untrained random weights, 2 torch threads, median of ``--repeats`` after
one warm-up run, the two libraries timed in turn (A B A B ...):

- medgen ``UNetPrior`` (base_channels 64, channel_mults (1, 2, 4) = channels (64, 128, 256)) +
  ``medgen_cli.sampling.sample_diffusion`` with ``DDIMScheduler``;
- MONAI ``DiffusionModelUNet(channels=(64, 128, 256))`` + ``DDIMScheduler`` through
  ``DiffusionInferer.sample`` (BASELINES.md: 8.5 s, 170 ms / step).

Both UNets: 2 residual blocks per level on the way down and 3 on the way up, group norm with 32
groups, time embedding of width 4 x 64, self-attention with 4 heads at levels 1 and 2 (16^2 and 8^2)
and in the middle block, no conditioning. The floating-point operations of one denoiser call are
counted (torch's FlopCounterMode) so the ratio can be read per unit of work too. DDIM-vs-DDPM
quality needs a trained model and is not measured here.

Writes ``benchmarks/results/diffusion.json``. MONAI is imported from ``benchmarks/.monai`` only.

Run: ``.venv/bin/python -m benchmarks.bench_diffusion [--quick] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import json

import torch

from benchmarks.common import (
    BUSY_SHARE, QuietGate, bench_interleaved, flops, import_monai, param_count, training_running, write_result,
)
from medgen_cli.models.priors import UNetPrior
from medgen_cli.sampling import DDIMScheduler, sample_diffusion

SEED = 0
CHANNELS = (64, 128, 256)
ATTENTION_LEVELS = (1, 2)
NUM_HEADS = 4
BASELINE_MD = {"seconds": 8.5, "ms_per_step": 170}

NOTES = [
    "Same layout on both sides: in-conv, per level 2 residual blocks (+ attention at levels 1, 2) then a "
    "stride-2 conv downsampling (not after the last level); middle block res-attention-res; per level 3 "
    "residual blocks on skip-concatenated inputs (+ attention) then nearest + conv upsampling; "
    "norm-SiLU-conv head.",
    "MONAI attention: num_head_channels (0, 32, 64) = 4 heads of 32 / 64 channels at levels 1, 2 (and "
    "the middle block); use_flash_attention=False (its default) builds the attention matrix explicitly. "
    "medgen: SpatialSelfAttention with 4 heads through torch scaled_dot_product_attention.",
    "Time embedding: both sinusoidal of width 64 then an MLP to 256, added in every residual block.",
    "Schedulers: medgen DDIMScheduler (trailing timestep spacing, from t = 999); MONAI DDIMScheduler "
    "(linspace from 999 to 0). Same number of denoiser calls; the scheduler arithmetic is negligible.",
]


def medgen_unet(in_channels: int, channels) -> UNetPrior:
    base = channels[0]
    return UNetPrior(
        2, in_channels, base_channels=base, channel_mults=[c // base for c in channels], num_res_blocks=2,
        attention_levels=ATTENTION_LEVELS, mid_attention=True, num_heads=NUM_HEADS, num_groups=32,
    )


def monai_unet(in_channels: int, channels):
    from monai.networks.nets import DiffusionModelUNet

    return DiffusionModelUNet(
        spatial_dims=2, in_channels=in_channels, out_channels=in_channels, num_res_blocks=2, channels=channels,
        attention_levels=tuple(i in ATTENTION_LEVELS for i in range(len(channels))), norm_num_groups=32,
        num_head_channels=tuple(0 if i not in ATTENTION_LEVELS else c // NUM_HEADS for i, c in enumerate(channels)),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 16^2 latents, channels (32, 64, 128), 5 steps")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quiet-wait", type=float, default=None,
                        help="seconds to spend waiting for a quiet machine, redoing disturbed runs "
                             "(default 1800; 0 with --quick)")
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    torch.set_num_threads(2)
    monai = import_monai()
    from monai.inferers import DiffusionInferer
    from monai.networks.schedulers import DDIMScheduler as MonaiDDIM

    repeats = 1 if args.quick else args.repeats
    gate = QuietGate(args.quiet_wait if args.quiet_wait is not None else (0.0 if args.quick else 1800.0))
    steps = 5 if args.quick else args.steps
    channels = (32, 64, 128) if args.quick else CHANNELS
    shape = (2, 4, 16, 16) if args.quick else (4, 4, 32, 32)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(SEED))
    busy = training_running()

    torch.manual_seed(SEED)
    ours = medgen_unet(shape[1], channels).eval()
    scheduler = DDIMScheduler(num_train_timesteps=1000)
    t_mid = torch.full((1,), 500, dtype=torch.long)
    ours_flops = flops(lambda: ours(noise[:1], t_mid)) * shape[0]

    def run_ours():
        return sample_diffusion(ours, scheduler, shape, num_inference_steps=steps, x_T=noise,
                                generator=torch.Generator().manual_seed(SEED))


    torch.manual_seed(SEED)
    theirs = monai_unet(shape[1], channels).eval()
    monai_scheduler = MonaiDDIM(num_train_timesteps=1000)
    monai_scheduler.set_timesteps(steps)
    inferer = DiffusionInferer(monai_scheduler)
    theirs_flops = flops(lambda: theirs(noise[:1], timesteps=t_mid)) * shape[0]

    def run_theirs():
        with torch.no_grad():
            return inferer.sample(input_noise=noise, diffusion_model=theirs, scheduler=monai_scheduler, verbose=False)

    timing = bench_interleaved({"medgen": run_ours, "monai": run_theirs}, repeats=repeats, warmup=1, gate=gate)
    t_ours, t_theirs = timing["medgen"], timing["monai"]
    for name, t in timing.items():
        print(f"{name:7s} {t['median_s']:7.2f} s  {1000 * t['median_s'] / steps:7.1f} ms/step  "
              f"(other processes: {t['foreign_cpu_share']:.0%} CPU)")
    busy |= training_running()
    foreign = max(t["foreign_cpu_share"] for t in timing.values())

    def entry(model, t, work):
        return {"params": param_count(model), "gflop_per_step": round(work / 1e9, 2), **t,
                "ms_per_step": round(1000 * t["median_s"] / steps, 1)}

    models = {"medgen": entry(ours, t_ours, ours_flops), "monai": entry(theirs, t_theirs, theirs_flops)}
    ratio = t_theirs["median_s"] / t_ours["median_s"]
    result = {
        "benchmark": f"latent diffusion sampling, DDIM {steps} steps",
        "quick": args.quick,
        "machine_busy": foreign > BUSY_SHARE or (busy and gate.remaining <= 0),
        "training_run_seen": busy,
        "max_foreign_cpu_share": foreign,
        "timing": "medgen and MONAI runs timed in turn (A B A B ...) after one warm-up run each",
        **gate.report(),
        "torch_threads": torch.get_num_threads(),
        "repeats": repeats,
        "warmup": 1,
        "latent_shape": list(shape),
        "channels": list(channels),
        "steps": steps,
        "models": models,
        "ratio_monai_over_medgen": round(ratio, 3),
        "flop_rate_ratio_medgen_over_monai": round(
            (ours_flops / t_ours["median_s"]) / (theirs_flops / t_theirs["median_s"]), 3),
        "ratio_definition": "MONAI seconds / medgen seconds for the same sampling run (> 1: medgen is faster)",
        "baseline_md_monai": BASELINE_MD,
        "notes": NOTES,
        "versions": {"torch": torch.__version__, "monai": monai.__version__},
    }
    path = write_result("diffusion", result)
    print(json.dumps({k: result[k] for k in ("ratio_monai_over_medgen", "flop_rate_ratio_medgen_over_monai")}))
    for name, m in models.items():
        print(f"{name:7s} {m['params']:>11,d} params  {m['gflop_per_step']:7.2f} GFLOP/step")
    print(f"wrote {path}" + ("  (machine busy: other processes shared the CPU)" if result["machine_busy"] else ""))


if __name__ == "__main__":
    main()
