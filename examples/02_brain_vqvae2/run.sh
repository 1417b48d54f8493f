#!/usr/bin/env bash
# Reference system 2: brain MR slices -> VQ-VAE-2 -> PixelCNN top (attention) + bottom (conditioned) -> sample.
#
# Reproduces the VQ-VAE-2 + PixelCNN recipe (Razavi et al. 2019) on the real MR brains that ship
# with pyradiomics: brain1 (25 axial slices) trains, brain2 (23 slices, another person) is held out.
# The original recipe uses one centre slice per brain; with two brains that is 2 items, far too few
# to train anything, so EVERY axial slice is used (--mode slices, mode.slices=all: 48 slices), each
# fitted into 64x64 keeping the aspect ratio.
#   VQ-VAE-2: bottom codes 16x16 and top codes 8x8, 256 codes each (ae.yaml).
#   PixelCNN: one prior artefact holding a top prior with causal self-attention and a bottom prior
#   conditioned on the top codes (prior.yaml); `medgen sample` draws top, then bottom, then decodes.
# Data: examples/fetch_data.py (pyradiomics 3.0.1 sdist, cached in ~/.cache/medgen/data).
# Expected figures (see README "Results"): held-out reconstruction SSIM in OUT/eval_ae, sample
# distances, diversity and memorisation (max SSIM to a training slice) in OUT/eval_samples; all
# rest on ONE training and ONE held-out subject. Pictures: OUT/samples/previews, OUT/*/pictures.
# Time on a 2-core CPU at SCALE=1: 9.1 min measured (2026-11-30; 2.4 min autoencoder, 6 min priors, the rest
# sampling and evaluation; train.max_minutes caps each training). Measured: held-out reconstruction SSIM 0.791;
# the priors memorise the 25 training slices (9 of 16 samples flagged by the memorisation check).
#
#   bash examples/02_brain_vqvae2/run.sh [OUT]      # SCALE=0.01 for a smoke run (training steps x SCALE, min 2)
# Checkpoints: every training validates on the training subject and keeps its last weights (the
# settings files): with one training subject no validation subject exists, and the held-out subject
# must never choose weights. It is scored once, after training, by `medgen evaluate`.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
OUT="${1:-runs/02_brain_vqvae2}"
SCALE="${SCALE:-1}"
scaled() { python -c "print(max($2, int($1 * $SCALE)))"; }   # scaled N MIN
DATA="$(python "$HERE/../fetch_data.py")"
mkdir -p "$OUT"

medgen preprocess "$DATA/brain1_image.nrrd" "$DATA/brain2_image.nrrd" --out "$OUT/prep" \
  --mode slices --set mode.slices=all --fit 64,64 --split 0.5,0,0.5 --seed 1 --overwrite
medgen train-ae --data "$OUT/prep" --out "$OUT/ae" --config "$HERE/ae.yaml" \
  --steps "$(scaled 800 2)" --set optim.warmup_steps="$(scaled 100 0)" --overwrite
medgen evaluate --ae "$OUT/ae" --data "$OUT/prep" --split test --out "$OUT/eval_ae" --overwrite
medgen encode-latents --ae "$OUT/ae" --data "$OUT/prep" --out "$OUT/lat" --overwrite
medgen train-prior --latents "$OUT/lat" --out "$OUT/prior" --config "$HERE/prior.yaml" \
  --steps "$(scaled 1000 2)" --set optim.warmup_steps="$(scaled 50 0)" --overwrite
medgen sample --prior "$OUT/prior" --out "$OUT/samples" -n 16 --seed 0 --overwrite
medgen evaluate --samples "$OUT/samples" --data "$OUT/prep" --split train --out "$OUT/eval_samples" --overwrite
medgen inspect "$OUT/prior"

echo
echo "Pictures:"
ls -1 "$OUT"/ae/plots/*.png "$OUT"/samples/previews/*.png 2>/dev/null | sed 's/^/  /' || true
ls -1d "$OUT"/eval_ae/pictures "$OUT"/eval_samples/pictures 2>/dev/null | sed 's/^/  /' || true
