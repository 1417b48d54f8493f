"""VectorQuantizer: hand-computed EMA update, dead-code restart, float32 under autocast, DDP sync."""

import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from medgen_cli.models.quantizers import VectorQuantizer

CODEBOOK = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
# five 2-vectors laid out as a (1, 2, 5, 1) map: nearest codes 0, 0, 1, 2, 2
VECTORS = torch.tensor([[1.0, 0.0], [0.0, 1.0], [9.0, 1.0], [1.0, 9.0], [0.0, 11.0]])


def as_map(vectors):
    return vectors.t().reshape(1, 2, -1, 1)


def make_quantizer(**kwargs):
    vq = VectorQuantizer(3, 2, **kwargs)
    with torch.no_grad():
        vq.embedding.copy_(CODEBOOK)
        if vq.ema:
            vq.embed_sum.copy_(CODEBOOK)  # initial state: usage 1 per code, sum = code
        vq.initialized.fill_(True)  # a given codebook: no data-dependent initialisation
    return vq


def test_first_training_batch_initialises_the_codebook_from_encoder_outputs():
    torch.manual_seed(0)
    vq = VectorQuantizer(8, 3).train()
    z = torch.randn(2, 3, 4, 4) * 5 + 10  # far from the tiny uniform initial codebook
    vq(z)
    flat = z.movedim(1, -1).reshape(-1, 3)
    # every code is one of the batch's vectors (then moved by one EMA step towards its cluster)
    assert bool(vq.initialized)
    assert vq.cluster_size.numel() == 8 and (vq.embedding.mean() - 10).abs() < 3
    out = vq.eval()(z)
    assert out.usage > 0.5  # most codes are in use at once, not only after dead-code restarts
    before = vq.embedding.clone()
    vq.train()(z)  # initialised once only
    assert torch.cdist(vq.embedding, before).diagonal().max() < 5
    # the flag is saved with the weights, so a loaded model is not re-initialised
    assert "initialized" in vq.state_dict()
    old = {k: v for k, v in vq.state_dict().items() if k != "initialized"}  # weights from before the flag
    again = VectorQuantizer(8, 3)
    again.load_state_dict(old)
    assert bool(again.initialized) and torch.equal(again.embedding, vq.embedding)
    assert min(float(torch.cdist(c[None], flat).min()) for c in before) < 5


def test_ema_update_matches_hand_computation():
    vq = make_quantizer(decay=0.5, eps=0.5, dead_code_threshold=0.0).train()
    out = vq(as_map(VECTORS))
    assert out.indices.tolist() == [[[0], [0], [1], [2], [2]]]
    assert out.indices.dtype == torch.int64
    # counts [2, 1, 2]; sums [[1, 1], [9, 1], [1, 20]]
    # cluster_size = 0.5 * 1 + 0.5 * counts = [1.5, 1.0, 1.5]
    torch.testing.assert_close(vq.cluster_size, torch.tensor([1.5, 1.0, 1.5]))
    # embed_sum = 0.5 * codebook + 0.5 * sums
    torch.testing.assert_close(vq.embed_sum, torch.tensor([[0.5, 0.5], [9.5, 0.5], [0.5, 15.0]]))
    # Laplace: n = 4, smoothed = (size + 0.5) / (4 + 3 * 0.5) * 4 = [16/11, 12/11, 16/11]
    expected = torch.tensor(
        [[0.5 * 11 / 16, 0.5 * 11 / 16], [9.5 * 11 / 12, 0.5 * 11 / 12], [0.5 * 11 / 16, 15.0 * 11 / 16]]
    )
    torch.testing.assert_close(vq.embedding, expected)
    # commitment: squared errors 1 + 1 + 2 + 2 + 1 = 7 over 10 elements, times beta 0.25
    torch.testing.assert_close(out.loss_terms["commitment"], torch.tensor(0.25 * 0.7))
    p = torch.tensor([0.4, 0.2, 0.4])
    torch.testing.assert_close(out.perplexity, torch.exp(-(p * p.log()).sum()))
    assert out.usage.item() == 1.0
    # the straight-through output carries the pre-update codes, gradient passes to the input
    torch.testing.assert_close(out.quantized.squeeze(-1)[0].t(), CODEBOOK[[0, 0, 1, 2, 2]])


def test_eval_mode_does_not_update():
    vq = make_quantizer(decay=0.5).eval()
    vq(as_map(VECTORS))
    torch.testing.assert_close(vq.embedding, CODEBOOK)


def test_straight_through_gradient_and_inverse():
    torch.manual_seed(0)
    vq = VectorQuantizer(8, 4).eval()
    z = torch.randn(2, 4, 4, 4, 2, requires_grad=True)
    out = vq(z)
    out.quantized.sum().backward()
    torch.testing.assert_close(z.grad, torch.ones_like(z))
    assert out.indices.shape == (2, 4, 4, 2)
    torch.testing.assert_close(vq.indices_to_latents(out.indices), out.quantized.detach())
    q, idx = vq.quantize(z)
    assert torch.equal(idx, out.indices)
    with pytest.raises(ValueError, match="integer"):
        vq.indices_to_latents(out.indices.float())
    with pytest.raises(ValueError, match="latents"):
        vq(torch.randn(2, 3, 4, 4))


