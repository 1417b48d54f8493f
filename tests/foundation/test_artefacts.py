"""The artefact contract: atomic creation, refusal to overwrite, resume, require, lineage, locks (issue 11)."""

import gc
import json
import logging
import os
import re
import socket
import subprocess
import threading
from pathlib import Path

import pytest

from medgen_cli.artefacts import (MARKER, MAX_LINEAGE_NODES, SCHEMA_VERSION, ArtefactError, ArtefactWriter, Manifest,
                                  find_upstream, input_ref, lineage, manifest_sha256, read_manifest, require)
from medgen_cli.errors import StepFailed
from medgen_cli.safety import normal_path, relation


def make(path, kind="preprocessed", settings=None, inputs=None, **kw):
    w = ArtefactWriter(path, kind, settings or {"a": 1}, inputs=inputs, **kw)
    partial = w.open()
    (partial / "payload.txt").write_text("x")
    return w.commit({"n": 1})


def test_create_is_atomic_and_complete(tmp_path):
    w = ArtefactWriter(tmp_path / "prep", "preprocessed", {"a": 1})
    partial = w.open()
    assert partial.name == "prep.partial" and not (tmp_path / "prep").exists()
    assert read_manifest(partial).status == "running"
    with pytest.raises(ArtefactError, match="unfinished"):
        require(tmp_path / "prep", "preprocessed")
    w.commit({"items": 3})
    m = require(tmp_path / "prep", "preprocessed")
    assert m.status == "complete" and m.summary == {"items": 3} and m.schema_version == SCHEMA_VERSION
    assert "settings.yaml" in m.files and not partial.exists()
    assert "a: 1" in (tmp_path / "prep" / "settings.yaml").read_text()


def test_existing_output_needs_overwrite(tmp_path):
    out = make(tmp_path / "prep")
    with pytest.raises(ArtefactError, match="already exists; pass --overwrite"):
        ArtefactWriter(out, "preprocessed", {"a": 2}).open()
    make(out, settings={"a": 2}, overwrite=True)
    assert read_manifest(out).settings == {"a": 2}


def test_never_replaces_a_users_directory(tmp_path):
    user = tmp_path / "mine"
    user.mkdir()
    (user / "thesis.tex").write_text("precious")
    with pytest.raises(ArtefactError, match="not a medgen artefact"):
        ArtefactWriter(user, "preprocessed", {}, overwrite=True).open()
    assert (user / "thesis.tex").read_text() == "precious"


def test_resume_same_settings_and_refuse_different(tmp_path):
    w = ArtefactWriter(tmp_path / "ae", "autoencoder", {"lr": 1})
    partial = w.open()
    (partial / "ckpt").write_text("step 10")
    again = ArtefactWriter(tmp_path / "ae", "autoencoder", {"lr": 1})
    again.open()
    assert again.resumed and (partial / "ckpt").read_text() == "step 10"
    with pytest.raises(ArtefactError, match="different settings"):
        ArtefactWriter(tmp_path / "ae", "autoencoder", {"lr": 2}).open()
    with pytest.raises(ArtefactError, match="pass --resume"):
        ArtefactWriter(tmp_path / "ae", "autoencoder", {"lr": 1}, resume=False).open()
    fresh = ArtefactWriter(tmp_path / "ae", "autoencoder", {"lr": 2}, overwrite=True)
    fresh.open()
    assert not fresh.resumed and not (partial / "ckpt").exists()


