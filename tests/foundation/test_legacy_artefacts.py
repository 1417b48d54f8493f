"""Artefacts written by an earlier release still load and give the same results (tests/fixtures/make_legacy.py).

Each fixture folder holds one release's runs/ folder, moved from where it was made: its manifests name their
inputs by the old absolute paths, so loading it also proves that artefacts moved together are found again by
their manifests' hashes. A manifest of a newer schema is refused with a sentence naming both versions.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from medgen_cli.artefacts import ArtefactError, read_manifest, require
from medgen_cli.cli import app
from medgen_cli.io.store import Store, store_path
from medgen_cli.settings import EncodeSettings, SampleSettings, load_settings
from medgen_cli.steps import encode_latents, sample

FIXTURES = sorted((Path(__file__).resolve().parents[1] / "fixtures").glob("artefacts_v*"))
KINDS = {"prep": "preprocessed", "ae_vq": "autoencoder", "ae_kl": "autoencoder", "lat_vq": "latents",
         "lat_kl": "latents", "prior_tf": "prior", "prior_diff": "prior", "sample_tf": "samples",
         "sample_diff": "samples"}


@pytest.fixture(params=FIXTURES, ids=[p.name for p in FIXTURES])
def runs(request, tmp_path) -> Path:
    """A copy of one release's artefacts (tests never write into the repository)."""
    copy = tmp_path / "runs"
    shutil.copytree(request.param, copy)
    return copy


def _arrays(artefact: Path, name: str) -> dict[str, np.ndarray]:
    store = Store.open(store_path(artefact, name))
    return {i: store.read(i, dtype=None) for i in store.ids()}


def _same_stores(new: Path, old: Path, name: str, atol: float) -> None:
    a, b = _arrays(new, name), _arrays(old, name)
    assert sorted(a) == sorted(b)
    for key in a:
        assert a[key].shape == b[key].shape and a[key].dtype == b[key].dtype, key
        np.testing.assert_allclose(a[key].astype(np.float64), b[key].astype(np.float64), atol=atol, err_msg=key)


def test_a_fixture_exists():
    assert FIXTURES, "tests/fixtures/artefacts_v*/ is missing: run python -m tests.fixtures.make_legacy"


def test_every_artefact_reads_and_checks(runs):
    for name, kind in KINDS.items():
        manifest = require(runs / name, kind)
        assert manifest.status == "complete"
        for ref in manifest.inputs:  # moved with them: found beside, by hash
            assert Path(ref.path).parent == runs.resolve(), (name, ref.path)
    res = CliRunner().invoke(app, ["inspect", str(runs / "lat_vq"), "--check"])
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize("name", ["sample_tf", "sample_diff"])
def test_priors_sample_what_they_sampled(runs, tmp_path, name):
    old = runs / name
    recorded = read_manifest(old).settings
    prior = read_manifest(old).inputs[0]
    overrides = [f"prior={prior.path}", f"num_samples={recorded['num_samples']}", "runtime.device=cpu",
                 f"batch_size={recorded['batch_size']}", f"runtime.seed={recorded['runtime']['seed']}"]
    if recorded["sampler"].get("steps"):
        overrides.append(f"sampler.steps={recorded['sampler']['steps']}")
    settings = load_settings(SampleSettings, None, overrides)
    sample.run(settings, tmp_path / name)
    _same_stores(tmp_path / name, old, "samples", atol=1e-3)
    _same_stores(tmp_path / name, old, "codes", atol=1e-3)


@pytest.mark.parametrize("kind", ["vq", "kl"])
def test_autoencoders_encode_what_they_encoded(runs, tmp_path, kind):
    old = runs / f"lat_{kind}"
    settings = load_settings(EncodeSettings, None, [f"ae={runs / f'ae_{kind}'}", f"data={runs / 'prep'}", "store=drr",
                                                    "batch_size=4", "runtime.device=cpu"])
    encode_latents.run(settings, tmp_path / "lat")
    _same_stores(tmp_path / "lat", old, "main", atol=1e-4)


def test_a_newer_schema_is_refused_naming_both_versions(runs):
    path = runs / "prior_tf" / "manifest.json"
    data = json.loads(path.read_text())
    data["schema_version"] += 1
    data["medgen_version"] = "99.0"
    path.write_text(json.dumps(data))
    with pytest.raises(ArtefactError, match=r"medgen 99\.0 with schema \d+, newer than this medgen"):
        require(runs / "prior_tf", "prior")


def test_a_moved_input_that_changed_is_not_taken(runs):
    """An artefact of the input's name beside it, but not the one recorded (its hash differs): not used."""
    manifest = runs / "ae_vq" / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"status": "complete"', '"status":  "complete"'))
    ref = next(r for r in read_manifest(runs / "lat_vq").inputs if r.role == "autoencoder")
    assert Path(ref.path).parent != runs.resolve()  # the recorded path, which does not exist here
    with pytest.raises(ArtefactError, match="does not exist"):
        require(ref.path, "autoencoder")
