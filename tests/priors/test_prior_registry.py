"""The prior registry: the built-in kinds, the settings rules it drives, and a new kind added from this
file alone (its config, module and registry line) that trains and samples through the real steps."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from pydantic import ConfigDict
from torch import Tensor, nn

from medgen_cli.artefacts import ArtefactError
from medgen_cli.io.store import Store, store_path
from medgen_cli.loaders.prior import PriorRecord, load_prior, load_prior_record
from medgen_cli.models.priors import PriorConfig
from medgen_cli.priors import PriorKind, prior_kind, prior_names, register_prior, unregister_prior
from medgen_cli.priors import tokens
from medgen_cli.sampling import sample_tokens
from medgen_cli.settings import SampleSettings, SettingsError, TrainPriorSettings, load_settings
from medgen_cli.steps import sample, train_prior

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "artefacts_v0.1.0"


# ------------------------------------------------------------------ a toy kind: one config, one module, one line
class UnigramConfig(PriorConfig):
    model_config = ConfigDict(frozen=True, extra="forbid")

    num_embeddings: int
    grid_shape: list[int]


class UnigramPrior(nn.Module):
    """Every grid cell its own categorical distribution (no context): the smallest prior over codes."""

    def __init__(self, *args: Any, **overrides: Any) -> None:
        super().__init__()
        self.cfg = UnigramConfig.of(args, overrides)
        self.logits = nn.Parameter(torch.zeros(math.prod(self.cfg.grid_shape), self.cfg.num_embeddings))

    def config(self) -> dict[str, Any]:
        return self.cfg.config()


def _build(settings, lat, conds, num_classes, extra_channels=0):
    tokens.require_codes(lat, "unigram")
    return UnigramPrior(num_embeddings=lat.num_embeddings, grid_shape=lat.grid_shape), _loss


def _loss(prior: UnigramPrior, batch: dict[str, Tensor], generator=None) -> dict[str, Tensor]:
    codes = batch["codes"].flatten(1).long()  # (B, N)
    ce = F.cross_entropy(prior.logits.expand(codes.shape[0], -1, -1).transpose(1, 2), codes)
    return {"loss": ce, "bits_per_token": ce.detach() / math.log(2.0)}


def _sample(model, record, n, cond, labels, s, generator) -> dict[str, Tensor]:
    flat = model.logits.expand(n, -1, -1).reshape(-1, model.cfg.num_embeddings)
    drawn = sample_tokens(flat, generator=generator, **s.token_kwargs())
    return {"main": drawn.reshape(n, *record.grid_shape)}


UNIGRAM = PriorKind(name="unigram", config=UnigramConfig, build=_build, rebuild=lambda c: UnigramPrior(**c),
                    sample=_sample, strategy=tokens.token_strategy("unigram"), sampler_summary=tokens.sampler_summary,
                    condition_paths=False)


@pytest.fixture
def unigram():
    register_prior(UNIGRAM)
    yield UNIGRAM
    unregister_prior("unigram")


@pytest.fixture
def runs(tmp_path) -> Path:
    """A copy of the legacy fixture's artefacts (a VQ autoencoder, its latents and data)."""
    shutil.copytree(FIXTURE, tmp_path / "runs")
    return tmp_path / "runs"


def test_a_kind_registered_from_a_test_trains_and_samples_through_the_steps(unigram, runs, tmp_path):
    settings = load_settings(TrainPriorSettings, None, [
        f"data.path={runs / 'lat_vq'}", "prior.kind=unigram", "data.batch_size=2", "train.steps=4", "train.val_every=2",
        "train.checkpoint_every=4", "train.val_items=2", "runtime.device=cpu", "optim.lr=0.1"])
    result = train_prior.run(settings, tmp_path / "prior")
    assert result.info["kind"] == "unigram" and result.info["config"] == {"num_embeddings": 32, "grid_shape": [4, 4]}
    model, record, info = load_prior_record(result.out)
    assert isinstance(model, UnigramPrior) and record.kind == "unigram" and info == result.info
    torch.testing.assert_close(model.logits, result.model.logits)
    assert float(model.logits.detach().abs().sum()) > 0  # it trained

    runs_ = [sample.run(load_settings(SampleSettings, None, [f"prior={result.out}", "num_samples=3", "batch_size=2",
                                                             "runtime.device=cpu", "runtime.seed=5"]), tmp_path / f"s{k}")
             for k in range(2)]
    assert runs_[0].summary["prior_kind"] == "unigram" and runs_[0].summary["strategy"] == "multinomial"
    codes = [Store.open(store_path(r.out, "codes")) for r in runs_]
    for item in runs_[0].ids:  # the same seed draws the same codes, within the codebook
        a, b = (c.read(item, dtype=None) for c in codes)
        assert a.shape == (4, 4) and (a == b).all() and 0 <= a.min() and a.max() < 32


