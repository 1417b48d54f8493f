"""Two gloo processes (as torchrun would start them) keep identical weights and codebooks."""

import os
import socket

import torch
import torch.multiprocessing as mp

from .helpers import make_prep, tiny_settings


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, prep: str, out: str, results: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    torch.set_num_threads(1)
    from medgen_cli.steps import train_ae

    # vqgan: both the autoencoder and the discriminator are DDP-wrapped; a high dead-code threshold
    # makes codebook restarts happen (their picks are broadcast from rank 0)
    settings = tiny_settings(prep, "vqgan", "train.steps=4", "model.dead_code_threshold=0.5", "train.ema=true",
                             "train.select=last")
    result = train_ae.run(settings, out)
    live = {k: v.clone() for k, v in result.model.state_dict().items()}
    torch.save({"final": live, "rank": result.rank}, f"{results}/rank{rank}.pt")


def test_two_gloo_ranks_stay_identical(tmp_path):
    prep = make_prep(tmp_path / "prep", 2, n_train=8, n_val=2)
    mp.spawn(_worker, args=(_free_port(), str(prep), str(tmp_path / "ae"), str(tmp_path)), nprocs=2, join=True)
    a = torch.load(tmp_path / "rank0.pt", weights_only=True)
    b = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert (a["rank"], b["rank"]) == (0, 1)
    assert a["final"].keys() == b["final"].keys()
    for key in a["final"]:
        assert torch.equal(a["final"][key], b["final"][key]), key
    assert torch.equal(a["final"]["quantizer.embedding"], b["final"]["quantizer.embedding"])
    manifest = (tmp_path / "ae" / "manifest.json").read_text()
    assert '"world_size": 2' in manifest and '"status": "complete"' in manifest
