#!/usr/bin/env bash
# The medgen demo: every step from preprocess to evaluate and export, in a few minutes on a CPU,
# on data that ships inside an installed dependency (nibabel's T1 MR, 33x41x25 at 2 mm), so
# nothing is downloaded.
#
# It is ONE subject: every slice is in the training split, and the evaluation measures how well
# the autoencoder reconstructs slices it was trained on and whether samples copy training slices.
# It shows the pipeline, not generalisation (see examples/01_mr_vqvae for a held-out subject).
#
#   bash examples/demo/run.sh [OUT]        # DEMO_SCALE=0.1 for a 10x shorter smoke run
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
OUT="${1:-demo}"
SCALE="${DEMO_SCALE:-1}"
steps() { python -c "import sys; print(max(2, int($1 * $SCALE)))"; }
warmup() { python -c "print(int($1 * $SCALE))"; }   # warmup must stay below the (scaled) steps
MR="$(python -c 'import nibabel, os; print(os.path.join(os.path.dirname(nibabel.__file__), "tests", "data", "anatomical.nii"))')"
mkdir -p "$OUT"

medgen preprocess "$MR" --out "$OUT/prep" --mode slices --fit 32,32 --split 1,0,0 --overwrite
medgen train-ae --data "$OUT/prep" --out "$OUT/ae" --config "$HERE/ae.yaml" --steps "$(steps 300)" --set optim.warmup_steps="$(warmup 20)" --overwrite
medgen encode-latents --ae "$OUT/ae" --data "$OUT/prep" --out "$OUT/lat" --overwrite
medgen train-prior --latents "$OUT/lat" --out "$OUT/prior" --config "$HERE/prior.yaml" --steps "$(steps 200)" --set optim.warmup_steps="$(warmup 20)" --overwrite
medgen sample --prior "$OUT/prior" --out "$OUT/samples" -n 8 --top-k 20 --seed 0 --overwrite
medgen evaluate --ae "$OUT/ae" --data "$OUT/prep" --split train --out "$OUT/eval_ae" --overwrite
medgen evaluate --samples "$OUT/samples" --data "$OUT/prep" --split train --out "$OUT/eval_samples" --overwrite
medgen export "$OUT/samples" --format nifti --out "$OUT/samples_nifti" --overwrite

echo
echo "Pictures:"
ls -1 "$OUT"/prep/previews/*.png "$OUT"/ae/plots/*.png "$OUT"/samples/previews/*.png 2>/dev/null | sed 's/^/  /'
ls -1d "$OUT"/eval_ae/pictures "$OUT"/eval_samples/pictures 2>/dev/null | sed 's/^/  /'
echo "Synthetic NIfTI files: $OUT/samples_nifti"
