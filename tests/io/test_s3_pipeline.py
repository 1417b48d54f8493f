"""Every step's artefacts on s3:// (issue 14), against moto's S3 server started on 127.0.0.1 in the test.

The whole pipeline (preprocess -> train-ae -> encode-latents -> train-prior -> sample -> evaluate) runs once
on local paths and once with every artefact on s3://; the two must hold the same models, samples and metrics.
A preprocess killed with SIGKILL mid-way leaves nothing that reads as complete, and the same command
finishes it. Select these tests with ``-m s3``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from medgen_cli.artefacts import MANIFEST, ArtefactError, ArtefactWriter, input_ref, require
from medgen_cli.artefacts_url import staging_dir
from medgen_cli.cli import app
from medgen_cli.io import fs
from medgen_cli.io.store import Store, store_path
from medgen_cli.settings import EncodeSettings, EvaluateSettings, ExportSettings, PreprocessSettings, load_settings
from medgen_cli.steps import encode_latents, evaluate, export, preprocess, sample, train_ae, train_prior
from medgen_cli.loaders.autoencoder import load_autoencoder
from medgen_cli.loaders.prior import load_prior
from tests.conftest import sphere_phantom, write_nifti
from tests.io.moto_helpers import moto_bucket
from tests.steps.conftest import AFFINE, prior_settings, sample_settings
from tests.train.helpers import tiny_settings

pytest.importorskip("s3fs", reason="s3fs is in the dev extra; install with pip install -e '.[dev]'")
pytest.importorskip("moto.server", reason="moto[server] is in the dev extra")

pytestmark = pytest.mark.s3
ROOT = Path(__file__).resolve().parents[2]
PREP = ["input.modality=CT", "intensity.window=0,2000", "split.fractions=0.5,0.25,0.25", "runtime.workers=0"]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto on 127.0.0.1 with the bucket ``medgen``; fsspec finds it through its configuration (in this process)
    and the ``FSSPEC_S3`` variable (in the subprocesses), as a user's storage options are found."""
    import fsspec.config

    with moto_bucket() as options:
        saved = fsspec.config.conf.get("s3")
        fsspec.config.conf["s3"] = options
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("FSSPEC_S3", json.dumps(options))
            mp.setenv("MEDGEN_STAGING", str(tmp_path_factory.mktemp("staging")))
            yield options
        if saved is None:
            fsspec.config.conf.pop("s3", None)
        else:
            fsspec.config.conf["s3"] = saved


def bucket_root() -> str:
    return f"s3://medgen/{uuid.uuid4().hex[:8]}"


def phantoms(directory: Path, count: int) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        write_nifti(directory / f"ct{i:02d}.nii.gz", sphere_phantom((16, 16, 16), radius=0.2 + 0.03 * i, seed=i), AFFINE)
    return directory


def run_pipeline(root: str, raw: Path) -> dict[str, str]:
    """The six steps with tiny models, every artefact below ``root`` (a directory or an s3:// prefix)."""
    out = {name: f"{root}/{name}" for name in ("prep", "ae", "lat", "prior", "samples", "eval")}
    preprocess.run(load_settings(PreprocessSettings, None, [f"input.paths=[{raw}]", *PREP, "derive.outputs=[drr]"]),
                   out["prep"])
    train_ae.run(tiny_settings(out["prep"], "vqvae", "data.store=drr", "train.steps=2", "train.val_every=0",
                               "train.checkpoint_every=2", "train.save_images=0"), out["ae"])
    encode_latents.run(load_settings(EncodeSettings, None, [f"ae={out['ae']}", f"data={out['prep']}", "store=drr",
                                                            "batch_size=4", "runtime.device=cpu"]), out["lat"])
    train_prior.run(prior_settings(out["lat"], "transformer"), out["prior"])
    sample.run(sample_settings(out["prior"], "runtime.seed=3"), out["samples"])
    evaluate.run(load_settings(EvaluateSettings, None, [f"samples={out['samples']}", f"data={out['prep']}", "store=drr",
                                                        "runtime.device=cpu", "max_pictures=2", "batch_size=2"]),
                 out["eval"])
    return out


