"""Write ``benchmarks/summary.md``: the medgen-vs-MONAI figures and ratios from ``results/{ae,prior,diffusion}.json``,
and DDIM against DDPM on a trained model from ``results/samplers.json``.

Run after the benchmarks: ``.venv/bin/python -m benchmarks.summarize``. A missing result file is
listed as not run; a result from a ``--quick`` run or one taken while training shared the CPU is
flagged in its section.
"""

from __future__ import annotations

import json

from benchmarks.common import RESULTS

SUMMARY = RESULTS.parent / "summary.md"


def _load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _flags(r: dict) -> str:
    flags = []
    if r.get("quick"):
        flags.append("**smoke run (--quick): tiny sizes, not comparable**")
    if r.get("machine_busy"):
        flags.append("**measured while other processes shared the 2 cores (machine_busy: true, up to "
                     f"{r.get('max_foreign_cpu_share', 0):.0%} of the CPU): treat the figures as rough**")
    elif "max_foreign_cpu_share" in r:
        flags.append(f"Quiet machine: other processes used at most {r['max_foreign_cpu_share']:.0%} of the CPU "
                     f"during a kept timed run (disturbed runs redone: {r.get('disturbed_runs_discarded', 0)})")
    return ("\n" + "; ".join(flags) + ".\n") if flags else ""


def _s(x: float) -> str:
    return f"{x:.3g} s" if x < 10 else f"{x:.1f} s"


def ae_section(r: dict) -> list[str]:
    out = ["## Autoencoder training step (`bench_ae.py`, issues 3 and 13)", _flags(r),
           "Forward + backward + Adam step, median of {} after a warm-up, {} threads. "
           "Ratio = MONAI time / medgen time (> 1: medgen faster). GFLOP = floating-point operations of "
           "one step (torch's counter).".format(r["repeats"], r["torch_threads"]), "",
           "| model, input | medgen variant | medgen s/step | MONAI s/step | ratio | params medgen / MONAI "
           "| GFLOP/step medgen / MONAI | work-rate ratio |",
           "|---|---|---|---|---|---|---|---|"]
    kinds = {"vqvae": "VQ-VAE (64,128), 256×64 codebook", "klvae": "KL-VAE (64,128,128), 4 latent ch"}
    for case, c in r["cases"].items():
        b, ch, *spatial = c["input_shape"]
        label = f"{kinds.get(case.split('_')[0], case)}, {ch}×{'×'.join(map(str, spatial))}, batch {b}"
        m = c["models"]["monai"]
        for name, v in c["models"].items():
            if not name.startswith("medgen"):
                continue
            out.append(
                f"| {label} | {name} | {v['median_s']:.3f} | {m['median_s']:.3f} "
                f"| **{c[f'ratio_monai_over_{name}']:.2f}** | {v['params'] / 1e6:.2f} M / {m['params'] / 1e6:.2f} M "
                f"| {v['gflop_per_step']:.0f} / {m['gflop_per_step']:.0f} | {c[f'flop_rate_ratio_{name}_over_monai']:.2f} |"
            )
        extra = [n for n in c["models"] if n.startswith("monai_")]
        for name in extra:
            v = c["models"][name]
            out.append(f"| {label} | (MONAI {name[6:].replace('_', ' ')}: {v['median_s']:.3f} s/step) "
                       "| | | | | | |")
    out += ["", "Work-rate ratio = (medgen GFLOP / medgen time) / (MONAI GFLOP / MONAI time): > 1 means medgen "
            "gets through its arithmetic faster. BASELINES.md quotes MONAI at 1.13 / 4.48 / 6.99 s per step.", ""]
    out += ["Architecture differences:", ""]
    for kind, notes in r["architecture_notes"].items():
        out += [f"- {kind}: " + " ".join(notes)]
    return out + [""]


