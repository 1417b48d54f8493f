import math

import pytest
import torch
from torch import nn

from medgen_cli.models.priors import MaskGITPrior
from medgen_cli.sampling.maskgit import cosine_mask_ratio, maskgit_generate


class SpyPrior(nn.Module):
    """Random logits; records how many positions are masked at each call."""

    mask_token = 6

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))
        self.masked_counts = []

    def predict(self, tokens):
        self.masked_counts.append((tokens == self.mask_token).sum(1).tolist())
        g = torch.Generator().manual_seed(len(self.masked_counts))
        return torch.randn(*tokens.shape, 6, generator=g)


def test_cosine_ratio():
    assert cosine_mask_ratio(0.0).item() == 1.0
    assert abs(cosine_mask_ratio(1.0).item()) < 1e-12
    assert cosine_mask_ratio(0.5).item() == pytest.approx(math.sqrt(0.5))


@pytest.mark.parametrize("steps", [1, 4, 8])
def test_masked_counts_follow_the_cosine_schedule_and_all_positions_are_filled(steps):
    model, n = SpyPrior(), 40
    out = maskgit_generate(model, num_tokens=n, batch_size=2, steps=steps, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, n) and not (out == model.mask_token).any()
    assert out.max() < 6
    expected = [n] + [math.floor(n * math.cos(math.pi / 2 * (t + 1) / steps)) for t in range(steps - 1)]
    got = [c[0] for c in model.masked_counts]
    assert got == [e for e in expected if e > 0][: len(got)]


def test_given_tokens_are_kept():
    model = SpyPrior()
    start = torch.full((3, 20), model.mask_token)
    start[:, ::3] = torch.arange(3)[:, None]  # a partial grid
    start[2] = 4  # a fully known row stays as it is
    start[2, 5] = model.mask_token
    out = maskgit_generate(model, start, steps=5, generator=torch.Generator().manual_seed(1))
    known = start != model.mask_token
    assert torch.equal(out[known], start[known])
    assert not (out == model.mask_token).any()


@pytest.mark.parametrize("grid_shape", [(4, 4), (2, 3, 2)])
def test_with_a_real_prior_and_conditioning(grid_shape):
    torch.manual_seed(0)
    model = MaskGITPrior(9, grid_shape, dim=32, depth=1, num_heads=4,
                         cond_sources=[{"num_embeddings": 3, "grid_shape": [2, 2]}], num_classes=2).eval()
    cond = {"cond_tokens": [torch.randint(0, 3, (2, 2, 2))], "labels": torch.tensor([0, 1])}
    kwargs = dict(num_tokens=model.num_tokens, batch_size=2, steps=4, condition=cond)
    a = maskgit_generate(model, generator=torch.Generator().manual_seed(2), **kwargs)
    b = maskgit_generate(model, generator=torch.Generator().manual_seed(2), **kwargs)
    assert torch.equal(a, b) and not (a == model.mask_token).any()
    assert model.tokens_to_grid(a).shape == (2, *grid_shape)


def test_bad_arguments_raise():
    model = SpyPrior()
    with pytest.raises(ValueError):
        maskgit_generate(model, num_tokens=4, batch_size=1, steps=0)
    with pytest.raises(ValueError):
        maskgit_generate(model, steps=2)
    with pytest.raises(ValueError):
        maskgit_generate(model, num_tokens=4, batch_size=1, noise_temperature=-1.0)
