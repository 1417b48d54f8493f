"""Attention: masks, causal offsets and the KV cache against a naive softmax reference."""

import math

import pytest
import torch

from medgen_cli.nn.attention import MultiHeadSelfAttention, SpatialSelfAttention, causal_mask


def naive_attention(attn: MultiHeadSelfAttention, x, mask=None):
    """Reference: explicit softmax(QK^T / sqrt(d)) V with a boolean mask (True = attend)."""
    b, n, _ = x.shape
    h, d = attn.num_heads, attn.head_dim
    q, k, v = attn.qkv(x).reshape(b, n, 3, h, d).permute(2, 0, 3, 1, 4)
    scores = q @ k.transpose(-1, -2) / math.sqrt(d)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    out = scores.softmax(-1) @ v  # (b, h, n, d)
    return attn.proj(out.transpose(1, 2).reshape(b, n, h * d))


@pytest.fixture
def attn():
    torch.manual_seed(0)
    return MultiHeadSelfAttention(dim=8, num_heads=2).eval()


def test_unmasked_and_masked_match_reference(attn):
    x = torch.randn(2, 5, 8)
    out, (k, v) = attn(x)
    torch.testing.assert_close(out, naive_attention(attn, x), atol=1e-5, rtol=1e-5)
    assert k.shape == v.shape == (2, 2, 5, 4)
    mask = torch.rand(2, 1, 5, 5) > 0.4
    mask[..., 0] = True  # every query attends somewhere
    out, _ = attn(x, attn_mask=mask)
    torch.testing.assert_close(out, naive_attention(attn, x, mask), atol=1e-5, rtol=1e-5)


def test_causal_matches_reference(attn):
    x = torch.randn(2, 6, 8)
    out, _ = attn(x, is_causal=True)
    ref = naive_attention(attn, x, torch.ones(6, 6, dtype=torch.bool).tril())
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    # causal combined with a user mask (explicit path)
    pad = torch.ones(6, 6, dtype=torch.bool)
    pad[:, 1] = False
    out, _ = attn(x, attn_mask=pad, is_causal=True)
    ref = naive_attention(attn, x, pad & torch.ones(6, 6, dtype=torch.bool).tril())
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_kv_cache_incremental_equals_full_causal(attn):
    x = torch.randn(2, 7, 8)
    full, _ = attn(x, is_causal=True)
    # prefix of 3 tokens, then one token at a time, then a chunk of 2 with the offset mask
    out, cache = attn(x[:, :3], is_causal=True)
    pieces = [out]
    for i in range(3, 5):
        out, cache = attn(x[:, i : i + 1], is_causal=True, kv_cache=cache)
        pieces.append(out)
    out, cache = attn(x[:, 5:7], is_causal=True, kv_cache=cache)
    pieces.append(out)
    assert cache[0].shape == (2, 2, 7, 4)
    torch.testing.assert_close(torch.cat(pieces, 1), full, atol=1e-5, rtol=1e-5)


def test_causal_mask_offset():
    m = causal_mask(2, 4)
    assert m.tolist() == [[True, True, True, False], [True, True, True, True]]
    with pytest.raises(ValueError):
        causal_mask(5, 4)


def test_bad_args():
    with pytest.raises(ValueError, match="num_heads=3"):
        MultiHeadSelfAttention(8, 3)
    attn = MultiHeadSelfAttention(8, 2)
    with pytest.raises(ValueError, match="attn_mask shape"):
        attn(torch.randn(1, 4, 8), attn_mask=torch.ones(3, 3, dtype=torch.bool))


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_spatial_attention_shape_and_residual(spatial_dims):
    torch.manual_seed(0)
    layer = SpatialSelfAttention(spatial_dims, channels=8, num_heads=2, num_groups=4)
    x = torch.randn(2, 8, *(4,) * spatial_dims)
    y = layer(x)
    assert y.shape == x.shape
    torch.nn.init.zeros_(layer.attn.proj.weight)
    torch.nn.init.zeros_(layer.attn.proj.bias)
    torch.testing.assert_close(layer(x), x)  # zero branch -> identity (residual)