def prior_section(r: dict) -> list[str]:
    out = ["## Token prior sampling (`bench_prior.py`, issue 4)", _flags(r),
           "256-d × 4 layers × 8 heads, codebook 256, batch 4, multinomial sampling. Tokens/s = batch × tokens "
           "/ seconds.", "",
           "| sampler | tokens | time | tokens/s | vs MONAI (time ratio MONAI / medgen) |", "|---|---|---|---|---|"]
    for key, e in r["results"].items():
        n, ar, mo, ra = e["tokens"], e["medgen_autoregressive"], e["monai"], e["ratios"]
        prefix = mo["tokens_run"] < n
        for mode, label in (("kv_cache", "medgen transformer, KV cache"), ("no_cache", "medgen transformer, no cache")):
            if prefix:
                vs = (f"≥ {ra[f'time_monai_prefix_lower_bound_over_medgen_{mode}']:.2f} (measured prefix); "
                      f"≈ {ra[f'time_monai_estimated_over_medgen_{mode}']:.2f} (estimate)")
                if f"time_monai_baselines_md_over_medgen_{mode}" in ra:
                    vs += f"; {ra[f'time_monai_baselines_md_over_medgen_{mode}']:.2f} (BASELINES.md 430 s)"
            else:
                vs = f"**{ra[f'time_monai_over_medgen_{mode}']:.2f}**"
            out.append(f"| {label} | {n} | {_s(ar[mode]['median_s'])} | {ar[mode]['tokens_per_s']:.0f} | {vs} |")
        for steps_key, v in e["medgen_maskgit"].items():
            if steps_key.startswith("steps_"):
                sp = ra[f"maskgit_{steps_key[6:]}_steps_speedup_over_ar_kv_cache"]
                out.append(f"| medgen MaskGIT, {steps_key[6:]} steps | {n} | {_s(v['median_s'])} | "
                           f"{v['tokens_per_s']:.0f} | (vs medgen AR + KV cache: AR time / MaskGIT time = {sp:.2f}) |")
        if prefix:
            out.append(f"| MONAI DecoderOnlyTransformer + VQVAETransformerInferer, first {mo['tokens_run']} tokens "
                       f"only | {mo['tokens_run']} of {n} | {_s(mo['median_s'])} (lower bound; estimate "
                       f"{_s(mo['profile']['estimated_loop_s'])}) | {mo['tokens_per_s']:.0f} (upper bound) | |")
        else:
            out.append(f"| MONAI DecoderOnlyTransformer + VQVAETransformerInferer | {n} | {_s(mo['median_s'])} "
                       f"| {mo['tokens_per_s']:.0f} | (estimate from forward profile: "
                       f"{ra['monai_estimate_over_measured']:.2f} × measured) |")
    out += ["", "KV-cache speed-up (no cache / cache): " + ", ".join(
        f"{e['tokens']} tokens {e['ratios']['kv_cache_speedup']:.1f}×" for e in r["results"].values()) + ".", ""]
    out += [f"- {n}" for n in r["notes"]]
    return out + [""]


def diffusion_section(r: dict) -> list[str]:
    m, o = r["models"]["monai"], r["models"]["medgen"]
    shape = "×".join(map(str, r["latent_shape"][1:]))
    out = ["## Latent diffusion sampling (`bench_diffusion.py`, issue 5)", _flags(r),
           f"UNet channels {tuple(r['channels'])}, DDIM {r['steps']} steps, {shape} latents, batch "
           f"{r['latent_shape'][0]}.", "",
           "| | time | per step | params | GFLOP/step |", "|---|---|---|---|---|",
           f"| medgen UNetPrior + sample_diffusion | {_s(o['median_s'])} | {o['ms_per_step']:.0f} ms | "
           f"{o['params'] / 1e6:.2f} M | {o['gflop_per_step']:.1f} |",
           f"| MONAI DiffusionModelUNet + DDIMScheduler | {_s(m['median_s'])} | {m['ms_per_step']:.0f} ms | "
           f"{m['params'] / 1e6:.2f} M | {m['gflop_per_step']:.1f} |",
           "", f"Ratio MONAI / medgen: **{r['ratio_monai_over_medgen']:.2f}** (BASELINES.md: MONAI 8.5 s, 170 ms/step).",
           ""]
    out += [f"- {n}" for n in r["notes"]]
    return out + [""]


def _metric(row: dict, key: str, fmt: str) -> str:
    return format(row[key], fmt) if key in row else "–"


