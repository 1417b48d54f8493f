"""Priors joined to their condition per item (``condition.join``): CT slice sequences conditioned on the
low-dose copy of the same sequence. auto picks item or subject, item-joined diffusion and transformer
priors train and sample per condition item, evaluate pairs per item, and a bad explicit join fails cleanly."""

import csv
import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from medgen_cli.artefacts import require
from medgen_cli.cli import app
from medgen_cli.io.store import Store, store_path
from medgen_cli.settings import EvaluateSettings, PreprocessSettings, TrainAESettings, load_settings
from medgen_cli.steps import encode_latents, evaluate, preprocess, sample, train_ae, train_prior
from medgen_cli.loaders.prior import load_prior
from medgen_cli.priors import prior_kind
from medgen_cli.priors import registry as prior_registry

from tests.conftest import sphere_phantom, write_nifti
from tests.steps.conftest import encode_settings, prior_settings, sample_settings
from tests.steps.test_diffusion_prior import _records, diffusion_settings
from tests.train.helpers import TINY

AFFINE = np.array([[-1.5, 0, 0, 20.0], [0, 1.5, 0, -10.0], [0, 0, 2.0, 5.0], [0, 0, 0, 1]])
SUBJECTS = 3  # 16x16x12 CTs -> 3 sequences of 4 slices each


@dataclass
class Sequences:
    """Sequence items (16x16x4) with a lowdose copy, their KL and VQ latents, and volume latents (other ids)."""

    prep: Path
    latents: dict[str, Path] = field(default_factory=dict)
    index: dict[str, int] = field(default_factory=dict)  # condition item id -> the value its latents hold

    def items(self, split: str | None = None) -> list[str]:
        return Store.open(store_path(self.prep)).ids(split)


def _autoencoder(root: Path, prep: Path, kind: str) -> Path:
    out = root / f"ae_{kind}"
    train_ae.run(load_settings(TrainAESettings, None, [
        f"data.path={prep}", f"model.kind={kind}", "model.channels=8,8", "model.num_res_blocks=1", "data.batch_size=2",
        "train.steps=2", "train.val_every=0", "train.checkpoint_every=2", "train.save_images=0", "runtime.device=cpu",
        *TINY[kind]]), out)
    return out


def _mark_with_item_index(latents: Path) -> dict[str, int]:
    """Overwrite every condition latent with its item's index (codes stay valid indices), so a sample's
    condition tells which item it came from."""
    store = Store.open(store_path(latents), mode="r+")
    index = {item_id: k for k, item_id in enumerate(store.ids())}
    rewritten = []
    for item_id, k in index.items():
        arr = store.array(item_id)
        rewritten.append((item_id, np.full(arr.shape, k), store.meta(item_id)))
    store.write_many(rewritten, dtype=str(arr.dtype))  # stacked rows are written once: write them again (latest wins)
    return index


@pytest.fixture(scope="module")
def seqs(tmp_path_factory) -> Sequences:
    root = tmp_path_factory.mktemp("item_join")
    raw = root / "raw"
    raw.mkdir()
    for i in range(SUBJECTS):
        write_nifti(raw / f"ct{i:02d}.nii.gz", sphere_phantom((16, 16, 12), radius=0.2 + 0.05 * i, seed=i), AFFINE)
    common = [f"input.paths=[{raw}]", "input.modality=CT", "intensity.window=0,2000", "split.fractions=0.34,0.33,0.33",
              "runtime.workers=0"]
    prep = root / "prep"
    preprocess.run(load_settings(PreprocessSettings, None, [*common, "mode.kind=sequence", "mode.length=4",
                                                            "mode.stride=4", "derive.outputs=[lowdose]"]), prep)
    volumes = root / "prep_vol"
    preprocess.run(load_settings(PreprocessSettings, None, common), volumes)
    result = Sequences(prep)
    for kind in ("klvae", "vqvae"):
        ae = _autoencoder(root, prep, kind)
        for store in ("main", "lowdose"):
            out = root / f"lat_{kind}_{store}"
            encode_latents.run(encode_settings(ae, prep, store), out)
            result.latents[f"{kind}_{store}"] = out
        if kind == "klvae":
            result.latents["klvae_volumes"] = encode_latents.run(encode_settings(ae, volumes, "main"), root / "lat_vol").out
    for kind in ("klvae", "vqvae"):
        result.index = _mark_with_item_index(result.latents[f"{kind}_lowdose"])
    return result


