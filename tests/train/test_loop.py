"""The generic Trainer: a task's loss goes down on a fixed batch; accumulation and time budget."""

import pytest
import torch
from torch import nn

from medgen_cli.models import build_autoencoder
from medgen_cli.settings.train import OptimSettings, TrainSettings
from medgen_cli.train.ae_task import AutoencoderTask
from medgen_cli.train.losses import ReconstructionLoss
from medgen_cli.train.loop import Trainer
from medgen_cli.train.metrics_log import read_metrics
from medgen_cli.train.precision import resolve_precision

from .helpers import blob


def _fixed_batch(spatial_dims: int) -> dict:
    return {"image": torch.stack([torch.from_numpy(blob(spatial_dims, 16, s))[None] for s in range(2)])}


def _task(kind: str, spatial_dims: int, batch: dict) -> AutoencoderTask:
    torch.manual_seed(0)
    extra = {"latent_channels": 4} if kind == "klvae" else {"embedding_dim": 8, "num_embeddings": 16}
    model = build_autoencoder(kind, spatial_dims, channels=(8, 8), num_res_blocks=1, **extra)
    return AutoencoderTask(model, lambda epoch, start: [batch] * (4 - start), ReconstructionLoss(spatial_dims),
                           torch.device("cpu"))


def _run(task, tmp_path, steps=12, **train):
    trainer = Trainer(task, OptimSettings(lr=3e-3, schedule="constant"),
                      TrainSettings(steps=steps, val_every=0, checkpoint_every=100, log_every=1, **train),
                      resolve_precision("fp32", torch.device("cpu")), tmp_path)
    state = trainer.fit()
    return state, [r for r in read_metrics(tmp_path / "metrics.jsonl") if r["phase"] == "train"]


def test_loss_decreases_on_a_fixed_batch(tmp_path):
    state, records = _run(_task("vqvae", 2, _fixed_batch(2)), tmp_path)
    losses = [r["rec"] for r in records]
    assert state.step == 12 and (state.epoch, state.batch) == (2, 4)
    assert sum(losses[-3:]) / 3 < 0.7 * sum(losses[:3]) / 3
    assert (tmp_path / "checkpoints" / "step-00000012.pt").is_file()  # the last step is always saved


def test_loss_decreases_3d_klvae_with_accumulation(tmp_path):
    task = _task("klvae", 3, _fixed_batch(3))
    trainer = Trainer(task, OptimSettings(lr=3e-3, schedule="constant", grad_accum=2),
                      TrainSettings(steps=6, val_every=0, checkpoint_every=100, log_every=1, ema=True),
                      resolve_precision("fp32", torch.device("cpu")), tmp_path)
    trainer.fit()
    records = [r for r in read_metrics(tmp_path / "metrics.jsonl") if r["phase"] == "train"]
    assert (trainer.state.epoch, trainer.state.batch) == (2, 4)  # 6 steps x 2 batches: the third 4-batch epoch is used up
    assert records[-1]["rec"] < records[0]["rec"]
    assert trainer.ema.updates == 6


class _Slow(nn.Module):
    """A task whose steps take long enough to exhaust a tiny time budget."""

    best_metric, best_mode = "score", "max"

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))
        self.modules_ = {"model": self}

    @property
    def modules(self):  # the TrainTask attribute (nn.Module has a modules() method)
        return self.modules_

    def train_batches(self, epoch, start):
        return [None] * 3

    def training_step(self, batch, step):
        import time

        time.sleep(0.02)
        return {"loss": (self.w - 2).pow(2).sum()}

    def validation(self, model, step):
        return {"score": -float((model.w - 2).abs())}


def test_time_budget_stops_early_and_keeps_best(tmp_path):
    task = _Slow()
    trainer = Trainer(task, OptimSettings(lr=0.1), TrainSettings(steps=1000, max_minutes=0.2 / 60, val_every=2),
                      resolve_precision("fp32", torch.device("cpu")), tmp_path)
    state = trainer.fit()
    assert 2 <= state.step < 1000 and state.stopped_early
    weights, step = trainer.final_weights()
    assert step == state.best_step and "w" in weights


def _budget_trainer(tmp_path, task=None, **optim):
    optim = {"lr": 0.1, "warmup_steps": 200, "min_lr_ratio": 0.1, **optim}
    return Trainer(task or _Slow(), OptimSettings(**optim),
                   TrainSettings(steps=10_000, max_minutes=1.2 / 60, val_every=0, log_every=1, checkpoint_every=10**6),
                   resolve_precision("fp32", torch.device("cpu")), tmp_path)


def test_time_budget_sizes_warmup_and_decay_so_the_run_ends_at_the_floor(tmp_path):
    trainer = _budget_trainer(tmp_path)
    state = trainer.fit()
    lrs = [r["lr"] for r in read_metrics(tmp_path / "metrics.jsonl") if r["phase"] == "train"]
    planned = state.planned_steps
    assert state.stopped_early and planned is not None and 10 < state.step < 10_000
    assert abs(planned - state.step) <= max(4, 0.2 * state.step), (planned, state.step)
    schedule = trainer.schedulers["model"].lr_lambdas[0]
    assert schedule.total_steps == planned and schedule.warmup_steps == round(200 * planned / 10_000)
    assert max(lrs) > 0.09  # the peak was reached ...
    assert lrs[-1] < 0.1 * (0.1 + 0.2 * 0.9), lrs[-5:]  # ... and the last steps ran close to the floor (0.01)
    # sized for train.steps instead (the behaviour before), the last rate would still be near the peak
    from medgen_cli.train.schedule import WarmupDecay

    assert WarmupDecay(10_000, 200, "cosine", 0.1)(state.step) < 0.3

    # the plan is saved with the schedules: a resumed trainer continues it
    fresh = _budget_trainer(tmp_path / "again")
    fresh.load_state_dict(trainer.state_dict())
    assert fresh.schedulers["model"].lr_lambdas[0].total_steps == planned and fresh.state.planned_steps == planned
    assert fresh.schedulers["model"].get_last_lr() == trainer.schedulers["model"].get_last_lr()


def test_plan_steps_and_resize():
    from medgen_cli.train.schedule import WarmupDecay, plan_steps, resize

    assert plan_steps(10, 5.0, 60.0, 0.5, 10_000) == 120
    assert plan_steps(10, 5.0, 60.0, 0.5, 100) == 100  # never beyond train.steps
    assert plan_steps(10, 70.0, 60.0, 0.5, 100) == 11  # out of time: at least one more step
    schedule = WarmupDecay(1000, 100, "cosine", 0.1)
    resize(schedule, 250, 1000, 100)
    assert (schedule.total_steps, schedule.warmup_steps) == (250, 25)
    assert schedule(249) == pytest.approx(0.1, abs=1e-3) and schedule(25) == pytest.approx(1.0)
