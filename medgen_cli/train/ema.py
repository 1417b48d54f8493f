"""Exponential moving average of a model's weights (Polyak averaging), as used for exported weights.

Floating-point parameters and buffers are averaged (so an EMA codebook or BatchNorm statistics
follow too); integer buffers are copied. The decay is warmed up, ``min(decay, (1 + n) / (10 + n))``
after n updates, so a short run is not dominated by the random initialisation.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class ModelEMA:
    """A frozen copy of ``model`` whose weights track it.

    Args:
        model: the trained module (unwrapped, not DDP).
        decay: target decay per update.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay={decay} must be in (0, 1)")
        self.decay = decay
        self.updates = 0
        self.module = copy.deepcopy(model).eval()
        self.module.requires_grad_(False)

    def current_decay(self) -> float:
        return min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One EMA step towards ``model``'s current weights."""
        decay = self.current_decay()
        source = model.state_dict()
        for name, shadow in self.module.state_dict().items():
            value = source[name].detach()
            if shadow.dtype.is_floating_point:
                shadow.lerp_(value.to(shadow.dtype), 1.0 - decay)
            else:
                shadow.copy_(value)
        self.updates += 1

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "weights": self.module.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.decay = float(state["decay"])
        self.updates = int(state["updates"])
        self.module.load_state_dict(state["weights"])