def samplers_section(r: dict) -> list[str]:
    steps, p = r["settings"]["steps"], r["prior"]
    out = ["## DDIM vs DDPM on a trained conditional latent diffusion model (`bench_samplers.py`)", _flags(r)]
    if r.get("quick"):
        out.append(f"**Smoke run (--quick): DDIM {steps['ddim']} vs DDPM {steps['ddpm']} steps, not the 50 vs 1,000 "
                   "of the real benchmark.**\n")
    out += [f"Example 04 (CT 2× super-resolution): prior {p['path']} trained {p['steps_trained']} of "
            f"{p['train_steps_set']} steps (weights of step {p['selected_step']}), "
            f"{p['diffusion'].get('schedule')} schedule, {p['diffusion'].get('prediction')}-prediction, "
            f"latent grid {'×'.join(map(str, p['latent_grid']))}; autoencoder {p['autoencoder']['kind']} trained "
            f"{p['autoencoder']['steps_trained']} steps. {r['torch_threads']} torch thread(s), CPU. "
            f"Same start noise per seed for both samplers: {'yes' if r['same_start_noise'] else '**no**'}; "
            "the benchmark's pieces reproduce `sample.run`'s output: "
            + (", ".join(f"{c['scheduler']} {'identical' if c['identical'] else 'max |diff| %.3g' % c['max_abs_diff']}"
                         for c in r["cli_check"]) or "not checked") + ".", "",
            "Rests on: " + "; ".join(f"{split}: {text}" for split, text in r["rests_on"].items())
            + f". {r['caveat'][0].upper()}{r['caveat'][1:]}.", "",
            "Time = wall clock of one item (drawing the latents + decoding), median over seeds and items; "
            "scores (medgen evaluate's `item_metrics`, data range = the CT window) are means over seeds, then items.", "",
            "| split | method | steps | time / item | ms / step | SSIM | slice-wise SSIM | MS-SSIM | PSNR dB | MAE (phys.) |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    labels = {"ddim": "DDIM, eta 0", "ddpm": "DDPM", "trilinear": "trilinear upsampling (reference)",
              "autoencoder_ceiling": "autoencoder reconstruction (ceiling)",
              "ddim_vs_ddpm": "DDIM against DDPM (agreement of the two, not a score)"}
    for split, s in r["splits"].items():
        name = f"{split} ({'in-sample' if s['in_sample'] else 'held-out'}, {s['items']} item(s))"
        for key, label in labels.items():
            m, t = s["mean"][key], s["timing_median_over_items"].get(key)
            timing = (f"{steps[key]} | {_s(t['total_s'])} | {t['ms_per_step']:.0f}" if t else "– | – | –")
            out.append(f"| {name} | {label} | {timing} | {_metric(m, 'ssim', '.4f')} | {_metric(m, 'ssim_slicewise', '.4f')} "
                       f"| {_metric(m, 'ms_ssim', '.4f')} | {_metric(m, 'psnr', '.2f')} | {_metric(m, 'mae_phys', '.1f')} |")
    t = r["timing_median_over_items"]
    out += ["", f"Time ratio DDPM {steps['ddpm']} / DDIM {steps['ddim']} per item: **{r['time_ratio_ddpm_over_ddim']:.1f}×** "
            f"(DDIM {_s(t['ddim']['total_s'])}, DDPM {_s(t['ddpm']['total_s'])}, of which decoding "
            f"{_s(t['ddim']['decode_s'])} / {_s(t['ddpm']['decode_s'])}); per denoiser step {t['ddim']['ms_per_step']:.0f} vs "
            f"{t['ddpm']['ms_per_step']:.0f} ms (ratio {r['ms_per_step_ratio_ddpm_over_ddim']:.2f}).", ""]
    out += [f"- {n}" for n in r["notes"]]
    return out + [""]


AE_VARIANTS = {"medgen": "medgen defaults", "medgen_fp32": "the same network in fp32",
               "medgen_full_fp32": "the full-resolution network medgen shipped before, fp32",
               "medgen_compiled": "defaults + torch.compile"}


QUALITY_RUNS = {"script": "minimal VQ-VAE (BASELINES.md, ~60 lines)", "medgen": "medgen train-ae defaults",
                "medgen_fsq": "defaults, FSQ quantiser", "medgen_lfq": "defaults, LFQ quantiser (1,024 codes)",
                "medgen_rotation": "defaults, rotation-trick VQ gradients", "medgen_fp32": "defaults in fp32",
                "steps_bf16": "defaults, bf16, fixed steps", "steps_fp32": "defaults, fp32, same steps"}


def quality_section(r: dict) -> list[str]:
    out = ["## Reconstruction quality per CPU-minute (`bench_quality.py`, issue 13)", _flags(r),
           f"Trained on {r['train']}, scored on {r['held_out']}; every timed run {r['minutes']:g} min on one pinned "
           f"core beside its pair on the other; SSIM with L = {r['data_range']:g} (the stored range). "
           f"1-minute load average after each pair: {', '.join(map(str, r['load_average_after_pairs']))}.", "",
           "| run | SSIM (medgen) | SSIM (scikit-image, Gaussian) | SSIM (scikit-image defaults) | PSNR dB | steps "
           "| s/step | codebook usage |", "|---|---|---|---|---|---|---|---|"]
    for name, v in r["runs"].items():
        out.append(f"| {QUALITY_RUNS.get(name, name)} | **{v['ssim_medgen']:.4f}** | {v['ssim_skimage_gaussian']:.4f} "
                   f"| {v['ssim_skimage_default']:.4f} | {v['psnr_db']:.2f} | {v['steps']} | {v['seconds_per_step']:.3f} "
                   f"| {v['codebook_usage']:.1%} |")
    out.append("")
    if "margin_ssim_medgen" in r:
        out.append(f"medgen − script: **{r['margin_ssim_medgen']:+.4f} SSIM** (target {r['target']}: "
                   f"{'met' if r['target_met'] else '**not met**'}).")
    if "bf16_minus_fp32_same_steps" in r:
        out.append(f"bf16 − fp32 at the same steps: {r['bf16_minus_fp32_same_steps']:+.4f} SSIM.")
    return out + [""]