def test_require_messages(tmp_path):
    with pytest.raises(ArtefactError, match="does not exist"):
        require(tmp_path / "nope", "autoencoder")
    (tmp_path / "plain").mkdir()
    with pytest.raises(ArtefactError, match="not a medgen artefact"):
        require(tmp_path / "plain", "autoencoder")
    prep = make(tmp_path / "prep")
    with pytest.raises(ArtefactError, match="is a preprocessed artefact, but a autoencoder artefact is needed"):
        require(prep, "autoencoder")
    data = json.loads((prep / "manifest.json").read_text())
    data["schema_version"] = SCHEMA_VERSION + 1
    (prep / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ArtefactError, match="newer than this medgen"):
        require(prep, "preprocessed")
    data["schema_version"], data["status"] = SCHEMA_VERSION, "running"
    (prep / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ArtefactError, match="incomplete"):
        require(prep, "preprocessed")
    (prep / "manifest.json").write_text("{not json")
    with pytest.raises(ArtefactError, match="damaged"):
        require(prep, "preprocessed")


def test_lineage_and_upstream(tmp_path):
    prep = make(tmp_path / "prep")
    ae = make(tmp_path / "ae", "autoencoder", inputs=[input_ref(prep, "data", "preprocessed")])
    lat = make(tmp_path / "lat", "latents", inputs=[input_ref(ae, "autoencoder", "autoencoder"), input_ref(prep, "data", "preprocessed")])
    prior = make(tmp_path / "prior", "prior", inputs=[input_ref(lat, "latents", "latents")])
    assert find_upstream(prior, "autoencoder") == ae
    tree = lineage(prior)
    assert tree["inputs"][0]["kind"] == "latents" and tree["inputs"][0]["inputs"][0]["kind"] == "autoencoder"
    assert tree["inputs"][0]["inputs"][0]["inputs"][0]["path"] == str(prep.resolve())
    # re-making an input after it was read is visible in the lineage
    make(prep, settings={"a": 9}, overwrite=True)
    assert lineage(ae)["inputs"][0]["changed"] is True
    assert len(manifest_sha256(ae)) == 64


# ------------------------------------------------------------------------ issue 11: nothing a user has is lost
def _lock_record(path, **fields):
    """Write a lock file as another process would (defaults: this host, a process that never existed)."""
    record = {"pid": 999_999_999, "host": socket.gethostname(), "started": "2024-01-01T00:00:00+00:00",
              "command": "medgen preprocess raw --out prep", "token": "x" * 32, **fields}
    path.write_text(json.dumps(record))
    return record


def test_partial_is_marked_and_the_mark_does_not_reach_the_artefact(tmp_path):
    w = ArtefactWriter(tmp_path / "prep", "preprocessed", {"a": 1})
    partial = w.open()
    mark = json.loads((partial / MARKER).read_text())
    assert mark["created_by"] == "medgen" and mark["kind"] == "preprocessed" and mark["pid"] == os.getpid()
    out = w.commit({})
    assert not (out / MARKER).exists() and MARKER not in read_manifest(out).files
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prep"]  # no temporaries, no lock left


@pytest.mark.parametrize("overwrite", [False, True])
@pytest.mark.parametrize("resume", [False, True])
def test_a_partial_medgen_did_not_create_is_never_touched(tmp_path, overwrite, resume):
    user = tmp_path / "r.partial"
    user.mkdir()
    (user / "thesis.tex").write_text("precious")
    (user / "manifest.json").write_text(Manifest(kind="preprocessed", settings={"a": 1}).model_dump_json())
    with pytest.raises(ArtefactError, match=r"r\.partial was not created by medgen \(it has no \.medgen-partial"):
        ArtefactWriter(tmp_path / "r", "preprocessed", {"a": 1}, overwrite=overwrite, resume=resume).open()
    assert sorted(p.name for p in user.iterdir()) == ["manifest.json", "thesis.tex"]
    assert (user / "thesis.tex").read_text() == "precious" and not (tmp_path / "r").exists()
    assert not (tmp_path / "r.lock").exists()  # a refused open releases the lock
    with pytest.raises(ArtefactError, match="r does not exist"):  # not "unfinished": it is not medgen's
        require(tmp_path / "r", "preprocessed")