def test_settings_read_the_registry(unigram):
    assert "unigram" in prior_names()
    load_settings(TrainPriorSettings, None, ["prior.kind=unigram"])
    with pytest.raises(SettingsError, match="condition.paths needs prior.kind transformer or maskgit or diffusion"):
        load_settings(TrainPriorSettings, None, ["prior.kind=unigram", "condition.paths=[x]"])
    with pytest.raises(SettingsError, match="prior.dim does not apply to prior.kind = 'unigram'"):
        load_settings(TrainPriorSettings, None, ["prior.kind=unigram", "prior.dim=16"])


def test_an_unknown_kind_is_a_settings_error_listing_the_registered_kinds():
    with pytest.raises(SettingsError, match="registered kinds: transformer, maskgit, pixelcnn, diffusion"):
        load_settings(TrainPriorSettings, None, ["prior.kind=unigram"])
    with pytest.raises(ValueError, match="unknown prior kind 'unigram'; registered kinds: transformer"):
        prior_kind("unigram")


def test_the_built_in_kinds_and_their_flags():
    assert prior_names() == ("transformer", "maskgit", "pixelcnn", "diffusion")
    assert [k for k in prior_names() if prior_kind(k).token] == ["transformer", "maskgit", "pixelcnn"]
    assert not prior_kind("pixelcnn").condition_paths
    assert prior_kind("diffusion").draws == "latents" and prior_kind("diffusion").sections == ("diffusion",)
    with pytest.raises(ValueError, match="already registered"):
        register_prior(PriorKind(name="transformer", config=UnigramConfig, build=_build, rebuild=UnigramPrior,
                                 sample=_sample, strategy=str, sampler_summary=dict))


@pytest.mark.parametrize("name", ["prior_tf", "prior_diff"])
def test_a_record_of_an_old_model_json_dumps_it_unchanged(name):
    info = json.loads((FIXTURE / name / "model.json").read_text())
    record = PriorRecord.model_validate(info)
    assert json.dumps(record.to_json()) == json.dumps(info)
    model = prior_kind(record.kind).rebuild(record.config)
    assert json.dumps(model.config()) == json.dumps(info["config"])  # the typed config dumps the same keys and values
    assert type(model.cfg) is prior_kind(record.kind).config


def test_a_record_gives_defaults_for_what_older_priors_lack():
    info = json.loads((FIXTURE / "prior_diff" / "model.json").read_text())
    del info["diffusion"]["objective"], info["join"]
    record = PriorRecord.model_validate(info)
    assert record.objective == "diffusion" and record.join is None and "objective" not in record.to_json()["diffusion"]


def test_load_prior_returns_the_model_and_its_model_json(runs):
    model, info = load_prior(runs / "prior_tf")
    assert info == json.loads((runs / "prior_tf" / "model.json").read_text()) and not model.training


def test_a_prior_of_an_unknown_kind_is_refused_naming_it(runs):
    path = runs / "prior_tf" / "model.json"
    path.write_text(path.read_text().replace('"kind": "transformer"', '"kind": "unigram"'))
    with pytest.raises(ArtefactError, match="holds a unigram prior, which this medgen cannot load; upgrade medgen"):
        load_prior(runs / "prior_tf")
    path.write_text("{")
    with pytest.raises(ArtefactError, match="model.json is missing or damaged"):
        load_prior(runs / "prior_tf")
