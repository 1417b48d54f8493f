"""Model export: TorchScript and ONNX encoders/decoders reproduce PyTorch within 1e-4; the model card."""

import pytest
import torch
from torch import nn

from medgen_cli.export import models as mx
from medgen_cli.loaders.autoencoder import AutoencoderRecord
from medgen_cli.loaders.summaries import AutoencoderSummary
from medgen_cli.models import build_autoencoder

pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.load.*:DeprecationWarning")

TINY = {
    "vqvae": dict(channels=(8, 8), num_res_blocks=1, embedding_dim=8, num_embeddings=32),
    "vqvae2": dict(channels=(8, 8), num_res_blocks=1, embedding_dim=8, num_embeddings=32, top_channels=(8,)),
    "klvae": dict(channels=(8, 8), num_res_blocks=1, latent_channels=4),
}
CASES = [("vqvae", 2), ("klvae", 3), ("vqvae2", 2)]


def tiny(kind, spatial_dims):
    torch.manual_seed(0)
    return build_autoencoder(kind, spatial_dims, **TINY[kind]).eval()


def outputs(fn, *inputs):
    out = fn(*inputs)
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


@pytest.mark.parametrize("kind, spatial_dims", CASES)
def test_torchscript_equals_pytorch(tmp_path, kind, spatial_dims):
    model = tiny(kind, spatial_dims)
    plans = mx.plan_autoencoder(model, (16,) * spatial_dims)
    names = [p.name for p in plans]
    assert names == (["encoder", "decoder", "encoder_indices", "decoder_indices"] if kind != "klvae"
                     else ["encoder", "decoder"])
    for plan in plans:
        exported = mx.export_checked(plan, "torchscript", tmp_path)
        assert exported.path == tmp_path / f"{plan.name}.pt" and exported.max_abs_diff <= 1e-4
    # independently: a third input, batch 3, through the saved files
    x = mx.random_input(model, (16,) * spatial_dims, 3, seed=7)
    encoder, decoder = (torch.jit.load(str(tmp_path / f"{n}.pt")) for n in ("encoder", "decoder"))
    with torch.no_grad():
        z = model.encode_to_latents(x)
        assert torch.allclose(encoder(x), z, atol=1e-4, rtol=0)
        assert torch.allclose(decoder(z), model.decode_latents(z), atol=1e-4, rtol=0)
        if model.is_vq:
            codes = outputs(torch.jit.load(str(tmp_path / "encoder_indices.pt")), x)
            assert all(torch.equal(a, b) for a, b in zip(codes, outputs(model.encode_to_indices, x)))
            image = torch.jit.load(str(tmp_path / "decoder_indices.pt"))(*codes)
            assert torch.allclose(image, model.decode_indices(*codes), atol=1e-4, rtol=0)


@pytest.mark.parametrize("kind, spatial_dims", CASES)
def test_onnx_equals_pytorch(tmp_path, kind, spatial_dims):
    pytest.importorskip("onnx", reason="ONNX export is optional: pip install 'medgen-cli[onnx]'")
    pytest.importorskip("onnxruntime", reason="ONNX export is optional: pip install 'medgen-cli[onnx]'")
    model = tiny(kind, spatial_dims)
    for plan in mx.plan_autoencoder(model, (16,) * spatial_dims):
        exported = mx.export_checked(plan, "onnx", tmp_path)
        assert exported.max_abs_diff <= 1e-4 and exported.input_shapes[0][0] == 2  # batch 2: the batch axis is dynamic
    x = mx.random_input(model, (16,) * spatial_dims, 3, seed=7)
    (z,) = mx.run_onnx(tmp_path / "encoder.onnx", ["image"], [x])
    with torch.no_grad():
        assert torch.allclose(torch.from_numpy(z), model.encode_to_latents(x), atol=1e-4, rtol=0)


class Noisy(nn.Module):
    def forward(self, x):
        return x + torch.rand_like(x)


def test_a_module_that_does_not_reproduce_fails_the_check(tmp_path):
    x = torch.zeros(1, 1, 4, 4)
    plan = mx.ModulePlan("noisy", Noisy(), (x,), (x.repeat(2, 1, 1, 1),), ["image"], ["out"])
    with pytest.raises(mx.ExportCheckError, match=r"noisy\.pt differs from PyTorch by .* \(tolerance 0\.0001\)"):
        mx.export_checked(plan, "torchscript", tmp_path)
    with pytest.raises(ValueError, match="must be one of torchscript, onnx"):
        mx.export_checked(plan, "tflite", tmp_path)


def test_onnx_missing_names_the_extra(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    assert mx.onnx_missing() == ("ONNX export needs the optional packages onnxruntime; "
                                 "install them with pip install 'medgen-cli[onnx]'")


def test_model_card_has_every_section():
    model = tiny("vqvae", 2)
    info = AutoencoderRecord(kind="vqvae", spatial_dims=2, config=model.config(), input_shape=[16, 16],
                             latent_shape=[8, 4, 4], intensity={"method": "window", "unit": "HU", "in_low": -1000,
                                                                "in_high": 1000, "out_low": -1, "out_high": 1,
                                                                "clip": True},
                             weights="model", step=5)
    summary = AutoencoderSummary(kind="vqvae", spatial_dims=2, steps=5, selected_step=5, best_ssim=0.5, best_step=5,
                                 val={"ssim": 0.5, "psnr": 20.0}, parameters=1234)
    settings = {"data": {"path": "/d/prep", "store": "main", "train_split": "train"}, "loss": {"l1": 1.0},
                "optim": {"lr": 1e-3}, "train": {"steps": 5, "val_every": 2}, "augment": {"enabled": False}}
    lineage = {"path": "/d/ae", "kind": "autoencoder", "created": "now",
               "inputs": [{"path": "/d/prep", "kind": "preprocessed", "role": "data", "inputs": []}]}
    card = mx.model_card(info, summary, settings, {"items": 6, "modalities": ["CT"]}, lineage, "/d/ae")
    for heading in ("## Model", "## Training data", "## Training settings", "## Metrics", "## Lineage",
                    "## Intended use and limits"):
        assert heading in card
    assert "window -1000..1000 HU -> [-1, 1] (clipped)" in card and "best validation SSIM: 0.5000 at step 5" in card
    assert "- autoencoder `/d/ae` (now)\n  - data: preprocessed `/d/prep`" in card
    assert "Do not use it, or images it produces, for diagnosis" in card and "small data" in card
    assert "codebook: 32" in card and "val_every" not in card
