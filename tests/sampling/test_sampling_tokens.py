import math

import pytest
import torch

from medgen_cli.sampling.tokens import filter_logits, sample_tokens


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_top_k_never_draws_outside_the_k_most_likely():
    logits = torch.randn(3, 12, generator=_gen(1))
    allowed = torch.topk(logits, 4, dim=-1).indices  # (3, 4)
    many = logits.repeat(1000, 1)  # 3000 rows, one multinomial call
    draws = sample_tokens(many, "top-k", temperature=1.5, top_k=4, generator=_gen(2)).reshape(1000, 3)
    for row in range(3):
        assert set(draws[:, row].tolist()) <= set(allowed[row].tolist())
    assert len(set(draws[:, 0].tolist())) > 1  # it does sample, not argmax


@pytest.mark.parametrize(
    "top_p, kept",
    [(0.01, 1), (0.39, 1), (0.41, 2), (0.64, 2), (0.66, 3), (0.79, 3), (0.81, 4), (1.0, 6)],
)
def test_top_p_support_is_the_smallest_set_reaching_p(top_p, kept):
    probs = torch.tensor([0.4, 0.25, 0.15, 0.1, 0.06, 0.04], dtype=torch.float64)
    shuffle = torch.tensor([3, 0, 5, 1, 4, 2])  # order of the vocabulary must not matter
    logits = probs.log()[shuffle]
    filtered = torch.softmax(filter_logits(logits, top_p=top_p), dim=-1)
    expected = torch.zeros_like(probs)
    expected[:kept] = probs[:kept] / probs[:kept].sum()
    torch.testing.assert_close(filtered, expected[shuffle])


def test_top_p_draws_stay_in_the_nucleus():
    probs = torch.tensor([0.05, 0.5, 0.3, 0.15])
    draws = sample_tokens(probs.log().repeat(2000, 1), "top-p", top_p=0.75, generator=_gen(3))
    assert set(draws.tolist()) == {1, 2}


def test_top_k_and_top_p_combine():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    out = filter_logits(probs.log(), top_k=3, top_p=0.7)
    assert torch.isfinite(out).tolist() == [True, True, False, False]


@pytest.mark.parametrize("strategy", ["multinomial", "top-k", "top-p"])
@pytest.mark.parametrize("temperature", [0.0, 1e-7, 1e-6])
def test_temperature_to_zero_is_greedy(strategy, temperature):
    logits = torch.randn(64, 9, generator=_gen(4))
    out = sample_tokens(logits, strategy, temperature=temperature, top_k=3, top_p=0.5, generator=_gen(5))
    assert torch.equal(out, logits.argmax(-1))


def test_greedy_is_deterministic_and_uses_no_randomness():
    logits = torch.randn(4, 5, 7, generator=_gen(6))
    gen = _gen(7)
    before = gen.get_state()
    a = sample_tokens(logits, "greedy", generator=gen)
    b = sample_tokens(logits, "greedy", temperature=3.0, generator=gen)
    assert torch.equal(a, b) and torch.equal(a, logits.argmax(-1))
    assert a.shape == (4, 5)
    assert torch.equal(gen.get_state(), before)


def test_same_seed_same_draws():
    logits = torch.randn(100, 11, generator=_gen(8))
    a = sample_tokens(logits, "multinomial", generator=_gen(9))
    b = sample_tokens(logits, "multinomial", generator=_gen(9))
    assert torch.equal(a, b)


def test_multinomial_at_temperature_one_matches_softmax():
    logits = torch.tensor([1.0, 0.2, -0.5, 2.0, 0.0])
    n = 20000
    draws = sample_tokens(logits.repeat(n, 1), "multinomial", temperature=1.0, generator=_gen(10))
    counts = torch.bincount(draws, minlength=5).double()
    expected = torch.softmax(logits.double(), -1) * n
    chi2 = ((counts - expected) ** 2 / expected).sum().item()
    assert chi2 < 18.47  # chi-square critical value, 4 degrees of freedom, p = 0.001


def test_temperature_sharpens():
    logits = torch.tensor([1.0, 0.0])
    n = 4000
    hot = sample_tokens(logits.repeat(n, 1), "multinomial", temperature=2.0, generator=_gen(11))
    cold = sample_tokens(logits.repeat(n, 1), "multinomial", temperature=0.5, generator=_gen(11))
    p_hot, p_cold = (hot == 0).double().mean().item(), (cold == 0).double().mean().item()
    assert abs(p_hot - 1 / (1 + math.exp(-0.5))) < 0.03
    assert abs(p_cold - 1 / (1 + math.exp(-2.0))) < 0.03


@pytest.mark.parametrize(
    "kwargs",
    [
        {"strategy": "beam"},
        {"strategy": "top-k"},
        {"strategy": "top-p"},
        {"strategy": "top-k", "top_k": 0},
        {"strategy": "top-p", "top_p": 0.0},
        {"strategy": "top-p", "top_p": 1.5},
        {"strategy": "multinomial", "temperature": -1.0},
    ],
)
def test_bad_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        sample_tokens(torch.zeros(2, 3), **kwargs)
