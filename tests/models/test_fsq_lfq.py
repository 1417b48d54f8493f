"""FSQ, LFQ and the rotation trick against their papers' definitions, written out independently here;
index <-> code round trips; the quantisers inside the autoencoders (settings, model.json, token grids)."""

import itertools
import json
import math

import pytest
import torch

from medgen_cli.models import build_autoencoder
from medgen_cli.models.fsq import FSQ
from medgen_cli.models.lfq import LFQ
from medgen_cli.models.quantization import resolve_codebook
from medgen_cli.models.quantizers import VectorQuantizer, rotation_trick


# ------------------------------------------------------------------------------------------ FSQ
def paper_fsq_odd(z, levels):
    """Mentzer et al. 2023, section 3: for odd L, z_hat = round(floor(L / 2) * tanh(z)), per channel."""
    out = torch.empty_like(z)
    for i, L in enumerate(levels):
        out[:, i] = torch.round((L // 2) * torch.tanh(z[:, i]))
    return out


def test_fsq_matches_the_paper_for_odd_levels():
    levels = (7, 5, 3)
    q = FSQ(levels, eps=0.0)  # the paper's main-text bound has no margin
    z = torch.randn(2, 3, 6, 5) * 2
    out = q(z)
    flat = z.movedim(1, -1).reshape(-1, 3)
    expect = paper_fsq_odd(flat, levels)
    got = out.quantized.movedim(1, -1).reshape(-1, 3) * torch.tensor([L // 2 for L in levels])
    torch.testing.assert_close(got, expect)
    # index = mixed-radix number of (z_hat + L // 2), channel 0 least significant
    digits = expect + torch.tensor([L // 2 for L in levels])
    index = digits[:, 0] + levels[0] * digits[:, 1] + levels[0] * levels[1] * digits[:, 2]
    assert torch.equal(out.indices.reshape(-1), index.long())
    assert q.num_embeddings == 105 and q.embedding_dim == 3 and out.loss_terms == {}


@pytest.mark.parametrize("levels", [(8, 5, 5, 5), (8, 6, 5), (4, 3)])
def test_fsq_levels_indices_and_codes_round_trip(levels):
    q = FSQ(levels)
    z = torch.randn(4, len(levels), 8, 8) * 3
    out = q(z)
    per_channel = out.quantized.movedim(1, -1).reshape(-1, len(levels)) * torch.tensor([L // 2 for L in levels])
    for i, L in enumerate(levels):  # exactly L integer levels, centred on 0, reached by large |z|
        values = set(per_channel[:, i].round().long().tolist())
        assert values <= set(range(-(L // 2), (L - 1) // 2 + 1))
    assert set(per_channel[:, 0].round().long().tolist()) == set(range(-(levels[0] // 2), (levels[0] - 1) // 2 + 1))
    zero = q(torch.zeros(1, len(levels), 1, 1)).quantized
    assert torch.equal(zero, torch.zeros_like(zero))  # f(0) = 0 for even L too (the shifted tanh)
    every = torch.arange(q.num_embeddings).reshape(1, -1)
    codes = q.indices_to_latents(every)
    assert codes.shape == (1, len(levels), q.num_embeddings)
    # codes -> indices -> codes, through snap (latents already in code space)
    assert torch.equal(q.snap(codes.unsqueeze(-1)), codes.unsqueeze(-1))
    recovered = q._digits_to_indices((codes.squeeze(0).t() * q._half).round())
    assert torch.equal(recovered, every[0])
    assert len({tuple(c) for c in q.codebook.tolist()}) == q.num_embeddings  # all codes distinct
    # the lookup API agrees with forward
    c, idx = q.quantize(z)
    assert torch.equal(idx, out.indices) and torch.equal(c, out.quantized)


def test_fsq_gradient_is_straight_through_the_rounding():
    q = FSQ((5, 5))
    z = (torch.randn(1, 2, 3, 3) * 0.5).requires_grad_()
    q(z).quantized.sum().backward()
    half = (5 - 1) * (1 - q.eps) / 2
    expect = half * (1 - torch.tanh(z.detach()) ** 2) / 2  # d/dz [h tanh(z) / floor(L/2)], rounding skipped
    torch.testing.assert_close(z.grad, expect)


# ------------------------------------------------------------------------------------------ LFQ
def paper_lfq(z, temperature, gamma):
    """MAGVIT-v2 (Yu et al. 2024) eqs. 3-5 with the codebook enumerated explicitly: q = sign(z),
    Index = sum_i 2^(i-1) [z_i > 0], L_entropy = E[H(q(z))] - gamma H[E(q(z))], q(z) = softmax(-|z - c|^2 / tau)."""
    d = z.shape[1]
    codebook = torch.tensor(list(itertools.product([-1.0, 1.0], repeat=d)))  # every code
    index_of = {tuple(c): sum(2**i for i, v in enumerate(c) if v > 0) for c in codebook.tolist()}
    codes = torch.where(z > 0, 1.0, -1.0)
    indices = torch.tensor([index_of[tuple(c)] for c in codes.tolist()])
    dist = torch.cdist(z.double(), codebook.double()) ** 2
    p = torch.softmax(-dist / temperature, dim=1)
    per_sample = -(p * torch.log(p.clamp_min(1e-300))).sum(1).mean()
    mean = p.mean(0)
    batch = -(mean * torch.log(mean.clamp_min(1e-300))).sum()
    return codes, indices, per_sample - gamma * batch


def test_lfq_matches_the_paper():
    torch.manual_seed(0)
    q = LFQ(4, commitment_cost=0.25, entropy_weight=0.1, diversity_gamma=1.0, temperature=0.5).train()
    z = torch.randn(2, 4, 3, 5)
    out = q(z)
    flat = z.movedim(1, -1).reshape(-1, 4)
    codes, indices, entropy = paper_lfq(flat, 0.5, 1.0)
    assert torch.equal(out.quantized.movedim(1, -1).reshape(-1, 4), codes)
    assert torch.equal(out.indices.reshape(-1), indices)
    torch.testing.assert_close(out.loss_terms["entropy"].double(), 0.1 * entropy, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(out.loss_terms["commitment"], 0.25 * (flat - codes).pow(2).mean())
    assert q.num_embeddings == 16 and "entropy" not in q.eval()(z).loss_terms


def test_lfq_round_trip_gradient_and_row_subsampling(monkeypatch):
    q = LFQ(5)
    every = torch.arange(32).reshape(1, 4, 8)
    codes = q.indices_to_latents(every)
    assert codes.shape == (1, 5, 4, 8) and set(codes.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal(q.quantize(codes)[1], every) and torch.equal(q.snap(codes * 0.3), codes)
    z = torch.randn(2, 5, 4, 4, requires_grad=True)
    out = q.train()(z)
    sum(out.loss_terms.values()).backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()
    # big batches: the codebook entropy uses every k-th row (here k = 2), the per-sample entropy all rows
    monkeypatch.setattr("medgen_cli.models.lfq.MAX_ENTROPY_ELEMENTS", 16 * 32)
    flat = torch.randn(32, 5)
    per_sample, batch = q.entropy_terms(flat)
    _, _, full = paper_lfq(flat, q.temperature, 0.0)
    _, _, half = paper_lfq(flat[::2], q.temperature, 0.0)
    torch.testing.assert_close(per_sample.double(), full, rtol=1e-4, atol=1e-6)
    _, _, with_batch = paper_lfq(flat[::2], q.temperature, 1.0)
    torch.testing.assert_close(batch.double(), half - with_batch, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------------- rotation trick
def test_rotation_trick_value_and_gradient_match_the_definition():
    """Fifty et al. 2024, eq. 4-5: q~ = sg[|q|/|e| R] e with R = I - 2 r r^T + 2 q^ e^^T, r = (e^ + q^)/|e^ + q^|."""
    torch.manual_seed(0)
    e = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    q = torch.randn(5, 3, dtype=torch.float64)
    g = torch.randn(5, 3, dtype=torch.float64)
    out = rotation_trick(e, q)
    torch.testing.assert_close(out.detach(), q)
    out.backward(g)
    for n in range(5):
        en, qn = e[n].detach(), q[n]
        e_hat, q_hat = en / en.norm(), qn / qn.norm()
        r = (e_hat + q_hat) / (e_hat + q_hat).norm()
        R = torch.eye(3, dtype=torch.float64) - 2 * torch.outer(r, r) + 2 * torch.outer(q_hat, e_hat)
        torch.testing.assert_close(R @ e_hat, q_hat)  # R rotates e^ onto q^
        torch.testing.assert_close(R.T @ R, torch.eye(3, dtype=torch.float64))  # ... and is a rotation
        torch.testing.assert_close(e.grad[n], qn.norm() / en.norm() * R.T @ g[n])


def test_vq_with_rotation_gradient_differs_from_straight_through():
    torch.manual_seed(0)
    z = torch.randn(1, 2, 4, 4)
    grads = {}
    for gradient in ("ste", "rotation"):
        vq = VectorQuantizer(4, 2, gradient=gradient)
        vq.initialized.fill_(True)
        zz = z.clone().requires_grad_()
        out = vq.eval()(zz)
        (out.quantized * torch.arange(32.0).reshape(1, 2, 4, 4)).sum().backward()
        grads[gradient] = zz.grad
        assert torch.allclose(out.quantized, vq.indices_to_latents(out.indices))
    assert torch.equal(grads["ste"], torch.arange(32.0).reshape(1, 2, 4, 4))
    assert not torch.allclose(grads["rotation"], grads["ste"])
    with pytest.raises(ValueError, match="gradient='rot'"):
        VectorQuantizer(4, 2, gradient="rot")


# ------------------------------------------------------------------------------- in the models
@pytest.mark.parametrize("quantizer, extra", [("fsq", {"fsq_levels": (5, 5, 3)}), ("lfq", {"num_embeddings": 64}),
                                              ("vq", {"vq_gradient": "rotation", "num_embeddings": 16})])
@pytest.mark.parametrize("kind, spatial_dims", [("vqvae", 2), ("vqvae", 3), ("vqvae2", 2)])
def test_autoencoders_with_each_quantizer(quantizer, extra, kind, spatial_dims):
    torch.manual_seed(0)
    kw = dict(channels=(8, 8), num_res_blocks=1, num_groups=4, layout="strided", quantizer=quantizer, **extra)
    if kind == "vqvae2":
        kw["top_channels"] = (8,)
    model = build_autoencoder(kind, spatial_dims, **kw)
    x = torch.rand(2, 1, *(16,) * spatial_dims) * 2 - 1
    out = model.train()(x)
    sum(out.loss_terms.values()).backward()
    config = json.loads(json.dumps(model.config()))
    assert config["quantizer"] == quantizer
    rebuilt = build_autoencoder(**config)
    rebuilt.load_state_dict(model.state_dict())
    rebuilt.eval()
    model.eval()
    size = {"fsq": 75, "lfq": 64, "vq": 16}[quantizer]
    assert config["num_embeddings"] == size and model.latent_channels in (config["embedding_dim"], 2 * config["embedding_dim"])
    with torch.no_grad():
        idx = model.encode_to_indices(x)
        levels = idx if isinstance(idx, tuple) else (idx,)
        assert all(int(i.max()) < size and i.dtype == torch.int64 for i in levels)
        recon = model.decode_indices(*levels)
        torch.testing.assert_close(recon, rebuilt.decode_indices(*levels))
        # token grids as encode-latents stores them (int16) decode the same
        torch.testing.assert_close(model.decode_indices(*(i.to(torch.int16) for i in levels)), recon)
        torch.testing.assert_close(model.decode_latents(model.encode_to_latents(x)), recon, atol=1e-5, rtol=1e-5)
    assert {"perplexity", "usage"} <= set(out.metrics) or {"usage_top", "usage_bottom"} <= set(out.metrics)


def test_codebook_sizes_are_resolved_and_checked():
    assert resolve_codebook("fsq", None, None, None) == (4, 1000, (8, 5, 5, 5))
    assert resolve_codebook("lfq", None, 1024, None) == (10, 1024, None)
    assert resolve_codebook("vq", None, None, None) == (8, 256, None)
    with pytest.raises(ValueError, match="implies embedding_dim=3"):
        resolve_codebook("fsq", 8, None, (5, 5, 5))
    with pytest.raises(ValueError, match="power of two"):
        resolve_codebook("lfq", None, 1000, None)
    with pytest.raises(ValueError, match="only applies to quantizer='fsq'"):
        resolve_codebook("vq", None, None, (5, 5))
    with pytest.raises(ValueError, match=r"levels=\[8, 2\]"):
        FSQ((8, 2))
    assert math.prod((8, 5, 5, 5)) == FSQ().num_embeddings


@pytest.mark.parametrize("quantizer, extra", [("fsq", {"fsq_levels": (5, 5, 3)}), ("lfq", {"num_embeddings": 64})])
def test_fsq_and_lfq_models_export_to_onnx(tmp_path, quantizer, extra):
    """No negative permutation axes and no bitwise ops: ONNX Runtime loads and matches every exported part."""
    from medgen_cli.export.models import export_checked, onnx_missing, plan_autoencoder

    if onnx_missing():
        pytest.skip(onnx_missing())
    torch.manual_seed(0)
    model = build_autoencoder("vqvae", 2, channels=(8, 8), num_res_blocks=1, num_groups=4, layout="strided",
                              quantizer=quantizer, **extra).eval()
    for i, plan in enumerate(plan_autoencoder(model, (16, 16))):
        (tmp_path / str(i)).mkdir()
        export_checked(plan, "onnx", tmp_path / str(i))  # raises when the outputs differ
