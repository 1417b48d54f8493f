"""The examples run end to end as a user runs them: a shell script chaining the subcommands.

The demo runs here (at DEMO_SCALE=0.02: a few training steps, about a minute on a CPU), and example 06
(masks -> images) at SCALE=0.01 when the pyradiomics CTs are in the data cache (skipped otherwise); the
other reference examples need fetched data and minutes each, and run in CI at SCALE=0.01.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from medgen_cli.artefacts import require

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash is not installed: the examples are bash scripts")
    out = tmp_path / "demo"
    # one thread: the other test worker shares the cores (OpenMP spin-waits collapse when oversubscribed)
    env = dict(os.environ, DEMO_SCALE="0.02", OMP_NUM_THREADS="1")
    # the script calls `medgen` and `python`: this interpreter's environment must come first
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    result = subprocess.run([bash, str(EXAMPLES / "demo" / "run.sh"), str(out)], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=280)
    assert result.returncode == 0, (
        f"examples/demo/run.sh exited with {result.returncode}\n--- stdout (end)\n{result.stdout[-3000:]}"
        f"\n--- stderr (end)\n{result.stderr[-3000:]}"
    )
    for name, kind in [("prep", "preprocessed"), ("ae", "autoencoder"), ("lat", "latents"), ("prior", "prior"),
                       ("samples", "samples"), ("eval_ae", "evaluation"), ("eval_samples", "evaluation"),
                       ("samples_nifti", "export")]:
        require(out / name, kind)
    assert list((out / "samples_nifti").rglob("*.nii*")), "the export wrote no NIfTI file"
    assert (out / "eval_ae" / "metrics.json").is_file() and (out / "eval_samples" / "metrics.json").is_file()


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_ct_masks_example_smoke(tmp_path: Path, real_data) -> None:
    """examples/06_ct_masks at SCALE=0.01: label maps built from the lung CTs -> mask-conditioned prior ->
    samples for lung2's masks -> the per-label HU table and the overlay picture."""
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash is not installed: the examples are bash scripts")
    for name in ("lung1_image.nrrd", "lung1_label.nrrd", "lung2_image.nrrd", "lung2_label.nrrd"):
        real_data(name)  # skips when the cache lacks them (fetch_data.py would download)
    out = tmp_path / "06"
    env = dict(os.environ, SCALE="0.01", OMP_NUM_THREADS="1")
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    result = subprocess.run([bash, str(EXAMPLES / "06_ct_masks" / "run.sh"), str(out)], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, (
        f"examples/06_ct_masks/run.sh exited with {result.returncode}\n--- stdout (end)\n{result.stdout[-3000:]}"
        f"\n--- stderr (end)\n{result.stderr[-3000:]}"
    )
    for name, kind in [("prep", "preprocessed"), ("ae", "autoencoder"), ("lat", "latents"), ("prior", "prior"),
                       ("samples", "samples"), ("eval", "evaluation"), ("samples_masks_nifti", "export")]:
        require(out / name, kind)
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    assert sorted(metrics["per_label"]["labels"]) == ["0", "1", "2", "3", "4"]  # body, lung, bone, nodule
    real = {k: v["real"]["mean"] for k, v in metrics["per_label"]["labels"].items()}
    assert real["2"] < -500 < real["1"] < real["3"]  # lung is air, soft tissue denser, bone densest (HU)
    assert (out / "eval" / "pictures" / "mask_overlay.png").is_file()
