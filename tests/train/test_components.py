"""Schedule, weight EMA, precision choice and checkpoint files."""

import argparse
import pickle
import random

import numpy as np
import pytest
import torch

from medgen_cli.train.checkpoint import (
    CheckpointError,
    CheckpointManager,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from medgen_cli.train.ema import ModelEMA
from medgen_cli.train.precision import resolve_precision, select_device
from medgen_cli.train.schedule import WarmupDecay


def test_warmup_then_decay():
    cos = WarmupDecay(total_steps=12, warmup_steps=2, schedule="cosine", min_lr_ratio=0.1)
    assert [round(cos(s), 4) for s in (0, 1)] == [round(1 / 3, 4), round(2 / 3, 4)]
    assert cos(2) == pytest.approx(1.0) and cos(12) == pytest.approx(0.1) and cos(7) == pytest.approx(0.55)
    lin = WarmupDecay(total_steps=10, schedule="linear", min_lr_ratio=0.0)
    assert lin(5) == pytest.approx(0.5)
    assert WarmupDecay(10, schedule="constant")(9) == 1.0
    with pytest.raises(ValueError, match="'step'"):
        WarmupDecay(10, schedule="step")


def test_ema_tracks_weights_with_warmup():
    model = torch.nn.Linear(2, 1)
    ema = ModelEMA(model, decay=0.5)
    with torch.no_grad():
        model.weight.fill_(1.0)
    before = ema.module.weight.clone()
    ema.update(model)  # first update: decay min(0.5, 1/10) = 0.1
    assert torch.allclose(ema.module.weight, 0.1 * before + 0.9)
    assert not ema.module.weight.requires_grad


def test_cpu_precision_is_fp32_and_fp16_needs_cuda():
    cpu = select_device("cpu")
    assert resolve_precision("auto", cpu).dtype is None
    assert resolve_precision("bf16", cpu).dtype is torch.bfloat16
    with pytest.raises(ValueError, match="fp16"):
        resolve_precision("fp16", cpu)
    with pytest.raises(ValueError, match="'tpu'"):
        select_device("tpu")


def test_checkpoint_round_trip_restores_rng(tmp_path):
    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    state = {"weights": {"w": torch.arange(4.0)}, "step": 7, "rng": rng_state()}
    path = save_checkpoint(tmp_path / "c.pt", state)
    expected = (torch.rand(3), np.random.rand(3), random.random())
    loaded = load_checkpoint(path)
    set_rng_state(loaded["rng"])
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1]) and random.random() == expected[2]
    assert loaded["step"] == 7 and torch.equal(loaded["weights"]["w"], torch.arange(4.0))


def test_keep_last_and_latest(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=2)
    for step in (2, 4, 6):
        manager.save(step, {"step": step})
    assert manager.steps() == [4, 6] and manager.latest().name == "step-00000006.pt"
    assert not list(tmp_path.glob(".*tmp*"))


def test_damaged_and_pickled_checkpoints_are_refused(tmp_path):
    good = save_checkpoint(tmp_path / "good.pt", {"x": torch.ones(3)})
    damaged = tmp_path / "damaged.pt"
    data = good.read_bytes()
    damaged.write_bytes(data[: len(data) // 2])
    pickled = tmp_path / "pickled.pt"
    pickled.write_bytes(pickle.dumps({"format": "medgen-checkpoint", "x": [1, 2]}))
    evil = tmp_path / "evil.pt"
    torch.save({"format": "medgen-checkpoint", "obj": argparse.Namespace(a=1)}, evil)  # a zip archive with a pickled object

    for path, phrase in ((damaged, "is not a torch zip archive"), (pickled, "is not a torch zip archive"),
                         (evil, "holds pickled objects")):
        with pytest.raises(CheckpointError) as err:
            load_checkpoint(path)
        message = str(err.value)
        assert str(path) in message and phrase in message and message.count(". ") == 0  # one sentence
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.ones(1)}, other)
    with pytest.raises(CheckpointError, match="not a medgen training checkpoint"):
        load_checkpoint(other)
