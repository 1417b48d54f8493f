"""Every summary the current steps write reads as its typed record (`medgen_cli.loaders.summaries`) with
every key declared: the records stay in step with what the steps write (the tiny pipeline of conftest.py)."""

from __future__ import annotations

import json

import pytest

from medgen_cli.artefacts import require
from medgen_cli.loaders.summaries import SUMMARIES, read_summary, summary_json
from medgen_cli.settings import load_settings
from medgen_cli.settings.evaluate import ExportSettings
from medgen_cli.steps import export, sample

from .conftest import sample_settings

pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.load.*:DeprecationWarning")


def check(path, kind):
    summary = require(path, kind).summary
    record = read_summary(path, kind)
    assert type(record) is SUMMARIES[kind]
    assert not record.model_extra, f"{kind} summary keys without a field: {sorted(record.model_extra)}"
    assert record.model_dump(mode="json", exclude_unset=True) == summary
    return record


def export_settings(source, fmt) -> ExportSettings:
    return load_settings(ExportSettings, None, ["runtime.device=cpu"], {"source": str(source), "format": fmt})


def test_every_summary_the_pipeline_writes_reads_as_its_record(chain, tmp_path):
    prep = check(chain.prep, "preprocessed")
    assert set(prep.stores) == {"main", "drr"}
    for name, ae in chain.ae.items():
        record = check(ae, "autoencoder")
        assert record.steps == 2 and (record.latent_scale is None) == (name != "kl")
        assert (record.latent_items is None) == (name != "kl")  # the KL scale's statistics
    for name, lat in chain.latents.items():
        record = check(lat, "latents")
        assert record.is_vq == (name != "kl") and ("top" in record.stores) == (name == "vq2")
    prior = check(chain.prior("transformer"), "prior")
    assert prior.kind == "transformer" and prior.steps == 3 and prior.spacing is False and prior.masks is None
    # model.json holds the latents' summary through its record, byte for byte as the latents manifest has it
    latents = json.loads((chain.prior("transformer") / "model.json").read_text())["latents"]
    assert json.dumps(latents) == json.dumps(require(chain.latents["vq"], "latents").summary)
    assert json.dumps(summary_json(read_summary(chain.latents["vq"], "latents"))) == json.dumps(latents)
    samples = tmp_path / "samples"
    sample.run(sample_settings(chain.prior("transformer")), samples)
    assert check(samples, "samples").samples == 3
    export.run(export_settings(samples, "nifti"), tmp_path / "nii")
    assert check(tmp_path / "nii", "export").synthetic == 3
    export.run(export_settings(chain.ae["vq"], "safetensors"), tmp_path / "st")
    assert check(tmp_path / "st", "export").is_model
