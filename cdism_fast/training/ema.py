"""Exponential moving average of a model's weights (BasicSR's ``net_g_ema``)."""
from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["ExponentialMovingAverage"]


class ExponentialMovingAverage:
    """Keeps ``average = decay·average + (1 − decay)·weights`` after each optimiser step.

    The average lives in a frozen copy of the model (``.module``), in eval
    mode, which is what validation and the final export use. Buffers (e.g.
    mean shifts) are copied, not averaged. ``decay`` = 0.999 is what the
    paper's authors' configurations use.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        averages = list(self.module.parameters())
        weights = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(averages, weights, 1.0 - self.decay)
        for average, buffer in zip(self.module.buffers(), model.buffers()):
            average.copy_(buffer)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "module": self.module.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.decay = state["decay"]
        self.module.load_state_dict(state["module"])
