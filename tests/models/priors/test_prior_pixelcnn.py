import json
import math

import pytest
import torch

from medgen_cli.models.priors import GatedPixelCNN
from medgen_cli.sampling import pixelcnn_generate

H = W = 5


def _model(**kwargs):
    torch.manual_seed(0)
    return GatedPixelCNN(6, hidden_channels=16, num_layers=3, kernel_size=3, **kwargs).eval()


def _flip(codes, i, j):
    out = codes.clone()
    out[:, i, j] = (out[:, i, j] + 1) % 6
    return out


@pytest.mark.parametrize("attention_layers", [(), (1,)])
def test_outputs_only_depend_on_earlier_positions(attention_layers):
    model = _model(attention_layers=attention_layers)
    codes = torch.randint(0, 6, (1, H, W), generator=torch.Generator().manual_seed(1))
    base = model(codes).flatten(2)  # (1, V, H*W) in raster order
    for p in range(H * W):
        out = model(_flip(codes, p // W, p % W)).flatten(2)
        # outputs at positions <= p (p itself included) never change
        torch.testing.assert_close(out[..., : p + 1], base[..., : p + 1], atol=1e-6, rtol=0)


def test_no_blind_spot():
    """Position (i, j) must see the cells up-right of it, which a single masked-conv stack misses."""
    model = _model()
    codes = torch.randint(0, 6, (1, H, W), generator=torch.Generator().manual_seed(2))
    i, j = 3, 2
    base = model(codes)[..., i, j]
    for di, dj in [(-1, 1), (-1, 2), (-2, 2), (-1, 0), (-1, -1), (0, -1), (0, -2), (-3, 0)]:
        out = model(_flip(codes, i + di, j + dj))[..., i, j]
        assert (out - base).abs().max() > 1e-6, (di, dj)


def test_attention_reaches_beyond_the_convolutions():
    codes = torch.randint(0, 6, (1, H, W), generator=torch.Generator().manual_seed(3))
    plain, attn = _model(), _model(attention_layers=(2,))
    for model, sees in ((plain, False), (attn, True)):
        base = model(codes)[..., 4, 4]
        changed = (model(_flip(codes, 0, 0))[..., 4, 4] - base).abs().max() > 1e-6
        assert bool(changed) == sees


def test_conditioning_on_a_coarser_code_map_and_labels():
    model = _model(cond_num_embeddings=4, num_classes=3)
    codes = torch.randint(0, 6, (2, 6, 6))
    top = torch.randint(0, 4, (2, 3, 3))
    labels = torch.tensor([0, 2])
    base = model(codes, top, labels)
    assert base.shape == (2, 6, 6, 6)
    other = top.clone()
    other[:, 2, 2] = (other[:, 2, 2] + 1) % 4
    assert (model(codes, other, labels) - base).abs().max() > 1e-6
    assert (model(codes, top, torch.tensor([1, 1])) - base).abs().max() > 1e-6
    with pytest.raises(ValueError):
        model(codes, None, labels)
    with pytest.raises(ValueError):
        model(codes, top)


def test_loss():
    model = _model()
    model.train()
    out = model.loss(torch.randint(0, 6, (2, 4, 4), dtype=torch.int16))
    assert out["bits_per_token"].item() == pytest.approx(out["loss"].item() / math.log(2))
    out["loss"].backward()


def test_sample_is_reproducible_and_greedy_sample_is_a_fixed_point():
    model = _model(cond_num_embeddings=4, attention_layers=(1,))
    top = torch.randint(0, 4, (2, 2, 2))
    a = pixelcnn_generate(model, (2, 4, 4), top, generator=torch.Generator().manual_seed(4))
    b = pixelcnn_generate(model, (2, 4, 4), top, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and a.shape == (2, 4, 4) and 0 <= a.min() and a.max() < 6
    greedy = pixelcnn_generate(model, (2, 4, 4), top, sampler_kwargs={"strategy": "greedy"})
    assert torch.equal(model(greedy, top).argmax(1), greedy)  # each code is the argmax given its past


def test_config_round_trip():
    model = _model(cond_num_embeddings=4, num_classes=2, attention_layers=(0, 2), num_heads=2)
    again = GatedPixelCNN(**json.loads(json.dumps(model.config())))
    again.load_state_dict(model.state_dict())
    assert again.config() == model.config()


@pytest.mark.parametrize(
    "kwargs", [{"kernel_size": 4}, {"num_layers": 0}, {"attention_layers": (3,)}, {"num_embeddings": 0}]
)
def test_bad_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        GatedPixelCNN(**{"num_embeddings": 6, "num_layers": 3, **kwargs})