def test_symlinked_or_file_partials_are_refused_and_an_empty_one_is_used(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / MARKER).write_text("{}")  # even a marked target: a link is not a partial medgen made
    (elsewhere / "data.bin").write_text("keep")
    (tmp_path / "a.partial").symlink_to(elsewhere)
    (tmp_path / "b.partial").write_text("a file")
    for name in "ab":
        with pytest.raises(ArtefactError, match="was not created by medgen"):
            ArtefactWriter(tmp_path / name, "preprocessed", {}, overwrite=True).open()
    assert (elsewhere / "data.bin").read_text() == "keep" and (tmp_path / "b.partial").read_text() == "a file"
    (tmp_path / "c.partial").mkdir()  # empty: e.g. made by hand, nothing to lose
    make(tmp_path / "c")
    assert require(tmp_path / "c", "preprocessed").status == "complete"


def test_overwrite_never_deletes_files_medgen_did_not_write(tmp_path):
    out = make(tmp_path / "ae", "autoencoder")
    (out / "notes.txt").write_text("my notes")
    (out / ".DS_Store").write_text("finder")  # file-browser litter is not user content
    with pytest.raises(ArtefactError, match=r"holds files medgen did not write \(notes\.txt\)"):
        ArtefactWriter(out, "autoencoder", {"a": 2}, overwrite=True).open()
    assert (out / "notes.txt").read_text() == "my notes"
    other = tmp_path / "webapp"
    other.mkdir()
    (other / "manifest.json").write_text('{"name": "my web app", "start_url": "/"}')
    with pytest.raises(ArtefactError, match="is not a medgen artefact"):
        ArtefactWriter(other, "preprocessed", {}, overwrite=True).open()
    assert json.loads((other / "manifest.json").read_text())["name"] == "my web app"


def test_commit_trash_is_its_own_directory(tmp_path):
    """Replacing OUT moves it into a directory made for it, never into a user's OUT.old-PID."""
    out = make(tmp_path / "prep")
    for name in (f"prep.old-{os.getpid()}", f"prep.old-{os.getpid()}-x"):
        (tmp_path / name).mkdir()
    (tmp_path / f"prep.old-{os.getpid()}" / "mine.txt").write_text("mine")
    make(out, settings={"a": 2}, overwrite=True)
    assert read_manifest(out).settings == {"a": 2}
    assert (tmp_path / f"prep.old-{os.getpid()}" / "mine.txt").read_text() == "mine"
    assert (tmp_path / f"prep.old-{os.getpid()}-x").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prep", f"prep.old-{os.getpid()}", f"prep.old-{os.getpid()}-x"]


@pytest.mark.parametrize("where", ["same", "inside", "contains", "symlink"])
def test_output_on_inside_or_around_an_input_artefact_is_refused(tmp_path, where):
    prep = make(tmp_path / "work" / "prep")
    (tmp_path / "link").symlink_to(prep)
    out = {"same": prep, "inside": prep / "ae", "contains": tmp_path / "work", "symlink": tmp_path / "link"}[where]
    before = {p: p.read_bytes() for p in prep.rglob("*") if p.is_file()}
    relation = {"same": "is", "inside": "is inside", "contains": "contains", "symlink": "is"}[where]
    with pytest.raises(ArtefactError, match=f"the output {re.escape(str(out))} {relation} the input"):
        ArtefactWriter(out, "autoencoder", {}, inputs=[input_ref(prep, "data", "preprocessed")], overwrite=True).open()
    assert {p: p.read_bytes() for p in prep.rglob("*") if p.is_file()} == before
    assert not Path(f"{out}.partial").exists() and not Path(f"{out}.lock").exists()


def test_output_over_an_upstream_artefact_is_refused(tmp_path):
    prep = make(tmp_path / "prep")
    ae = make(tmp_path / "ae", "autoencoder", inputs=[input_ref(prep, "data", "preprocessed")])
    lat = make(tmp_path / "lat", "latents", inputs=[input_ref(ae, "autoencoder", "autoencoder")])
    with pytest.raises(ArtefactError, match=r"the output .*ae is .*ae, which the input .*lat was made from"):
        ArtefactWriter(ae, "prior", {}, inputs=[input_ref(lat, "latents", "latents")], overwrite=True).open()
    assert require(ae, "autoencoder").kind == "autoencoder"


