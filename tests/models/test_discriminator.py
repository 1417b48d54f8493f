"""PatchDiscriminator shapes, adversarial losses and the adaptive weight."""

import math

import pytest
import torch
import torch.nn.functional as F

from medgen_cli.models import PatchDiscriminator, build_discriminator
from medgen_cli.models.discriminator import (
    adaptive_weight,
    hinge_d_loss,
    hinge_g_loss,
    nonsaturating_d_loss,
    nonsaturating_g_loss,
)


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("norm", ["batch", "instance", "none"])
def test_patch_logits_shape(spatial_dims, norm):
    torch.manual_seed(0)
    disc = PatchDiscriminator(spatial_dims, in_channels=2, channels=4, num_layers=3, norm=norm)
    logits = disc(torch.randn(2, 2, *(16,) * spatial_dims))
    assert logits.shape == (2, 1, *(2,) * spatial_dims)  # 16 -> 8 -> 4 -> 2, then stride-1 layers
    aniso = PatchDiscriminator(3, 1, channels=4, num_layers=2, norm=norm, stride=(2, 2, 1))
    assert aniso(torch.randn(2, 1, 16, 16, 4)).shape == (2, 1, 4, 4, 4)


def test_config_round_trip():
    disc = PatchDiscriminator(3, 1, channels=4, num_layers=2, stride=(2, 2, 1))
    rebuilt = build_discriminator(**disc.config())
    assert rebuilt.config() == disc.config()
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in disc.state_dict().items()}
    with pytest.raises(ValueError, match="num_layers=0"):
        PatchDiscriminator(2, num_layers=0)
    with pytest.raises(ValueError, match="widht"):
        build_discriminator(spatial_dims=2, widht=3)


def test_losses_by_hand():
    real = torch.tensor([2.0, 0.5])
    fake = torch.tensor([-2.0, 0.0])
    # hinge: relu(1 - real) = [0, 0.5] -> 0.25; relu(1 + fake) = [0, 1] -> 0.5
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.5 * (0.25 + 0.5))
    assert hinge_g_loss(fake).item() == pytest.approx(1.0)
    sp = lambda v: math.log1p(math.exp(v))  # noqa: E731
    expected_d = 0.5 * ((sp(-2.0) + sp(-0.5)) / 2 + (sp(-2.0) + sp(0.0)) / 2)
    assert nonsaturating_d_loss(real, fake).item() == pytest.approx(expected_d, rel=1e-6)
    assert nonsaturating_g_loss(fake).item() == pytest.approx((sp(2.0) + sp(0.0)) / 2, rel=1e-6)
    # non-saturating D loss is BCE with logits
    bce = 0.5 * (
        F.binary_cross_entropy_with_logits(real, torch.ones(2)) + F.binary_cross_entropy_with_logits(fake, torch.zeros(2))
    )
    torch.testing.assert_close(nonsaturating_d_loss(real, fake), bce)


def test_adaptive_weight_with_vqgan(tiny_autoencoder):
    model = tiny_autoencoder("vqgan", 2)
    disc = PatchDiscriminator(2, in_channels=2, channels=4, num_layers=2)
    x = torch.randn(2, 2, 16, 16)
    out = model(x)
    rec_loss = out.loss_terms["reconstruction"]
    g_loss = hinge_g_loss(disc(out.reconstruction))
    last = model.last_layer_weight()
    weight = adaptive_weight(rec_loss, g_loss, last)
    gr = torch.autograd.grad(rec_loss, last, retain_graph=True)[0].norm()
    gg = torch.autograd.grad(g_loss, last, retain_graph=True)[0].norm()
    torch.testing.assert_close(weight, (gr / (gg + 1e-4)).clamp(0, 1e4))
    assert not weight.requires_grad
    assert adaptive_weight(rec_loss, g_loss, last, max_weight=1e-3).item() == pytest.approx(1e-3)
    (rec_loss + weight * g_loss).backward()  # graphs were retained for the caller
    assert last.grad is not None
