"""Training-step time of medgen's autoencoders against MONAI 1.6.1 (issue 3), as a ratio.

One step = forward + loss + backward + Adam step, on the same random input (same seed) for both
libraries, median of ``--repeats`` after one warm-up step, 2 torch threads; the variants of a case
are timed in turn (A B C A B C ...) so that a passing load on the shared machine hits them alike:

- ``vqvae_2d``: VQ-VAE, channels (64, 128), 2 residual blocks per level, 256 x 64 codebook,
  1 x 128^2, batch 8 (BASELINES.md: MONAI 1.13 s / step);
- ``vqvae_3d``: the same in 3D, 1 x 64^3, batch 2 (MONAI 4.48 s / step);
- ``klvae_2d``: KL autoencoder, channels (64, 128, 128), 4 latent channels, 2 residual blocks per
  level, self-attention in the middle blocks, 1 x 128^2, batch 8 (MONAI 6.99 s / step).

medgen runs three times for the VQ-VAE: with its shipped defaults (group norm, nearest-neighbour
upsampling), "matched" to MONAI as far as the API allows (no norm, transposed-conv upsampling), and
"strided": MONAI's layout expressed with per-level ``num_res_blocks`` (no blocks at full resolution).
The two VQ-VAEs still differ in layout (see ``ARCHITECTURE_NOTES``): MONAI downsamples *before* the
residual layers of a level, medgen after them, so medgen's first level runs at full resolution and
costs several times the arithmetic. The floating-point operations of one step are counted (torch's
FlopCounterMode, batch 1 scaled by the batch) so the ratio can be read per unit of work too.

Writes ``benchmarks/results/ae.json``. MONAI is imported from ``benchmarks/.monai`` only.

Run: ``.venv/bin/python -m benchmarks.bench_ae [--quick] [--repeats 3] [--cases vqvae_2d ...]``
"""

from __future__ import annotations

import argparse
import gc
import json

import torch
import torch.nn.functional as F

from benchmarks.common import (
    BUSY_SHARE, QuietGate, bench_interleaved, flops, import_monai, param_count, training_running, write_result,
)
from medgen_cli.models.registry import build_autoencoder

SEED = 0

# (input shape (B, C, *spatial), quick input shape, BASELINES.md MONAI seconds per step)
CASES = {
    "vqvae_2d": ((8, 1, 128, 128), (2, 1, 32, 32), 1.13),
    "vqvae_3d": ((2, 1, 64, 64, 64), (1, 1, 16, 16, 16), 4.48),
    "klvae_2d": ((8, 1, 128, 128), (2, 1, 32, 32), 6.99),
}

ARCHITECTURE_NOTES = {
    "vqvae": [
        "Both: 2 levels of channels (64, 128), total downsampling 4 per axis, 2 residual blocks/layers of "
        "two 3x3 convs per level in encoder and decoder, EMA codebook 256 x 64, MSE + commitment loss.",
        "Layout: MONAI's encoder starts with a stride-2 kernel-4 conv, so its level-0 residual layers run at "
        "1/2 resolution and level-1 at 1/4; medgen has a full-resolution stem and downsamples at the end of "
        "each level (stride-2 kernel-3 conv), so its level-0 blocks run at full resolution and level-1 at 1/2. "
        "Same channels, several times the arithmetic per step (gflop_per_step: about 5x in 2D, 10x in 3D).",
        "medgen adds a middle block (2 residual blocks at the deepest level) in encoder and decoder and a "
        "norm-act-conv head; MONAI has neither.",
        "Norm: MONAI none; medgen default group norm (8 groups), 'matched' none.",
        "Activation: MONAI ReLU (post-activation residual unit); medgen SiLU, pre-activation, ReZero gate.",
        "Upsampling: MONAI transposed conv (kernel 4, stride 2); medgen default nearest + 3x3 conv, "
        "'matched' transposed conv (kernel 2, stride 2).",
        "Residual channels: MONAI num_res_channels set equal to channels (its default would be wider).",
        "'medgen_strided' is MONAI's layout written in medgen's settings: channels (64, 64, 128), "
        "num_res_blocks (0, 2, 2), downsample (2, 2, 1): a full-resolution stem conv only, then 2 blocks at "
        "1/2 (64 ch) and at 1/4 (128 ch) plus medgen's middle block; group norm, nearest upsampling.",
    ],
    "klvae": [
        "Both: channels (64, 128, 128), 2 residual blocks per level, downsampling after levels 0 and 1 "
        "(factor 4), group norm with 32 groups, SiLU, a middle block res-attention-res with single-head "
        "self-attention in encoder and decoder, nearest + conv upsampling, 4 latent channels, "
        "L1 + 1e-6 KL loss.",
        "MONAI adds 1x1 quant convs around the latent; medgen's residual blocks carry a ReZero gate.",
        "Downsampling: MONAI asymmetric pad + stride-2 3x3 conv; medgen stride-2 3x3 conv with symmetric pad.",
        "Attention: medgen uses torch scaled_dot_product_attention; MONAI 1.6.1's default "
        "(use_flash_attention=False) builds the attention matrix explicitly.",
    ],
}