def test_raw_inputs_files_directories_globs_and_urls(tmp_path):
    raw = tmp_path / "raw"
    (raw / "sub").mkdir(parents=True)
    (raw / "a.nii").write_text("x")
    (tmp_path / "rawlink").symlink_to(raw)
    refused = {
        (raw / "prep", (raw,)): "is inside the input",
        (tmp_path / "rawlink" / "prep", (raw,)): "is inside the input",  # real paths are compared
        (raw / "prep", (tmp_path / "rawlink",)): "is inside the input",
        (raw / "a.nii", (raw / "a.nii",)): "is the input",
        (tmp_path, (raw / "a.nii",)): "contains the input",
        (tmp_path / "x", (tmp_path / "x.partial" / "scan.nii",)): r"x\.partial contains the input",
        (raw / "prep", (str(raw / "**" / "*.nii"),)): "is inside the input",
        (tmp_path, (str(raw / "*.nii"),)): "contains the input",
    }
    for (out, raws), phrase in refused.items():
        with pytest.raises(ArtefactError, match=phrase):
            ArtefactWriter(out, "preprocessed", {}, raw_inputs=raws).check_inputs()
    # beside an input, an unmatched pattern, a URL: fine
    for out, raws in [(tmp_path / "prep", (raw,)), (tmp_path / "raw2", (raw,)), (raw / "prep", (str(raw / "*.nii"),)),
                      (tmp_path / "prep", ("s3://bucket/raw",))]:
        ArtefactWriter(out, "preprocessed", {}, raw_inputs=raws).check_inputs()
    assert normal_path("S3://bucket//raw/./x/") == normal_path("s3://bucket/raw/x") == "s3://bucket/raw/x"
    assert relation(normal_path("s3://bucket/raw/x/prep"), normal_path("s3://bucket/raw/x")) == "is inside"
    assert relation("/a/bc", "/a/b") is None  # a shared prefix is not containment


def _cyclic(tmp_path, loop_of: int):
    """Artefacts whose inputs point back at themselves (a self-loop, or a loop of two), twice each."""
    paths = [make(tmp_path / f"a{i}", "latents") for i in range(loop_of)]
    for i, path in enumerate(paths):
        target = paths[(i + 1) % loop_of]
        data = json.loads((path / "manifest.json").read_text())
        data["inputs"] = [{"role": role, "path": str(target.resolve()), "kind": "latents", "sha256": "0" * 64}
                          for role in ("data", "condition")]
        (path / "manifest.json").write_text(json.dumps(data))
    return paths


def _count(node):
    return 1 + sum(_count(c) for c in node["inputs"])


@pytest.mark.parametrize("loop_of", [1, 2])
def test_lineage_and_find_upstream_are_cycle_safe(tmp_path, loop_of):
    paths = _cyclic(tmp_path, loop_of)
    tree = lineage(paths[0])
    assert _count(tree) == 1 + 2 * loop_of if loop_of == 1 else _count(tree) == 1 + 2 + 4
    leaves = tree["inputs"] if loop_of == 1 else [c for child in tree["inputs"] for c in child["inputs"]]
    assert all(leaf["cycle"] is True and leaf["inputs"] == [] for leaf in leaves)
    assert json.dumps(tree)  # JSON-able
    with pytest.raises(ArtefactError, match="no autoencoder artefact found"):
        find_upstream(paths[0], "autoencoder")
    if loop_of == 1:  # an artefact is never its own upstream
        with pytest.raises(ArtefactError, match="no latents artefact found"):
            find_upstream(paths[0], "latents")


