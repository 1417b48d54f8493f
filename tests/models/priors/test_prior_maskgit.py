import json
import math

import pytest
import torch

from medgen_cli.models.priors import MaskGITPrior


def _model(grid_shape=(4, 4), **kwargs):
    torch.manual_seed(0)
    return MaskGITPrior(8, grid_shape, dim=32, depth=2, num_heads=4, **kwargs)


def test_random_mask_follows_the_cosine_schedule():
    model = _model()
    mask = model.random_mask(500, generator=torch.Generator().manual_seed(0))
    counts = mask.sum(1)
    assert counts.min() >= 1 and counts.max() <= 16
    # E[cos(pi/2 u)] = 2/pi of the tokens (up to the ceil)
    assert abs(counts.double().mean().item() / 16 - 2 / math.pi) < 0.06


@pytest.mark.parametrize("grid_shape", [(4, 4), (2, 2, 3)])
def test_loss_only_counts_masked_positions(grid_shape):
    model = _model(grid_shape, num_classes=2)
    codes = torch.randint(0, 8, (3, *grid_shape))
    labels = torch.tensor([0, 1, 1])
    out = model.loss(codes, labels=labels, generator=torch.Generator().manual_seed(1))
    mask = model.random_mask(3, generator=torch.Generator().manual_seed(1))
    logits = model.predict(model.grid_to_tokens(codes).masked_fill(mask, model.mask_token), labels=labels)
    expected = torch.nn.functional.cross_entropy(logits[mask], model.grid_to_tokens(codes)[mask])
    torch.testing.assert_close(out["loss"], expected)
    assert out["mask_ratio"].item() == pytest.approx(mask.float().mean().item())
    out["loss"].backward()


def test_bidirectional_and_conditioned():
    model = _model(cond_sources=[{"num_embeddings": 3, "grid_shape": [2, 2]}]).eval()
    cond = [torch.zeros(1, 2, 2, dtype=torch.long)]
    tokens = torch.randint(0, 8, (1, 16))
    base = model.predict(tokens, cond)
    later = tokens.clone()
    later[0, -1] = (later[0, -1] + 1) % 8
    assert (model.predict(later, cond)[0, 0] - base[0, 0]).abs().max() > 1e-5  # position 0 sees the last one
    assert not torch.allclose(model.predict(tokens, [torch.ones(1, 2, 2, dtype=torch.long)]), base)
    assert model(tokens.reshape(1, 4, 4), cond).shape == (1, 16, 8)


def test_config_round_trip():
    model = _model((2, 3), cond_sources=[{"num_embeddings": 3, "grid_shape": [2]}], num_classes=4)
    again = MaskGITPrior(**json.loads(json.dumps(model.config())))
    again.load_state_dict(model.state_dict())
    assert again.config() == model.config()


def test_bad_arguments_raise():
    with pytest.raises(ValueError):
        MaskGITPrior(0, (2, 2))
    with pytest.raises(ValueError):
        _model().predict(torch.zeros(1, 15, dtype=torch.long))
