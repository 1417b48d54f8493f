"""``medgen train-ae`` end to end on tiny stores: artefact, reload, exact resume, latent scale."""

import json

import pytest
import torch
from safetensors.torch import load_file

from medgen_cli.artefacts import ArtefactError, require
from medgen_cli.data import ItemDataset
from medgen_cli.io.store import store_path
from medgen_cli.steps import train_ae
from medgen_cli.loaders.autoencoder import load_autoencoder
from medgen_cli.train.checkpoint import CheckpointError

from tests.train.helpers import make_prep, tiny_settings


@pytest.mark.parametrize("kind, spatial_dims", [("vqvae", 2), ("klvae", 3), ("vqvae2", 2)])
def test_writes_artefact_that_rebuilds_alone(tmp_path, kind, spatial_dims):
    prep = make_prep(tmp_path / "prep", spatial_dims)
    result = train_ae.run(tiny_settings(prep, kind, "train.steps=3"), tmp_path / "ae")
    out = tmp_path / "ae"
    assert require(out, "autoencoder").summary["steps"] == 3
    for name in ("model.safetensors", "model.json", "metrics.jsonl", "plots/losses.png", "settings.yaml"):
        assert (out / name).is_file(), name
    assert list((out / "plots").glob("recon_*.png")) and list((out / "checkpoints").glob("step-*.pt"))
    info = json.loads((out / "model.json").read_text())
    assert info["kind"] == kind and info["spatial_dims"] == spatial_dims and info["data_range"] == 2.0
    assert info["intensity"]["unit"] == "HU" and info["input_shape"] == [16] * spatial_dims
    assert (info["latent_scale"] is not None) == (kind == "klvae")
    config = info["config"]
    assert (config["layout"], config["mid_blocks"], config["res_kernels"]) == ("strided", 0, [3, 1])  # recorded, not implied

    model, loaded_info = load_autoencoder(out)
    assert loaded_info == info
    x = torch.rand(2, 1, *(16,) * spatial_dims) * 2 - 1
    with torch.no_grad():
        assert torch.equal(model.decode_latents(model.encode_to_latents(x)),
                           result.model.decode_latents(result.model.encode_to_latents(x)))


def test_load_refuses_what_is_not_an_autoencoder(tmp_path):
    prep = make_prep(tmp_path / "prep", 2, n_train=2, n_val=0)
    with pytest.raises(ArtefactError, match="preprocessed artefact, but a autoencoder"):
        load_autoencoder(prep)


def _interrupt_at(step):
    def progress(done, total, text):
        if done == step:
            raise KeyboardInterrupt

    return progress


RESUME_CASES = {
    # adversarial from step 1, weight EMA, dropout and flips: every source of state and randomness
    "2d-vqgan": (2, "vqgan", ["train.ema=true", "model.dropout=0.1", "augment.enabled=true", "augment.flip=0.5",
                              "loss.ms_ssim=0.5", "optim.warmup_steps=2", "train.select=last"]),
    # random patches across epochs, posterior sampling, a training-log average spanning the checkpoint
    "3d-klvae-patches": (3, "klvae", ["data.patch_size=8,8,8", "train.select=best", "train.log_every=3"]),
}


@pytest.mark.parametrize("case", list(RESUME_CASES))
def test_resume_is_bit_identical(tmp_path, case):
    spatial_dims, kind, extra = RESUME_CASES[case]
    prep = make_prep(tmp_path / "prep", spatial_dims, n_train=4, n_val=2)
    settings = tiny_settings(prep, kind, "train.steps=7", *extra)
    straight = train_ae.run(settings, tmp_path / "a")

    with pytest.raises(KeyboardInterrupt):  # a kill after step 5: the last checkpoint is step 4
        train_ae.run(settings, tmp_path / "b", progress=_interrupt_at(5))
    assert (tmp_path / "b.partial" / "checkpoints" / "step-00000004.pt").is_file()
    with pytest.raises(ArtefactError, match="--resume"):
        train_ae.run(settings, tmp_path / "b")
    resumed = train_ae.run(settings, tmp_path / "b", resume=True)

    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    wa, wb = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)

    def records(path):
        rows = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k != "elapsed_s"} for r in rows]

    assert records(tmp_path / "a") == records(tmp_path / "b")
    info_a, info_b = (json.loads((tmp_path / d / "model.json").read_text()) for d in "ab")
    assert info_a["latent_scale"] == info_b["latent_scale"]