def test_lineage_of_a_wide_diamond_is_bounded(tmp_path):
    """Each level reads the previous one twice: 2^depth paths, cut at MAX_LINEAGE_NODES."""
    prev = make(tmp_path / "l0")
    for depth in range(1, 14):
        prev = make(tmp_path / f"l{depth}", inputs=[input_ref(prev, r, "preprocessed") for r in ("data", "condition")])
    assert _count(lineage(prev)) <= 2 * MAX_LINEAGE_NODES


def test_resume_refuses_an_input_that_changed(tmp_path):
    prep = make(tmp_path / "prep")
    refs = [input_ref(prep, "data", "preprocessed")]
    w = ArtefactWriter(tmp_path / "ae", "autoencoder", {"lr": 1}, inputs=refs)
    (w.open() / "ckpt").write_text("step 10")
    w.close()
    again = ArtefactWriter(tmp_path / "ae", "autoencoder", {"lr": 1}, inputs=[input_ref(prep, "data", "preprocessed")])
    again.open()
    assert again.resumed
    again.close()
    make(prep, settings={"a": 2}, overwrite=True)  # re-made: its manifest differs
    with pytest.raises(ArtefactError, match=r"the input .*prep \(data\) changed after .*ae\.partial was started from it.*--overwrite"):
        ArtefactWriter(tmp_path / "ae", "autoencoder", {"lr": 1}, inputs=[input_ref(prep, "data", "preprocessed")]).open()
    assert (tmp_path / "ae.partial" / "ckpt").read_text() == "step 10"
    fresh = ArtefactWriter(tmp_path / "ae", "autoencoder", {"lr": 1}, inputs=[input_ref(prep, "data", "preprocessed")],
                           overwrite=True)
    fresh.open()
    assert not fresh.resumed and not (tmp_path / "ae.partial" / "ckpt").exists()


# ---------------------------------------------------------------------------------------- OUT.lock
def test_lock_is_taken_in_open_and_released_by_commit_close_and_with(tmp_path):
    w = ArtefactWriter(tmp_path / "prep", "preprocessed", {"a": 1})
    w.open()
    lock = json.loads((tmp_path / "prep.lock").read_text())
    assert lock["pid"] == os.getpid() and lock["host"] == socket.gethostname()
    assert {"started", "command"} <= set(lock)
    w.commit({})
    assert not (tmp_path / "prep.lock").exists()
    with ArtefactWriter(tmp_path / "ae", "autoencoder", {}) as w:
        w.open()
        assert (tmp_path / "ae.lock").exists()
    assert not (tmp_path / "ae.lock").exists() and (tmp_path / "ae.partial").is_dir()


def test_a_forgotten_writer_releases_its_lock_when_collected(tmp_path):
    w = ArtefactWriter(tmp_path / "ae", "autoencoder", {})
    w.open()
    del w
    gc.collect()
    assert not (tmp_path / "ae.lock").exists()


def test_a_live_writer_in_another_thread_is_refused_a_failed_one_in_this_thread_is_not(tmp_path):
    first = ArtefactWriter(tmp_path / "ae", "autoencoder", {})
    errors = []
    thread = threading.Thread(target=lambda: errors.append(_open_error(first)))
    thread.start()
    thread.join()
    assert errors == [None]
    with pytest.raises(ArtefactError, match=f"is being written by another medgen run \\(process {os.getpid()} on"):
        ArtefactWriter(tmp_path / "ae", "autoencoder", {}).open()
    # in the thread that opened it, a new writer means the old one's step ended (a failure kept it alive)
    held = ArtefactWriter(tmp_path / "p", "prior", {})
    held.open()
    again = ArtefactWriter(tmp_path / "p", "prior", {})
    again.open()
    assert again.resumed and not held.lock.held()
    again.commit({})
    first.close()


def _open_error(writer):
    try:
        writer.open()
    except ArtefactError as err:
        return err
    return None


