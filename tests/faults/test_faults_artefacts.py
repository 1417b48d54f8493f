"""Fault cases of the artefact contract (issue 11, part A), through the CLI.

Nothing a user has is lost: a ``OUT.partial`` medgen did not make is never deleted or reused; an output
that is, lies inside or contains an input is refused before anything is touched; one process writes an
output at a time (``OUT.lock``); a resume on a re-made input is refused; lineage of a manifest pointing at
itself is finite. Each case checks the exit code, the one-sentence message, that no traceback was
printed and that the user's files and the inputs are unchanged.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from medgen_cli.artefacts import manifest_sha256, require
from medgen_cli.settings import EncodeSettings, TrainAESettings, load_settings
from medgen_cli.steps import encode_latents, train_ae
from tests.conftest import sphere_phantom, write_nifti
from tests.faults.conftest import assert_refused, invoke, snapshot

AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])
PREP = ["--modality", "CT", "--window", "0,2000", "--split", "0.5,0.25,0.25", "--set", "runtime.workers=0"]
AE = ["--device", "cpu", "--set", "model.kind=vqvae", "--set", "model.channels=8,8", "--set", "model.num_res_blocks=1",
      "--set", "model.embedding_dim=8", "--set", "model.num_embeddings=32", "--set", "data.batch_size=2",
      "--set", "train.val_every=0", "--set", "train.checkpoint_every=1", "--set", "train.save_images=0"]
PRIOR = ["--device", "cpu", "--kind", "transformer", "--steps", "1", "--set", "prior.dim=16", "--set", "prior.depth=1",
         "--set", "prior.num_heads=2", "--set", "data.batch_size=2"]


def _raw(root: Path, n: int = 4, size: int = 16) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        write_nifti(root / f"ct{i:02d}.nii.gz", sphere_phantom((size,) * 3, radius=0.2 + 0.03 * i, seed=i), AFFINE)
    return root


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """raw/ (4 CT phantoms 16^3) -> prep/ -> ae/ (3D VQ-VAE, 2 steps) -> lat/, made once through the CLI."""
    root = tmp_path_factory.mktemp("world")
    w = {"root": root, "raw": _raw(root / "raw"), "prep": root / "prep", "ae": root / "ae", "lat": root / "lat"}
    for args in (["preprocess", w["raw"], "--out", w["prep"], *PREP],
                 ["train-ae", "--data", w["prep"], "--out", w["ae"], "--steps", "2", *AE],
                 ["encode-latents", "--ae", w["ae"], "--data", w["prep"], "--out", w["lat"], "--device", "cpu"]):
        result = invoke(*args)
        assert result.exit_code == 0, result.output
    return w


def _user_dir(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "thesis.tex").write_text("\\chapter{Five years of work}")
    (path / "figures").mkdir()
    (path / "figures" / "fig1.pdf").write_bytes(os.urandom(64))
    return path


# ------------------------------------------------------------------- OUT.partial that medgen did not make
@pytest.mark.parametrize("overwrite", [False, True])
def test_preprocess_keeps_a_users_directory_named_out_partial(world, tmp_path, overwrite):
    user = _user_dir(tmp_path / "r.partial")
    before, raw = snapshot(user), snapshot(world["raw"])
    result = invoke("preprocess", world["raw"], "--out", tmp_path / "r", *PREP, *(["--overwrite"] if overwrite else []))
    assert_refused(result, 2, "r.partial was not created by medgen", "will not delete, reuse or resume it")
    assert snapshot(user) == before and snapshot(world["raw"]) == raw
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.partial"]  # no output, no lock


def test_train_ae_resume_keeps_a_users_directory_named_out_partial(world, tmp_path):
    user = _user_dir(tmp_path / "ae.partial")
    before = snapshot(user)
    result = invoke("train-ae", "--data", world["prep"], "--out", tmp_path / "ae", "--steps", "1", "--resume", *AE)
    assert_refused(result, 2, "ae.partial was not created by medgen")
    assert snapshot(user) == before and sorted(p.name for p in tmp_path.iterdir()) == ["ae.partial"]


def test_encode_latents_overwrite_keeps_a_users_directory_named_out_partial(world, tmp_path):
    user = _user_dir(tmp_path / "lat.partial")
    before, prep = snapshot(user), snapshot(world["prep"])
    result = invoke("encode-latents", "--ae", world["ae"], "--data", world["prep"], "--out", tmp_path / "lat",
                    "--device", "cpu", "--overwrite")
    assert_refused(result, 2, "lat.partial was not created by medgen")
    assert snapshot(user) == before and snapshot(world["prep"]) == prep


def test_a_symlinked_partial_is_never_followed(world, tmp_path):
    target = _user_dir(tmp_path / "home")
    (tmp_path / "r.partial").symlink_to(target)
    before = snapshot(target)
    result = invoke("preprocess", world["raw"], "--out", tmp_path / "r", *PREP, "--overwrite")
    assert_refused(result, 2, "r.partial was not created by medgen")
    assert snapshot(target) == before and (tmp_path / "r.partial").is_symlink()


# ------------------------------------------------------------------- outputs on, inside or around inputs
def test_train_ae_onto_its_own_data_is_refused(world):
    before = snapshot(world["prep"])
    result = invoke("train-ae", "--data", world["prep"], "--out", world["prep"], "--overwrite", "--steps", "1", *AE)
    assert_refused(result, 2, f"the output {world['prep']} is the input {world['prep']}", "choose an output directory")
    assert snapshot(world["prep"]) == before and require(world["prep"], "preprocessed").inputs == []
    assert not Path(f"{world['prep']}.partial").exists() and not Path(f"{world['prep']}.lock").exists()


def test_train_ae_inside_its_data_is_refused(world):
    before = snapshot(world["prep"])
    result = invoke("train-ae", "--data", world["prep"], "--out", world["prep"] / "ae", "--steps", "1", *AE)
    assert_refused(result, 2, f"the output {world['prep'] / 'ae'} is inside the input {world['prep']}")
    assert snapshot(world["prep"]) == before


def test_train_ae_into_a_directory_holding_its_data_is_refused(world):
    before = snapshot(world["root"])
    result = invoke("train-ae", "--data", world["prep"], "--out", world["root"], "--overwrite", "--steps", "1", *AE)
    assert_refused(result, 2, f"the output {world['root']} contains the input {world['prep']}")
    assert snapshot(world["root"]) == before


@pytest.mark.parametrize("which", ["prep", "ae"])
def test_encode_latents_onto_an_input_is_refused(world, which):
    before = snapshot(world["root"])
    result = invoke("encode-latents", "--ae", world["ae"], "--data", world["prep"], "--out", world[which],
                    "--device", "cpu", "--overwrite")
    assert_refused(result, 2, f"the output {world[which]} is the input {world[which]}")
    assert snapshot(world["root"]) == before


def test_train_prior_onto_the_autoencoder_its_latents_need_is_refused(world):
    """ae/ is not named on the command line, but lat/ was made from it (and sample will look it up)."""
    before = snapshot(world["root"])
    result = invoke("train-prior", "--latents", world["lat"], "--out", world["ae"], "--overwrite", *PRIOR)
    assert_refused(result, 2, f"the output {world['ae']} is {world['ae']}, which the input {world['lat']} was made from")
    assert snapshot(world["root"]) == before


def test_preprocess_into_its_raw_input_directory_is_refused(world):
    before = snapshot(world["raw"])
    result = invoke("preprocess", world["raw"], "--out", world["raw"] / "prep", *PREP)
    assert_refused(result, 2, f"{world['raw'] / 'prep'} is inside the input {world['raw']}")
    assert snapshot(world["raw"]) == before


# -------------------------------------------------------------------------- --overwrite of what is not ours
def test_overwrite_keeps_files_a_user_put_into_an_artefact(world, tmp_path):
    ae = tmp_path / "ae"
    shutil.copytree(world["ae"], ae)
    (ae / "notes.txt").write_text("lr 2e-3 looked best")
    before = snapshot(ae)
    result = invoke("train-ae", "--data", world["prep"], "--out", ae, "--overwrite", "--steps", "1", *AE)
    assert_refused(result, 2, "holds files medgen did not write (notes.txt)", "move them out of it")
    assert snapshot(ae) == before


def test_overwrite_keeps_a_directory_with_another_tools_manifest(world, tmp_path):
    web = tmp_path / "site"
    web.mkdir()
    (web / "manifest.json").write_text('{"name": "my web app", "icons": []}')
    (web / "index.html").write_text("<html></html>")
    before = snapshot(web)
    result = invoke("preprocess", world["raw"], "--out", web, *PREP, "--overwrite")
    assert_refused(result, 2, f"{web} exists and is not a medgen artefact")
    assert snapshot(web) == before


# ------------------------------------------------------------------------------------------- OUT.lock
def _lock(path: Path, **fields) -> None:
    record = {"pid": 999_999_999, "host": socket.gethostname(), "started": "2024-05-01T09:30:00+00:00",
              "command": "medgen preprocess raw --out prep", "token": "f" * 32, **fields}
    path.write_text(json.dumps(record))


def test_preprocess_is_refused_while_another_process_writes_the_output(world, tmp_path):
    sleeper = subprocess.Popen(["sleep", "120"])
    try:
        _lock(tmp_path / "prep.lock", pid=sleeper.pid)
        result = invoke("preprocess", world["raw"], "--out", tmp_path / "prep", *PREP)
        assert_refused(result, 2, f"is being written by another medgen run (process {sleeper.pid} on {socket.gethostname()}, "
                                  "started 2024-05-01T09:30:00+00:00", "wait for it to finish")
        assert sorted(p.name for p in tmp_path.iterdir()) == ["prep.lock"]
    finally:
        sleeper.kill()
        sleeper.wait()


def test_train_ae_is_refused_by_a_lock_from_another_host(world, tmp_path):
    _lock(tmp_path / "ae.lock", host="gpu-node-17", pid=4242)
    result = invoke("train-ae", "--data", world["prep"], "--out", tmp_path / "ae", "--steps", "1", *AE)
    assert_refused(result, 2, "process 4242 on gpu-node-17", f"if that run is gone, delete {tmp_path / 'ae.lock'}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ae.lock"]


def test_encode_latents_takes_over_the_lock_of_a_killed_run(world, tmp_path):
    _lock(tmp_path / "lat.lock")  # its process no longer exists
    result = invoke("encode-latents", "--ae", world["ae"], "--data", world["prep"], "--out", tmp_path / "lat",
                    "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "taking over the stale lock" in " ".join(result.output.split()) and "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lat"]


def test_two_real_preprocess_processes_on_one_output(tmp_path):
    """The second run is refused naming the first; the first finishes with a manifest that matches its store."""
    raw = _raw(tmp_path / "raw", n=6, size=24)
    out = tmp_path / "prep"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    first = subprocess.Popen([sys.executable, "-m", "medgen_cli.cli", "-q", "preprocess", str(raw), "--out", str(out),
                              "--spacing", "0.5", *PREP], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while not Path(f"{out}.partial").exists() and first.poll() is None and time.time() < deadline:
            time.sleep(0.005)
        first.send_signal(signal.SIGSTOP)  # hold it mid-run (its lock is taken before OUT.partial is made)
        assert first.poll() is None, "the first run ended before the second could start"
        before = snapshot(raw)
        second = invoke("preprocess", raw, "--out", out, *PREP, "--spacing", "0.5")
        assert_refused(second, 2, f"is being written by another medgen run (process {first.pid} on")
        assert snapshot(raw) == before
    finally:
        first.send_signal(signal.SIGCONT)
    assert first.wait(timeout=300) == 0, first.stderr.read().decode()
    manifest = require(out, "preprocessed")
    assert manifest.summary["stores"]["main"]["items"] == 6 and not Path(f"{out}.lock").exists()


# -------------------------------------------------------------------------------- resume on a changed input
def _interrupt_after(n: int):
    def progress(done, *_):
        if done >= n:
            raise KeyboardInterrupt

    return progress


def test_encode_latents_resume_on_a_remade_autoencoder_is_refused(world, tmp_path):
    ae = tmp_path / "ae"
    shutil.copytree(world["ae"], ae)
    settings = load_settings(EncodeSettings, None, [f"ae={ae}", f"data={world['prep']}", "batch_size=1", "runtime.device=cpu"])
    with pytest.raises(KeyboardInterrupt):  # an interrupted run: lat.partial with one item
        encode_latents.run(settings, tmp_path / "lat", progress=_interrupt_after(1))
    assert invoke("train-ae", "--data", world["prep"], "--out", ae, "--overwrite", "--steps", "1", *AE).exit_code == 0
    before = snapshot(tmp_path / "lat.partial")
    args = ["encode-latents", "--ae", ae, "--data", world["prep"], "--out", tmp_path / "lat", "--batch-size", "1",
            "--device", "cpu"]
    result = invoke(*args)
    assert_refused(result, 2, f"the input {ae} (autoencoder) changed after", "lat.partial was started from it",
                   "pass --overwrite to start again")
    assert snapshot(tmp_path / "lat.partial") == before
    again = invoke(*args, "--overwrite")
    assert again.exit_code == 0, again.output
    refs = {ref.role: ref.sha256 for ref in require(tmp_path / "lat", "latents").inputs}
    assert refs["autoencoder"] == manifest_sha256(ae)  # made from the re-made autoencoder


def test_train_ae_resume_on_remade_data_is_refused(world, tmp_path):
    raw, prep = world["raw"], tmp_path / "prep"
    assert invoke("preprocess", raw, "--out", prep, *PREP).exit_code == 0
    settings = load_settings(TrainAESettings, None, [f"data.path={prep}", "model.kind=vqvae", "model.channels=8,8",
                                                     "model.num_res_blocks=1",
                                                     "model.embedding_dim=8", "model.num_embeddings=32",
                                                     "data.batch_size=2", "train.steps=3", "train.val_every=0",
                                                     "train.checkpoint_every=1", "train.save_images=0",
                                                     "runtime.device=cpu"])
    with pytest.raises(KeyboardInterrupt):
        train_ae.run(settings, tmp_path / "ae", progress=_interrupt_after(2))
    assert invoke("preprocess", raw, "--out", prep, *PREP, "--seed", "7", "--overwrite").exit_code == 0
    before = snapshot(tmp_path / "ae.partial")
    result = invoke("train-ae", "--data", prep, "--out", tmp_path / "ae", "--resume", "--steps", "3", *AE)
    assert_refused(result, 2, f"the input {prep} (data) changed after", "pass --overwrite to start again")
    assert snapshot(tmp_path / "ae.partial") == before


# ------------------------------------------------------------------------------------------------ lineage
def test_inspect_of_an_artefact_whose_inputs_point_at_itself_is_short(world, tmp_path):
    lat = tmp_path / "lat"
    shutil.copytree(world["lat"], lat)
    data = json.loads((lat / "manifest.json").read_text())
    data["inputs"] = [{**ref, "path": str(lat.resolve())} for ref in data["inputs"]]  # what --out = --data left
    (lat / "manifest.json").write_text(json.dumps(data))
    before = snapshot(lat)
    result = invoke("inspect", lat)
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    assert len(result.output.splitlines()) < 80
    as_json = invoke("inspect", lat, "--json")
    lineage = json.loads(as_json.output)["lineage"]
    assert [child["cycle"] for child in lineage["inputs"]] == [True, True]
    assert snapshot(lat) == before
