"""GlobalNorm: whole-volume statistics from tile cores; progressive passes make tiles exact."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from medgen_cli.inference.norm import GlobalNorm, StopForward, norm_layers
from medgen_cli.inference.runner import run_tiled
from medgen_cli.inference.tiling import TilePlan


def _stack(norm: str = "group") -> nn.Module:
    torch.manual_seed(0)
    make = (lambda c: nn.GroupNorm(2, c)) if norm == "group" else (lambda c: nn.InstanceNorm3d(c, affine=True))
    model = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), make(4), nn.SiLU(), nn.Conv3d(4, 4, 3, padding=1), make(4),
                          nn.SiLU(), nn.Conv3d(4, 2, 3, padding=1))
    with torch.no_grad():
        for m in model:
            if isinstance(m, (nn.GroupNorm, nn.InstanceNorm3d)):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return model.eval()


def _volume(shape=(1, 1, 24, 20, 16)) -> np.ndarray:
    rng = np.random.default_rng(0)
    x = rng.normal(size=shape).astype(np.float32)
    return x + np.linspace(-2, 3, shape[2], dtype=np.float32)[:, None, None]  # tiles see different statistics


def test_core_statistics_add_up_to_the_whole_volume():
    x = torch.from_numpy(_volume((2, 4, 24, 20, 16)))
    norm = nn.GroupNorm(2, 4)
    plan = TilePlan(x.shape[2:], (10, 7, 16), 3)
    with GlobalNorm(norm) as gn:
        gn.begin_pass(None)
        for t in plan:
            core = t.core_in_tile((1, 1, 1))
            gn.set_tile(t.shape, [c.start for c in core], [c.stop for c in core])
            norm(x[(Ellipsis, *t.region((1, 1, 1)))])
        (count, mean, m2), = gn.end_pass().values()
    var, ref = torch.var_mean(x.double().reshape(2, 2, -1), dim=2, correction=0)
    assert torch.allclose(mean, ref, atol=1e-6) and torch.allclose(m2 / count, var, rtol=1e-5)
    assert "forward" not in norm.__dict__  # the swap is undone


@pytest.mark.parametrize("kind", ["group", "instance"])
def test_given_statistics_reproduce_the_plain_layer(kind):
    model = _stack(kind)
    x = torch.from_numpy(_volume())
    with torch.no_grad():
        ref = model(x)
        with GlobalNorm(model) as gn:  # measure whole-volume stats (one tile = the volume), then use them
            gn.begin_pass(None)
            gn.set_tile(x.shape[2:], (0, 0, 0), x.shape[2:])
            model(x)
            stats = gn.end_pass()
            gn.begin_pass(stats)
            gn.set_tile(x.shape[2:], (0, 0, 0), x.shape[2:])
            out = model(x)
    assert len(stats) == len(norm_layers(model)) == 2
    assert torch.allclose(out, ref, atol=1e-5)


def test_progressive_pass_stops_after_the_layer_it_measures():
    model = _stack()
    x = torch.from_numpy(_volume())
    with GlobalNorm(model) as gn:
        gn.begin_pass(None, stop_at=0)
        gn.set_tile(x.shape[2:], (0, 0, 0), x.shape[2:])
        with pytest.raises(StopForward):
            model(x)
        assert list(gn.end_pass()) == [(0, 0)]  # the first norm layer only


@pytest.mark.parametrize("kind", ["group", "instance"])
def test_tiled_equals_whole_with_progressive_passes_only(kind):
    model = _stack(kind)
    x = _volume()
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    plan = TilePlan(x.shape[2:], 8, 3)  # halo 3 = three 3x3 convolutions: the receptive field
    (exact,), report = run_tiled(model, model, [x], [(1, 1, 1)], [(1, 1, 1)], plan)
    (naive,), _ = run_tiled(model, model, [x], [(1, 1, 1)], [(1, 1, 1)], plan, passes=1)
    assert report.passes == 3 and len(plan) == 18  # one pass per norm layer, then the writing pass
    assert np.abs(exact - ref).max() < 1e-5
    assert np.abs(naive - ref).max() > 1e-2  # per-tile statistics are visibly wrong