def contention_section(r: dict) -> list[str]:
    out = ["## Training step with a competing busy process (`bench_contention.py`, issue 13)", _flags(r),
           f"Median of {r['steps_per_phase']} steps × {r['rounds']} quiet/busy alternations; competitor: one busy "
           f"{r['competitor']} process; {r['cpu_count']} CPUs.", "",
           "| configuration | threads | quiet s/step | busy s/step | busy / quiet | busy / best quiet |",
           "|---|---|---|---|---|---|"]
    for name, v in r["configs"].items():
        out.append(f"| {name} | {v['threads']} | {v['quiet_s']:.3f} | {v['busy_s']:.3f} | **{v['busy_over_quiet']:.2f}** "
                   f"| {v['busy_vs_best_quiet']:.2f} |")
    if r.get("target_met") is not None:
        out += ["", f"Target: {r['target']} — {'met' if r['target_met'] else '**not met**'}."]
    return out + [""]


def headline() -> list[str]:
    """One line per comparison: the ratio MONAI time / medgen time."""
    out = ["## Headline ratios (MONAI time / medgen time; > 1 means medgen is faster)", ""]
    ae, prior, diffusion = _load("ae"), _load("prior"), _load("diffusion")
    if ae:
        for case, c in ae["cases"].items():
            variants = [n for n in c["models"] if n.startswith("medgen")]
            out.append(f"- {case} training step: " + ", ".join(
                f"{c[f'ratio_monai_over_{n}']:.2f} ({AE_VARIANTS.get(n, n)})" for n in variants if f"ratio_monai_over_{n}" in c))
    if prior:
        for e in prior["results"].values():
            ra, n = e["ratios"], e["tokens"]
            if "time_monai_over_medgen_kv_cache" in ra:
                out.append(f"- transformer sampling, {n} tokens: {ra['time_monai_over_medgen_kv_cache']:.1f} (KV cache), "
                           f"{ra['time_monai_over_medgen_no_cache']:.2f} (no cache)")
            else:
                out.append(f"- transformer sampling, {n} tokens: ≥ {ra['time_monai_prefix_lower_bound_over_medgen_kv_cache']:.1f} "
                           f"measured (MONAI run on its first 256 tokens only), ≈ {ra['time_monai_estimated_over_medgen_kv_cache']:.0f} "
                           "estimated" + (f", {ra['time_monai_baselines_md_over_medgen_kv_cache']:.0f} against BASELINES.md's 430 s"
                                          if "time_monai_baselines_md_over_medgen_kv_cache" in ra else "")
                           + " (KV cache)")
    if diffusion:
        out.append(f"- DDIM {diffusion['steps']}-step sampling: {diffusion['ratio_monai_over_medgen']:.2f}")
    flagged = [n for n, r in (("ae", ae), ("prior", prior), ("diffusion", diffusion))
               if r and (r.get("quick") or r.get("machine_busy"))]
    if flagged:
        out.append(f"- **not clean (smoke run or busy machine): {', '.join(flagged)}**")
    return out + [""]


def main() -> None:
    lines = ["# medgen vs MONAI 1.6.1 (benchmarks/results/*.json)", "",
             "Side by side in one run on the same machine (2 CPU cores, torch 2 threads), same seed and shapes; "
             "MONAI installed only under benchmarks/.monai (see benchmarks/README.md). Generated by "
             "`python -m benchmarks.summarize`.", ""]
    lines += headline()
    for name, section in (("ae", ae_section), ("prior", prior_section), ("diffusion", diffusion_section),
                          ("samplers", samplers_section), ("quality", quality_section),
                          ("contention", contention_section)):
        r = _load(name)
        lines += section(r) if r else [f"## {name}: not run (no results/{name}.json)", ""]
    SUMMARY.write_text("\n".join(lines))
    print(f"wrote {SUMMARY}")


if __name__ == "__main__":
    main()
