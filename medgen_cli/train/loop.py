"""The training loop shared by every trainable step (train-ae now, train-prior later).

A *task* knows the model and the data; the `Trainer` knows everything else: optimizers and LR
schedules (one per trained module), gradient accumulation and clipping, mixed precision, the
weight EMA, validation and best-weight tracking, checkpoints, metrics.jsonl, the wall-clock budget
and resuming. A task implements `TrainTask`:

- ``modules``: ``{name: module}`` trained with one optimizer each (DDP-wrapped when distributed);
  ``"model"`` is the one whose weights are exported (and averaged by the EMA).
- ``train_batches(epoch, start_batch)``: this rank's batches of ``epoch``, skipping the first
  ``start_batch``; the order must depend only on the seed and epoch (the global RNG is restored on
  resume, the data position is not re-drawn).
- ``training_step(batch, step)``: ``{"loss": scalar tensor to backpropagate, other: logged
  scalars}``; called under autocast; it must not call backward or step optimizers.
- ``validation(model, step)``: ``{metric: float}`` on the main rank (``model`` is the EMA copy
  when enabled); ``best_metric`` and ``best_mode`` ("max" | "min") pick the best weights.

Resume is exact on the CPU: the checkpoint holds every piece of state the next step reads
(weights, optimizer moments, schedules, EMA, RNG states of every rank, data position).

With ``train.max_minutes`` the learning-rate schedules are sized in time: at a few fractions of
the budget (``schedule.PLAN_MARKS``) the step count the budget allows is estimated from the speed
measured since the previous estimate (validation and checkpoints included), and warm-up and decay
are resized to it (never beyond ``train.steps``), so a budget-bound run ends at the decayed rate.
The plan is saved with the schedules: a resumed run continues it, re-planning only at the marks
still ahead.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from ..settings.train import OptimSettings, TrainSettings
from . import distributed as dist_utils
from .checkpoint import CheckpointManager, load_checkpoint, rng_state, set_rng_state
from .distributed import DistContext, unwrap
from .ema import ModelEMA
from .metrics_log import MetricsLog
from .precision import Precision
from .schedule import PLAN_MARKS, build_scheduler, plan_steps, resize
from .threads import ThreadGovernor

log = logging.getLogger(__name__)

Progress = Callable[[int, int, str], None]


class TrainTask(Protocol):
    modules: dict[str, nn.Module]
    best_metric: str
    best_mode: str

    def train_batches(self, epoch: int, start_batch: int) -> Iterable[Any]: ...

    def training_step(self, batch: Any, step: int) -> dict[str, Tensor]: ...

    def validation(self, model: nn.Module, step: int) -> dict[str, float]: ...


@dataclass
class TrainState:
    """Counters saved in every checkpoint: steps done, data position, time used, best so far."""

    step: int = 0
    epoch: int = 0
    batch: int = 0
    elapsed: float = 0.0
    best_value: float | None = None
    best_step: int | None = None
    stopped_early: bool = False
    planned_steps: int | None = None  # time-bounded runs: the step count the schedules are sized for
    plan_marks: int = 0  # how many of PLAN_MARKS have been used
    plan_from: tuple[int, float] | None = None  # (step, elapsed) the next speed estimate starts from
    log_sums: dict[str, float] = field(default_factory=dict)  # training logs since the last record
    log_counts: dict[str, int] = field(default_factory=dict)


def build_optimizer(params: Iterable[nn.Parameter], optim: OptimSettings) -> torch.optim.Optimizer:
    """Adam or AdamW from the optim settings."""
    params = [p for p in params if p.requires_grad]
    cls = torch.optim.AdamW if optim.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=optim.lr, betas=tuple(optim.betas), weight_decay=optim.weight_decay)


class Trainer:
    """Run a `TrainTask` for ``train.steps`` optimizer steps or ``train.max_minutes``.

    Args:
        task: the task (model, data, losses, validation).
        optim: optimizer and schedule settings (applied to every module of ``task.modules``).
        train: length, validation, checkpoint, EMA and logging settings.
        precision: device and autocast (`resolve_precision`).
        run_dir: the artefact's working directory (``OUT.partial``): ``checkpoints/`` and
            ``metrics.jsonl`` go there (written by the main rank only).
        ctx: distributed context (single process by default).
        progress: ``progress(step, total, text)`` called after every step on the main rank.
    """

    def __init__(self, task: TrainTask, optim: OptimSettings, train: TrainSettings, precision: Precision,
                 run_dir: Path | str, ctx: DistContext | None = None, progress: Progress | None = None):
        if "model" not in task.modules:
            raise ValueError(f"task.modules must contain 'model', got {sorted(task.modules)}")
        if task.best_mode not in ("max", "min"):
            raise ValueError(f"task.best_mode={task.best_mode!r} must be 'max' or 'min'")
        self.task = task
        self.optim = optim
        self.train = train
        self.precision = precision
        self.ctx = ctx or DistContext()
        self.run_dir = Path(run_dir)
        self.progress = progress if self.ctx.is_main else None
        self.optimizers = {name: build_optimizer(m.parameters(), optim) for name, m in task.modules.items()}
        self.schedulers = {
            name: build_scheduler(opt, train.steps, optim.warmup_steps, optim.schedule, optim.min_lr_ratio)
            for name, opt in self.optimizers.items()
        }
        self.ema = ModelEMA(unwrap(task.modules["model"]), train.ema_decay) if train.ema else None
        self.checkpoints = CheckpointManager(self.run_dir / "checkpoints", train.keep_last, enabled=self.ctx.is_main)
        self.metrics = MetricsLog(self.run_dir / "metrics.jsonl", enabled=self.ctx.is_main)
        self.state = TrainState()
        self.governor = ThreadGovernor.auto(precision.device, self.ctx.world_size)

    # ---------------------------------------------------------------------------------- weights
    @property
    def model(self) -> nn.Module:
        """The exported model (unwrapped)."""
        return unwrap(self.task.modules["model"])

    def eval_model(self) -> nn.Module:
        """The weights validation scores and the artefact exports: the EMA copy when enabled."""
        return self.ema.module if self.ema is not None else self.model

    def final_weights(self) -> tuple[dict[str, Tensor], int]:
        """(state dict, step) of the final weights: the best validation step or the last, per settings.

        Only the main rank validates, so other ranks always get the last weights.
        """
        if self.train.select == "best" and self.ctx.is_main and self.checkpoints.best_path.is_file():
            best = load_checkpoint(self.checkpoints.best_path)
            return best["weights"], int(best["step"])
        return {k: v.detach().clone() for k, v in self.eval_model().state_dict().items()}, self.state.step

    # ------------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly (RNG states of every rank are gathered)."""
        rngs = dist_utils.all_gather_object(rng_state())
        extra = getattr(self.task, "state_dict", None)
        return {
            "trainer": asdict(self.state),
            "world_size": self.ctx.world_size,
            "modules": {name: unwrap(m).state_dict() for name, m in self.task.modules.items()},
            "optimizers": {name: o.state_dict() for name, o in self.optimizers.items()},
            "schedulers": {name: s.state_dict() for name, s in self.schedulers.items()},
            "scaler": self.precision.scaler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "rng": rngs,
            "task": extra() if callable(extra) else {},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a `state_dict` (the RNG state last, so nothing consumes it afterwards)."""
        missing = sorted(set(self.task.modules) ^ set(state["modules"]))
        if missing:
            raise ValueError(f"checkpoint modules {sorted(state['modules'])} do not match the task's {sorted(self.task.modules)}")
        for name, m in self.task.modules.items():
            unwrap(m).load_state_dict(state["modules"][name])
            self.optimizers[name].load_state_dict(state["optimizers"][name])
            self.schedulers[name].load_state_dict(state["schedulers"][name])
        if state.get("scaler"):
            self.precision.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            if state.get("ema") is None:
                raise ValueError("the checkpoint has no weight EMA but train.ema is on; resume with the same settings")
            self.ema.load_state_dict(state["ema"])
        loader = getattr(self.task, "load_state_dict", None)
        if callable(loader) and state.get("task"):
            loader(state["task"])
        self.state = TrainState(**state["trainer"])
        rngs = state["rng"]
        if len(rngs) == self.ctx.world_size:
            set_rng_state(rngs[self.ctx.rank])
        else:
            log.warning("the checkpoint was written by %d processes, this run has %d: random streams restart "
                        "(the run continues but is not bit-identical)", len(rngs), self.ctx.world_size)
            torch.manual_seed(1_000_003 * self.state.step + self.ctx.rank)

    def resume(self) -> bool:
        """Load the latest checkpoint of ``run_dir`` if there is one; True when resumed."""
        latest = self.checkpoints.latest() if self.ctx.is_main else None
        latest = dist_utils.broadcast_object(str(latest) if latest else None)
        if latest is None:
            self.metrics.truncate_after(0)  # records of a run interrupted before its first checkpoint
            return False
        self.load_state_dict(load_checkpoint(latest, map_location="cpu"))
        self.metrics.truncate_after(self.state.step)
        log.info("resumed from %s (step %d)", latest, self.state.step)
        return True

    def _save_checkpoint(self) -> None:
        state = self.state_dict()  # collective under DDP: every rank calls it
        self.checkpoints.save(self.state.step, state)

    # ------------------------------------------------------------------------------------- loop
    def _batches(self) -> Iterator[Any]:
        while True:
            got = 0
            for batch in self.task.train_batches(self.state.epoch, self.state.batch):
                self.state.batch += 1
                got += 1
                yield batch
            if got == 0 and self.state.batch == 0:
                raise ValueError("the training data yielded no batch in a whole epoch; lower data.batch_size or add items")
            self.state.epoch += 1
            self.state.batch = 0

    def _no_sync(self, skip: bool) -> contextlib.ExitStack:
        stack = contextlib.ExitStack()
        if skip:
            for m in self.task.modules.values():
                if isinstance(m, DistributedDataParallel):
                    stack.enter_context(m.no_sync())
        return stack

    def _optimizer_step(self, batches: Iterator[Any]) -> dict[str, float]:
        accum = self.optim.grad_accum
        logs: dict[str, float] = {}
        for m in self.task.modules.values():
            m.train()
        for i in range(accum):
            batch = next(batches)
            with self._no_sync(i < accum - 1):
                with self.precision.autocast():
                    out = self.task.training_step(batch, self.state.step)
                loss = out["loss"]
                if not torch.isfinite(loss.detach()):
                    raise FloatingPointError(
                        f"the training loss became {loss.item()} at step {self.state.step}; "
                        "lower optim.lr, enable optim.grad_clip or use train.precision fp32"
                    )
                self.precision.scaler.scale(loss / accum).backward()
            for key, value in out.items():
                logs[key] = logs.get(key, 0.0) + float(value.detach()) / accum
        scaler = self.precision.scaler
        for name, opt in self.optimizers.items():
            params = [p for g in opt.param_groups for p in g["params"] if p.grad is not None]
            if not params:  # e.g. the discriminator before its start step
                continue
            if self.optim.grad_clip > 0:
                scaler.unscale_(opt)
                norm = torch.nn.utils.clip_grad_norm_(params, self.optim.grad_clip)
                logs[f"grad_norm_{name}" if name != "model" else "grad_norm"] = float(norm)
            scaler.step(opt)
        scaler.update()
        logs["lr"] = self.schedulers["model"].get_last_lr()[0]  # the rate this step used
        for name, opt in self.optimizers.items():
            opt.zero_grad(set_to_none=True)
            with warnings.catch_warnings():  # a module without gradients yet (a late discriminator) still follows the schedule
                warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()`"))
                self.schedulers[name].step()
        if self.ema is not None:
            self.ema.update(self.model)
        return logs

    def _validate(self) -> dict[str, float]:
        if not self.ctx.is_main:
            return {}
        model = self.eval_model()
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad(), self.precision.autocast():
                metrics = self.task.validation(model, self.state.step)
        finally:
            model.train(was_training)
        if not metrics:
            return metrics
        self.metrics.write(self.state.step, "val", metrics)
        value = metrics.get(self.task.best_metric)
        if value is not None and math.isfinite(value):
            better = (self.state.best_value is None
                      or (value > self.state.best_value if self.task.best_mode == "max" else value < self.state.best_value))
            if better:
                self.state.best_value, self.state.best_step = float(value), self.state.step
                self.checkpoints.save_best({
                    "step": self.state.step, "metric": self.task.best_metric, "value": float(value),
                    "weights": model.state_dict(),
                })
        return metrics

    def _replan(self, budget: float) -> None:
        """At the next mark of the budget, size every schedule to the steps the remaining time allows."""
        state = self.state
        if state.plan_from is None or state.step <= 1:  # the first step pays one-off costs: measure after it
            state.plan_from = (state.step, state.elapsed)
            return
        if state.plan_marks >= len(PLAN_MARKS):
            return
        due = dist_utils.any_rank(state.elapsed >= PLAN_MARKS[state.plan_marks] * budget, self.precision.device)
        if not due or state.step <= state.plan_from[0]:
            return
        start_step, start_elapsed = state.plan_from
        speed = (state.elapsed - start_elapsed) / (state.step - start_step)
        marks = state.plan_marks
        while marks < len(PLAN_MARKS) and state.elapsed >= PLAN_MARKS[marks] * budget:
            marks += 1
        planned = plan_steps(state.step, state.elapsed, budget, speed, self.train.steps)
        planned, marks = dist_utils.broadcast_object((planned, max(marks, state.plan_marks + 1)))  # rank 0 decides
        for scheduler in self.schedulers.values():
            resize(scheduler.lr_lambdas[0], planned, self.train.steps, self.optim.warmup_steps)
        state.planned_steps, state.plan_marks, state.plan_from = planned, marks, (state.step, state.elapsed)
        log.debug("time budget: %.2f s/step, schedule sized for %d steps", speed, planned)

    def fit(self) -> TrainState:
        """Train until ``train.steps`` or the time budget; returns the final counters."""
        total = self.train.steps
        budget = self.train.max_minutes * 60.0 if self.train.max_minutes else None
        try:
            return self._fit(total, budget)
        finally:
            if self.governor is not None:
                self.governor.restore()

    def _fit(self, total: int, budget: float | None) -> TrainState:
        batches = self._batches()
        sums, counts = self.state.log_sums, self.state.log_counts
        clock = time.monotonic()
        rate_clock, rate_steps = clock, 0
        while self.state.step < total:
            logs = self._optimizer_step(batches)
            if self.governor is not None:
                self.governor.tick()
            self.state.step += 1
            now = time.monotonic()
            self.state.elapsed += now - clock
            clock = now
            for key, value in logs.items():  # averaged over the steps that logged the key
                sums[key] = sums.get(key, 0.0) + value
                counts[key] = counts.get(key, 0) + 1
            rate_steps += 1
            step = self.state.step
            if budget is not None:
                self._replan(budget)
            out_of_time = budget is not None and dist_utils.any_rank(self.state.elapsed >= budget, self.precision.device)
            last = step >= total or out_of_time
            if step % self.train.log_every == 0 or last:
                plan = {"planned_steps": self.state.planned_steps} if self.state.planned_steps else {}
                self.metrics.write(step, "train", {k: v / counts[k] for k, v in sums.items()} | plan
                                   | {"elapsed_s": self.state.elapsed})
                sums.clear()
                counts.clear()
            if (self.train.val_every and step % self.train.val_every == 0) or last:
                metrics = self._validate()
                if metrics:
                    log.info("step %d: %s", step, ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
            if out_of_time:
                self.state.stopped_early = step < total
            if step % self.train.checkpoint_every == 0 or last:
                self._save_checkpoint()
            clock = time.monotonic()  # validation and checkpoints count in the budget through elapsed below
            self.state.elapsed += clock - now
            if self.progress is not None:
                speed = rate_steps / max(clock - rate_clock, 1e-9)
                self.progress(step, self.state.planned_steps or total, f"loss {logs['loss']:.4f} · {speed:.2f} it/s")
                if clock - rate_clock > 10:
                    rate_clock, rate_steps = clock, 0
            if out_of_time:
                log.info("time budget of %.1f minutes reached after %d of %d steps", self.train.max_minutes, step, total)
                break
        return self.state
