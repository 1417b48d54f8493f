"""Learning-rate schedules: linear warmup, then constant, cosine or linear decay to a floor.

The schedule is a callable object (not a lambda) so ``LambdaLR.state_dict()`` stores its plain
fields and a checkpoint loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

SCHEDULES = ("constant", "cosine", "linear")


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
    """A ``LambdaLR`` stepping once per optimizer step with a `WarmupDecay` multiplier."""
    return LambdaLR(optimizer, WarmupDecay(total_steps, warmup_steps, schedule, min_lr_ratio))
