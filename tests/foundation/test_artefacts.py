"""The artefact contract: atomic creation, refusal to overwrite, resume, require, lineage."""

import json

import pytest

from medgen_cli.artefacts import (SCHEMA_VERSION, ArtefactError, ArtefactWriter, find_upstream, input_ref, lineage,
                                  manifest_sha256, read_manifest, require)


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