def _record_conditions(monkeypatch, kind: str) -> list[tuple[torch.Tensor, int]]:
    """Wrap the sampler of ``kind`` so that each batch's first condition tensor is recorded."""
    seen: list[tuple[torch.Tensor, int]] = []
    original = prior_kind(kind).sample

    def recording(model, info, n, cond, labels, s, generator):
        seen.append((cond[0].clone(), n))
        return original(model, info, n, cond, labels, s, generator)

    monkeypatch.setitem(prior_registry._REGISTRY, kind, replace(prior_kind(kind), sample=recording))
    return seen


def _check_samples_follow_their_items(seqs: Sequences, result, items: list[str], n: int, seen) -> None:
    """Ids, attributes and geometry of the samples name their condition item; each batch got that item's latents."""
    assert result.ids == [f"{i}_s{k:02d}" for i in items for k in range(n)]
    assert result.summary["join"] == "item" and result.summary["condition_items"] == items
    main = Store.open(store_path(seqs.prep))
    samples = Store.open(store_path(result.out, "samples"))
    for sample_id in result.ids:
        item = sample_id.rsplit("_s", 1)[0]
        attrs, meta = samples.item_attrs(sample_id), samples.meta(sample_id)
        assert attrs["condition_item"] == item and attrs["reference_id"] == item
        assert attrs["condition_subject"] == main.item_attrs(item)["subject"] == meta.subject
        np.testing.assert_allclose(meta.affine, main.meta(item).affine)  # the item's own place in its CT
    per_item = [x for x, count in seen for _ in range(count)]
    assert len(per_item) == len(result.ids)
    for sample_id, cond in zip(result.ids, per_item):
        assert torch.all(cond == seqs.index[sample_id.rsplit("_s", 1)[0]])


