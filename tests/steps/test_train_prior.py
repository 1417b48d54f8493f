"""``medgen train-prior``: the artefact rebuilds the prior alone, exact resume, conditioning, bad inputs."""

import json

import pytest
import torch

from medgen_cli.artefacts import ArtefactError, require
from medgen_cli.errors import UsageError
from medgen_cli.settings import SettingsError
from medgen_cli.steps import encode_latents, train_prior
from medgen_cli.loaders.prior import load_prior

from tests.steps.conftest import encode_settings, prior_settings
from tests.train.helpers import make_prep


def _logits(model, info, batch=2):
    """Teacher-forced outputs of a prior on fixed codes (for comparing two copies of it)."""
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, info["num_embeddings"], (batch, *info["grid_shape"]), generator=g)
    with torch.no_grad():
        if isinstance(model, torch.nn.ModuleDict):
            top = torch.randint(0, info["num_embeddings"], (batch, *info["top_grid_shape"]), generator=g)
            return torch.cat([model["top"](top).flatten(), model["bottom"](codes, condition=top).flatten()])
        if "cond_sources" in info["config"]:
            cond = [torch.randint(0, s["num_embeddings"], (batch, *s["grid_shape"]), generator=g)
                    for s in info["config"]["cond_sources"]]
            return model(codes, cond_tokens=cond or None)
        return model(codes)


@pytest.mark.parametrize("name", ["transformer", "maskgit", "pixelcnn", "pixelcnn2", "conditional"])
def test_writes_an_artefact_that_rebuilds_the_prior_alone(chain, name):
    out = chain.prior(name)
    manifest = require(out, "prior")
    for file in ("model.safetensors", "model.json", "metrics.jsonl", "plots/losses.png", "settings.yaml"):
        assert (out / file).is_file(), file
    assert manifest.summary["steps"] == 3 and manifest.summary["best_step"] == 3
    assert {"loss", "bits_per_token"} <= set(manifest.summary["val"])
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["phase"] == "train"] == [1, 2, 3]
    assert any(r["phase"] == "val" and r["bits_per_token"] > 0 for r in records)

    model, info = load_prior(out)
    latents = {"conditional": "vq3d", "pixelcnn2": "vq2"}.get(name, "vq")
    assert info["latents"] == require(chain.latents[latents], "latents").summary
    assert info["kind"] == ("pixelcnn" if name.startswith("pixelcnn") else "transformer" if name == "conditional" else name)
    roles = [(r.role, r.path) for r in manifest.inputs]
    assert roles[0] == ("latents", str(chain.latents[latents].resolve()))
    if name == "pixelcnn2":
        assert set(info["config"]) == {"top", "bottom"} and info["levels"] == ["top", "bottom"]
        assert info["config"]["top"]["attention_layers"] == [1]  # the top prior attends (2 layers: the last)
        assert info["config"]["bottom"]["cond_num_embeddings"] == 32  # the bottom prior sees the top codes
        assert "bits_per_token_top" in manifest.summary["val"]
    if name == "conditional":
        (cond,) = info["conditions"]
        assert cond["path"] == str(chain.latents["vq"].resolve()) and cond["items_per_subject"] == 2  # two views
        assert cond["grid_shape"] == [4, 4] and cond["num_embeddings"] == 32 and cond["store"] == "main"
        assert len(info["config"]["cond_sources"]) == 2 and info["grid_shape"] == [4, 4, 4]
        assert roles[1] == ("condition", str(chain.latents["vq"].resolve()))
    else:
        assert info["conditions"] == []
    trained = train_prior.run(prior_settings(chain.latents[latents], info["kind"], *(
        [f"condition.paths=[{chain.latents['vq']}]"] if name == "conditional" else [])), out.parent / f"again_{name}")
    assert torch.equal(_logits(model, info), _logits(trained.model, info))  # the same seed trains the same prior


def test_resume_is_bit_identical(chain, tmp_path):
    settings = prior_settings(chain.latents["vq"], "maskgit", "train.steps=5", "train.checkpoint_every=2",
                              "train.val_every=2", "optim.warmup_steps=1")
    straight = train_prior.run(settings, tmp_path / "a")

    def interrupt(step, total, text):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_prior.run(settings, tmp_path / "b", progress=interrupt)
    with pytest.raises(ArtefactError, match="--resume"):
        train_prior.run(settings, tmp_path / "b")
    resumed = train_prior.run(settings, tmp_path / "b", resume=True)
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    def records(path):
        rows = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k != "elapsed_s"} for r in rows]

    assert records(tmp_path / "a") == records(tmp_path / "b")


def test_class_labels_from_an_item_attribute(chain):
    model, info = load_prior(chain.prior("labelled"))
    assert info["classes"] == ["ap", "lateral"] and info["num_classes"] == 2 and info["label_attr"] == "view"
    assert info["config"]["num_classes"] == 2


def test_kl_latents_given_to_a_token_prior(chain, tmp_path):
    with pytest.raises(UsageError, match=r"^\S+ holds continuous klvae latents, but a transformer prior needs VQ codes"):
        train_prior.run(prior_settings(chain.latents["kl"], "transformer"), tmp_path / "p")
    with pytest.raises(UsageError, match="needs VQ codes as condition"):
        train_prior.run(prior_settings(chain.latents["vq3d"], "transformer", f"condition.paths=[{chain.latents['kl']}]"),
                        tmp_path / "p")
    assert not (tmp_path / "p.partial").exists()


def test_a_condition_with_no_matching_subjects(chain, tmp_path):
    other = make_prep(tmp_path / "other", 2, n_train=2, n_val=1)  # subjects s0, s1, s2: none of the CTs'
    lat = encode_latents.run(encode_settings(chain.ae["vq"], other, "main"), tmp_path / "lat_other").out
    with pytest.raises(UsageError, match=r"^no subject of .* \(split 'train'\) has items in every condition store"):
        train_prior.run(prior_settings(chain.latents["vq3d"], "transformer", f"condition.paths=[{lat}]"), tmp_path / "p")


@pytest.mark.parametrize("latents, kind, overrides, message", [
    ("vq3d", "pixelcnn", [], "holds 3D code grids .* models 2D grids only"),
    ("vq2", "transformer", [], "holds vqvae2 codes .* prior.kind pixelcnn"),
    ("vq", "transformer", ["condition.label=nope"], "has no attribute 'nope'"),
    ("vq", "transformer", ["data.store=top"], "has no store named 'top'"),
    ("vq3d", "transformer", ["prior.ordering=hilbert"], "^invalid prior settings: hilbert ordering supports 2D grids only"),
])
def test_bad_inputs_are_one_sentence_usage_errors(chain, tmp_path, latents, kind, overrides, message):
    with pytest.raises(UsageError, match=message):
        train_prior.run(prior_settings(chain.latents[latents], kind, *overrides), tmp_path / "p")


def test_settings_refuse_fields_of_another_kind():
    with pytest.raises(SettingsError, match="prior.hidden_channels does not apply to prior.kind = 'transformer'"):
        prior_settings("lat", "transformer", "prior.hidden_channels=16")
    with pytest.raises(SettingsError, match="condition.paths needs prior.kind transformer or maskgit"):
        prior_settings("lat", "pixelcnn", "condition.paths=[a]")
    with pytest.raises(SettingsError, match="data.patch_size"):
        prior_settings("lat", "maskgit", "data.patch_size=4,4")