@pytest.mark.parametrize("ema", [True, False])
def test_dead_code_restarted_on_encoder_output(ema):
    torch.manual_seed(0)
    vq = VectorQuantizer(4, 2, decay=0.9, dead_code_threshold=0.95, ema=ema).train()
    vq.initialized.fill_(True)
    with torch.no_grad():
        vq.embedding.copy_(torch.cat([CODEBOOK, torch.tensor([[100.0, 100.0]])]))
        if ema:
            vq.embed_sum.copy_(vq.embedding)
    out = vq(as_map(VECTORS))
    assert 3 not in out.indices  # never used ...
    new_code = vq.embedding[3].detach()
    # ... so it now sits on one of the batch's encoder outputs, with usage reset to 1
    assert (VECTORS - new_code).abs().sum(1).min() == 0
    assert vq.cluster_size[3].item() == 1.0
    if ema:
        torch.testing.assert_close(vq.embed_sum[3], new_code)


def test_codebook_loss_variant_trains_codebook():
    torch.manual_seed(0)
    vq = VectorQuantizer(8, 4, ema=False, dead_code_threshold=0.0).train()
    vq.initialized.fill_(True)
    out = vq(torch.randn(2, 4, 4, 4))
    assert set(out.loss_terms) == {"commitment", "codebook"}
    sum(out.loss_terms.values()).backward()
    assert vq.embedding.grad is not None and vq.embedding.grad.abs().sum() > 0


@pytest.mark.parametrize("ema", [True, False])
def test_float32_under_bf16_autocast(ema):
    torch.manual_seed(0)
    vq = VectorQuantizer(16, 4, ema=ema).eval()
    conv = torch.nn.Conv2d(3, 4, 1)
    x = torch.randn(2, 3, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = conv(x)
        assert z.dtype == torch.bfloat16
        out = vq(z)
    assert out.quantized.dtype == torch.float32
    assert all(v.dtype == torch.float32 for v in out.loss_terms.values())
    ref = vq(z.float())
    assert torch.equal(out.indices, ref.indices)


def test_bad_args():
    with pytest.raises(ValueError, match="num_embeddings=0"):
        VectorQuantizer(0, 4)
    with pytest.raises(ValueError, match="decay=1.5"):
        VectorQuantizer(4, 4, decay=1.5)


def _ddp_worker(rank, world_size, store_path, vectors, result_path):
    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank, world_size=world_size)
    try:
        torch.manual_seed(100 + rank)  # different RNG per rank: restarts must still agree
        vq = VectorQuantizer(4, 2, decay=0.5, eps=0.5, dead_code_threshold=0.6)
        with torch.no_grad():
            vq.embedding.copy_(torch.cat([CODEBOOK, torch.tensor([[100.0, 100.0]])]))
            vq.embed_sum.copy_(vq.embedding)
            vq.initialized.fill_(True)
        half = vectors[:3] if rank == 0 else vectors[3:]
        vq.train()(as_map(half))
        torch.save({k: v.clone() for k, v in vq.state_dict().items()}, f"{result_path}.{rank}")
        fresh = VectorQuantizer(4, 2).train()  # data-dependent init from different batches per rank
        fresh(as_map(half))
        torch.save({k: v.clone() for k, v in fresh.state_dict().items()}, f"{result_path}.fresh{rank}")
    finally:
        dist.destroy_process_group()


def test_distributed_ranks_keep_identical_codebooks(tmp_path):
    """Two gloo ranks see different halves of the batch: the codebooks agree with each other and
    with a single process seeing the whole batch (apart from the random restart pick)."""
    result = tmp_path / "state"
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "store"), VECTORS, str(result)), nprocs=2)
    s0, s1 = torch.load(f"{result}.0"), torch.load(f"{result}.1")
    for key in s0:
        torch.testing.assert_close(s0[key], s1[key])
    f0, f1 = torch.load(f"{result}.fresh0"), torch.load(f"{result}.fresh1")
    for key in f0:  # the initial codebook is rank 0's pick on every rank
        torch.testing.assert_close(f0[key], f1[key])
    single = VectorQuantizer(4, 2, decay=0.5, eps=0.5, dead_code_threshold=0.0)
    with torch.no_grad():
        single.embedding.copy_(torch.cat([CODEBOOK, torch.tensor([[100.0, 100.0]])]))
        single.embed_sum.copy_(single.embedding)
        single.initialized.fill_(True)
    single.train()(as_map(VECTORS))
    torch.testing.assert_close(s0["embedding"][:3], single.embedding[:3])
    assert math.isclose(s0["cluster_size"][3].item(), 1.0)  # restarted identically on both ranks
    assert (VECTORS - s0["embedding"][3]).abs().sum(1).min() == 0