# ------------------------------------------------------------------------------------------- tests
def test_item_joined_diffusion_trains_samples_per_item_and_evaluates_pairs(seqs, tmp_path, monkeypatch):
    cond = f"condition.paths=[{seqs.latents['klvae_lowdose']}]"
    # the sampling tier scores thin sequences (16x16x4) slice by slice across their 4 frames
    prior = train_prior.run(diffusion_settings(seqs.latents["klvae_main"], cond, "diffusion.sample_every=3",
                                               "diffusion.sample_steps=2"), tmp_path / "prior")
    val = [r for r in _records(prior.out) if r.get("phase") == "val"][-1]
    assert -1 <= val["sample_ssim"] <= 1 and -1 <= val["ae_ssim"] <= 1
    _, info = load_prior(prior.out)
    assert info["join"] == "item" and prior.summary["join"] == "item"
    assert info["conditions"][0]["items_per_subject"] == 1 and info["config"]["cond_channels"] == 4

    split = next(s for s in ("test", "val", "train") if seqs.items(s))
    items = seqs.items(split)
    seen = _record_conditions(monkeypatch, "diffusion")
    every = sample.run(sample_settings(prior.out, "num_samples=2", "condition.all_subjects=true",
                                       f"condition.split={split}"), tmp_path / "all")
    _check_samples_follow_their_items(seqs, every, items, 2, seen)

    subject = Store.open(store_path(seqs.prep)).item_attrs(items[0])["subject"]
    seen.clear()
    one = sample.run(sample_settings(prior.out, "num_samples=1", f"condition.subject={subject}"), tmp_path / "one")
    own = Store.open(store_path(seqs.prep)).subjects()[subject]
    assert len(own) == 3
    _check_samples_follow_their_items(seqs, one, own, 1, seen)

    result = evaluate.run(load_settings(EvaluateSettings, None, [
        f"samples={every.out}", f"target={seqs.prep}", "baseline_store=lowdose", "runtime.device=cpu"]), tmp_path / "eval")
    with (tmp_path / "eval" / "items.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["item"], r["target"]) for r in rows] == [(s, s.rsplit("_s", 1)[0]) for s in every.ids]
    with (tmp_path / "eval" / "baseline.csv").open() as f:
        baseline = list(csv.DictReader(f))
    assert [r["target"] for r in baseline] == items  # each target once: its low-dose copy against it
    main, low = Store.open(store_path(seqs.prep)), Store.open(store_path(seqs.prep, "lowdose"))
    mae = np.abs(low.read(items[0]).astype(np.float64) - main.read(items[0])).mean()
    assert float(baseline[0]["mae"]) == pytest.approx(mae, rel=1e-6)
    cond = result.metrics["conditional"]
    assert cond["pairs"] == len(every.ids) and cond["targets"] == len(items)
    assert result.metrics["baseline"]["targets"] == len(items) and "ssim" not in result.metrics["baseline"]["metrics"]


def test_item_joined_transformer_gets_each_items_codes_as_prefix(seqs, tmp_path, monkeypatch):
    settings = prior_settings(seqs.latents["vqvae_main"], "transformer", f"condition.paths=[{seqs.latents['vqvae_lowdose']}]",
                              "condition.join=item")
    prior = train_prior.run(settings, tmp_path / "prior")
    _, info = load_prior(prior.out)
    assert info["join"] == "item" and info["conditions"][0]["items_per_subject"] == 1
    seen = _record_conditions(monkeypatch, "transformer")
    items = seqs.items()
    result = sample.run(sample_settings(prior.out, "num_samples=1", "condition.all_subjects=true"), tmp_path / "s")
    _check_samples_follow_their_items(seqs, result, items, 1, seen)


def test_auto_join_falls_back_to_subject_when_ids_differ(seqs, tmp_path):
    settings = diffusion_settings(seqs.latents["klvae_main"], f"condition.paths=[{seqs.latents['klvae_volumes']}]")
    prior = train_prior.run(settings, tmp_path / "prior")
    _, info = load_prior(prior.out)
    assert info["join"] == "subject"
    result = sample.run(sample_settings(prior.out, "num_samples=1", "condition.all_subjects=true"), tmp_path / "s")
    assert result.ids == [f"ct{i:02d}_s00" for i in range(SUBJECTS)] and result.summary["condition_items"] == []
    attrs = Store.open(store_path(result.out, "samples")).item_attrs("ct01_s00")
    assert attrs["condition_subject"] == "ct01" and "condition_item" not in attrs

    # a prior written before condition.join existed (no "join" in model.json) samples by subject
    model_json = prior.out / "model.json"
    old = json.loads(model_json.read_text())
    del old["join"]
    model_json.write_text(json.dumps(old))
    again = sample.run(sample_settings(prior.out, "num_samples=1", "condition.subject=ct02"), tmp_path / "old")
    assert again.ids == ["ct02_s00"] and again.summary["join"] == "subject"


def test_explicit_item_join_with_other_ids_is_one_sentence_and_exit_2(seqs, tmp_path):
    res = CliRunner().invoke(app, [
        "train-prior", "--latents", str(seqs.latents["klvae_main"]), "--condition", str(seqs.latents["klvae_volumes"]),
        "--out", str(tmp_path / "prior"), "--kind", "diffusion", "--set", "condition.join=item", "--steps", "1",
        "--set", "diffusion.channel_mults=1,2", "--set", "runtime.device=cpu"])
    text = " ".join(res.output.split())
    assert res.exit_code == 2, res.output
    assert "condition.join = 'item' needs every item of" in text and "'ct00_t0000'" in text
    assert "set condition.join to subject" in text and "Traceback" not in res.output
    message = text[text.index("error:"):]
    assert message.count(". ") == 0 and message.endswith(".") and not (tmp_path / "prior").exists()
