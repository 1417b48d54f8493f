"""The typed model.json record and the autoencoder loader: old artefacts load as (model, info) and as
(model, AutoencoderRecord), the record dumps back to the JSON it came from, damage is one sentence."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from medgen_cli.artefacts import ArtefactError
from medgen_cli.loaders.autoencoder import AutoencoderRecord, load_autoencoder, load_autoencoder_record

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "artefacts_v0.1.0"


@pytest.mark.parametrize("name", ["ae_vq", "ae_kl"])
def test_old_artefacts_load_typed_and_as_dicts(name):
    info_json = json.loads((FIXTURE / name / "model.json").read_text())
    model, info = load_autoencoder(FIXTURE / name)
    assert info == info_json
    typed_model, record = load_autoencoder_record(FIXTURE / name)
    assert record.model_dump(mode="json") == info_json and list(record.model_dump(mode="json")) == list(info_json)
    assert record.typed_config() == model.typed_config and record.kind == model.kind
    assert record.latent_shape == list(model.latent_shape(record.input_shape))
    a, b = model.state_dict(), typed_model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_record_of_an_older_release_gets_defaults():
    config = json.loads((FIXTURE / "ae_vq" / "model.json").read_text())["config"]
    record = AutoencoderRecord.model_validate({"config": config, "latent_scale": None, "future_key": 1})
    assert (record.kind, record.weights, record.step, record.training_precision) == ("vqvae", "model", None, None)
    assert record.model_dump()["future_key"] == 1  # keys this version does not know are kept


def test_a_damaged_model_json_is_one_sentence(tmp_path):
    ae = tmp_path / "ae"
    shutil.copytree(FIXTURE / "ae_vq", ae)
    (ae / "model.json").write_text(json.dumps({"kind": "vqvae"}))
    with pytest.raises(ArtefactError, match="model.json is missing or damaged; re-run medgen train-ae"):
        load_autoencoder(ae)
    info = json.loads((FIXTURE / "ae_vq" / "model.json").read_text())
    info["config"]["channels"] = [8, 16]
    (ae / "model.json").write_text(json.dumps(info))
    with pytest.raises(ArtefactError, match="holds weights that do not fit its model.json"):
        load_autoencoder(ae)
