"""Typed manifest summaries (`medgen_cli.loaders.summaries`): the artefacts of the previous release read as
records with exactly the keys they hold, older artefacts get the defaults of the keys they lack, and a
summary medgen cannot read is one sentence naming the artefact, the key and the step to re-run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medgen_cli.artefacts import ArtefactError
from medgen_cli.loaders.summaries import (SUMMARIES, AutoencoderSummary, ExportSummary, FreeSummary, LatentsSummary,
                                          PreprocessedSummary, PriorSummary, SamplesSummary, read_summary, summary_json,
                                          summary_record)

LEGACY = Path(__file__).parents[1] / "fixtures" / "artefacts_v0.1.0"


def legacy_manifests() -> list[Path]:
    return sorted(LEGACY.glob("*/manifest.json"))


def test_the_fixture_has_every_kind_with_a_record_except_export():
    kinds = {json.loads(p.read_text())["kind"] for p in legacy_manifests()}
    assert set(SUMMARIES) - kinds == {"export"}


@pytest.mark.parametrize("manifest", legacy_manifests(), ids=lambda p: p.parent.name)
def test_legacy_summaries_read_as_records_with_exactly_their_keys(manifest):
    doc = json.loads(manifest.read_text())
    record = read_summary(manifest.parent, doc["kind"])
    assert not record.model_extra or type(record) is FreeSummary  # every key written is declared
    # the record holds the summary unchanged: same keys, same values (nothing renamed, nothing added)
    assert record.model_dump(mode="json", exclude_unset=True) == doc["summary"]


def test_defaults_for_keys_older_artefacts_lack():
    samples = read_summary(LEGACY / "sample_tf", "samples")
    assert isinstance(samples, SamplesSummary)
    assert samples.masks is None and samples.spacing is None  # written since; absent in 0.1.0
    prep = read_summary(LEGACY / "prep", "preprocessed")
    assert isinstance(prep, PreprocessedSummary) and prep.masks is None
    assert prep.stores["main"].shapes == {"16x16x16": 3} and prep.splits == {"ct0": "val", "ct1": "test", "ct2": "train"}
    lat = read_summary(LEGACY / "lat_vq", "latents")
    assert isinstance(lat, LatentsSummary) and lat.is_vq and lat.num_embeddings == 32
    assert lat.stores["main"].level == "codes" and lat.stores["main"].factor == [4, 4]


def test_records_are_frozen():
    lat = read_summary(LEGACY / "lat_kl", "latents")
    with pytest.raises(ValueError):
        lat.is_vq = True


def test_a_wrong_kind_or_an_unreadable_summary_is_one_sentence(tmp_path):
    with pytest.raises(ArtefactError, match="is a latents artefact, but a samples artefact is needed"):
        read_summary(LEGACY / "lat_vq", "samples")
    broken = json.loads((LEGACY / "lat_vq" / "manifest.json").read_text())
    del broken["summary"]["is_vq"]
    with pytest.raises(ArtefactError) as err:
        summary_record("latents", broken["summary"], tmp_path / "lat")
    message = str(err.value)
    assert "is_vq" in message and str(tmp_path / "lat") in message and "medgen encode-latents" in message
    assert "\n" not in message


def test_keys_a_newer_medgen_adds_are_kept_not_refused():
    summary = json.loads((LEGACY / "sample_tf" / "manifest.json").read_text())["summary"] | {"future": 1}
    record = summary_record("samples", summary)
    assert record.model_extra == {"future": 1}


def test_export_summaries_of_both_shapes():
    images = summary_record("export", {"format": "nifti", "source": "/s", "source_kind": "samples", "store": "samples",
                                       "items": 2, "synthetic": 2, "decoded": False})
    model = summary_record("export", {"format": "onnx", "source": "/ae", "source_kind": "autoencoder", "model": "vqvae",
                                      "tolerance": 1e-4, "modules": [{"name": "encoder", "file": "encoder.onnx",
                                                                      "max_abs_diff": 0.0, "check_input_shapes": [[1, 1, 8, 8]]}]})
    assert isinstance(images, ExportSummary) and not images.is_model and images.items == 2
    assert model.is_model and model.modules[0].file == "encoder.onnx"


def test_kinds_without_a_record_read_as_free_summaries():
    record = summary_record("evaluation", {"reconstruction": {"ssim": 0.5}})
    assert isinstance(record, FreeSummary) and record.model_extra == {"reconstruction": {"ssim": 0.5}}


def test_training_summaries_of_the_previous_release():
    kl = read_summary(LEGACY / "ae_kl", "autoencoder")
    assert isinstance(kl, AutoencoderSummary) and kl.kind == "klvae" and kl.selected_step == 2
    assert kl.latent_items == 2 and kl.val["ssim"] == kl.best_ssim
    vq = read_summary(LEGACY / "ae_vq", "autoencoder")
    assert vq.latent_scale is None and vq.latent_mean is None and vq.val["codebook_usage"] == 0.5
    prior = read_summary(LEGACY / "prior_tf", "prior")
    assert isinstance(prior, PriorSummary) and prior.grid_shape == [4, 4] and prior.num_embeddings == 32
    assert prior.spacing is False and prior.masks is None  # written since; absent in 0.1.0
    assert "spacing" not in summary_json(prior) and "masks" not in summary_json(prior)


@pytest.mark.parametrize("prior, latents", [("prior_tf", "lat_vq"), ("prior_diff", "lat_kl")])
def test_a_latents_record_dumps_to_the_json_a_prior_holds(prior, latents):
    """train-prior writes the latents' summary into model.json through its record: the same text, key for key."""
    held = json.loads((LEGACY / prior / "model.json").read_text())["latents"]
    assert json.dumps(summary_json(read_summary(LEGACY / latents, "latents")), indent=2) == json.dumps(held, indent=2)


def test_a_summary_lacking_a_key_every_release_wrote_is_one_sentence():
    summary = json.loads((LEGACY / "prior_tf" / "manifest.json").read_text())["summary"]
    del summary["steps"]
    with pytest.raises(ArtefactError, match=r"steps: Field required.*medgen train-prior"):
        summary_record("prior", summary, "/runs/prior")