def test_the_whole_pipeline_on_s3_matches_the_local_one(s3, tmp_path):
    raw = phantoms(tmp_path / "raw", 6)
    local = run_pipeline(str(tmp_path / "run"), raw)
    remote = run_pipeline(bucket_root(), raw)

    kinds = {"prep": "preprocessed", "ae": "autoencoder", "lat": "latents", "prior": "prior", "samples": "samples",
             "eval": "evaluation"}
    for name, kind in kinds.items():
        manifest = require(remote[name], kind)  # complete, and every listed file is in the bucket
        assert manifest.files == require(local[name], kind).files
        assert "settings.yaml" in manifest.files
    # the models load from the bucket and equal the local ones, weight for weight
    for load, name in ((load_autoencoder, "ae"), (load_prior, "prior")):
        a, b = load(local[name])[0].state_dict(), load(remote[name])[0].state_dict()
        assert a.keys() == b.keys() and all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)
    # same seed, same samples; same metrics
    mine, theirs = Store.open(store_path(local["samples"], "samples")), Store.open(store_path(remote["samples"], "samples"))
    assert mine.ids() == theirs.ids() and len(mine.ids()) == 3
    for item in mine.ids():
        np.testing.assert_array_equal(mine.read(item), theirs.read(item))
    metrics = json.loads(fs.read_text(f"{remote['eval']}/metrics.json"))
    assert metrics == json.loads(Path(local["eval"], "metrics.json").read_text())
    # lineage is recorded with the URLs, and nothing is left behind: no partial prefix, no lock, no mark
    assert require(remote["lat"], "latents").inputs[0].path == remote["ae"]
    keys = fs.find(remote["prep"].rsplit("/", 1)[0])
    assert not [k for k in keys if ".partial/" in k or k.endswith(".lock") or k.endswith(".medgen-partial")]
    # the CLI takes URLs too; export writes NIfTI files into the bucket
    result = CliRunner().invoke(app, ["inspect", remote["samples"], "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["stores"]["samples"]["items"] == 3
    nii = f"{remote['samples']}_nii"
    export.run(load_settings(ExportSettings, None, ["runtime.device=cpu"], {"source": remote["samples"],
                                                                           "format": "nifti"}), nii)
    assert require(nii, "export").summary["items"] == 3 and "index.csv" in fs.listdir(nii)


SLOW_WRITES = """
import sys, time
from medgen_cli.io import store
write = store.Store.write
def slow(self, *args, **kwargs):  # time for the test to kill the run between two items
    write(self, *args, **kwargs)
    time.sleep(0.5)
store.Store.write = slow
from medgen_cli.cli import app
app(sys.argv[1:], prog_name="medgen")
"""


def test_kill_9_mid_step_leaves_no_complete_looking_artefact_and_the_same_command_finishes(s3, tmp_path):
    raw = phantoms(tmp_path / "raw", 8)
    out = f"{bucket_root()}/prep"
    args = ["preprocess", str(raw), "--out", out, *[x for s in PREP for x in ("--set", s)]]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", SLOW_WRITES, *args], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    progress = staging_dir(out) / "progress"
    deadline = time.monotonic() + 60
    while not (progress.is_dir() and any(progress.iterdir())) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()

    written = fs.find(f"{out}.partial")
    assert ".medgen-partial" in written and any(k.startswith("main.zarr/items/") for k in written)
    assert not fs.isfile(f"{out}/{MANIFEST}")
    with pytest.raises(ArtefactError, match=r"is unfinished \(only .*prep\.partial exists\); re-run"):
        require(out, "preprocessed")
    refused = CliRunner().invoke(app, ["train-ae", "--data", out, "--out", f"{out}_ae", "--steps", "1"])
    assert refused.exit_code == 2 and "is unfinished" in refused.output

    again = CliRunner().invoke(app, args)  # the same command: takes over the dead run's lock and resumes
    assert again.exit_code == 0, again.output
    assert "inputs resumed" in again.output
    manifest = require(out, "preprocessed")
    assert manifest.summary["stores"]["main"]["items"] == 8
    assert not fs.find(f"{out}.partial") and not fs.exists(f"{out}.lock")
    # the resumed artefact holds what an uninterrupted local run makes
    local = tmp_path / "prep"
    preprocess.run(load_settings(PreprocessSettings, None, [f"input.paths=[{raw}]", *PREP]), local)
    mine, theirs = Store.open(store_path(local, "main")), Store.open(store_path(out, "main"))
    assert mine.ids() == theirs.ids()
    for item in mine.ids():
        np.testing.assert_array_equal(mine.read(item), theirs.read(item))
        assert mine.item_attrs(item) == theirs.item_attrs(item)


def _prep(root: str) -> str:
    """A tiny complete preprocessed artefact at ``root/prep`` (written through the URL writer)."""
    out = f"{root}/prep"
    writer = ArtefactWriter(out, "preprocessed", {"a": 1})
    writer.open()
    store = Store.create(writer.store_path("main"))
    from medgen_cli.meta import ImageMeta

    store.write("x", np.ones((4, 4), np.float32), ImageMeta(subject="s"), dtype="float32")
    writer.commit({})
    return out


def test_an_output_that_is_or_lies_inside_an_input_is_refused_on_s3(s3):
    prep = _prep(bucket_root())
    ref = input_ref(prep, "data", "preprocessed")
    for out in (prep, prep.replace("s3://medgen/", "S3://medgen//") + "/", f"{prep}/inside"):
        with pytest.raises(ArtefactError, match="would destroy it"):
            ArtefactWriter(out, "autoencoder", {}, [ref]).open()
    assert require(prep, "preprocessed").status == "complete"
    assert not fs.exists(f"{prep}.lock")


def test_one_writer_per_output_on_s3(s3):
    root = bucket_root()
    assert fs.create(f"{root}/x", b"1") and not fs.create(f"{root}/x", b"2")  # the conditional PUT
    assert fs.read_text(f"{root}/x") == "1"
    first = ArtefactWriter(f"{root}/ae", "autoencoder", {"lr": 1})
    thread = threading.Thread(target=first.open)  # a live writer of another thread (or process) holds the lock
    thread.start()
    thread.join()
    assert fs.exists(f"{root}/ae.lock")
    with pytest.raises(ArtefactError, match=f"is being written by another medgen run \\(process {os.getpid()} on"):
        ArtefactWriter(f"{root}/ae", "autoencoder", {"lr": 1}).open()
    first.close()
    assert not fs.exists(f"{root}/ae.lock")
    # a lock of another machine is never judged stale
    fs.write_text(f"{root}/b.lock", json.dumps({"pid": 1, "host": "elsewhere", "started": "then", "command": "x"}))
    with pytest.raises(ArtefactError, match=r"on elsewhere.*delete s3://.*b\.lock"):
        ArtefactWriter(f"{root}/b", "autoencoder", {}).open()


def test_objects_medgen_did_not_write_are_never_deleted_or_reused(s3):
    root = bucket_root()
    fs.write_text(f"{root}/a.partial/notes.txt", "mine")  # a user's prefix named like a partial, without the mark
    with pytest.raises(ArtefactError, match=r"was not created by medgen \(it has no \.medgen-partial mark\)"):
        ArtefactWriter(f"{root}/a", "autoencoder", {}, overwrite=True).open()
    assert fs.read_text(f"{root}/a.partial/notes.txt") == "mine"
    fs.write_text(f"{root}/b/data.csv", "x")
    with pytest.raises(ArtefactError, match="exists and is not a medgen artefact"):
        ArtefactWriter(f"{root}/b", "autoencoder", {}, overwrite=True).open()
    prep = _prep(root)
    fs.write_text(f"{prep}/extra.txt", "a user's file")
    with pytest.raises(ArtefactError, match=r"holds files medgen did not write \(extra\.txt\)"):
        ArtefactWriter(prep, "preprocessed", {"a": 2}, overwrite=True).open()
    assert fs.read_text(f"{prep}/extra.txt") == "a user's file"


def test_overwrite_replaces_an_artefact_and_a_missing_listed_file_is_refused(s3):
    root = bucket_root()
    prep = _prep(root)
    writer = ArtefactWriter(prep, "preprocessed", {"a": 2}, overwrite=True)
    (writer.open() / "report.json").write_text("{}")
    writer.commit({"n": 2})
    manifest = require(prep, "preprocessed")
    assert manifest.settings == {"a": 2} and manifest.files == ["report.json", "settings.yaml"]
    assert "main.zarr" not in fs.listdir(prep)  # the old artefact's store went with it
    fs.remove(f"{prep}/report.json")
    with pytest.raises(ArtefactError, match=r"is incomplete: report\.json listed in its manifest\.json is missing"):
        require(prep, "preprocessed")


def test_a_commit_killed_before_its_manifest_reads_as_unfinished_and_the_same_run_finishes_it(s3, monkeypatch):
    out = f"{bucket_root()}/prep"
    writer = ArtefactWriter(out, "preprocessed", {"a": 1})
    writer.open()
    from medgen_cli.meta import ImageMeta

    Store.create(writer.store_path("main")).write("x", np.full((4, 4), 2, np.float32), ImageMeta(), dtype="float32")
    write = fs.write_text

    def dies_at_the_manifest(path, text):
        if str(path) == f"{out}/{MANIFEST}":
            raise KeyboardInterrupt  # the moment a kill -9 is worst: every payload object copied, no manifest
        write(path, text)

    monkeypatch.setattr(fs, "write_text", dies_at_the_manifest)
    with pytest.raises(KeyboardInterrupt):
        writer.commit({})
    monkeypatch.undo()
    writer.close()
    assert {"main.zarr", "settings.yaml"} <= set(fs.listdir(out)) and MANIFEST not in fs.listdir(out)
    with pytest.raises(ArtefactError, match="is unfinished"):
        require(out, "preprocessed")
    again = ArtefactWriter(out, "preprocessed", {"a": 1})
    again.open()
    assert again.resumed
    again.commit({})
    assert require(out, "preprocessed").files == ["main.zarr", "settings.yaml"]
    np.testing.assert_array_equal(Store.open(store_path(out, "main")).read("x"), np.full((4, 4), 2))
    assert not fs.find(f"{out}.partial") and ".medgen-partial" not in fs.listdir(out)
