"""Training-step time of medgen's autoencoders at their DEFAULTS against MONAI 1.6.1 at its defaults
(issues 3 and 13), for the same channel list, input and batch, as a ratio; with the GFLOP of one
step and the GFLOP/s each library achieves.

One step = forward + loss + backward + Adam step, on the same random input (same seed) for both
libraries, median of ``--repeats`` after one warm-up step, 2 torch threads (``--threads``); the
variants of a case are timed in turn (A B C A B C ...) so that a passing load on the shared
machine hits them alike:

- ``vqvae_2d``: VQ-VAE, channels (64, 128), 256 x 64 codebook, 1 x 128^2, batch 8
  (BASELINES.md: MONAI 1.13 s / step);
- ``vqvae_3d``: the same in 3D, 1 x 64^3, batch 2 (MONAI 4.48 s / step);
- ``klvae_2d``: KL autoencoder, channels (64, 128, 128), 4 latent channels, 1 x 128^2, batch 8
  (MONAI 6.99 s / step);
- ``klvae_3d``: the same in 3D, 1 x 32^3, batch 2.

Variants: ``medgen`` = `medgen train-ae`'s defaults for that channel list (settings defaults: the
"strided" layout, no middle block, 3x3 + 1x1 residual blocks, precision auto = bf16 autocast on
CPUs with AMX/AVX512-BF16, channels_last auto), run the way the trainer runs them; ``medgen_fp32``: the same network in fp32
(the layout's share of the gain); ``medgen_full_fp32``: the network medgen shipped before
(``model.layout: full, model.mid_blocks: 2, model.res_kernels: [3, 3]``); ``monai``: MONAI's model
in fp32, as MONAI trains on the CPU; ``monai_bf16``: MONAI under the same bf16 autocast (information: what the
precision alone buys it). ``--compile`` adds ``medgen_compiled`` (torch.compile of encoder and
decoder; its compilation time is reported apart). Residual blocks: 2 per level in both.

Writes ``benchmarks/results/ae.json``. MONAI is imported from ``benchmarks/.monai`` only.

Run: ``.venv/bin/python -m benchmarks.bench_ae [--quick] [--repeats 3] [--cases vqvae_2d ...] [--compile]``
"""

from __future__ import annotations

import argparse
import gc
import json
import time

import medgen_cli  # noqa: F401  before torch: medgen's environment defaults (OpenMP wait policy) come first
import torch
import torch.nn.functional as F

from benchmarks.common import (
    BUSY_SHARE, QuietGate, bench_interleaved, flops, import_monai, param_count, training_running, write_result,
)
from medgen_cli.models.registry import build_autoencoder
from medgen_cli.settings.train import AutoencoderSettings
from medgen_cli.train.ae_task import compile_pyramids
from medgen_cli.train.precision import channels_last_format, cpu_bf16_flags, resolve_precision, use_channels_last

SEED = 0
TARGET = 1.5  # medgen's defaults at least this many times MONAI's training-step speed

# (input shape (B, C, *spatial), quick input shape, BASELINES.md MONAI seconds per step or None)
CASES = {
    "vqvae_2d": ((8, 1, 128, 128), (2, 1, 32, 32), 1.13),
    "vqvae_3d": ((2, 1, 64, 64, 64), (1, 1, 16, 16, 16), 4.48),
    "klvae_2d": ((8, 1, 128, 128), (2, 1, 32, 32), 6.99),
    "klvae_3d": ((2, 1, 32, 32, 32), (1, 1, 16, 16, 16), None),
}

