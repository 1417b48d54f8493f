import json

import pytest
import torch

from medgen_cli.models.priors import UNetPrior, random_null_mask, timestep_embedding
from medgen_cli.sampling import DDIMScheduler, sample_diffusion


def _model(spatial_dims, **kwargs):
    torch.manual_seed(0)
    model = UNetPrior(spatial_dims, 2, base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
                      attention_levels=(1,), num_heads=2, num_groups=4, **kwargs).eval()
    torch.nn.init.normal_(model.out[-1].weight, std=0.1)  # the output conv starts at zero
    return model


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_output_shapes(spatial_dims):
    model = _model(spatial_dims, out_channels=3, cond_channels=1, num_classes=3)
    x = torch.randn(2, 2, *(8,) * spatial_dims)
    out = model(x, torch.tensor([0, 999]), cond=torch.randn(2, 1, *(8,) * spatial_dims), labels=torch.tensor([0, 2]))
    assert out.shape == (2, 3, *(8,) * spatial_dims)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_null_condition(spatial_dims):
    model = _model(spatial_dims, cond_channels=1, num_classes=3)
    shape = (2, 2) + (4,) * spatial_dims
    x, t = torch.randn(shape), torch.tensor([5, 5])
    cond, labels = torch.randn(2, 1, *shape[2:]), torch.tensor([1, 2])
    full = model(x, t, cond=cond, labels=labels)
    dropped = model(x, t, cond=cond, labels=labels, null_mask=torch.tensor([False, True]))
    none = model(x, t)  # no condition at all = the null condition for everyone
    torch.testing.assert_close(dropped[:1], full[:1])
    torch.testing.assert_close(dropped[1:], none[1:])
    assert not torch.allclose(dropped[1:], full[1:])
    assert not torch.allclose(model(x, t, cond=cond * 0, labels=labels)[1:], dropped[1:])  # zero image is not null


def test_guided_sampling_runs_end_to_end():
    model = _model(2, cond_channels=1)
    cond = {"cond": torch.randn(2, 1, 4, 4)}
    out = sample_diffusion(model, DDIMScheduler(num_train_timesteps=20), (2, 2, 4, 4), cond=cond,
                           guidance_scale=3.0, num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 2, 4, 4) and torch.isfinite(out).all()


def test_timestep_embedding_and_null_mask():
    emb = timestep_embedding(torch.tensor([0, 10]), 9)
    assert emb.shape == (2, 9)
    torch.testing.assert_close(emb[0, :4], torch.ones(4))  # cos(0) = 1
    mask = random_null_mask(10000, 0.1, generator=torch.Generator().manual_seed(0))
    assert abs(mask.float().mean().item() - 0.1) < 0.02
    with pytest.raises(ValueError):
        random_null_mask(2, 1.5)


def test_config_round_trip():
    model = _model(3, cond_channels=2, num_classes=4, dropout=0.1)
    again = UNetPrior(**json.loads(json.dumps(model.config())))
    again.load_state_dict(model.state_dict())
    assert again.config() == model.config()


def test_bad_arguments_raise():
    with pytest.raises(ValueError):
        UNetPrior(2, 1, channel_mults=(1, 2), attention_levels=(2,))
    with pytest.raises(ValueError):
        UNetPrior(2, 1, channel_mults=())
    model = _model(2)
    with pytest.raises(ValueError):
        model(torch.randn(1, 2, 5, 5), torch.tensor([1]))  # not divisible by 2
    with pytest.raises(ValueError):
        model(torch.randn(1, 2, 4, 4), torch.tensor([1]), cond=torch.randn(1, 1, 4, 4))  # no cond_channels