# -- models and losses -------------------------------------------------------------------------
def medgen_vqvae(spatial_dims: int, matched: bool):
    extra = {"norm": "none", "upsample_mode": "transpose"} if matched else {}
    return build_autoencoder(
        "vqvae", spatial_dims, in_channels=1, channels=(64, 128), num_res_blocks=2,
        embedding_dim=64, num_embeddings=256, **extra,
    )


def medgen_vqvae_strided(spatial_dims: int):
    """MONAI's layout in medgen's settings: no blocks at full resolution (num_res_blocks 0 there),
    2 blocks of 64 channels at 1/2 and of 128 at 1/4 (`model.channels: [64, 64, 128]`,
    `model.num_res_blocks: [0, 2, 2]`, `model.downsample: [2, 2, 1]`); shipped defaults otherwise."""
    return build_autoencoder(
        "vqvae", spatial_dims, in_channels=1, channels=(64, 64, 128), num_res_blocks=(0, 2, 2),
        downsample=(2, 2, 1), embedding_dim=64, num_embeddings=256,
    )


def monai_vqvae(spatial_dims: int):
    from monai.networks.nets import VQVAE

    return VQVAE(
        spatial_dims=spatial_dims, in_channels=1, out_channels=1, channels=(64, 128), num_res_layers=2,
        num_res_channels=(64, 128), downsample_parameters=((2, 4, 1, 1), (2, 4, 1, 1)),
        upsample_parameters=((2, 4, 1, 1, 0), (2, 4, 1, 1, 0)), num_embeddings=256, embedding_dim=64,
    )


def medgen_klvae(spatial_dims: int):
    return build_autoencoder(
        "klvae", spatial_dims, in_channels=1, channels=(64, 128, 128), latent_channels=4, num_res_blocks=2,
        num_groups=32, mid_attention=True, num_heads=1,
    )


def monai_klvae(spatial_dims: int, flash: bool = False):
    from monai.networks.nets import AutoencoderKL

    return AutoencoderKL(
        spatial_dims=spatial_dims, in_channels=1, out_channels=1, num_res_blocks=2, channels=(64, 128, 128),
        attention_levels=(False, False, False), latent_channels=4, norm_num_groups=32,
        with_encoder_nonlocal_attn=True, with_decoder_nonlocal_attn=True, use_flash_attention=flash,
    )


def medgen_loss(model, x):
    return sum(model(x).loss_terms.values())


def monai_vq_loss(model, x):
    reconstruction, quantization_loss = model(x)
    return F.mse_loss(reconstruction, x) + quantization_loss


def monai_kl_loss(model, x):
    reconstruction, mu, sigma = model(x)
    kl = 0.5 * (mu.pow(2) + sigma.pow(2) - torch.log(sigma.pow(2)) - 1).flatten(1).sum(1).mean()
    return F.l1_loss(reconstruction, x) + 1e-6 * kl / x[0].numel()


def variants(case: str, spatial_dims: int, quick: bool) -> dict:
    """name -> (builder, loss) for one case; MONAI's flash-attention variant only in a full run."""
    if case.startswith("vqvae"):
        return {
            "medgen": (lambda: medgen_vqvae(spatial_dims, matched=False), medgen_loss),
            "medgen_matched": (lambda: medgen_vqvae(spatial_dims, matched=True), medgen_loss),
            "medgen_strided": (lambda: medgen_vqvae_strided(spatial_dims), medgen_loss),
            "monai": (lambda: monai_vqvae(spatial_dims), monai_vq_loss),
        }
    out = {
        "medgen": (lambda: medgen_klvae(spatial_dims), medgen_loss),
        "monai": (lambda: monai_klvae(spatial_dims), monai_kl_loss),
    }
    if not quick:
        out["monai_flash_attention"] = (lambda: monai_klvae(spatial_dims, flash=True), monai_kl_loss)
    return out