ARCHITECTURE_NOTES = {
    "vqvae": [
        "Both: channels (64, 128), total downsampling 4 per axis, 2 residual blocks of two 3x3 convs per level "
        "in encoder and decoder, EMA codebook 256 x 64, MSE + commitment loss.",
        "medgen defaults (layout 'strided'): a stride-2 3x3 stem conv, 2 blocks at 1/2 (64 ch), a stride-2 conv "
        "to 128 ch, 2 blocks at 1/4; no middle block; decoder mirrored, nearest + 3x3 conv between levels and a "
        "sub-pixel 3x3 conv (ICNR) to the image. MONAI: stride-2 kernel-4 convs before each level's residual "
        "layers, transposed kernel-4 convs in the decoder.",
        "Residual blocks: medgen's default is the original VQ-VAE unit, a 3x3 then a 1x1 conv (model.res_kernels "
        "[3, 1]); MONAI's VQVAEResidualUnit is two 3x3 convs. medgen's default step is ~0.66x MONAI's arithmetic.",
        "Norm: MONAI none; medgen group norm (8 groups). Activation: MONAI ReLU (post-activation residual unit); "
        "medgen SiLU, pre-activation, ReZero gate. Residual channels: MONAI num_res_channels = channels.",
        "medgen_full_fp32: the network medgen shipped before (full-resolution first level, 2 middle blocks, two "
        "3x3 convs per block): about 5x (2D) / 10x (3D) MONAI's arithmetic.",
        "Precision: medgen bf16 autocast (quantiser and losses in fp32, fp32 weights) where the CPU has native "
        "bf16; MONAI fp32 (its default); monai_bf16 shows MONAI under the same autocast.",
    ],
    "klvae": [
        "Both: channels (64, 128, 128), 2 residual blocks per level, downsampling after levels 0 and 1 "
        "(factor 4), SiLU, nearest + conv upsampling, 4 latent channels, L1 + 1e-6 KL loss.",
        "MONAI defaults: its first level at full resolution, group norm with 32 groups, a res-attention-res "
        "middle block in encoder and decoder (with_encoder/decoder_nonlocal_attn default True), 1x1 quant convs. "
        "medgen defaults: layout 'strided' (levels at 1/2, 1/4, 1/4), group norm with 8 groups, no middle "
        "block, ReZero gates: a fraction of MONAI's arithmetic for the same channel list and latent grid.",
        "Residual blocks: medgen 3x3 + 1x1 (model.res_kernels [3, 1]), MONAI two 3x3.",
        "Attention: medgen uses torch scaled_dot_product_attention (when enabled); MONAI 1.6.1's default "
        "(use_flash_attention=False) builds the attention matrix explicitly.",
    ],
}


# -- models and losses -------------------------------------------------------------------------
def medgen_default(kind: str, spatial_dims: int, **overrides):
    """`medgen train-ae`'s default network for the case's channel list (settings -> model kwargs)."""
    if kind == "vqvae":
        fields = dict(kind="vqvae", channels=(64, 128), embedding_dim=64, num_embeddings=256)
    else:
        fields = dict(kind="klvae", channels=(64, 128, 128), latent_channels=4)
    kwargs = AutoencoderSettings(**fields).model_kwargs(in_channels=1)
    return build_autoencoder(kind, spatial_dims, **{**kwargs, **overrides})


def monai_vqvae(spatial_dims: int):
    from monai.networks.nets import VQVAE

    return VQVAE(
        spatial_dims=spatial_dims, in_channels=1, out_channels=1, channels=(64, 128), num_res_layers=2,
        num_res_channels=(64, 128), downsample_parameters=((2, 4, 1, 1), (2, 4, 1, 1)),
        upsample_parameters=((2, 4, 1, 1, 0), (2, 4, 1, 1, 0)), num_embeddings=256, embedding_dim=64,
    )


def monai_klvae(spatial_dims: int):
    from monai.networks.nets import AutoencoderKL

    return AutoencoderKL(
        spatial_dims=spatial_dims, in_channels=1, out_channels=1, num_res_blocks=2, channels=(64, 128, 128),
        attention_levels=(False, False, False), latent_channels=4,
    )


def medgen_loss(model, x):
    return sum(model(x).loss_terms.values())


def monai_vq_loss(model, x):
    reconstruction, quantization_loss = model(x)
    return F.mse_loss(reconstruction.float(), x) + quantization_loss.float()


def monai_kl_loss(model, x):
    reconstruction, mu, sigma = model(x)
    mu, sigma = mu.float(), sigma.float()
    kl = 0.5 * (mu.pow(2) + sigma.pow(2) - torch.log(sigma.pow(2)) - 1).flatten(1).sum(1).mean()
    return F.l1_loss(reconstruction.float(), x) + 1e-6 * kl / x[0].numel()


def variants(case: str, spatial_dims: int, compile_: bool) -> dict:
    """name -> (builder, loss, precision name, channels_last setting, compile) for one case."""
    kind = case.split("_")[0]
    monai_build, monai_loss = (monai_vqvae, monai_vq_loss) if kind == "vqvae" else (monai_klvae, monai_kl_loss)
    out = {
        "medgen": (lambda: medgen_default(kind, spatial_dims), medgen_loss, "auto", None, False),
        "medgen_fp32": (lambda: medgen_default(kind, spatial_dims), medgen_loss, "fp32", None, False),
        "medgen_full_fp32": (lambda: medgen_default(kind, spatial_dims, layout="full", mid_blocks=2, res_kernels=(3, 3)),
                             medgen_loss, "fp32", False, False),
        "monai": (lambda: monai_build(spatial_dims), monai_loss, "fp32", False, False),
        "monai_bf16": (lambda: monai_build(spatial_dims), monai_loss, "bf16", False, False),
    }
    if compile_:
        out["medgen_compiled"] = (lambda: medgen_default(kind, spatial_dims), medgen_loss, "auto", None, True)
    return out