def test_a_running_process_on_this_host_holds_the_lock(tmp_path):
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        _lock_record(tmp_path / "prep.lock", pid=sleeper.pid)
        with pytest.raises(ArtefactError) as err:
            ArtefactWriter(tmp_path / "prep", "preprocessed", {}).open()
        text = str(err.value)
        assert f"process {sleeper.pid} on {socket.gethostname()}, started 2024-01-01T00:00:00+00:00" in text
        assert "medgen preprocess raw --out prep" in text and "wait for it to finish" in text
        assert not (tmp_path / "prep.partial").exists() and json.loads((tmp_path / "prep.lock").read_text())["pid"] == sleeper.pid
    finally:
        sleeper.kill()
        sleeper.wait()
    # the same PID, now dead: stale
    make(tmp_path / "prep")
    assert not (tmp_path / "prep.lock").exists()


def test_stale_locks_are_taken_over_with_a_warning(tmp_path, caplog):
    _lock_record(tmp_path / "a.lock")  # no such process
    with caplog.at_level(logging.WARNING, logger="medgen_cli"):
        make(tmp_path / "a")
    assert "taking over the stale lock" in caplog.text and "999999999" in caplog.text
    # a recycled PID: a running process (our parent), but not the one that took the lock
    _lock_record(tmp_path / "b.lock", pid=os.getppid(), proc_start="1")
    make(tmp_path / "b")
    assert not (tmp_path / "a.lock").exists() and not (tmp_path / "b.lock").exists()


def test_a_lock_from_another_host_is_refused_with_how_to_remove_it(tmp_path):
    _lock_record(tmp_path / "prep.lock", host="node042", pid=os.getpid())
    with pytest.raises(ArtefactError, match=r"process \d+ on node042, .*if that run is gone, delete .*prep\.lock"):
        ArtefactWriter(tmp_path / "prep", "preprocessed", {}).open()
    (tmp_path / "prep.lock").write_text("")  # unreadable: never guessed stale
    with pytest.raises(ArtefactError, match=r"locked by .*prep\.lock, which names no owner; .* delete"):
        ArtefactWriter(tmp_path / "prep", "preprocessed", {}).open()
    assert not (tmp_path / "prep.partial").exists()


def test_shards_lock_separately_but_not_against_a_whole_run(tmp_path):
    shard0 = ArtefactWriter(tmp_path / "prep", "preprocessed", {}, shard=(0, 2))
    shard1 = ArtefactWriter(tmp_path / "prep", "preprocessed", {}, shard=(1, 2))
    p0, p1 = shard0.open(), shard1.open()
    assert p0 == p1 and shard1.resumed
    assert sorted(p.name for p in tmp_path.glob("prep.lock*")) == ["prep.lock.shard-0-of-2", "prep.lock.shard-1-of-2"]
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        _lock_record(tmp_path / "prep.lock.shard-0-of-2", pid=sleeper.pid)
        with pytest.raises(ArtefactError, match=f"process {sleeper.pid}"):
            ArtefactWriter(tmp_path / "prep", "preprocessed", {}).open()
        with pytest.raises(ArtefactError, match=f"process {sleeper.pid}"):
            ArtefactWriter(tmp_path / "prep", "preprocessed", {}, shard=(0, 2)).open()
    finally:
        sleeper.kill()
        sleeper.wait()
    shard1.commit({})
    assert require(tmp_path / "prep", "preprocessed")


def test_commit_refuses_when_another_run_took_the_lock(tmp_path):
    w = ArtefactWriter(tmp_path / "prep", "preprocessed", {})
    w.open()
    (tmp_path / "prep.lock").unlink()  # someone deleted it: taken again
    w.commit({})
    w = ArtefactWriter(tmp_path / "ae", "autoencoder", {})
    w.open()
    _lock_record(tmp_path / "ae.lock", host="node042")
    with pytest.raises(StepFailed, match="was locked by another run while this one was writing"):
        w.commit({})
    assert (tmp_path / "ae.partial").is_dir() and not (tmp_path / "ae").exists()
