"""Token-prior sampling speed of medgen against MONAI 1.6.1 (issue 4), as ratios.

All models: 256-d, 4 layers, 8 heads, MLP 4x, a codebook of 256 codes, batch 4, untrained random
weights (the speed of decoding does not depend on them), multinomial sampling at temperature 1,
2 torch threads; on each grid every sampler runs once in turn, ``--repeats`` rounds after short
warm-ups (a sampler whose runs reach 60 s stops repeating), median reported. Tokens per second count every token of the batch (batch x grid / seconds), as
BASELINES.md does.

- medgen ``TransformerPrior`` + ``medgen_cli.sampling.generate`` with and without the KV cache, on
  a 16x16 grid (256 tokens) and a 32x32 grid (1,024 tokens), run in full.
- MONAI ``DecoderOnlyTransformer`` + ``VQVAETransformerInferer.sample`` (which recomputes the whole
  sequence for every new token). 256 tokens: run in full. 1,024 tokens: BASELINES.md measured
  430 s and ~13 GB, so only the first 256 tokens are run (``sample`` with a 16x16 grid on the model
  built for 1,024 positions, which is exactly the first quarter of the full loop, its cheapest part:
  a *lower bound*). An estimate of the full time integrates the measured cost of one forward pass at
  lengths 1, N/4, N/2, 3N/4, N (trapezoid rule); the same estimate is checked against the measured
  full run at 256 tokens. The inferer ends by decoding the codes with a VQ-VAE: a tiny one is used
  and its decode time is reported (a few ms).
- medgen ``MaskGITPrior`` + ``maskgit_generate`` with 8 and 16 steps against autoregressive
  decoding (KV cache) of the same grid.

Writes ``benchmarks/results/prior.json``. MONAI is imported from ``benchmarks/.monai`` only.

Run: ``.venv/bin/python -m benchmarks.bench_prior [--quick] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import gc
import json

import torch

from benchmarks.common import (
    BUSY_SHARE, QuietGate, bench, bench_interleaved, import_monai, param_count, training_running, write_result,
)
from medgen_cli.models.priors import MaskGITPrior, TransformerPrior
from medgen_cli.sampling import generate, maskgit_generate

SEED = 0
NUM_EMBEDDINGS = 256
SIZE = {"dim": 256, "depth": 4, "num_heads": 8}
BASELINE_MD = {  # MONAI figures quoted in BASELINES.md (same model size, batch 4)
    256: {"seconds": 11.7, "tokens_per_s": 87},
    1024: {"seconds": 430.0, "tokens_per_s": 9.5, "ram_gb": 13},
}
BUDGET_S = 60.0  # stop repeating a case once its timed runs took this long
MASKGIT_STEPS = (8, 16)


def tokens_per_s(batch: int, tokens: int, seconds: float) -> float:
    return round(batch * tokens / seconds, 2)


# -- medgen --------------------------------------------------------------------------------------
def medgen_samplers(grid, batch: int) -> tuple[dict, dict, dict]:
    """Sampling closures for the transformer (with / without cache) and MaskGIT, their warm-ups, params."""
    torch.manual_seed(SEED)
    ar = TransformerPrior(NUM_EMBEDDINGS, grid, **SIZE).eval()
    torch.manual_seed(SEED)
    mg = MaskGITPrior(NUM_EMBEDDINGS, grid, **SIZE).eval()
    n = ar.num_tokens

    def ar_run(cache: bool, num: int = n):
        return generate(ar, num, batch_size=batch, sampler_kwargs={"strategy": "multinomial"},
                        use_cache=cache, generator=torch.Generator().manual_seed(SEED))

    def mg_run(steps: int):
        return maskgit_generate(mg, num_tokens=n, batch_size=batch, steps=steps,
                                generator=torch.Generator().manual_seed(SEED))

    runs = {"medgen_kv_cache": lambda: ar_run(True), "medgen_no_cache": lambda: ar_run(False)}
    runs.update({f"medgen_maskgit_{s}": (lambda s=s: mg_run(s)) for s in MASKGIT_STEPS})
    warmups = {"medgen_kv_cache": lambda: ar_run(True, min(n, 16)), "medgen_no_cache": lambda: ar_run(False, min(n, 16))}
    warmups.update({f"medgen_maskgit_{s}": (lambda s=s: mg_run(s)) for s in MASKGIT_STEPS})
    return runs, warmups, {"transformer": param_count(ar), "maskgit": param_count(mg)}


# -- MONAI ---------------------------------------------------------------------------------------
def monai_models(max_tokens: int):
    """A DecoderOnlyTransformer for ``max_tokens`` positions (+ BOS) and a tiny VQ-VAE."""
    from monai.networks.nets import VQVAE, DecoderOnlyTransformer

    torch.manual_seed(SEED)
    transformer = DecoderOnlyTransformer(
        num_tokens=NUM_EMBEDDINGS + 1, max_seq_len=max_tokens + 1, attn_layers_dim=SIZE["dim"],
        attn_layers_depth=SIZE["depth"], attn_layers_heads=SIZE["num_heads"],
    ).eval()
    # Only its decoder runs, once, on the sampled codes: kept tiny so the timing is the transformer's.
    vqvae = VQVAE(
        spatial_dims=2, in_channels=1, out_channels=1, channels=(8, 8), num_res_layers=1, num_res_channels=(8, 8),
        downsample_parameters=((2, 4, 1, 1), (2, 4, 1, 1)), upsample_parameters=((2, 4, 1, 1, 0), (2, 4, 1, 1, 0)),
        num_embeddings=NUM_EMBEDDINGS, embedding_dim=8,
    ).eval()
    return transformer, vqvae


def monai_sample(transformer, vqvae, grid, batch: int):
    from monai.inferers import VQVAETransformerInferer
    from monai.utils.ordering import Ordering

    ordering = Ordering(ordering_type="raster_scan", spatial_dims=2, dimensions=(1, *grid))

    torch.manual_seed(SEED)  # the inferer draws with the global generator
    start = torch.full((batch, 1), NUM_EMBEDDINGS, dtype=torch.long)  # BOS = vqvae.num_embeddings
    return VQVAETransformerInferer().sample(
        latent_spatial_dim=tuple(grid), starting_tokens=start, vqvae_model=vqvae, transformer_model=transformer,
        ordering=ordering, verbose=False,
    )


def forward_profile(transformer, num_tokens: int, batch: int, gate: QuietGate) -> dict:
    """Median time of one forward pass at lengths 1, N/4, N/2, 3N/4, N, and the trapezoid estimate
    of the inferer's loop (one forward at each length 1..N)."""
    lengths = sorted({1, *(num_tokens * k // 4 for k in range(1, 5))})
    times = {}
    with torch.no_grad():
        for length in lengths:
            x = torch.randint(0, NUM_EMBEDDINGS, (batch, length), generator=torch.Generator().manual_seed(SEED))
            times[length] = bench(lambda: transformer(x), repeats=3, warmup=1, gate=gate)["median_s"]
    estimate = sum((lengths[i + 1] - lengths[i]) * (times[lengths[i]] + times[lengths[i + 1]]) / 2
                   for i in range(len(lengths) - 1)) + times[lengths[0]]
    return {"forward_s_by_length": {str(k): round(v, 5) for k, v in times.items()}, "estimated_loop_s": round(estimate, 2)}


def monai_sampler(grid, batch: int, prefix_grid=None):
    """The inferer's sampling on ``grid``, or on ``prefix_grid`` (its first tokens) with the model
    built for ``grid``; returns the closure, its warm-up, the models and facts about the run."""
    num_tokens = grid[0] * grid[1]
    run_grid = prefix_grid or grid
    transformer, vqvae = monai_models(num_tokens)
    info = {"params": param_count(transformer), "max_seq_len": num_tokens + 1,
            "tokens_run": run_grid[0] * run_grid[1], "run_grid": list(run_grid)}
    return (lambda: monai_sample(transformer, vqvae, run_grid, batch),
            lambda: monai_sample(transformer, vqvae, (2, 2), batch), transformer, vqvae, info)


def bench_grid(grid, batch: int, repeats: int, gate: QuietGate, prefix_grid=None) -> dict:
    """All samplers on one grid, timed in turn after short warm-ups; MONAI's forward profile after."""
    n = grid[0] * grid[1]
    runs, warmups, params = medgen_samplers(grid, batch)
    monai_run, monai_warm, transformer, vqvae, monai_info = monai_sampler(grid, batch, prefix_grid)
    runs["monai"], warmups["monai"] = monai_run, monai_warm
    for warm in warmups.values():
        warm()
    t = bench_interleaved(runs, repeats=repeats, warmup=0, budget_s=BUDGET_S, gate=gate)
    for name, v in t.items():
        tokens = monai_info["tokens_run"] if name == "monai" else n
        v["tokens_per_s"] = tokens_per_s(batch, tokens, v["median_s"])
        print(f"{n:5d}-token grid  {name:18s} {tokens:5d} tokens  {v['median_s']:8.2f} s  {v['tokens_per_s']:9.1f} tok/s"
              f"  (other processes: {v['foreign_cpu_share']:.0%} CPU)")
    ar = {"params": params["transformer"], "kv_cache": t["medgen_kv_cache"], "no_cache": t["medgen_no_cache"]}
    ar["kv_cache_speedup"] = round(ar["no_cache"]["median_s"] / ar["kv_cache"]["median_s"], 2)
    mg = {"params": params["maskgit"], **{f"steps_{s}": t[f"medgen_maskgit_{s}"] for s in MASKGIT_STEPS}}
    monai = {**monai_info, **t["monai"]}
    codes = torch.randint(0, NUM_EMBEDDINGS, (batch, *monai_info["run_grid"]))
    with torch.no_grad():
        monai["vqvae_decode_s"] = round(bench(lambda: vqvae.decode_samples(codes), repeats=3)["median_s"], 4)
    monai["profile"] = forward_profile(transformer, n, batch, gate)
    print(f"{n:5d}-token grid  MONAI estimated full loop from the forward profile: {monai['profile']['estimated_loop_s']} s")
    del runs, transformer
    gc.collect()
    return {"medgen_autoregressive": ar, "medgen_maskgit": mg, "monai": monai}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 4x4 and 8x8 grids, batch 2, 1 repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quiet-wait", type=float, default=None,
                        help="seconds to spend waiting for a quiet machine, redoing disturbed runs "
                             "(default 1800; 0 with --quick)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    monai = import_monai()
    repeats = 1 if args.quick else args.repeats
    gate = QuietGate(args.quiet_wait if args.quiet_wait is not None else (0.0 if args.quick else 1800.0))
    batch = 2 if args.quick else 4
    small, large = ((4, 4), (8, 8)) if args.quick else ((16, 16), (32, 32))

    busy = training_running()
    results = {}
    for grid in (small, large):
        n = grid[0] * grid[1]
        entry: dict = {"grid": list(grid), "tokens": n, "batch": batch}
        prefix = None if grid == small else small
        busy |= training_running()
        entry.update(bench_grid(grid, batch, repeats, gate, prefix_grid=prefix))
        busy |= training_running()
        m, ar = entry["monai"], entry["medgen_autoregressive"]
        monai_rate = m["tokens_per_s"]
        ratios = {
            "tokens_per_s_medgen_kv_cache_over_monai": round(ar["kv_cache"]["tokens_per_s"] / monai_rate, 2),
            "tokens_per_s_medgen_no_cache_over_monai": round(ar["no_cache"]["tokens_per_s"] / monai_rate, 2),
            "kv_cache_speedup": ar["kv_cache_speedup"],
        }
        if prefix:
            ratios["note"] = (
                f"MONAI ran only its first {m['tokens_run']} of {n} tokens (the cheapest part), so its tokens/s is "
                "an upper bound and the tokens/s ratios are lower bounds; the time ratios below use the measured "
                "prefix (a lower bound on MONAI's full time), the profile estimate, and BASELINES.md's full figure"
            )
            monai_times = {"monai_prefix_lower_bound": m["median_s"], "monai_estimated": m["profile"]["estimated_loop_s"]}
            if n in BASELINE_MD:
                monai_times["monai_baselines_md"] = BASELINE_MD[n]["seconds"]
            for label, monai_s in monai_times.items():
                for mode in ("kv_cache", "no_cache"):
                    ratios[f"time_{label}_over_medgen_{mode}"] = round(monai_s / ar[mode]["median_s"], 2)
        else:
            ratios["time_monai_over_medgen_kv_cache"] = round(m["median_s"] / ar["kv_cache"]["median_s"], 2)
            ratios["time_monai_over_medgen_no_cache"] = round(m["median_s"] / ar["no_cache"]["median_s"], 2)
            ratios["monai_estimate_over_measured"] = round(m["profile"]["estimated_loop_s"] / m["median_s"], 3)
        for steps in MASKGIT_STEPS:
            ratios[f"maskgit_{steps}_steps_speedup_over_ar_kv_cache"] = round(
                ar["kv_cache"]["median_s"] / entry["medgen_maskgit"][f"steps_{steps}"]["median_s"], 2)
        entry["ratios"] = ratios
        entry["baseline_md_monai"] = BASELINE_MD.get(n)
        results[f"{n}_tokens"] = entry

    foreign = max(v["foreign_cpu_share"] for e in results.values()
                  for v in (e["medgen_autoregressive"]["kv_cache"], e["medgen_autoregressive"]["no_cache"], e["monai"],
                            *(e["medgen_maskgit"][f"steps_{s}"] for s in MASKGIT_STEPS)))
    result = {
        "benchmark": "token prior sampling (batch x tokens per second)",
        "quick": args.quick,
        "machine_busy": foreign > BUSY_SHARE or (busy and gate.remaining <= 0),
        "training_run_seen": busy,
        "max_foreign_cpu_share": foreign,
        "timing": "all samplers of a grid timed in turn (A B C ... A B C ...) after short warm-up runs",
        **gate.report(),
        "torch_threads": torch.get_num_threads(),
        "repeats": repeats,
        "repeat_budget_s": BUDGET_S,
        "model": {**SIZE, "mlp_ratio": 4, "num_embeddings": NUM_EMBEDDINGS, "sampling": "multinomial, T=1"},
        "notes": [
            "medgen's TransformerPrior uses factorised grid positions and SDPA attention; MONAI's "
            "DecoderOnlyTransformer learned absolute positions and an explicit masked attention matrix "
            "(use_flash_attention=False, its default). Same width, depth, heads and MLP ratio.",
            "MONAI's VQVAETransformerInferer.sample has no KV cache: token i reruns the network on all i "
            "earlier tokens, so its cost grows quadratically with the grid (cubically counting attention).",
            "MONAI's time includes the decode of the codes by a tiny VQ-VAE (vqvae_decode_s); medgen's "
            "generate returns codes only.",
            "MaskGIT decoding is compared with medgen's KV-cached autoregressive decoding of the same grid "
            "and batch; both untrained, so this is speed only, not sample quality.",
        ],
        "results": results,
        "versions": {"torch": torch.__version__, "monai": monai.__version__},
    }
    path = write_result("prior", result)
    print(json.dumps({k: v["ratios"] for k, v in results.items()}, indent=2))
    print(f"wrote {path}" + ("  (machine busy: other processes shared the CPU)" if result["machine_busy"] else ""))


if __name__ == "__main__":
    main()
