#!/usr/bin/env bash
# Example 6: masks -> images. A latent diffusion prior conditioned on label maps draws CT slices for the
# label maps of another person, and the per-label HU of the generated slices is compared with the real ones.
#
# pyradiomics' two lung CTs (lung1, lung2; 512x512x48/61, 0.6x0.6x5 mm, HU). Their own labels mark one small
# nodule each, so labels.py builds a five-label map per CT from its HU values with SimpleITK: 0 outside the
# body, 1 soft tissue, 2 lung (air inside the body), 3 bone, 4 the pyradiomics nodule. Every axial slice is
# fitted into 64x64, windowed -1000..1000 HU (bone above 1000 HU is clipped), with its label map on the same
# grid (preprocess --masks suffix:_labels, store masks). A 2D KL-VAE (16x16x4 latents) and a diffusion prior
# with condition.masks: true (5 label-fraction channels on the 16x16 grid) train on lung1's 48 slices; the
# prior then draws one slice for each of lung2's 61 label maps (held out: another person), and evaluate
# reports, per label, the HU of the generated slices inside each label against lung2's real slices (mean,
# std, 5/50/95th percentiles, difference of means; OUT/eval/per_label.csv and metrics.json "per_label"),
# with OUT/eval/pictures/mask_overlay.png showing the masks over generated and real slices.
# Figures rest on ONE training and ONE held-out subject: a demonstration, not a validation.
# Time on a 2-core CPU: 5.4 min measured (autoencoder 1,200 steps in 1.3 min, prior 1,500 steps in 2.7 min;
# train.max_minutes caps them at 3.5 and 4 min). The smoke run (SCALE=0.01) takes about 75 s.
#
#   bash examples/06_ct_masks/run.sh [OUT]      # SCALE=0.01 for a smoke run (training steps x SCALE, min 2)
# Checkpoints: every training validates on the training subject and keeps its last weights (the settings
# files): the held-out subject must never choose weights. It is scored once, after training.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
OUT="${1:-runs/06_ct_masks}"
SCALE="${SCALE:-1}"
scaled() { python -c "print(max($2, int($1 * $SCALE)))"; }   # scaled N MIN
DATA="$(python "$HERE/../fetch_data.py")"
mkdir -p "$OUT"

python "$HERE/labels.py" "$DATA" "$OUT/raw"                  # lung{1,2}_image.nrrd + lung{1,2}_labels.nrrd
medgen preprocess "$OUT/raw/lung1_image.nrrd" "$OUT/raw/lung2_image.nrrd" --out "$OUT/prep" \
  --mode slices --set mode.slices=all --fit 64,64 --window 0,2000 --masks suffix:_labels \
  --split 0.5,0,0.5 --seed 1 --overwrite
medgen inspect "$OUT/prep"                                    # the labels and their voxel counts
medgen train-ae --data "$OUT/prep" --out "$OUT/ae" --config "$HERE/ae.yaml" \
  --steps "$(scaled 1200 2)" --set optim.warmup_steps="$(scaled 50 0)" --overwrite
medgen encode-latents --ae "$OUT/ae" --data "$OUT/prep" --out "$OUT/lat" --overwrite
medgen train-prior --latents "$OUT/lat" --out "$OUT/prior" --config "$HERE/prior.yaml" \
  --steps "$(scaled 1500 2)" --set optim.warmup_steps="$(scaled 100 0)" --overwrite
# one slice per label map of lung2 (split test): the masks of a person the prior never saw
medgen sample --prior "$OUT/prior" --condition "$OUT/prep" --set condition.split=test \
  -n 1 --steps "$(scaled 50 2)" --seed 0 --out "$OUT/samples" --overwrite
medgen evaluate --samples "$OUT/samples" --data "$OUT/prep" --split test --out "$OUT/eval" --overwrite
medgen export "$OUT/samples" --store masks --format nifti --out "$OUT/samples_masks_nifti" --overwrite

echo
echo "Per-label HU (real lung2 vs generated): $OUT/eval/per_label.csv"
echo "Masks over generated and real slices:   $OUT/eval/pictures/mask_overlay.png"