# -- timing ------------------------------------------------------------------------------------
def train_step(build, loss_fn, shape, precision_name: str, channels_last: bool | None, compile_: bool):
    """A model built from ``SEED``, its Adam optimiser and a closure running one training step the way
    medgen's trainer does: under the precision's autocast, in the chosen memory format."""
    torch.manual_seed(SEED)
    model = build().train()
    precision = resolve_precision(precision_name, torch.device("cpu"), cpu_bf16=True)
    x = torch.rand(shape, generator=torch.Generator().manual_seed(SEED))
    cl = use_channels_last(channels_last, precision)
    if cl:
        fmt = channels_last_format(len(shape) - 2)
        model, x = model.to(memory_format=fmt), x.contiguous(memory_format=fmt)
    if compile_:
        compile_pyramids(model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step(inp=x):
        opt.zero_grad(set_to_none=True)
        with precision.autocast():
            loss = loss_fn(model, inp)
        loss.backward()
        opt.step()
        return loss

    return model, x, step, {"precision": precision.name, "channels_last": cl}


def measure_case(case: str, shape, repeats: int, compile_: bool, gate: QuietGate) -> dict:
    """Every variant of a case, timed in turn (medgen, ..., MONAI, medgen, ...)."""
    steps, models = {}, {}
    for name, (build, loss_fn, prec, cl, comp) in variants(case, len(shape) - 2, compile_).items():
        model, x, step, how = train_step(build, loss_fn, shape, prec, cl, comp)
        t0 = time.perf_counter()
        step()  # compiles (torch.compile) and warms up, not timed
        first = time.perf_counter() - t0
        if comp:  # the same network as "medgen": its count (the counter does not see inside compiled graphs)
            work = models["medgen"]["gflop_per_step"] * 1e9
        else:
            work = flops(lambda: step(x[:1])) * shape[0]  # fwd + bwd at batch 1, scaled by the batch
        models[name] = {"params": param_count(model), "gflop_per_step": round(work / 1e9, 1), **how,
                        "first_step_s": round(first, 2)}
        steps[name] = step
    for name, timing in bench_interleaved(steps, repeats=repeats, warmup=1, gate=gate).items():
        m = models[name]
        m.update(timing)
        m["gflop_per_s"] = round(m["gflop_per_step"] / m["median_s"], 1)
        print(f"{case:9s} {name:18s} {timing['median_s']:8.3f} s/step  {m['params']:>10,d} params  "
              f"{m['gflop_per_step']:>8.1f} GFLOP  {m['gflop_per_s']:>7.1f} GFLOP/s  {m['precision']:4s}  "
              f"(other processes: {timing['foreign_cpu_share']:.0%} CPU)")
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
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--compile", action="store_true", help="also time medgen with torch.compile")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    monai = import_monai()
    repeats = 1 if args.quick else args.repeats
    gate = QuietGate(args.quiet_wait if args.quiet_wait is not None else (0.0 if args.quick else 1800.0))

    busy = training_running()
    cases = {}
    for case in args.cases:
        full_shape, quick_shape, baseline_s = CASES[case]
        shape = quick_shape if args.quick else full_shape
        busy |= training_running()
        models = measure_case(case, shape, repeats, args.compile, gate)
        m = models["monai"]
        entry = {"input_shape": list(shape), "models": models, "baseline_md_monai_s_per_step": baseline_s}
        for name in [k for k in models if k.startswith("medgen")]:
            entry[f"ratio_monai_over_{name}"] = round(m["median_s"] / models[name]["median_s"], 3)
            # time per unit of arithmetic: > 1 means medgen gets through a FLOP faster than MONAI
            entry[f"flop_rate_ratio_{name}_over_monai"] = round(
                (models[name]["gflop_per_step"] / models[name]["median_s"]) / (m["gflop_per_step"] / m["median_s"]), 3
            )
        entry["target_met"] = entry["ratio_monai_over_medgen"] >= TARGET
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
        "target": f"ratio_monai_over_medgen >= {TARGET} in every case (issue 13)",
        "cpu_bf16_flags": list(cpu_bf16_flags()),
        "cases": cases,
        "architecture_notes": ARCHITECTURE_NOTES,
        "versions": {"torch": torch.__version__, "monai": monai.__version__},
    }
    path = write_result("ae", result)
    print(json.dumps({k: {r: v for r, v in c.items() if r.startswith(("ratio", "target"))} for k, c in cases.items()},
                     indent=2))
    print(f"wrote {path}" + ("  (machine busy: other processes shared the CPU)" if result["machine_busy"] else ""))


if __name__ == "__main__":
    main()
