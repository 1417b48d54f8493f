#!/usr/bin/env bash
# Reference system 5: CT slice sequences (2D+T) windowed 200/1800 -> KL-VAE with a data-derived latent
# scale -> conditional latent diffusion (cosine schedule) -> DDIM 50 steps -> evaluation.
#
# Data: pyradiomics' two lung CTs (lung1: 48 slices, lung2: 61; HU), via examples/fetch_data.py.
# `--mode sequence` cuts each CT into stacks of 8 consecutive axial slices (stride 2), each fitted
# in-plane into 64x64 and windowed with the pulmonary-vessels preset (centre 200, width 1800 HU:
# -700..1100 HU -> [-1, 1]): items are (I, J, T) = 64x64x8 thin volumes. lung1 (21 sequences) trains,
# lung2 (27 sequences, another person) is held out.
#   KL-VAE (ae.yaml): trained on the items as 3D with (2+1)D convolutions and per-axis downsampling
#   [[2,2,1],[2,2,2],1]: in-plane 4x, T only 2x (8 -> 4 latent frames), latents 4x16x16x4. The latent
#   scale (1 / std of the training latents) is computed by train-ae; encode-latents applies it.
#   Condition: the subject's REFERENCE sequence (its first 8 slices, a second preprocess with one item
#   per subject), encoded with the same KL-VAE, joined by subject and concatenated as channels: the
#   "baseline -> follow-up" kind of pairing. Why not `--derive downsample:2` or `lowdose` (the pairs of
#   example 04): preprocess derives paired stores from volumes only (mode volume), and medgen joins a
#   condition to its target by subject id with one condition item per subject, so per-sequence pairs
#   (low-dose sequence k -> full-dose sequence k) cannot be expressed for sequence items; a subject-level
#   condition is what these data support.
#   Diffusion (prior.yaml): UNet over the 16x16x4 latents, cosine schedule, v-prediction, min-SNR-5.
#   Sampling: DDIM with 50 steps, 4 sequences for the held-out subject given its reference sequence.
# Caveat: ONE subject trains, so its condition is the same for every training item: the model cannot
# learn how the condition shapes its output, and conditioning on lung2 is out of distribution. This is
# a demonstration of the 2D+T pipeline, not a validated conditional model.
# Expected figures (see README "Results"): held-out reconstruction SSIM/PSNR of the KL-VAE in
# OUT/eval_ae; distances (Frechet, MMD, intensity distance in HU), diversity and memorisation of the
# samples against the held-out subject's real sequences in OUT/eval_samples.
# Time on a 2-core CPU at SCALE=1: ~12 min (estimate from short timings: ~5 min KL-VAE, ~5.5 min diffusion, ~1 min rest).
#
#   bash examples/05_ct_sequences/run.sh [OUT]      # SCALE=0.01 for a smoke run (training steps x SCALE, min 2)
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
OUT="${1:-runs/05_ct_sequences}"
SCALE="${SCALE:-1}"
scaled() { python -c "print(max($2, int($1 * $SCALE)))"; }   # scaled N MIN
DATA="$(python "$HERE/../fetch_data.py")"
CTS=("$DATA/lung1_image.nrrd" "$DATA/lung2_image.nrrd")
mkdir -p "$OUT"

# The sequences (stride 2), and one reference sequence per subject (a stride longer than any CT).
medgen preprocess "${CTS[@]}" --out "$OUT/prep" --mode sequence --set mode.length=8 --set mode.stride=2 \
  --fit 64,64 --window pulmonary-vessels --split 0.5,0,0.5 --seed 1 --overwrite
medgen preprocess "${CTS[@]}" --out "$OUT/prep_ref" --mode sequence --set mode.length=8 --set mode.stride=10000 \
  --fit 64,64 --window pulmonary-vessels --split 0.5,0,0.5 --seed 1 --overwrite
medgen train-ae --data "$OUT/prep" --out "$OUT/ae" --config "$HERE/ae.yaml" \
  --steps "$(scaled 600 2)" --set optim.warmup_steps="$(scaled 50 0)" --overwrite
medgen evaluate --ae "$OUT/ae" --data "$OUT/prep" --split test --axis 2 --out "$OUT/eval_ae" --overwrite
medgen encode-latents --ae "$OUT/ae" --data "$OUT/prep" --out "$OUT/lat" --overwrite
medgen encode-latents --ae "$OUT/ae" --data "$OUT/prep_ref" --out "$OUT/lat_ref" --overwrite
medgen train-prior --latents "$OUT/lat" --condition "$OUT/lat_ref" --out "$OUT/prior" --config "$HERE/prior.yaml" \
  --set prior.kind=diffusion --set diffusion.schedule=cosine \
  --steps "$(scaled 1500 2)" --set optim.warmup_steps="$(scaled 100 0)" --overwrite
medgen sample --prior "$OUT/prior" --condition "$OUT/lat_ref" --all --set condition.split=test \
  --sampler ddim --steps 50 -n 4 --seed 0 --out "$OUT/samples" --overwrite
medgen evaluate --samples "$OUT/samples" --data "$OUT/prep" --split test --axis 2 --out "$OUT/eval_samples" --overwrite
medgen inspect "$OUT/prior"

echo
echo "Pictures:"
ls -1 "$OUT"/prep/previews/*.png "$OUT"/ae/plots/*.png "$OUT"/samples/previews/*.png 2>/dev/null | sed 's/^/  /' || true
ls -1d "$OUT"/eval_ae/pictures "$OUT"/eval_samples/pictures 2>/dev/null | sed 's/^/  /' || true
