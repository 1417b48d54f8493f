"""Reconstruction losses and SSIM/PSNR on the store's data range."""

import math

import pytest
import torch

from medgen_cli.data import ItemDataset, data_range
from medgen_cli.meta import IntensityMapping
from medgen_cli.io.store import store_path
from medgen_cli.models import build_autoencoder
from medgen_cli.train.ae_task import AETaskConfig, AutoencoderTask
from medgen_cli.train.losses import ReconstructionLoss, psnr, ssim

from .helpers import make_prep


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_loss_mix_is_zero_at_identity_and_grows(spatial_dims):
    torch.manual_seed(0)
    x = torch.rand(2, 1, *(16,) * spatial_dims) * 2 - 1
    loss = ReconstructionLoss(spatial_dims, l1=1.0, l2=0.5, ms_ssim=0.5, data_range=2.0)
    total, terms = loss(x, x)
    assert set(terms) == {"l1", "l2", "ms_ssim"} and total.item() == pytest.approx(0.0, abs=1e-4)
    small, _ = loss(x + 0.05 * torch.randn_like(x), x)
    large, _ = loss(x + 0.5 * torch.randn_like(x), x)
    assert 0 < small.item() < large.item()
    y = x.clone().requires_grad_(True)
    loss(y * 0.5, x)[0].backward()
    assert torch.isfinite(y.grad).all() and y.grad.abs().sum() > 0


def test_psnr_and_ssim_use_the_given_range():
    torch.manual_seed(0)
    x = torch.rand(3, 1, 16, 16)
    y = x + 0.01 * torch.randn_like(x)
    mse = (x - y).pow(2).flatten(1).mean(1)
    assert torch.allclose(psnr(y, x, 2.0), 10 * torch.log10(4.0 / mse), atol=1e-3)
    assert torch.allclose(psnr(y, x, 2.0) - psnr(y, x, 1.0), torch.full((3,), 20 * math.log10(2)), atol=1e-4)
    assert ssim(y, x, 1.0).mean() < ssim(y, x, 2.0).mean() <= 1.0  # a wider range hides the same error


def test_validation_psnr_follows_the_store_mapping(tmp_path):
    """Same stored values, mapping onto [-1, 1] vs [-2, 2]: the range doubles, PSNR rises by 6.02 dB."""
    narrow = make_prep(tmp_path / "narrow", 2, n_train=2, n_val=2)
    wide_map = IntensityMapping(method="window", unit="HU", in_low=-1000, in_high=1000, out_low=-2, out_high=2, clip=True)
    wide = make_prep(tmp_path / "wide", 2, n_train=2, n_val=2, mapping=wide_map)
    torch.manual_seed(0)
    model = build_autoencoder("vqvae", 2, channels=(8, 8), num_res_blocks=1, embedding_dim=4, num_embeddings=8).eval()
    results = {}
    for name, prep in (("narrow", narrow), ("wide", wide)):
        store = store_path(prep)
        span = data_range(store, "train")
        val = ItemDataset(store, "val")
        task = AutoencoderTask(model, lambda e, b: [], ReconstructionLoss(2), torch.device("cpu"),
                               val_batches=lambda: torch.utils.data.DataLoader(val, batch_size=2),
                               config=AETaskConfig(data_range=span))
        results[name] = (span, task.validation(model, 0))
    assert results["narrow"][0] == 2.0 and results["wide"][0] == 4.0
    gap = results["wide"][1]["psnr"] - results["narrow"][1]["psnr"]
    assert gap == pytest.approx(20 * math.log10(2), abs=1e-3)
    assert results["narrow"][1]["mse"] == pytest.approx(results["wide"][1]["mse"])
    assert 0 < results["narrow"][1]["codebook_usage"] <= 1 and results["narrow"][1]["perplexity"] >= 1


def test_diffusion_validation_ssim_scores_thin_volumes_slice_by_slice():
    """The sampling tier's SSIM: whole items when every axis fits the window, else across the thin axis."""
    from medgen_cli.metrics.image import ssim, ssim_slicewise
    from medgen_cli.train.diffusion_task import _item_ssim

    g = torch.Generator().manual_seed(0)
    thin = torch.rand(1, 1, 16, 4, 16, generator=g)
    noisy = thin + 0.1 * torch.randn(thin.shape, generator=g)
    torch.testing.assert_close(_item_ssim(noisy, thin, 2.0), ssim_slicewise(noisy, thin, 2.0, axis=1))
    cube = torch.rand(1, 1, 12, 12, 12, generator=g)
    torch.testing.assert_close(_item_ssim(cube * 0.9, cube, 1.0), ssim(cube * 0.9, cube, 1.0))
    with pytest.raises(ValueError, match="window"):
        _item_ssim(thin[:, :, :4], thin[:, :, :4], 1.0)  # two thin axes: nothing to slide the window over
