import json
import math

import pytest
import torch

from medgen_cli.models.priors import TransformerPrior
from medgen_cli.models.priors.layers import GridPositionalEmbedding, prefix_lm_mask

SOURCES = [{"num_embeddings": 5, "grid_shape": [2, 2]}, {"num_embeddings": 9, "grid_shape": [2, 1, 2]}]


def _model(grid_shape=(3, 3), **kwargs):
    torch.manual_seed(0)
    return TransformerPrior(8, grid_shape, dim=32, depth=2, num_heads=4, **kwargs).eval()


def _cond(batch=2):
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, 5, (batch, 2, 2), generator=g), torch.randint(0, 9, (batch, 2, 1, 2), generator=g)]


def test_prefix_lm_mask():
    m = prefix_lm_mask(2, 3)
    expected = torch.tensor(
        [[1, 1, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], dtype=torch.bool
    )
    assert torch.equal(m, expected)


@pytest.mark.parametrize("grid_shape", [(3, 3), (2, 2, 3)])
@pytest.mark.parametrize("ordering", ["raster", "random"])
def test_targets_never_see_later_targets(grid_shape, ordering):
    model = _model(grid_shape, ordering=ordering, cond_sources=SOURCES, num_classes=3)
    cond, labels = _cond(), torch.tensor([0, 2])
    codes = torch.randint(0, 8, (2, *grid_shape), generator=torch.Generator().manual_seed(2))
    base = model(codes, cond, labels)
    for k in (2, model.num_tokens - 2):  # perturb the target at sequence index k
        tokens = model.grid_to_tokens(codes).clone()
        tokens[:, k] = (tokens[:, k] + 1) % 8
        out = model(model.tokens_to_grid(tokens), cond, labels)
        torch.testing.assert_close(out[:, : k + 1], base[:, : k + 1], atol=1e-6, rtol=0)  # logits for targets <= k
        assert not torch.allclose(out[:, k + 1 :], base[:, k + 1 :])


def test_prefix_attends_both_ways_and_targets_see_the_whole_prefix():
    model = _model(cond_sources=SOURCES)
    cond = _cond()
    inputs = torch.cat([torch.full((2, 1), model.start_token), torch.randint(0, 8, (2, 4))], dim=1)
    plen = model.prefix.length
    assert plen == 4 + 4
    base, _ = model.hidden_states(inputs, cond_tokens=cond)
    later = [cond[0], cond[1].clone()]
    later[1][:, -1, -1, -1] = (later[1][:, -1, -1, -1] + 1) % 9  # the last prefix position
    out, _ = model.hidden_states(inputs, cond_tokens=later)
    assert (out[:, 0] - base[:, 0]).abs().max() > 1e-4  # the first prefix position changes
    assert (out[:, plen:] - base[:, plen:]).abs().max() > 1e-4  # every target sees the prefix
    # targets never leak into the prefix
    other = inputs.clone()
    other[:, 1:] = (other[:, 1:] + 1) % 8
    again, _ = model.hidden_states(other, cond_tokens=cond)
    torch.testing.assert_close(again[:, :plen], base[:, :plen], atol=1e-6, rtol=0)


def test_labels_condition_the_logits():
    model = _model(num_classes=3)
    codes = torch.randint(0, 8, (1, 3, 3))
    a, b = model(codes, labels=torch.tensor([0])), model(codes, labels=torch.tensor([1]))
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("grid_shape", [(4, 4), (2, 3, 2)])
def test_loss_and_bits_per_token(grid_shape):
    model = _model(grid_shape)
    model.train()
    codes = torch.randint(0, 8, (2, *grid_shape), dtype=torch.int16)  # stored latents are int16
    out = model.loss(codes)
    assert out["loss"].ndim == 0 and out["bits_per_token"].item() == pytest.approx(out["loss"].item() / math.log(2))
    assert abs(out["loss"].item() - math.log(8)) < 0.5  # near uniform at initialisation
    out["loss"].backward()
    assert model.token_emb.weight.grad is not None


def test_config_round_trip_and_grid_round_trip():
    model = _model((2, 3, 2), ordering="snake", cond_sources=SOURCES, num_classes=2)
    again = TransformerPrior(**json.loads(json.dumps(model.config())))
    again.load_state_dict(model.state_dict())
    assert again.config() == model.config()
    codes = torch.randint(0, 8, (2, 2, 3, 2))
    assert torch.equal(model.tokens_to_grid(model.grid_to_tokens(codes)), codes)


def test_positional_embedding_is_factorised():
    emb = GridPositionalEmbedding((4, 5, 6), 8)
    assert sum(p.numel() for p in emb.parameters()) == (4 + 5 + 6) * 8
    table = emb()
    assert table.shape == (120, 8)
    idx = lambda i, j, k: (i * 5 + j) * 6 + k  # noqa: E731
    torch.testing.assert_close(table[idx(1, 2, 3)], emb.axes[0][1] + emb.axes[1][2] + emb.axes[2][3])


def test_bad_arguments_raise():
    with pytest.raises(ValueError):
        TransformerPrior(0, (2, 2))
    with pytest.raises(ValueError):
        TransformerPrior(4, (2, 2), ordering="spiral")
    with pytest.raises(ValueError):
        TransformerPrior(4, (2, 2, 2, 2))
    model = _model(cond_sources=SOURCES, num_classes=2)
    with pytest.raises(ValueError):
        model(torch.zeros(1, 4, 4, dtype=torch.long), _cond(1), torch.tensor([0]))  # wrong grid
    with pytest.raises(ValueError):
        model(torch.zeros(1, 3, 3, dtype=torch.long), _cond(1)[:1], torch.tensor([0]))  # missing source
    with pytest.raises(ValueError):
        model(torch.zeros(1, 3, 3, dtype=torch.long), _cond(1))  # missing labels
    with pytest.raises(ValueError):
        model.forward_tokens(torch.zeros(1, 2, dtype=torch.long), start=3)  # start without a cache
