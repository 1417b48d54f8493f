import pytest
import torch

from medgen_cli.models.priors import TransformerPrior
from medgen_cli.sampling.autoregressive import generate


def _model(grid_shape, **kwargs):
    torch.manual_seed(0)
    return TransformerPrior(11, grid_shape, dim=32, depth=2, num_heads=4, **kwargs).eval()


CASES = [
    ((3, 3), {}, {}),
    ((2, 2, 2), {"ordering": "random"}, {}),
    (
        (3, 3),
        {"cond_sources": [{"num_embeddings": 5, "grid_shape": [2, 2]}, {"num_embeddings": 7, "grid_shape": [3]}],
         "num_classes": 4},
        {"cond_tokens": [torch.tensor([[[1, 2], [3, 4]], [[0, 0], [1, 1]]]), torch.tensor([[6, 5, 4], [1, 2, 3]])],
         "labels": torch.tensor([3, 0])},
    ),
]


@pytest.mark.parametrize("grid_shape, model_kwargs, condition", CASES)
@pytest.mark.parametrize("with_prefix", [False, True])
@pytest.mark.parametrize("sampler", [{"strategy": "multinomial"}, {"strategy": "top-k", "top_k": 3, "temperature": 1.3}])
def test_cached_and_uncached_sampling_give_the_same_tokens(grid_shape, model_kwargs, condition, with_prefix, sampler):
    model = _model(grid_shape, **model_kwargs)
    prefix = torch.tensor([[1, 2, 3], [4, 5, 6]]) if with_prefix else None
    n = model.num_tokens - (3 if with_prefix else 0)
    runs = []
    for use_cache in (True, False):
        runs.append(generate(model, n, prefix_tokens=prefix, batch_size=2, condition=condition,
                             sampler_kwargs=sampler, use_cache=use_cache, generator=torch.Generator().manual_seed(7)))
    assert torch.equal(runs[0], runs[1])
    assert runs[0].shape == (2, model.num_tokens)
    if with_prefix:
        assert torch.equal(runs[0][:, :3], prefix)
    assert model.tokens_to_grid(runs[0]).shape == (2, *grid_shape)
    assert runs[0].min() >= 0 and runs[0].max() < 11  # never the start token


def test_cached_logits_match_the_full_pass():
    model = _model((2, 3), num_classes=2)
    labels = torch.tensor([1, 0])
    inputs = torch.cat([torch.full((2, 1), model.start_token), torch.randint(0, 11, (2, 5))], dim=1)
    full, _ = model.forward_tokens(inputs, labels=labels)
    logits, cache = model.forward_tokens(inputs[:, :2], labels=labels)
    pieces = [logits]
    for i in range(2, 6, 2):  # two tokens at a time exercises the causal mask inside a chunk
        logits, cache = model.forward_tokens(inputs[:, i : i + 2], kv_cache=cache, start=i)
        pieces.append(logits)
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)


def test_greedy_generation_is_deterministic():
    model = _model((2, 2))
    a = generate(model, 4, batch_size=3, sampler_kwargs={"strategy": "greedy"})
    b = generate(model, 4, batch_size=3, sampler_kwargs={"strategy": "greedy"}, use_cache=False)
    assert torch.equal(a, b) and (a == a[:1]).all()


def test_bad_arguments_raise():
    model = _model((2, 2))
    with pytest.raises(ValueError):
        generate(model, 4)  # neither prefix_tokens nor batch_size
    with pytest.raises(ValueError):
        generate(model, -1, batch_size=1)
    with pytest.raises(ValueError):
        generate(model, 5, batch_size=1)  # more tokens than the grid has
