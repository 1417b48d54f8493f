"""Learning-rate schedules: linear warmup, then constant, cosine or linear decay to a floor; and the
step plan of a time-bounded run.

The schedule is a callable object (not a lambda) so ``LambdaLR.state_dict()`` stores its plain
fields and a checkpoint loads with ``torch.load(weights_only=True)``.

A run bounded by a wall-clock budget does not know its length in steps. `plan_steps` estimates it
from the measured speed, and the `Trainer` re-plans at a few fixed fractions of the budget
(`PLAN_MARKS`), resizing warm-up and decay of every `WarmupDecay` so the learning rate reaches its
floor when the time runs out. The plan lives in the schedule's fields, so a checkpoint freezes it
and a resumed run continues the same schedule.
"""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

SCHEDULES = ("constant", "cosine", "linear")
# fractions of a time budget at which the step plan is (re)estimated: early enough to shape the
# warm-up, late enough that the last estimate is close to the true end
PLAN_MARKS = (0.02, 0.1, 0.25, 0.5, 0.75, 0.9)


class WarmupDecay:
    """Multiplier of the peak learning rate at optimizer step ``step`` (0-based).

    Args:
        total_steps: steps of the whole run (the decay ends there, so a resumed run must use the
            same total).
        warmup_steps: linear warmup from 1/(warmup_steps+1) to 1 over this many steps.
        schedule: "constant" | "cosine" | "linear" after warmup.
        min_lr_ratio: final multiplier of cosine and linear decay.
    """

    def __init__(self, total_steps: int, warmup_steps: int = 0, schedule: str = "cosine", min_lr_ratio: float = 0.0):
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule={schedule!r} must be one of {SCHEDULES}")
        if total_steps < 1 or warmup_steps < 0:
            raise ValueError(f"total_steps={total_steps} must be >= 1 and warmup_steps={warmup_steps} >= 0")
        if not 0.0 <= min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio={min_lr_ratio} must be in [0, 1]")
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.schedule = schedule
        self.min_lr_ratio = float(min_lr_ratio)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / (self.warmup_steps + 1)
        if self.schedule == "constant":
            return 1.0
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        if self.schedule == "cosine":
            shape = 0.5 * (1.0 + math.cos(math.pi * progress))
        else:
            shape = 1.0 - progress
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * shape


def build_scheduler(optimizer: Optimizer, total_steps: int, warmup_steps: int = 0, schedule: str = "cosine",
                    min_lr_ratio: float = 0.0) -> LambdaLR:
    """A ``LambdaLR`` stepping once per optimizer step with a `WarmupDecay` multiplier (the warm-up at
    most ``total_steps - 1`` steps)."""
    warmup_steps = min(warmup_steps, max(0, total_steps - 1))
    return LambdaLR(optimizer, WarmupDecay(total_steps, warmup_steps, schedule, min_lr_ratio))


def plan_steps(step: int, elapsed: float, budget: float, seconds_per_step: float, max_steps: int) -> int:
    """Total steps a run at ``step`` after ``elapsed`` of ``budget`` seconds will reach at
    ``seconds_per_step`` (at least ``step + 1``, at most ``max_steps``)."""
    if not seconds_per_step > 0:
        return max_steps
    remaining = max(0.0, budget - elapsed) / seconds_per_step
    return int(min(max_steps, max(step + 1, math.floor(step + remaining))))


def resize(schedule: WarmupDecay, total_steps: int, configured_total: int, configured_warmup: int) -> None:
    """Fit ``schedule`` to ``total_steps``; warm-up keeps its configured fraction of the run."""
    schedule.total_steps = int(total_steps)
    scaled = round(configured_warmup * total_steps / max(1, configured_total))
    schedule.warmup_steps = int(min(configured_warmup, max(0, min(scaled, total_steps - 1))))
