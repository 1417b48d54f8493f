#!/usr/bin/env bash
# Training time of two small models under OpenMP wait policies (medgen's PASSIVE default, libgomp's
# default, ACTIVE) and one thread, on a quiet machine; run alone, from the repository root, after the
# examples 01 and 05 (it trains on runs/01_mr_vqvae/prep and runs/05_ct_sequences/lat*).
# Prints minutes of the training loop (from each artefact's manifest); results/wait_policy.json holds a run.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
TMP="${TMPDIR:-/tmp}"
for cfg in "PASSIVE:0" "default:0" "ACTIVE:0" "PASSIVE:1"; do
  pol=${cfg%%:*}; thr=${cfg##*:}
  if [ "$pol" = default ]; then envs="OMP_WAIT_POLICY="; else envs="OMP_WAIT_POLICY=$pol"; fi
  targs=""; [ "$thr" != 0 ] && targs="--threads $thr"
  env $envs medgen -q train-ae --data runs/01_mr_vqvae/prep --out "$TMP/wb_ae" --config examples/01_mr_vqvae/ae.yaml \
    --steps 120 --set train.val_every=1000 --set train.max_minutes= --overwrite $targs >/dev/null
  a=$(python -c "import json,sys;print(json.load(open(sys.argv[1]))['summary']['minutes'])" "$TMP/wb_ae/manifest.json")
  env $envs medgen -q train-prior --latents runs/05_ct_sequences/lat --condition runs/05_ct_sequences/lat_low \
    --out "$TMP/wb_pr" --config examples/05_ct_sequences/prior.yaml --steps 150 --set diffusion.sample_every=0 \
    --set train.val_every=1000 --set train.max_minutes= --overwrite $targs >/dev/null
  p=$(python -c "import json,sys;print(json.load(open(sys.argv[1]))['summary']['minutes'])" "$TMP/wb_pr/manifest.json")
  echo "$pol threads=$thr ae01_120steps_min=$a prior05_150steps_min=$p"
done