# -- timing ------------------------------------------------------------------------------------
def train_step(build, loss_fn, shape):
    """A model built from ``SEED``, its Adam optimiser and a closure running one training step."""
    torch.manual_seed(SEED)
    model = build().train()
    x = torch.rand(shape, generator=torch.Generator().manual_seed(SEED))
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step(inp=x):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model, inp)
        loss.backward()
        opt.step()
        return loss

    return model, x, step


def measure_case(case: str, shape, repeats: int, quick: bool, gate: QuietGate) -> dict:
    """Every variant of a case, timed in turn (medgen, MONAI, medgen, MONAI, ...)."""
    steps, models = {}, {}
    for name, (build, loss_fn) in variants(case, len(shape) - 2, quick).items():
        model, x, step = train_step(build, loss_fn, shape)
        work = flops(lambda: step(x[:1])) * shape[0]  # fwd + bwd at batch 1, scaled by the batch
        models[name] = {"params": param_count(model), "gflop_per_step": round(work / 1e9, 1)}
        steps[name] = step
    for name, timing in bench_interleaved(steps, repeats=repeats, warmup=1, gate=gate).items():
        models[name].update(timing)
        print(f"{case:9s} {name:22s} {timing['median_s']:8.3f} s/step  {models[name]['params']:>10,d} params  "
              f"{models[name]['gflop_per_step']:>8.1f} GFLOP  (other processes: {timing['foreign_cpu_share']:.0%} CPU)")
    del steps
    gc.collect()
    return models


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny inputs, 1 repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quiet-wait", type=float, default=None,
                        help="seconds to spend waiting for a quiet machine, redoing disturbed runs "
                             "(default 1800; 0 with --quick)")
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    args = parser.parse_args()
    torch.set_num_threads(2)
    monai = import_monai()
    repeats = 1 if args.quick else args.repeats
    gate = QuietGate(args.quiet_wait if args.quiet_wait is not None else (0.0 if args.quick else 1800.0))

    busy = training_running()
    cases = {}
    for case in args.cases:
        full_shape, quick_shape, baseline_s = CASES[case]
        shape = quick_shape if args.quick else full_shape
        busy |= training_running()
        models = measure_case(case, shape, repeats, args.quick, gate)
        m = models["monai"]
        entry = {"input_shape": list(shape), "models": models, "baseline_md_monai_s_per_step": baseline_s}
        for name in [k for k in models if k.startswith("medgen")]:
            entry[f"ratio_monai_over_{name}"] = round(m["median_s"] / models[name]["median_s"], 3)
            # time per unit of arithmetic: > 1 means medgen gets through a FLOP faster than MONAI
            entry[f"flop_rate_ratio_{name}_over_monai"] = round(
                (models[name]["gflop_per_step"] / models[name]["median_s"]) / (m["gflop_per_step"] / m["median_s"]), 3
            )
        cases[case] = entry
    busy |= training_running()
    foreign = max(v["foreign_cpu_share"] for c in cases.values() for v in c["models"].values())

    result = {
        "benchmark": "autoencoder training step (forward + backward + Adam step)",
        "quick": args.quick,
        "machine_busy": foreign > BUSY_SHARE or (busy and gate.remaining <= 0),
        "training_run_seen": busy,
        "max_foreign_cpu_share": foreign,
        "timing": "variants of a case timed in turn (A B C A B C ...) after one warm-up step each",
        **gate.report(),
        "torch_threads": torch.get_num_threads(),
        "repeats": repeats,
        "warmup": 1,
        "ratio_definition": "MONAI seconds per step / medgen seconds per step (> 1: medgen is faster)",
        "cases": cases,
        "architecture_notes": ARCHITECTURE_NOTES,
        "versions": {"torch": torch.__version__, "monai": monai.__version__},
    }
    path = write_result("ae", result)
    print(json.dumps({k: {r: v for r, v in c.items() if r.startswith("ratio")} for k, c in cases.items()}, indent=2))
    print(f"wrote {path}" + ("  (machine busy: other processes shared the CPU)" if result["machine_busy"] else ""))


if __name__ == "__main__":
    main()