@pytest.mark.parametrize("damage", ["garbage", "pickle"])
def test_resume_refuses_a_damaged_checkpoint(tmp_path, damage):
    prep = make_prep(tmp_path / "prep", 2, n_train=2, n_val=1)
    settings = tiny_settings(prep, "vqvae", "train.steps=4")
    with pytest.raises(KeyboardInterrupt):
        train_ae.run(settings, tmp_path / "ae", progress=_interrupt_at(3))
    latest = tmp_path / "ae.partial" / "checkpoints" / "step-00000002.pt"
    if damage == "garbage":
        latest.write_bytes(latest.read_bytes()[:1000])
    else:
        import pickle

        latest.write_bytes(pickle.dumps({"format": "medgen-checkpoint"}))
    with pytest.raises(CheckpointError, match=r"step-00000002\.pt is not a torch zip archive"):
        train_ae.run(settings, tmp_path / "ae", resume=True)


def test_latent_scale_is_computed_from_the_data(tmp_path):
    scales = []
    for contrast in (1.0, 0.25):
        prep = make_prep(tmp_path / f"prep{contrast}", 2, n_train=4, n_val=1, contrast=contrast, seed=1)
        out = tmp_path / f"ae{contrast}"
        train_ae.run(tiny_settings(prep, "klvae", "train.steps=2", "model.latent_scale_items=3"), out)
        model, info = load_autoencoder(out)
        items = ItemDataset(store_path(prep), "train")
        picks = torch.stack([items[i]["image"] for i in (0, 2, 3)])  # 3 items spread over 4: 0, 2, 3
        with torch.no_grad():
            z = model.encode_mean(picks).double()
        assert info["latent_scale"] == pytest.approx(1.0 / z.std(unbiased=False).item(), rel=1e-5)
        scales.append(info["latent_scale"])
    assert scales[0] != scales[1]  # a constant would pass the check above only by accident, never twice


@pytest.mark.parametrize("precision", ["auto", "fp32"])
def test_precision_is_recorded_and_weights_are_fp32(tmp_path, precision, monkeypatch):
    monkeypatch.setenv("MEDGEN_CPU_BF16", "1")  # what auto picks on a CPU with AMX/AVX512-BF16
    prep = make_prep(tmp_path / "prep", 2, n_train=2, n_val=1)
    settings = tiny_settings(prep, "vqvae", "train.steps=2", f"train.precision={precision}", "train.channels_last=true",
                             "model.embedding_dim=64", "model.num_embeddings=512",  # back to the defaults: fsq sets both
                             "model.quantizer=fsq", "model.fsq_levels=5,5,3")
    train_ae.run(settings, tmp_path / "ae")
    summary = require(tmp_path / "ae", "autoencoder").summary
    info = json.loads((tmp_path / "ae" / "model.json").read_text())
    expected = "bf16" if precision == "auto" else "fp32"
    assert summary["precision"] == info["training_precision"] == expected and summary["channels_last"]
    assert info["config"]["quantizer"] == "fsq" and info["config"]["num_embeddings"] == 75
    weights = load_file(tmp_path / "ae" / "model.safetensors")
    assert all(w.dtype == torch.float32 and w.is_contiguous() for w in weights.values())
    model, _ = load_autoencoder(tmp_path / "ae")
    assert all(p.dtype == torch.float32 for p in model.parameters())
