#!/usr/bin/env bash
# Reference system 3: CT volumes + DRR X-ray views -> 2D VQGAN (X-rays) and 3D VQGAN (CT) ->
# conditional transformer -> CT sampled from X-rays with top-k and with MaskGIT -> evaluated
# against the true CT.
#
# Reproduces the X-ray -> CT recipe (two radiographs condition a token prior over a CT's VQ codes)
# on pyradiomics' two lung CTs (lung1, lung2; HU). Each CT is fitted into 32x32x32 (~9-10 mm
# isotropic voxels, aspect ratio kept; --spacing and --fit exclude each other, so --fit alone sets
# the voxel size), windowed for lung (-1350..150 HU), and `--derive drr` makes its two digitally
# reconstructed radiographs (AP and lateral, 32x32, item attribute `view`) in a paired store.
#   2D VQGAN on the DRR store (xray_ae.yaml): 8x8 codes per view.  3D VQGAN on the CT (ct_ae.yaml): 8x8x8.
#   A causal transformer (transformer.yaml) and a MaskGIT (maskgit.yaml) learn the CT codes given the
#   prefix of both views' codes, joined by subject id. One CT per subject is sampled for EVERY
#   subject (--all, one split at a time): top-k (k=20) from the transformer, 12 MaskGIT iterations from the MaskGIT.
# Data: examples/fetch_data.py (pyradiomics 3.0.1 sdist). Only TWO subjects exist: lung1 trains,
# lung2 (another person) is held out, so the test-split figures rest on ONE subject and the train-split
# figures measure memorisation of the one training CT, not generalisation.
# Expected figures (see README "Results"): SSIM / slice-wise SSIM / PSNR / MAE in HU of the sampled CT
# against the true CT in OUT/eval_{topk,maskgit}_{test,train}; the 3D VQGAN's own reconstruction of
# the held-out CT (the ceiling of any token prior) in OUT/eval_ae_ct.
# Time on a 2-core CPU at SCALE=1: 8.4 min measured (2026-11-30). Measured: CT VQGAN ceiling SSIM 0.412 on
# lung2; CT from X-rays SSIM 0.082 (top-k) / 0.082 (MaskGIT) on lung2, 0.75 / 0.77 on lung1 (in-sample):
# two CTs cannot teach X-ray -> CT.
#
#   bash examples/03_xray_to_ct/run.sh [OUT]        # SCALE=0.01 for a smoke run (training steps x SCALE, min 2)
# Checkpoints: every training validates on the training subject and keeps its last weights (the
# settings files): with one training subject no validation subject exists, and the held-out subject
# must never choose weights. It is scored once, after training, by `medgen evaluate`.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
OUT="${1:-runs/03_xray_to_ct}"
SCALE="${SCALE:-1}"
scaled() { python -c "print(max($2, int($1 * $SCALE)))"; }   # scaled N MIN
DATA="$(python "$HERE/../fetch_data.py")"
mkdir -p "$OUT"

medgen preprocess "$DATA/lung1_image.nrrd" "$DATA/lung2_image.nrrd" --out "$OUT/prep" \
  --mode volume --fit 32,32,32 --window lung --derive drr --split 0.5,0,0.5 --seed 1 --overwrite
# Autoencoders: the adversarial loss starts half-way (scaled with the steps).
medgen train-ae --data "$OUT/prep" --out "$OUT/ae_xray" --config "$HERE/xray_ae.yaml" \
  --steps "$(scaled 1200 2)" --set optim.warmup_steps="$(scaled 50 0)" --set adversarial.start_step="$(scaled 600 1)" --overwrite
medgen train-ae --data "$OUT/prep" --out "$OUT/ae_ct" --config "$HERE/ct_ae.yaml" \
  --steps "$(scaled 600 2)" --set optim.warmup_steps="$(scaled 50 0)" --set adversarial.start_step="$(scaled 300 1)" --overwrite
medgen evaluate --ae "$OUT/ae_ct" --data "$OUT/prep" --split test --axis 2 --out "$OUT/eval_ae_ct" --overwrite
# Latents: the CT codes, and the X-ray codes of the derived DRR store (two views per subject).
medgen encode-latents --ae "$OUT/ae_ct" --data "$OUT/prep" --out "$OUT/lat_ct" --overwrite
medgen encode-latents --ae "$OUT/ae_xray" --data "$OUT/prep" --store drr --out "$OUT/lat_xray" --overwrite
# Priors over the CT codes, conditioned on the X-ray codes.
medgen train-prior --latents "$OUT/lat_ct" --condition "$OUT/lat_xray" --out "$OUT/prior_tf" \
  --config "$HERE/transformer.yaml" --steps "$(scaled 600 2)" --set optim.warmup_steps="$(scaled 50 0)" --overwrite
medgen train-prior --latents "$OUT/lat_ct" --condition "$OUT/lat_xray" --out "$OUT/prior_maskgit" \
  --config "$HERE/maskgit.yaml" --steps "$(scaled 600 2)" --set optim.warmup_steps="$(scaled 50 0)" --overwrite
# CT from X-rays for every subject (--all) of one split at a time (evaluate joins samples to the
# true CT of one split, and refuses samples of subjects outside it), then against the true CT.
for SPLIT in test train; do
  medgen sample --prior "$OUT/prior_tf" --condition "$OUT/lat_xray" --all --set condition.split="$SPLIT" \
    -n 1 --top-k 20 --seed 0 --out "$OUT/ct_topk_$SPLIT" --overwrite
  medgen sample --prior "$OUT/prior_maskgit" --condition "$OUT/lat_xray" --all --set condition.split="$SPLIT" \
    -n 1 --strategy maskgit --steps 12 --seed 0 --out "$OUT/ct_maskgit_$SPLIT" --overwrite
  for S in topk maskgit; do
    medgen evaluate --samples "$OUT/ct_${S}_$SPLIT" --target "$OUT/prep" --split "$SPLIT" --axis 2 \
      --out "$OUT/eval_${S}_$SPLIT" --overwrite
  done
done

echo
echo "Pictures:"
ls -1 "$OUT"/prep/previews/*.png "$OUT"/ct_*/previews/*.png 2>/dev/null | sed 's/^/  /' || true
ls -1d "$OUT"/eval_*/pictures 2>/dev/null | sed 's/^/  /' || true
